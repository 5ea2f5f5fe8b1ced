//! `featmux table …` and `featmux feature add`: table configuration.

use clap::Subcommand;
use featmux_client::spec::{feature, optimizer};
use featmux_client::{pb, Client};
use featmux_engine::occupancy::OccupancyReport;
use featmux_server::api::TableInfo;
use serde_json::json;

use super::output::{print_table, print_table_pb};
use crate::wire::{self, table_info_from_pb};

#[derive(Debug, Subcommand)]
pub enum TableCommand {
    /// Create a table.
    Create {
        name: String,
        /// Rows (hash buckets) of the shared table.
        #[arg(long)]
        rows: u64,
        /// Floats per row.
        #[arg(long)]
        chunk_dim: u32,
        /// Seed of hashing and initialisation.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// sgd, adagrad, row-wise-adagrad, adam or ftrl.
        #[arg(long, default_value = "row-wise-adagrad")]
        optimizer: String,
        /// Learning rate (FTRL's alpha).
        #[arg(long, default_value_t = 0.05)]
        lr: f32,
        /// Clamp each element of a row's summed gradient to [-C, C] before
        /// the optimizer step (FBGEMM's max_gradient); default: no clipping.
        #[arg(long, value_name = "C")]
        max_abs_gradient: Option<f32>,
        /// A feature: `name[:chunks=N,type=string|int64,pooling=sum|mean|sqrtn|none,rows=N,offset=N]`
        /// (`rows` makes it a private slice instead of shared).
        #[arg(long = "feature")]
        features: Vec<String>,
    },
    /// List tables.
    List,
    /// Show a table's configuration and features.
    Show { name: String },
    /// Drop a table and its stored rows.
    Drop { name: String },
    /// How crowded a table is: distinct values, occupied rows, collisions
    /// against uniform hashing, traffic on rows features share.
    Occupancy { name: String },
}

#[derive(Debug, Subcommand)]
pub enum FeatureCommand {
    /// Add features (same syntax as `table create --feature`).
    Add {
        table: String,
        #[arg(required = true)]
        features: Vec<String>,
    },
}

fn feature_configs(specs: &[String]) -> anyhow::Result<Vec<pb::FeatureConfig>> {
    specs
        .iter()
        .map(|f| feature(f).map_err(anyhow::Error::msg))
        .collect()
}

pub async fn run(client: &Client, command: TableCommand, json: bool) -> anyhow::Result<()> {
    match command {
        TableCommand::Create {
            name,
            rows,
            chunk_dim,
            seed,
            optimizer: kind,
            lr,
            max_abs_gradient,
            features,
        } => {
            let config = pb::TableConfig {
                name,
                rows,
                chunk_dim,
                seed,
                initializer: None,
                optimizer: Some(optimizer(&kind, lr).map_err(anyhow::Error::msg)?),
                max_abs_gradient,
            };
            let info = client
                .create_table(config, feature_configs(&features)?)
                .await?;
            print_table_pb(info, json)?;
        }
        TableCommand::List => {
            let tables: Vec<TableInfo> = client
                .list_tables()
                .await?
                .into_iter()
                .map(table_info_from_pb)
                .collect::<anyhow::Result<_>>()?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "tables": tables }))
                        .expect("serialisable")
                );
            } else {
                for t in &tables {
                    print_table(t, false);
                }
            }
        }
        TableCommand::Show { name } => print_table_pb(client.get_table(&name).await?, json)?,
        TableCommand::Occupancy { name } => {
            let occupancy = wire::occupancy_from_pb(client.occupancy(&name).await?);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&occupancy).expect("serialisable")
                );
            } else {
                print_occupancy(&name, &occupancy);
            }
        }
        TableCommand::Drop { name } => {
            client.drop_table(&name).await?;
            if json {
                println!("{}", json!({ "dropped": name }));
            } else {
                println!("dropped {name}");
            }
        }
    }
    Ok(())
}

/// The occupancy report as a few lines for a person.
fn print_occupancy(name: &str, o: &OccupancyReport) {
    let percent = |x: f64| 100.0 * x;
    println!(
        "table {name}: {} rows, {} occupied ({:.1} %; uniform hashing predicts {:.1} %), {} \
         shared by two or more features",
        o.rows,
        o.occupied_rows,
        percent(o.occupied_rows as f64 / o.rows.max(1) as f64),
        percent(o.expected_occupied_rows / o.rows.max(1) as f64),
        o.shared_rows
    );
    println!(
        "  {:.0} distinct values, {:.0} (value, chunk) items; collision rate {:.1} % \
         (expected {:.1} %); counts ±{:.1} % (1σ), from {} batches (1 in {} observed)",
        o.distinct_values,
        o.items,
        percent(o.collision_rate),
        percent(o.expected_collision_rate),
        percent(o.relative_error),
        o.batches,
        o.sample_every
    );
    let histogram: Vec<String> = o
        .items_per_row
        .iter()
        .enumerate()
        .map(|(k, rows)| {
            let last = k + 1 == o.items_per_row.len();
            format!("{k}{}: {rows}", if last { "+" } else { "" })
        })
        .collect();
    println!("  items per row: {}", histogram.join(", "));
    println!(
        "  {:<20} {:>12} {:>12} {:>22} {:>14}",
        "feature", "values", "rows", "collisions (expected)", "shared traffic"
    );
    for f in &o.features {
        println!(
            "  {:<20} {:>12.0} {:>12.0} {:>11.1} % ({:>5.1} %) {:>12.1} %",
            f.feature,
            f.distinct_values,
            f.rows,
            percent(f.collision_rate),
            percent(f.expected_collision_rate),
            percent(f.shared_traffic)
        );
    }
}

pub async fn run_feature(
    client: &Client,
    command: FeatureCommand,
    json: bool,
) -> anyhow::Result<()> {
    let FeatureCommand::Add { table, features } = command;
    let info = client
        .add_features(&table, feature_configs(&features)?)
        .await?;
    print_table_pb(info, json)
}
