//! Crash-test worker: opens a catalog (running recovery), then pushes the
//! crash workload as fast as it can, printing one line per event:
//!
//! - `ready <version>`: recovery finished; pushes of this run get versions
//!   `version + 1`, `version + 2`, … (past every version an earlier run
//!   handed out, even one killed before it flushed them);
//! - `ack <i> <version>`: push `i` of this run was acknowledged with
//!   training version `version`;
//! - `flushed <version>`: a flush covering every push up to `version` completed.
//!
//! A line `stop` on stdin asks for a graceful shutdown (`Catalog::close`),
//! after which it prints `closed` and exits 0.
//!
//! usage: `crash_worker <data-dir> <round> <flush-interval-ms>`

use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use featmux_storage::catalog::{Catalog, CatalogError, CatalogOptions};
use featmux_tests::crash;

fn main() -> Result<(), CatalogError> {
    let args: Vec<String> = std::env::args().collect();
    let data_dir = std::path::PathBuf::from(&args[1]);
    let round: u64 = args[2].parse().expect("round");
    let interval = Duration::from_millis(args[3].parse().expect("flush interval"));
    let options = CatalogOptions {
        flush_interval: interval,
        ..CatalogOptions::default()
    };
    let (catalog, _) = Catalog::open(&data_dir, options)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_reader = stop.clone();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if line.is_ok_and(|l| l.trim() == "stop") {
                stop_reader.store(true, Ordering::Release);
            }
        }
    });
    println!("ready {}", catalog.version());
    let mut flushed = catalog
        .flush_stats()
        .flushed_version
        .load(Ordering::Acquire);
    let mut i = 0u64;
    while !stop.load(Ordering::Acquire) {
        let (batch, grads) = crash::push(round, i);
        let (_, version) = catalog.push(crash::TABLE, &batch, &grads)?;
        println!("ack {i} {version}");
        let now = catalog
            .flush_stats()
            .flushed_version
            .load(Ordering::Acquire);
        if now != flushed {
            flushed = now;
            println!("flushed {now}");
        }
        i += 1;
    }
    catalog.close()?;
    println!("closed");
    Ok(())
}
