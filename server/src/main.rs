//! The `featmux` command. Until the network service lands it offers the
//! engine's demo (a unified table trained in-process on synthetic clicks)
//! and `migrate`, which brings a data directory's RocksDB layout up to date.

mod demo;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "featmux",
    version,
    about = "One shared embedding table for many categorical features"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a unified table in-process on synthetic click data and report
    /// creation time, lookup/push throughput and the falling log loss.
    Demo(demo::DemoArgs),
    /// Apply pending migrations to a data directory's database and print
    /// what was done (the server also runs them at start-up).
    Migrate {
        /// The data directory (its database lives in `<data-dir>/db`).
        #[arg(long, default_value = "./featmux-data")]
        data_dir: PathBuf,
    },
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

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args).map_err(|e| e.to_string()),
        Command::Migrate { data_dir } => migrate(data_dir).map_err(|e| e.to_string()),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
