//! The `featmux` command. Until the network service lands, it runs the
//! engine's demo: a unified table trained in-process on synthetic clicks.

mod demo;

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
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
