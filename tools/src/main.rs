//! `featmux-report`: builds the committed result documents (markdown and
//! PNG) from the JSON that the benchmark and experiment scripts write, so a
//! report is always regenerated from one run's raw figures, never edited by
//! hand.

mod movielens;
mod performance;
mod plot;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "featmux-report",
    about = "Reports from featmux benchmark results"
)]
struct Cli {
    /// TrueType font for the plots' text.
    #[arg(long, global = true, default_value_os_t = performance::default_font())]
    font: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// `docs/results/performance.md` and its scaling plot from a folder of
    /// `scripts/bench-peers.sh` results.
    Performance {
        /// The run's results folder.
        #[arg(long)]
        results: PathBuf,
        /// An earlier run's results folder, shown as "before".
        #[arg(long)]
        before: Option<PathBuf>,
        #[arg(long, default_value = "docs/results/performance.md")]
        out: PathBuf,
        #[arg(long, default_value = "docs/results/performance.png")]
        plot: PathBuf,
    },
    /// `docs/results/movielens.md` and its plot from a folder of
    /// `scripts/experiment-movielens.sh` results.
    Movielens {
        #[arg(long)]
        results: PathBuf,
        #[arg(long, default_value = "docs/results/movielens.md")]
        out: PathBuf,
        #[arg(long, default_value = "docs/results/movielens.png")]
        plot: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = plot::load_font(&cli.font).and_then(|()| match cli.command {
        Command::Performance {
            results,
            before,
            out,
            plot,
        } => performance::write(&results, before.as_deref(), &out, &plot),
        Command::Movielens { results, out, plot } => movielens::write(&results, &out, &plot),
    });
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
