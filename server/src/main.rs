//! The `featmux` command: the server (`serve`), the client CLI (tables,
//! features, lookups, explain, checkpoints, stats), the load generator
//! (`bench`), the device benchmark (`device-bench`), the trainer (`train`,
//! `dataset`), the in-process engine demo, and `migrate`.

mod cli;
mod demo;
mod device_bench;
mod in_process;
mod loadgen;
mod trainer;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use featmux::service::config::{ServeArgs, ServerConfig};

#[derive(Parser)]
#[command(
    name = "featmux",
    version,
    about = "One shared embedding table for many categorical features"
)]
struct Cli {
    #[command(flatten)]
    connection: cli::Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: gRPC for trainers, HTTP for serving and admin.
    Serve(ServeArgs),
    /// Train a unified table in-process on synthetic click data and report
    /// creation time, lookup/push throughput and the falling log loss.
    Demo(demo::DemoArgs),
    /// Measure the candle backend's row kernels on one device (a GPU):
    /// gather and optimizer-update rows/s and GB/s, as JSON.
    DeviceBench(device_bench::DeviceBenchArgs),
    /// Apply pending migrations to a data directory's database and print
    /// what was done (the server also runs them at start-up).
    Migrate {
        /// The data directory (its database lives in `<data-dir>/db`).
        #[arg(long, default_value = "./featmux-data")]
        data_dir: PathBuf,
    },
    /// Load generator: gRPC lookup / push / train-stream or HTTP lookup
    /// traffic against a running server; throughput and latency percentiles.
    Bench(loadgen::BenchArgs),
    /// Read a CSV/TSV of events as training would (label rule, categorical,
    /// multi-valued and bucketized numeric columns, split) and print split
    /// sizes, positives and each feature's vocabulary.
    Dataset(trainer::DataArgs),
    /// Train a model on a CSV/TSV through featmux: embeddings in a table of
    /// the chosen layout (sparse optimizer in the server), an MLP here;
    /// AUC and log loss on validation and test, as JSON.
    Train(trainer::TrainArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

fn migrate(data_dir: PathBuf) -> Result<(), featmux::store::StoreError> {
    let db = data_dir.join("db");
    let (store, applied) = featmux::store::Store::open(
        &db,
        featmux::store::StoreOptions::default(),
        featmux_migrations::MIGRATIONS,
    )?;
    for step in &applied {
        println!("applied migration {}: {}", step.version, step.description);
    }
    let version = featmux_migrations::MIGRATIONS
        .last()
        .map_or(0, |m| m.version);
    if applied.is_empty() {
        println!(
            "{} is up to date (schema version {version})",
            store.path().display()
        );
    } else {
        println!(
            "{} is now at schema version {version}",
            store.path().display()
        );
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let config = ServerConfig::load(&args).map_err(|e| e.to_string())?;
    featmux::service::logging::init(config.log_format, &config.log_level);
    runtime()
        .block_on(featmux::service::serve(config))
        .map_err(|e| e.to_string())
}

/// Keeps large allocations on the reusable heap. A lookup's output and a
/// push's gradients are megabytes; above glibc's default threshold each one
/// is a fresh mmap, so every request page-faulted its buffers in and unmapped
/// them again (a quarter of the in-process lookup time). 32 MiB is glibc's
/// largest allowed threshold.
fn keep_large_allocations_on_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}

fn main() {
    keep_large_allocations_on_the_heap();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Demo(args) => demo::run(args).map_err(|e| e.to_string()),
        Command::DeviceBench(args) => device_bench::run(args),
        Command::Migrate { data_dir } => migrate(data_dir).map_err(|e| e.to_string()),
        Command::Bench(args) => runtime().block_on(loadgen::run(cli.connection, args)),
        Command::Dataset(args) => trainer::describe(&args, cli.connection.json),
        Command::Train(args) => runtime().block_on(trainer::train(cli.connection, args)),
        Command::Client(command) => runtime().block_on(cli::run(cli.connection, command)),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
