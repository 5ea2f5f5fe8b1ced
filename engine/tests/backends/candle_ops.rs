//! The candle tensor ops the optimizers are written in (`optimizer_step` in
//! `backend/candle.rs`) against plain Rust on the host, op by op, on the
//! test device: a device kernel that is wrong for one layout (broadcast
//! scalars, per-row broadcasts, narrow views, concatenation) shows up here
//! by name instead of as a diverged table. Every op is checked and all
//! failures are reported together. (A test like this is how candle 0.11's
//! CUDA `sum_keepdim` over rows of 8 floats was seen to return 0 on an H100;
//! the optimizers use `row_ops::row_mean_square` instead.)

use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type DeviceOp = fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>;

/// Row-major `a`, `b` of shape `[rows, cols]` → expected output and shape.
type HostOp = fn(&[f32], &[f32], usize, usize) -> (Vec<f32>, [usize; 2]);

fn elementwise(
    a: &[f32],
    b: &[f32],
    cols: usize,
    f: impl Fn(f32, f32) -> f32,
) -> (Vec<f32>, [usize; 2]) {
    let out: Vec<f32> = a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect();
    let rows = out.len() / cols;
    (out, [rows, cols])
}

fn ops() -> Vec<(&'static str, DeviceOp, HostOp)> {
    vec![
        (
            "sqr",
            |a, _| a.sqr(),
            |a, b, _, c| elementwise(a, b, c, |x, _| x * x),
        ),
        (
            "sqrt(abs)",
            |a, _| a.abs()?.sqrt(),
            |a, b, _, c| elementwise(a, b, c, |x, _| x.abs().sqrt()),
        ),
        (
            "broadcast_div by a 0-d scalar",
            |a, _| a.broadcast_div(&Tensor::new(8f32, a.device())?),
            |a, b, _, c| elementwise(a, b, c, |x, _| x / 8.0),
        ),
        (
            "broadcast_div by a column",
            |a, _| a.broadcast_div(&(a.narrow(1, 0, 1)?.abs()? + 1.0)?),
            |a, _, r, c| {
                let out = (0..r * c)
                    .map(|i| a[i] / (a[i / c * c].abs() + 1.0))
                    .collect();
                (out, [r, c])
            },
        ),
        (
            "add",
            |a, b| a + b,
            |a, b, _, c| elementwise(a, b, c, |x, y| x + y),
        ),
        (
            "sub",
            |a, b| a - b,
            |a, b, _, c| elementwise(a, b, c, |x, y| x - y),
        ),
        (
            "mul",
            |a, b| a * b,
            |a, b, _, c| elementwise(a, b, c, |x, y| x * y),
        ),
        (
            "div",
            |a, b| a / (b.abs()? + 1.0)?,
            |a, b, _, c| elementwise(a, b, c, |x, y| x / (y.abs() + 1.0)),
        ),
        (
            "mul by f64",
            |a, _| a * 0.1,
            |a, b, _, c| elementwise(a, b, c, |x, _| x * 0.1),
        ),
        (
            "add f64",
            |a, _| a + 1e-6,
            |a, b, _, c| elementwise(a, b, c, |x, _| x + 1e-6),
        ),
        (
            "affine(-1, 1)",
            |a, _| a.affine(-1.0, 1.0),
            |a, b, _, c| elementwise(a, b, c, |x, _| 1.0 - x),
        ),
        (
            "exp",
            |a, _| a.exp(),
            |a, b, _, c| elementwise(a, b, c, |x, _| x.exp()),
        ),
        (
            "neg",
            |a, _| a.neg(),
            |a, b, _, c| elementwise(a, b, c, |x, _| -x),
        ),
        (
            "sign",
            |a, _| a.sign(),
            |a, b, _, c| elementwise(a, b, c, |x, _| x.signum()),
        ),
        (
            "le + where_cond",
            |a, b| a.abs()?.le(0.5)?.where_cond(&a.zeros_like()?, b),
            |a, b, _, c| elementwise(a, b, c, |x, y| if x.abs() <= 0.5 { 0.0 } else { y }),
        ),
        (
            "narrow views, add",
            |a, b| {
                let d = a.dim(1)? / 2;
                a.narrow(1, 0, d)? + b.narrow(1, d, d)?
            },
            |a, b, r, c| {
                let d = c / 2;
                let out = (0..r * d)
                    .map(|i| a[i / d * c + i % d] + b[i / d * c + d + i % d])
                    .collect();
                (out, [r, d])
            },
        ),
        (
            "narrow column + 1, exp",
            |a, _| (a.narrow(1, a.dim(1)? - 1, 1)? + 1.0)?.exp(),
            |a, _, r, c| {
                (
                    (0..r).map(|i| (a[i * c + c - 1] + 1.0).exp()).collect(),
                    [r, 1],
                )
            },
        ),
        (
            "cat(1)",
            |a, b| Tensor::cat(&[a, b, &a.narrow(1, 0, 1)?], 1),
            |a, b, r, c| {
                let out = (0..r)
                    .flat_map(|i| {
                        let row = i * c..(i + 1) * c;
                        a[row.clone()]
                            .iter()
                            .chain(&b[row])
                            .chain([&a[i * c]])
                            .copied()
                    })
                    .collect();
                (out, [r, 2 * c + 1])
            },
        ),
    ]
}

#[test]
fn the_optimizers_tensor_ops_agree_with_plain_rust() {
    let device = super::device::candle_device();
    let mut rng = StdRng::seed_from_u64(5);
    let mut failures = Vec::new();
    for (rows, cols) in [(1, 8), (257, 8), (1000, 17), (64, 128)] {
        let a: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let b: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let ta = Tensor::from_slice(&a, (rows, cols), &device).unwrap();
        let tb = Tensor::from_slice(&b, (rows, cols), &device).unwrap();
        for (name, device_op, host_op) in ops() {
            let (want, shape) = host_op(&a, &b, rows, cols);
            let got = match device_op(&ta, &tb) {
                Ok(t) => t,
                Err(e) => {
                    failures.push(format!("{name} [{rows}, {cols}]: error {e}"));
                    continue;
                }
            };
            if got.dims() != shape {
                failures.push(format!(
                    "{name} [{rows}, {cols}]: shape {:?} vs {shape:?}",
                    got.dims()
                ));
                continue;
            }
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            if let Some((i, (x, y))) = want.iter().zip(&got).enumerate().find(|(_, (x, y))| {
                (*x - *y).abs() > 1e-6 * x.abs().max(y.abs()).max(1.0) || x.is_nan() != y.is_nan()
            }) {
                failures.push(format!(
                    "{name} [{rows}, {cols}]: [{i}] host {x} vs device {y}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
