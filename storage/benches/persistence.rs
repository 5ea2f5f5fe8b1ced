//! Persistence benchmark: flush rate and recovery load rate for 10^6 touched
//! rows × 16 dims with row-wise Adagrad state (docs/DESIGN.md, "Storage"),
//! what restoring that table from a checkpoint takes (time, and the peak
//! memory it adds beside the table it replaces), and what
//! `storage.sync_flushes` costs a small flush.
//!
//!     cargo bench -p featmux-storage --bench persistence
//!
//! Each flush/recovery takes seconds, so this is a plain timed harness (three
//! runs, median reported) rather than criterion's many-sample loop. Bytes are
//! key + value bytes handed to RocksDB (weights 64 B + state 4 B + 2 keys).

use std::time::{Duration, Instant};

use featmux_engine::optimizer::Optimizer;
use featmux_engine::schema::TableSpec;
use featmux_storage::catalog::{Catalog, CatalogOptions};

const TOUCHED: u64 = 1_000_000;
const DIM: usize = 16;
const RUNS: usize = 3;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let options = CatalogOptions {
        // Only the explicit flushes below write rows.
        flush_interval: Duration::from_secs(3600),
        max_dirty_rows: usize::MAX,
        ..CatalogOptions::default()
    };
    let spec = TableSpec {
        optimizer: Optimizer::RowWiseAdagrad {
            lr: 0.01,
            eps: 1e-8,
            initial_accumulator: 0.0,
        },
        ..TableSpec::new("bench", 2 * TOUCHED, DIM)
    };
    let touched: Vec<u64> = (0..TOUCHED).map(|i| i * 2).collect();

    let mut flushes = Vec::new();
    let mut bytes = 0;
    {
        let (catalog, _) = Catalog::open(dir.path(), options).unwrap();
        let table = catalog.create_table(spec.clone(), Vec::new()).unwrap();
        for _ in 0..RUNS {
            table.dirty().mark(&touched);
            let started = Instant::now();
            let report = catalog.flush().unwrap();
            flushes.push(started.elapsed());
            assert_eq!(report.rows, TOUCHED);
            bytes = report.bytes;
        }
        catalog.close().unwrap();
    }
    let mut loads = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let (catalog, report) = Catalog::open(dir.path(), options).unwrap();
        loads.push(started.elapsed());
        assert_eq!(report.rows_loaded, TOUCHED);
        drop(catalog);
    }
    let rate = |d: Duration| {
        (
            TOUCHED as f64 / d.as_secs_f64() / 1e6,
            bytes as f64 / d.as_secs_f64() / 1e6,
        )
    };
    let (flush, load) = (median(flushes), median(loads));
    let (flush_rows, flush_mb) = rate(flush);
    let (load_rows, load_mb) = rate(load);
    println!("persistence: {TOUCHED} touched rows x {DIM} dims, row-wise Adagrad, {bytes} bytes per pass");
    println!(
        "flush:    {flush:>10.2?}  {flush_rows:.2} M rows/s  {flush_mb:.0} MB/s (median of {RUNS})"
    );
    println!("recovery: {load:>10.2?}  {load_rows:.2} M rows/s  {load_mb:.0} MB/s (open + bulk load, median of {RUNS})");
    restore(dir.path(), options, &spec);
    small_flushes(options, &spec);
}

/// Resident and peak resident memory of this process, in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Restores the table in place from a checkpoint: the time, and how far the
/// peak resident memory rose above what the process held before (the new
/// table is built beside the old one; the rows stream to RocksDB in bounded
/// writes rather than one batch as big as the table).
fn restore(dir: &std::path::Path, options: CatalogOptions, spec: &TableSpec) {
    let (catalog, _) = Catalog::open(dir, options).unwrap();
    let checkpoint = catalog.create_checkpoint().unwrap();
    // Linux: resets the peak (VmHWM) to the current resident size.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let (resident, _) = memory();
    let started = Instant::now();
    catalog
        .restore_checkpoint(checkpoint.id, &spec.name, None)
        .unwrap();
    let took = started.elapsed();
    let (_, peak) = memory();
    let table_mb = spec.memory_bytes().unwrap() as f64 / 1e6;
    println!(
        "restore:  {took:>10.2?}  {:.2} M rows/s; peak memory +{:.0} MB over the {table_mb:.0} MB table it replaces",
        TOUCHED as f64 / took.as_secs_f64() / 1e6,
        peak.saturating_sub(resident) as f64 / 1e6,
    );
    catalog.close().unwrap();
}

/// What `storage.sync_flushes` costs: the median of many flushes of a few
/// rows (what a once-a-second flush of a light load writes), with and
/// without waiting for the disk.
fn small_flushes(options: CatalogOptions, spec: &TableSpec) {
    const ROWS: u64 = 1000;
    const FLUSHES: usize = 50;
    let rows: Vec<u64> = (0..ROWS).map(|i| i * 7).collect();
    let mut medians = Vec::new();
    for sync_flushes in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let options = CatalogOptions {
            sync_flushes,
            ..options
        };
        let (catalog, _) = Catalog::open(dir.path(), options).unwrap();
        let table = catalog.create_table(spec.clone(), Vec::new()).unwrap();
        let samples = (0..FLUSHES)
            .map(|_| {
                table.dirty().mark(&rows);
                let started = Instant::now();
                catalog.flush().unwrap();
                started.elapsed()
            })
            .collect();
        medians.push(median(samples));
        catalog.close().unwrap();
    }
    println!(
        "flush of {ROWS} rows: {:>10.2?} without sync, {:>10.2?} with sync_flushes (median of {FLUSHES})",
        medians[0], medians[1]
    );
}
