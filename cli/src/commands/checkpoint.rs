//! `featmux checkpoint …`: create, list, restore and delete checkpoints.

use clap::Subcommand;
use featmux_client::{pb, Client};
use serde_json::{json, Value};

use super::output::print_table_pb;

#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Flush and checkpoint the database.
    Create,
    /// List checkpoints.
    List,
    /// Restore a table from a checkpoint.
    Restore {
        id: u64,
        #[arg(long)]
        table: String,
        /// Restore under this name instead of replacing the table.
        #[arg(long)]
        into: Option<String>,
    },
    /// Delete a checkpoint.
    Delete { id: u64 },
}

fn checkpoint_json(c: &pb::Checkpoint) -> Value {
    json!({
        "id": c.id,
        "version": c.version,
        "created_unix_ms": c.created_unix_ms,
        "tables": c.tables,
    })
}

fn print_checkpoint(c: &pb::Checkpoint) {
    println!(
        "checkpoint {} at version {} ({:?})",
        c.id, c.version, c.tables
    );
}

pub async fn run(client: &Client, command: CheckpointCommand, json: bool) -> anyhow::Result<()> {
    match command {
        CheckpointCommand::Create => {
            let c = client.create_checkpoint().await?;
            if json {
                println!("{}", checkpoint_json(&c));
            } else {
                print_checkpoint(&c);
            }
        }
        CheckpointCommand::List => {
            let list = client.list_checkpoints().await?;
            if json {
                let list: Vec<Value> = list.iter().map(checkpoint_json).collect();
                println!("{}", json!({ "checkpoints": list }));
            } else {
                list.iter().for_each(print_checkpoint);
            }
        }
        CheckpointCommand::Restore { id, table, into } => {
            let info = client
                .restore_checkpoint(id, &table, into.as_deref())
                .await?;
            print_table_pb(info, json)?;
        }
        CheckpointCommand::Delete { id } => {
            client.delete_checkpoint(id).await?;
            if json {
                println!("{}", json!({ "deleted": id }));
            } else {
                println!("deleted checkpoint {id}");
            }
        }
    }
    Ok(())
}
