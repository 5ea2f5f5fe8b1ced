//! `featmux device-bench`: the candle backend's row kernels measured on one
//! device, without the engine or the network around them.
//!
//! For each row width it creates a table of `--rows` rows on the device and
//! times, over batches of `--batch` random rows:
//!
//! - `gather_kernel`: rows → `[batch, dim]` on the device (ids already
//!   uploaded, output left there): the lookup's device work;
//! - `update_kernel`: one optimizer step on unique rows (gradients already
//!   uploaded): the fused optimizer step (`row_ops::optimizer_step`), in-place
//!   scatter back;
//! - `gather_call` / `update_call`: the same through the `Backend` trait,
//!   i.e. with the upload of ids and gradients and the download of rows;
//! - `ids_upload` / `rows_download`: the gather call's two transfers alone
//!   (checking and uploading a batch of row ids; downloading `[batch, dim]`
//!   rows through the backend's reused page-locked buffer), so a call's time
//!   splits into transfers, kernel and the rest.
//!
//! Bytes are the fewest each operation must move through device memory
//! (gather: ids + rows read + rows written; update: ids, gradients, rows and
//! state read, rows and state written), so GB/s compares directly with the
//! device's copy bandwidth, measured in the same run (`copy_gb_per_s`: a
//! device-to-device copy of the table, bytes read plus written). Every timed
//! loop ends with a device synchronize; batches rotate among 8 random sets so
//! no set stays in cache.

use std::time::Instant;

use candle_core::Tensor;
use clap::Args;
use featmux_engine::backend::candle::CandleBackend;
use featmux_engine::backend::row_ops::RowIds;
use featmux_engine::backend::{Backend, BackendKind, GatherPlan, RowGradients, StorageSpec};
use featmux_engine::init::Initializer;
use featmux_server::convert::optimizer_from_pb;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// Options of `featmux device-bench`.
#[derive(Args, Debug)]
pub struct DeviceBenchArgs {
    /// `cuda:N`, or `candle-cpu` to try the tool without a GPU.
    #[arg(long, default_value = "cuda:0")]
    backend: String,
    /// Rows of each table.
    #[arg(long, default_value_t = 10_000_000)]
    rows: u64,
    /// Row widths (chunk_dim) to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "16,64,128")]
    dims: Vec<usize>,
    /// Rows per gather / update.
    #[arg(long, default_value_t = 65_536)]
    batch: usize,
    /// Timed repetitions of each measurement (after 3 untimed ones).
    #[arg(long, default_value_t = 50)]
    repeats: usize,
    /// Optimizer of the update: sgd, adagrad, row-wise-adagrad, adam, ftrl.
    #[arg(long, default_value = "row-wise-adagrad")]
    optimizer: String,
}

const BATCH_SETS: usize = 8;
const WARM_UP: usize = 3;

