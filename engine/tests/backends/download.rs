//! Downloads through the reused buffer, on the test device (a GPU under
//! `scripts/gpu-check.sh`): sizes that grow it, past the 32 MiB that was a
//! cliff, and shrink again, and views that are not contiguous.

use candle_core::Tensor;
use featmux_engine::backend::download::Downloads;

#[test]
fn downloads_return_exactly_the_tensor_whatever_the_buffer_held_before() {
    let device = super::device::candle_device();
    let downloads = Downloads::default();
    // 9 Mi floats = 36 MiB, then smaller again: a larger buffer must not
    // leak its tail into a smaller result.
    for n in [12, 1 << 20, 3, 9 << 20, 1_000, 0] {
        let host: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 7.0).collect();
        let tensor = Tensor::from_vec(host.clone(), n, &device).unwrap();
        assert_eq!(downloads.to_vec(&tensor).unwrap(), host, "{n} floats");
    }
    // A transposed view and a narrowed one: row-major order of the view.
    let host: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let matrix = Tensor::from_vec(host, (3, 4), &device).unwrap();
    let transposed = downloads.to_vec(&matrix.t().unwrap()).unwrap();
    assert_eq!(
        transposed,
        [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]
    );
    let narrowed = downloads.to_vec(&matrix.narrow(0, 1, 2).unwrap()).unwrap();
    assert_eq!(narrowed, [4., 5., 6., 7., 8., 9., 10., 11.]);
}
