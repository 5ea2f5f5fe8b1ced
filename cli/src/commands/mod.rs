//! The admin and data commands: thin wrappers over the Rust client (gRPC).
//! Output is short text for people, or JSON with `--json` (the same shapes
//! as the HTTP API) for scripts. One file per command group.

mod checkpoint;
mod data;
mod output;
mod stats;
mod table;

use clap::Subcommand;
use featmux_client::Client;

use crate::connection::Connection;
pub use checkpoint::CheckpointCommand;
pub use table::{FeatureCommand, TableCommand};

/// Client commands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create, list, show or drop tables.
    #[command(subcommand)]
    Table(TableCommand),
    /// Add features to a table.
    #[command(subcommand)]
    Feature(FeatureCommand),
    /// Look up examples given as JSON objects `{feature: value | [values]}`.
    Lookup {
        table: String,
        #[arg(required = true)]
        examples: Vec<String>,
    },
    /// Show the row of every chunk of `feature=value` pairs (collisions).
    Explain {
        table: String,
        #[arg(required = true)]
        values: Vec<String>,
    },
    /// Create, list, restore or delete checkpoints.
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
    /// Server-wide counters and every table.
    Stats,
}

/// Runs a client command.
pub async fn run(connection: Connection, command: ClientCommand) -> anyhow::Result<()> {
    let mut options = connection.client_options()?;
    // A person is waiting: fail fast rather than retry for seconds.
    options.retries = 2;
    let client = Client::connect(options).await?;
    let json = connection.json;
    match command {
        ClientCommand::Table(command) => table::run(&client, command, json).await,
        ClientCommand::Feature(command) => table::run_feature(&client, command, json).await,
        ClientCommand::Lookup { table, examples } => {
            data::lookup(&client, &table, &examples, json).await
        }
        ClientCommand::Explain { table, values } => {
            data::explain(&client, &table, &values, json).await
        }
        ClientCommand::Checkpoint(command) => checkpoint::run(&client, command, json).await,
        ClientCommand::Stats => stats::run(&client, json).await,
    }
}
