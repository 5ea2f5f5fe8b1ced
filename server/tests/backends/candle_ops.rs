//! The candle tensor ops the optimizers are written in (`optimizer_step` in
//! `backend/candle.rs`) must compute the same on the test device as on
//! candle's CPU device, shape by shape: a device kernel that is wrong for
//! one layout (broadcast scalars, per-row broadcasts, row reductions, narrow
//! views) shows up here by name instead of as a diverged table. Every op is
//! checked and all failures are reported together. (This is how candle
//! 0.11's CUDA `sum_keepdim` over rows of 8 floats was seen to return 0 on an
//! H100; the optimizers now use `row_ops::row_mean_square` instead.)

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type Op = fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>;

fn ops() -> Vec<(&'static str, Op)> {
    vec![
        ("sqr", |a, _| a.sqr()),
        ("sqrt(abs)", |a, _| a.abs()?.sqrt()),
        ("broadcast_div by a 0-d scalar", |a, _| {
            a.broadcast_div(&Tensor::new(8f32, a.device())?)
        }),
        ("broadcast_div by a column", |a, _| {
            a.broadcast_div(&(a.narrow(1, 0, 1)?.abs()? + 1.0)?)
        }),
        ("add", |a, b| a + b),
        ("sub", |a, b| a - b),
        ("mul", |a, b| a * b),
        ("div", |a, b| a / (b.abs()? + 1.0)?),
        ("mul by f64", |a, _| a * 0.1),
        ("add f64", |a, _| a + 1e-6),
        ("affine", |a, _| a.affine(-1.0, 1.0)),
        ("exp", |a, _| a.exp()),
        ("neg", |a, _| a.neg()),
        ("sign", |a, _| a.sign()),
        ("le + where_cond", |a, b| {
            a.abs()?.le(0.5)?.where_cond(&a.zeros_like()?, b)
        }),
        ("narrow views, add", |a, b| {
            let d = a.dim(1)? / 2;
            a.narrow(1, 0, d)? + b.narrow(1, d, d)?
        }),
        ("narrow column + 1, exp", |a, _| {
            (a.narrow(1, a.dim(1)? - 1, 1)? + 1.0)?.exp()
        }),
        ("cat(1)", |a, b| {
            Tensor::cat(&[a, b, &a.narrow(1, 0, 1)?], 1)
        }),
    ]
}

#[test]
fn the_optimizers_tensor_ops_agree_with_candles_cpu_device() {
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
        let on = |dev: &Device| {
            (
                Tensor::from_slice(&a, (rows, cols), dev).unwrap(),
                Tensor::from_slice(&b, (rows, cols), dev).unwrap(),
            )
        };
        let (cpu_a, cpu_b) = on(&Device::Cpu);
        let (dev_a, dev_b) = on(&device);
        for (name, op) in ops() {
            let want = op(&cpu_a, &cpu_b).unwrap();
            let got = match op(&dev_a, &dev_b) {
                Ok(t) => t,
                Err(e) => {
                    failures.push(format!("{name} [{rows}, {cols}]: error {e}"));
                    continue;
                }
            };
            if got.dims() != want.dims() {
                failures.push(format!(
                    "{name} [{rows}, {cols}]: shape {:?} vs {:?}",
                    got.dims(),
                    want.dims()
                ));
                continue;
            }
            let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            if let Some((i, (x, y))) = want.iter().zip(&got).enumerate().find(|(_, (x, y))| {
                (*x - *y).abs() > 1e-6 * x.abs().max(y.abs()).max(1.0) || x.is_nan() != y.is_nan()
            }) {
                failures.push(format!(
                    "{name} [{rows}, {cols}]: [{i}] cpu {x} vs device {y}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