/// Runs the benchmark and prints one JSON document.
pub fn run(args: DeviceBenchArgs) -> anyhow::Result<()> {
    let kind: BackendKind = args
        .backend
        .parse()
        .map_err(|e| anyhow::anyhow!("--backend: {e}"))?;
    if kind == BackendKind::Cpu {
        anyhow::bail!(
            "--backend cpu: device-bench measures the candle backend; use `cuda:N` or `candle-cpu`"
        );
    }
    let device = kind.candle_device()?;
    if args.batch == 0 || args.repeats == 0 || args.rows < args.batch as u64 {
        return Err(anyhow::anyhow!(
            "--batch and --repeats must be positive and --rows at least --batch"
        ));
    }
    if args.dims.contains(&0) {
        return Err(anyhow::anyhow!("--dims: every row width must be positive"));
    }
    let optimizer = optimizer_from_pb(Some(
        featmux_client::spec::optimizer(&args.optimizer, 0.01).map_err(anyhow::Error::msg)?,
    ));
    let mut results = Vec::new();
    for &dim in &args.dims {
        let spec = StorageSpec {
            rows: args.rows,
            first_row: 0,
            dim,
            seed: 7,
            initializer: Initializer::default(),
            optimizer,
        };
        results.push(measure(&args, &device, spec).map_err(|e| anyhow::anyhow!("dim {dim}: {e}"))?);
        eprintln!("{}", results.last().unwrap());
    }
    let report = json!({
        "backend": args.backend,
        "rows": args.rows,
        "batch": args.batch,
        "repeats": args.repeats,
        "optimizer": args.optimizer,
        "results": results,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("JSON"));
    Ok(())
}

fn measure(
    args: &DeviceBenchArgs,
    device: &candle_core::Device,
    spec: StorageSpec,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let table = CandleBackend::new(spec, device.clone())?;
    device.synchronize()?;
    let create_s = started.elapsed().as_secs_f64();
    let (dim, batch) = (spec.dim, args.batch);
    let state_width = spec.optimizer.state_width(dim);

    let mut rng = StdRng::seed_from_u64(dim as u64);
    let row_sets: Vec<Vec<u64>> = (0..BATCH_SETS)
        .map(|_| unique_random_rows(&mut rng, spec.rows, batch))
        .collect();
    let grad_sets: Vec<Vec<f32>> = (0..BATCH_SETS)
        .map(|_| {
            (0..batch * dim)
                .map(|_| rng.random_range(-0.1..0.1))
                .collect()
        })
        .collect();
    // Lookups come in any order; pushes as sorted unique rows.
    let lookup_sets: Vec<Vec<u64>> = row_sets
        .iter()
        .map(|rows| {
            let mut shuffled = rows.clone();
            shuffled.shuffle(&mut rng);
            shuffled
        })
        .collect();
    let upload = |sets: &[Vec<u64>]| -> candle_core::Result<Vec<RowIds>> {
        sets.iter().map(|rows| table.upload_rows(rows)).collect()
    };
    let (lookup_ids, update_ids) = (upload(&lookup_sets)?, upload(&row_sets)?);
    let grads: Vec<Tensor> = grad_sets
        .iter()
        .map(|g| Tensor::from_slice(g, (batch, dim), device))
        .collect::<Result<_, _>>()?;

    let timed = |f: &mut dyn FnMut(usize) -> Result<(), Box<dyn std::error::Error>>| {
        for i in 0..WARM_UP {
            f(i)?;
        }
        device.synchronize()?;
        let started = Instant::now();
        for i in 0..args.repeats {
            f(i)?;
        }
        device.synchronize()?;
        Ok::<f64, Box<dyn std::error::Error>>(started.elapsed().as_secs_f64() / args.repeats as f64)
    };
    let gather_kernel = timed(&mut |i| {
        table.gather_on_device(&lookup_ids[i % BATCH_SETS])?;
        Ok(())
    })?;
    let update_kernel = timed(&mut |i| {
        table.apply_on_device(&update_ids[i % BATCH_SETS], &grads[i % BATCH_SETS])?;
        Ok(())
    })?;
    let plans: Vec<GatherPlan> = lookup_sets
        .iter()
        .map(|rows| GatherPlan {
            rows: rows.clone(),
            slots: (0..batch as u32).collect(),
            weights: vec![1.0; batch],
            num_slots: batch,
        })
        .collect();
    let gather_call = timed(&mut |i| {
        table.gather(&plans[i % BATCH_SETS])?;
        Ok(())
    })?;
    let updates: Vec<RowGradients> = row_sets
        .iter()
        .zip(grad_sets)
        .map(|(rows, grads)| RowGradients {
            rows: rows.clone(),
            grads,
        })
        .collect();
    let update_call = timed(&mut |i| {
        table.apply(&updates[i % BATCH_SETS])?;
        Ok(())
    })?;
    let copy = timed(&mut |_| {
        table.copy_weights()?;
        Ok(())
    })?;
    // The gather call's two transfers on their own: where its time goes
    // beside the kernel.
    let ids_upload = timed(&mut |i| {
        table.upload_rows(&lookup_sets[i % BATCH_SETS])?;
        Ok(())
    })?;
    let gathered: Vec<Tensor> = lookup_ids
        .iter()
        .map(|ids| table.gather_on_device(ids))
        .collect::<Result<_, _>>()?;
    let rows_download = timed(&mut |i| {
        table.download(&gathered[i % BATCH_SETS])?;
        Ok(())
    })?;

    let row_bytes = (dim * 4) as f64;
    let gather_bytes = batch as f64 * (8.0 + 2.0 * row_bytes);
    let update_bytes = batch as f64 * (8.0 + 3.0 * row_bytes + 2.0 * (state_width * 4) as f64);
    let copy_bytes = 2.0 * spec.rows as f64 * row_bytes;
    let rate = |seconds: f64, bytes: f64| {
        json!({
            "ms": seconds * 1e3,
            "rows_per_s": batch as f64 / seconds,
            "gb_per_s": bytes / seconds / 1e9,
        })
    };
    Ok(json!({
        "dim": dim,
        "state_width": state_width,
        "table_gb": spec.memory_bytes().unwrap_or(0) as f64 / 1e9,
        "create_s": create_s,
        "copy_gb_per_s": copy_bytes / copy / 1e9,
        "gather_kernel": rate(gather_kernel, gather_bytes),
        "update_kernel": rate(update_kernel, update_bytes),
        "gather_call": rate(gather_call, gather_bytes),
        "update_call": rate(update_call, update_bytes),
        "ids_upload": rate(ids_upload, batch as f64 * 8.0),
        "rows_download": rate(rows_download, batch as f64 * row_bytes),
    }))
}

/// `n` distinct rows below `rows`, sorted (what a push's de-duplicated
/// update looks like; a gather takes them as they are).
fn unique_random_rows(rng: &mut StdRng, rows: u64, n: usize) -> Vec<u64> {
    let mut picked = std::collections::BTreeSet::new();
    while picked.len() < n {
        picked.insert(rng.random_range(0..rows));
    }
    picked.into_iter().collect()
}
