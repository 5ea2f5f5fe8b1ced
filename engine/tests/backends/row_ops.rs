//! The candle backend's row kernels against plain loops, on random data, on
//! the test device (CPU by default, a GPU under `scripts/gpu-check.sh`):
//! widths with and without the 16-byte path, inputs at odd offsets, empty
//! and crowded pooling segments.

use candle_core::{DType, Device, Tensor};
use featmux_engine::backend::row_ops::{
    gather_rows, row_mean_square, scatter_rows, segment_sum, RowIds,
};
use featmux_engine::backend::GatherPlan;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random_floats(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Row `r` of a row-major `[_, width]` host array.
fn row(values: &[f32], r: u64, width: usize) -> &[f32] {
    &values[r as usize * width..(r as usize + 1) * width]
}

fn to_host(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// `rows` as ids checked against a table of `bound` rows.
fn ids(device: &Device, rows: &[u64], bound: usize) -> RowIds {
    RowIds::new(rows, bound as u64, device).unwrap()
}

#[test]
fn gather_rows_copies_the_named_rows() {
    let device = super::device::candle_device();
    let mut rng = StdRng::seed_from_u64(1);
    for width in [1, 3, 4, 17, 64] {
        let rows = 1_000;
        let host = random_floats(&mut rng, rows * width);
        let table = Tensor::from_vec(host.clone(), (rows, width), &device).unwrap();
        let picked: Vec<u64> = (0..5_000)
            .map(|_| rng.random_range(0..rows as u64))
            .collect();
        let got = gather_rows(&table, &ids(&device, &picked, rows)).unwrap();
        assert_eq!(got.dims(), [picked.len(), width]);
        let want: Vec<f32> = picked
            .iter()
            .flat_map(|&r| row(&host, r, width))
            .copied()
            .collect();
        assert_eq!(to_host(&got), want, "width {width}");
    }
}

#[test]
fn gather_rows_reads_a_table_view_at_an_odd_offset() {
    let device = super::device::candle_device();
    let mut rng = StdRng::seed_from_u64(2);
    let (rows, width) = (300, 8);
    let host = random_floats(&mut rng, (rows + 1) * width + 1);
    // A [rows, width] view starting one float in: not 16-byte aligned.
    let table = Tensor::from_vec(host.clone(), host.len(), &device)
        .unwrap()
        .narrow(0, 1, rows * width)
        .unwrap()
        .reshape((rows, width))
        .unwrap();
    let picked: Vec<u64> = (0..rows as u64).rev().collect();
    let got = gather_rows(&table, &ids(&device, &picked, rows)).unwrap();
    let want: Vec<f32> = picked
        .iter()
        .flat_map(|&r| row(&host[1..], r, width))
        .copied()
        .collect();
    assert_eq!(to_host(&got), want);
}

#[test]
fn segment_sum_pools_in_entry_order_like_the_cpu_backend() {
    let device = super::device::candle_device();
    let mut rng = StdRng::seed_from_u64(3);
    for width in [5, 16] {
        let slots = 400;
        // Three entries per slot on average (some slots empty, some crowded),
        // in random slot order, as plans of bags produce.
        let n = 1_200;
        let plan = GatherPlan {
            rows: (0..n as u64).collect(),
            slots: (0..n).map(|_| rng.random_range(0..slots as u32)).collect(),
            weights: random_floats(&mut rng, n),
            num_slots: slots,
        };
        let values = random_floats(&mut rng, n * width);
        let groups = plan.grouped_by_slot();
        let grouped_values: Vec<f32> = groups
            .rows
            .iter()
            .flat_map(|&e| row(&values, e, width))
            .copied()
            .collect();
        let got = segment_sum(
            &Tensor::from_vec(grouped_values, (n, width), &device).unwrap(),
            &Tensor::from_vec(groups.weights.clone(), n, &device).unwrap(),
            &groups.offsets,
        )
        .unwrap();
        // The CPU backend's loop: out[slot] += weight * row, in plan order.
        let mut want = vec![0.0f32; slots * width];
        for e in 0..n {
            let s = plan.slots[e] as usize;
            for c in 0..width {
                want[s * width + c] += plan.weights[e] * values[e * width + c];
            }
        }
        let got = to_host(&got);
        assert_eq!(got, want, "width {width}: sums must match bit for bit");
        assert!(
            groups.offsets.windows(2).any(|w| w[0] == w[1]),
            "no empty slot tested"
        );
    }
}

#[test]
fn scatter_rows_overwrites_only_the_named_rows() {
    let device = super::device::candle_device();
    let mut rng = StdRng::seed_from_u64(4);
    for width in [1, 7, 12] {
        let rows = 2_000;
        let mut host = random_floats(&mut rng, rows * width);
        let table = Tensor::from_vec(host.clone(), (rows, width), &device).unwrap();
        let mut picked: Vec<u64> = (0..rows as u64).filter(|_| rng.random_bool(0.3)).collect();
        picked.reverse();
        let new = random_floats(&mut rng, picked.len() * width);
        let src = Tensor::from_vec(new.clone(), (picked.len(), width), &device).unwrap();
        scatter_rows(&table, &ids(&device, &picked, rows), &src).unwrap();
        for (i, &r) in picked.iter().enumerate() {
            let r = r as usize;
            host[r * width..(r + 1) * width].copy_from_slice(&new[i * width..(i + 1) * width]);
        }
        let got = to_host(&table);
        assert_eq!(got, host, "width {width}");
    }
}

#[test]
fn row_mean_square_matches_the_cpu_optimizers_sum_bit_for_bit() {
    let device = super::device::candle_device();
    let mut rng = StdRng::seed_from_u64(6);
    for width in [1, 8, 16, 33] {
        let n = 3_000;
        let host = random_floats(&mut rng, n * width);
        let got =
            row_mean_square(&Tensor::from_vec(host.clone(), (n, width), &device).unwrap()).unwrap();
        assert_eq!(got.dims(), [n, 1]);
        let want: Vec<f32> = host
            .chunks_exact(width)
            .map(|row| row.iter().map(|g| g * g).sum::<f32>() / width as f32)
            .collect();
        assert_eq!(to_host(&got), want, "width {width}");
    }
}

#[test]
fn row_ops_reject_non_f32_tables_with_a_named_error() {
    let device = super::device::candle_device();
    let table = Tensor::zeros((4, 4), DType::F64, &device).unwrap();
    let err = gather_rows(&table, &ids(&device, &[0, 1], 4)).unwrap_err();
    assert!(
        err.to_string().contains("F32") || err.to_string().contains("f32"),
        "{err}"
    );
}

#[test]
fn row_ops_refuse_every_index_outside_their_table() {
    let device = super::device::candle_device();
    let table = Tensor::zeros((4, 3), DType::F32, &device).unwrap();
    let err = RowIds::new(&[0, 4], 4, &device).unwrap_err();
    assert!(err.to_string().contains("row id 4"), "{err}");
    // Ids checked against a bigger table do not index a smaller one.
    let err = gather_rows(&table, &ids(&device, &[0, 1], 5)).unwrap_err();
    assert!(err.to_string().contains("the table has 4"), "{err}");
    let src = Tensor::zeros((2, 3), DType::F32, &device).unwrap();
    let err = scatter_rows(&table, &ids(&device, &[0, 1], 5), &src).unwrap_err();
    assert!(err.to_string().contains("the table has 4"), "{err}");
    // A source with fewer rows than ids would be read past its end.
    let err = scatter_rows(&table, &ids(&device, &[0, 1, 2], 4), &src).unwrap_err();
    assert!(err.to_string().contains("source rows"), "{err}");
    let weights = Tensor::ones(4, DType::F32, &device).unwrap();
    for offsets in [&[0, 2, 5][..], &[0, 3, 2, 4], &[1, 4], &[]] {
        let err = segment_sum(&table, &weights, offsets).unwrap_err();
        assert!(err.to_string().contains("offsets"), "{offsets:?}: {err}");
    }
    let err = segment_sum(&table, &weights.narrow(0, 0, 3).unwrap(), &[0, 4]).unwrap_err();
    assert!(err.to_string().contains("3 weights"), "{err}");
}
