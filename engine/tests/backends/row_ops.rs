//! The candle backend's row kernels against plain loops, on random data, on
//! the test device (CPU by default, a GPU under `scripts/gpu-check.sh`):
//! widths with and without the 16-byte path, inputs at odd offsets, empty
//! and crowded pooling segments; the fused optimizer step against
//! `Optimizer::step` for every optimizer at widths below, at and past one
//! warp's lanes.

use candle_core::{DType, Device, Tensor};
use featmux_engine::backend::row_ops::{
    gather_rows, optimizer_step, scatter_rows, segment_sum, RowIds,
};
use featmux_engine::backend::GatherPlan;
use featmux_engine::optimizer::Optimizer;
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

/// One optimizer of each kind, with hyper-parameters under which a gradient
/// of `f32::MAX` overflows every one of them.
fn every_optimizer() -> Vec<Optimizer> {
    vec![
        Optimizer::Sgd { lr: 2.0 },
        Optimizer::Adagrad {
            lr: 0.1,
            eps: 1e-8,
            initial_accumulator: 0.1,
        },
        Optimizer::RowWiseAdagrad {
            lr: 0.1,
            eps: 1e-8,
            initial_accumulator: 0.0,
        },
        Optimizer::Adam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
        Optimizer::Ftrl {
            alpha: 0.1,
            beta: 1.0,
            l1: 0.05,
            l2: 0.01,
            initial_accumulator: 0.1,
        },
    ]
}

/// `got` within 1e-6 relative of `want`: equal on the CPU device (the op
/// runs `Optimizer::step` there); on a GPU only row-wise Adagrad's sum of
/// squares is added up in another order.
fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-6 * w.abs().max(1e-3),
            "{what}: element {i} is {g}, Optimizer::step gives {w}"
        );
    }
}

#[test]
fn optimizer_step_matches_the_reference_step_row_by_row() {
    let device = super::device::candle_device();
    let mut rng = StdRng::seed_from_u64(6);
    let rows = 500;
    for optimizer in every_optimizer() {
        // Widths below, at and past a warp's 32 lanes of 4 floats, and odd.
        for d in [1, 3, 4, 8, 16, 17, 64, 200] {
            let what = format!("{} at width {d}", optimizer.name());
            let sw = optimizer.state_width(d);
            let mut w_host = random_floats(&mut rng, rows * d);
            let mut s_host = optimizer.initial_state(d).repeat(rows);
            let w_table = Tensor::from_vec(w_host.clone(), (rows, d), &device).unwrap();
            let s_table =
                (sw > 0).then(|| Tensor::from_vec(s_host.clone(), (rows, sw), &device).unwrap());
            // Two rounds, so the second starts from state the first wrote.
            for _ in 0..2 {
                let mut picked: Vec<u64> =
                    (0..rows as u64).filter(|_| rng.random_bool(0.6)).collect();
                picked.reverse();
                let grads = random_floats(&mut rng, picked.len() * d);
                let g = Tensor::from_vec(grads.clone(), (picked.len(), d), &device).unwrap();
                let ids = ids(&device, &picked, rows);
                let step =
                    optimizer_step(&optimizer, &w_table, s_table.as_ref(), &ids, &g).unwrap();
                assert_eq!(step.first_non_finite, None, "{what}");
                let (mut want_w, mut want_s) = (Vec::new(), Vec::new());
                for (i, &r) in picked.iter().enumerate() {
                    let (mut w, mut s) =
                        (row(&w_host, r, d).to_vec(), row(&s_host, r, sw).to_vec());
                    optimizer.step(&mut w, &mut s, &grads[i * d..(i + 1) * d]);
                    want_w.extend_from_slice(&w);
                    want_s.extend_from_slice(&s);
                }
                assert_close(&to_host(&step.weights), &want_w, &what);
                match (&step.state, &s_table) {
                    (Some(state), Some(table)) => {
                        assert_close(&to_host(state), &want_s, &format!("{what}, state"));
                        scatter_rows(table, &ids, state).unwrap();
                    }
                    (None, None) => {}
                    _ => panic!("{what}: state returned for a table without (or the reverse)"),
                }
                scatter_rows(&w_table, &ids, &step.weights).unwrap();
                for (i, &r) in picked.iter().enumerate() {
                    let r = r as usize;
                    w_host[r * d..(r + 1) * d].copy_from_slice(&want_w[i * d..(i + 1) * d]);
                    s_host[r * sw..(r + 1) * sw].copy_from_slice(&want_s[i * sw..(i + 1) * sw]);
                }
            }
        }
    }
}

