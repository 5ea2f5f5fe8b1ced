//! The `featmux` command, one executable for everything: the server
//! (`serve`), the admin and data CLI over gRPC (tables, features, lookups,
//! explain, checkpoints, stats), `migrate`, and the lab's tools (`bench`,
//! `train`, `dataset`, `device-bench`, `demo`).
//!
//! # Layout
//!
//! - this file: the command line and dispatch;
//! - [`allocator`]: glibc malloc settings, made before anything runs;
//! - [`connection`]: the global flags that say how to reach a server;
//! - [`commands`]: the admin and data commands, one file per group;
//! - [`wire`]: the protobuf conversions only the CLI needs;
//! - [`migrate`]: `featmux migrate`.

mod allocator;
mod commands;
mod connection;
mod migrate;
mod wire;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use featmux_lab::{demo, device_bench, loadgen, trainer};
use featmux_server::config::{ServeArgs, ServerConfig};

#[derive(Parser)]
#[command(
    name = "featmux",
    version,
    about = "One shared embedding table for many categorical features"
)]
struct Cli {
    #[command(flatten)]
    connection: connection::Connection,
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
    /// sizes, positives and each feature's vocabulary; `--export DIR` also
    /// writes the split's examples as JSON lines.
    Dataset(trainer::DatasetArgs),
    /// Train a model on a CSV/TSV through featmux: embeddings in a table of
    /// the chosen layout (sparse optimizer in the server), an MLP here;
    /// AUC and log loss on validation and test, as JSON.
    Train(trainer::TrainArgs),
    #[command(flatten)]
    Client(commands::ClientCommand),
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = ServerConfig::load(&args)?;
    featmux_server::logging::init(config.log_format, &config.log_level);
    runtime()?.block_on(featmux_server::serve(config))?;
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let json = cli.connection.json;
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Demo(args) => Ok(demo::run(args)?),
        Command::DeviceBench(args) => device_bench::run(args),
        Command::Migrate { data_dir } => migrate::run(&data_dir),
        Command::Bench(args) => {
            let options = cli.connection.client_options()?;
            runtime()?.block_on(loadgen::run(options, json, args))
        }
        Command::Dataset(args) => trainer::describe(&args, json),
        Command::Train(args) => {
            let options = cli.connection.client_options()?;
            runtime()?.block_on(trainer::train(options, args))
        }
        Command::Client(command) => runtime()?.block_on(commands::run(cli.connection, command)),
    }
}

fn main() {
    allocator::keep_more_freed_chunks_per_thread();
    allocator::keep_large_allocations_on_the_heap();
    if let Err(e) = run(Cli::parse()) {
        // `{:#}`: the whole context chain on one line, outermost first.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