#[test]
fn optimizer_step_names_the_first_row_that_would_overflow() {
    let device = super::device::candle_device();
    let (rows, d) = (64, 16);
    let picked: Vec<u64> = (0..40).collect();
    for optimizer in every_optimizer() {
        let sw = optimizer.state_width(d);
        let w_table = Tensor::ones((rows, d), DType::F32, &device).unwrap();
        let s_table = (sw > 0).then(|| {
            let initial = optimizer.initial_state(d).repeat(rows);
            Tensor::from_vec(initial, (rows, sw), &device).unwrap()
        });
        let mut grads = vec![0.5f32; picked.len() * d];
        // Rows 33 and 7 (in that order of ids) get a gradient that overflows.
        grads[33 * d + 3] = f32::MAX;
        grads[7 * d + d - 1] = f32::MAX;
        let g = Tensor::from_vec(grads, (picked.len(), d), &device).unwrap();
        let ids = ids(&device, &picked, rows);
        let step = optimizer_step(&optimizer, &w_table, s_table.as_ref(), &ids, &g).unwrap();
        assert_eq!(step.first_non_finite, Some(7), "{}", optimizer.name());
        // The tables themselves are untouched: the step only computes.
        assert!(
            to_host(&w_table).iter().all(|&x| x == 1.0),
            "{}",
            optimizer.name()
        );
    }
}

#[test]
fn optimizer_step_refuses_mismatched_gradients_and_state() {
    let device = super::device::candle_device();
    let optimizer = Optimizer::RowWiseAdagrad {
        lr: 0.1,
        eps: 1e-8,
        initial_accumulator: 0.0,
    };
    let table = Tensor::zeros((4, 8), DType::F32, &device).unwrap();
    let state = Tensor::zeros((4, 1), DType::F32, &device).unwrap();
    let two = ids(&device, &[0, 1], 4);
    let grads = Tensor::zeros((3, 8), DType::F32, &device).unwrap();
    let err = optimizer_step(&optimizer, &table, Some(&state), &two, &grads).unwrap_err();
    assert!(err.to_string().contains("gradients for 2 ids"), "{err}");
    let grads = Tensor::zeros((2, 8), DType::F32, &device).unwrap();
    let err = optimizer_step(&optimizer, &table, None, &two, &grads).unwrap_err();
    assert!(err.to_string().contains("needs its state"), "{err}");
    let wide = Tensor::zeros((4, 2), DType::F32, &device).unwrap();
    let err = optimizer_step(&optimizer, &table, Some(&wide), &two, &grads).unwrap_err();
    assert!(err.to_string().contains("state rows of 2 floats"), "{err}");
    // An empty step is no step: no rows, nothing to write back.
    let none = ids(&device, &[], 4);
    let empty = Tensor::zeros((0, 8), DType::F32, &device).unwrap();
    let step = optimizer_step(&optimizer, &table, Some(&state), &none, &empty).unwrap();
    assert_eq!(
        (step.weights.dims(), step.first_non_finite),
        (&[0, 8][..], None)
    );
    assert_eq!(step.state.unwrap().dims(), [0, 1]);
    let short = Tensor::zeros((3, 1), DType::F32, &device).unwrap();
    let err = optimizer_step(
        &optimizer,
        &table,
        Some(&short),
        &ids(&device, &[0], 4),
        &grads.narrow(0, 0, 1).unwrap(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("the table has 3"), "{err}");
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
