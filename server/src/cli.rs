//! The `featmux` admin and data CLI: thin commands over the Rust client
//! (gRPC). Output is short text for people, or JSON with `--json` (the
//! same shapes as the HTTP API) for scripts.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use featmux::service::api::{FeatureInfo, TableInfo};
use featmux::service::{convert, examples};
use featmux_client::{pb, BatchBuilder, Client, ClientOptions};
use serde_json::{json, Value};

/// How to reach the server (shared by every client command).
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Server gRPC endpoint.
    #[arg(
        long,
        global = true,
        env = "FEATMUX_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub addr: String,
    /// Bearer token (admin token for admin commands).
    #[arg(long, global = true, env = "FEATMUX_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificate for an https endpoint with a private CA.
    #[arg(long, global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

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

type CliResult = Result<(), String>;

/// Parses an optimizer name (`sgd`, `adagrad`, `row-wise-adagrad`, `adam`,
/// `ftrl`) with its learning rate; shared by `table create` and `bench`.
pub fn optimizer(kind: &str, lr: f32) -> Result<pb::Optimizer, String> {
    use pb::optimizer::Kind;
    let adagrad = pb::Adagrad {
        lr,
        eps: 1e-8,
        initial_accumulator: 0.0,
    };
    let kind = match kind {
        "sgd" => Kind::Sgd(pb::Sgd { lr }),
        "adagrad" => Kind::Adagrad(adagrad),
        "row-wise-adagrad" => Kind::RowWiseAdagrad(adagrad),
        "adam" => Kind::Adam(pb::Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }),
        "ftrl" => Kind::Ftrl(pb::Ftrl {
            alpha: lr,
            beta: 1.0,
            l1: 0.0,
            l2: 0.0,
            initial_accumulator: 0.0,
        }),
        other => {
            return Err(format!(
                "--optimizer {other}: expected sgd, adagrad, row-wise-adagrad, adam or ftrl"
            ))
        }
    };
    Ok(pb::Optimizer { kind: Some(kind) })
}

/// Parses `name[:key=value,...]`.
pub fn feature(spec: &str) -> Result<pb::FeatureConfig, String> {
    let (name, options) = spec.split_once(':').unwrap_or((spec, ""));
    let mut config = pb::FeatureConfig {
        name: name.to_owned(),
        chunks: 1,
        ..Default::default()
    };
    let mut rows = None;
    let mut offset = None;
    for option in options.split(',').filter(|o| !o.is_empty()) {
        let (key, value) = option
            .split_once('=')
            .ok_or_else(|| format!("feature `{spec}`: `{option}` is not key=value"))?;
        let bad = || format!("feature `{spec}`: bad value `{value}` for `{key}`");
        match key {
            "chunks" => config.chunks = value.parse().map_err(|_| bad())?,
            "type" => {
                config.value_type = match value {
                    "string" => pb::ValueType::String,
                    "int64" => pb::ValueType::Int64,
                    _ => return Err(bad()),
                } as i32
            }
            "pooling" => {
                config.pooling = match value {
                    "sum" => pb::Pooling::Sum,
                    "mean" => pb::Pooling::Mean,
                    "sqrtn" => pb::Pooling::Sqrtn,
                    "none" => pb::Pooling::None,
                    _ => return Err(bad()),
                } as i32
            }
            "rows" => rows = Some(value.parse().map_err(|_| bad())?),
            "offset" => offset = Some(value.parse().map_err(|_| bad())?),
            _ => return Err(format!("feature `{spec}`: unknown option `{key}`")),
        }
    }
    match (rows, offset) {
        (Some(rows), offset) => config.partitioned = Some(pb::Partitioned { offset, rows }),
        (None, Some(_)) => return Err(format!("feature `{spec}`: `offset` needs `rows`")),
        (None, None) => {}
    }
    Ok(config)
}

fn table_json(info: pb::TableInfo) -> Result<TableInfo, String> {
    convert::table_info_from_pb(info).map_err(|e| e.to_string())
}

fn print_table(info: &TableInfo, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(info).expect("serialisable")
        );
        return;
    }
    let c = &info.config;
    println!(
        "{}: {} rows × {} dims, optimizer {}, {} bytes in memory, {} dirty rows",
        c.name,
        c.rows,
        c.chunk_dim,
        c.optimizer.name(),
        info.bytes_in_memory,
        info.dirty_rows
    );
    for f in &info.features {
        println!(
            "  {}: {} chunk(s), width {}, {:?}, {:?} pooling, {:?}, salt {}",
            f.spec.name,
            f.spec.chunks,
            f.width,
            f.spec.value_type,
            f.spec.pooling,
            f.spec.placement,
            f.salt
        );
    }
}

fn checkpoint_json(c: &pb::Checkpoint) -> Value {
    json!({
        "id": c.id,
        "version": c.version,
        "created_unix_ms": c.created_unix_ms,
        "tables": c.tables,
    })
}

/// Builds a batch from JSON examples with the server's own serving-format
/// decoder, typed by the table's features.
fn examples_batch(info: &TableInfo, examples: &[String]) -> Result<pb::Batch, String> {
    let examples = examples
        .iter()
        .enumerate()
        .map(|(i, text)| {
            serde_json::from_str(text).map_err(|e| format!("example {i} is not a JSON object: {e}"))
        })
        .collect::<Result<Vec<examples::Example>, _>>()?;
    let features: Vec<_> = info.features.iter().map(FeatureInfo::feature).collect();
    let batch = examples::batch(&features, &examples, false).map_err(|e| e.to_string())?;
    Ok(convert::batch_to_pb(batch))
}

/// Runs a client command.
pub async fn run(connection: Connection, command: ClientCommand) -> CliResult {
    let mut options = ClientOptions::new(connection.addr.clone());
    options.token = connection.token.clone();
    options.retries = 2;
    if let Some(path) = &connection.ca_cert {
        options.ca_cert =
            Some(std::fs::read(path).map_err(|e| format!("--ca-cert {}: {e}", path.display()))?);
    }
    let client = Client::connect(options).await.map_err(|e| e.to_string())?;
    let json = connection.json;
    let err = |e: featmux_client::ClientError| e.to_string();
    match command {
        ClientCommand::Table(TableCommand::Create {
            name,
            rows,
            chunk_dim,
            seed,
            optimizer: kind,
            lr,
            features,
        }) => {
            let config = pb::TableConfig {
                name,
                rows,
                chunk_dim,
                seed,
                initializer: None,
                optimizer: Some(optimizer(&kind, lr)?),
            };
            let features = features
                .iter()
                .map(|f| feature(f))
                .collect::<Result<_, _>>()?;
            let info = client.create_table(config, features).await.map_err(err)?;
            print_table(&table_json(info)?, json);
        }
        ClientCommand::Table(TableCommand::List) => {
            let tables = client.list_tables().await.map_err(err)?;
            let tables: Vec<TableInfo> = tables
                .into_iter()
                .map(table_json)
                .collect::<Result<_, _>>()?;
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
        ClientCommand::Table(TableCommand::Show { name }) => {
            print_table(
                &table_json(client.get_table(&name).await.map_err(err)?)?,
                json,
            );
        }
        ClientCommand::Table(TableCommand::Drop { name }) => {
            client.drop_table(&name).await.map_err(err)?;
            if json {
                println!("{}", json!({ "dropped": name }));
            } else {
                println!("dropped {name}");
            }
        }
        ClientCommand::Feature(FeatureCommand::Add { table, features }) => {
            let features = features
                .iter()
                .map(|f| feature(f))
                .collect::<Result<_, _>>()?;
            let info = client.add_features(&table, features).await.map_err(err)?;
            print_table(&table_json(info)?, json);
        }
        ClientCommand::Lookup { table, examples } => {
            let info = table_json(client.get_table(&table).await.map_err(err)?)?;
            let batch = examples_batch(&info, &examples)?;
            let looked_up = client.lookup(&table, &batch, false).await.map_err(err)?;
            let out: serde_json::Map<String, Value> = looked_up
                .embeddings
                .iter()
                .map(|e| {
                    let rows: Vec<Value> = e
                        .data
                        .chunks_exact(e.width.max(1))
                        .map(|r| json!(r))
                        .collect();
                    (e.feature.clone(), Value::Array(rows))
                })
                .collect();
            if json {
                println!("{}", json!({ "embeddings": out }));
            } else {
                for (feature, rows) in &out {
                    for (i, row) in rows.as_array().into_iter().flatten().enumerate() {
                        println!("{feature}[{i}] = {row}");
                    }
                }
            }
        }
        ClientCommand::Explain { table, values } => {
            let info = table_json(client.get_table(&table).await.map_err(err)?)?;
            let mut columns: Vec<pb::FeatureValues> = Vec::new();
            for pair in &values {
                let (name, value) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("`{pair}` is not feature=value"))?;
                let feature = info
                    .features
                    .iter()
                    .find(|f| f.spec.name == name)
                    .ok_or_else(|| format!("table `{table}` has no feature `{name}`"))?;
                let column = match feature.spec.value_type {
                    featmux::schema::ValueType::String => {
                        BatchBuilder::strings_column(name, vec![value.to_owned()], vec![1])
                    }
                    featmux::schema::ValueType::Int64 => BatchBuilder::int64_column(
                        name,
                        vec![value
                            .parse()
                            .map_err(|_| format!("`{pair}`: `{name}` takes integers"))?],
                        vec![1],
                    ),
                };
                columns.push(column);
            }
            let explained = client.explain(&table, columns).await.map_err(err)?;
            let out: Vec<Value> = explained
                .features
                .iter()
                .flat_map(|f| {
                    f.values
                        .iter()
                        .map(|v| json!({ "feature": f.feature, "value": v.value, "rows": v.rows }))
                })
                .collect();
            if json {
                println!("{}", json!({ "explained": out }));
            } else {
                for f in &explained.features {
                    for v in &f.values {
                        println!("{}={} -> rows {:?}", f.feature, v.value, v.rows);
                    }
                }
            }
        }
        ClientCommand::Checkpoint(CheckpointCommand::Create) => {
            let c = client.create_checkpoint().await.map_err(err)?;
            if json {
                println!("{}", checkpoint_json(&c));
            } else {
                println!(
                    "checkpoint {} at version {} ({:?})",
                    c.id, c.version, c.tables
                );
            }
        }
        ClientCommand::Checkpoint(CheckpointCommand::List) => {
            let list = client.list_checkpoints().await.map_err(err)?;
            if json {
                let list: Vec<Value> = list.iter().map(checkpoint_json).collect();
                println!("{}", json!({ "checkpoints": list }));
            } else {
                for c in &list {
                    println!(
                        "checkpoint {} at version {} ({:?})",
                        c.id, c.version, c.tables
                    );
                }
            }
        }
        ClientCommand::Checkpoint(CheckpointCommand::Restore { id, table, into }) => {
            let info = client
                .restore_checkpoint(id, &table, into.as_deref())
                .await
                .map_err(err)?;
            print_table(&table_json(info)?, json);
        }
        ClientCommand::Checkpoint(CheckpointCommand::Delete { id }) => {
            client.delete_checkpoint(id).await.map_err(err)?;
            if json {
                println!("{}", json!({ "deleted": id }));
            } else {
                println!("deleted checkpoint {id}");
            }
        }
        ClientCommand::Stats => {
            let s = client.stats().await.map_err(err)?;
            let tables: Vec<TableInfo> = s
                .tables
                .into_iter()
                .map(table_json)
                .collect::<Result<_, _>>()?;
            let out = json!({
                "version": s.version,
                "flushed_version": s.flushed_version,
                "flushes": s.flushes,
                "flush_failures": s.flush_failures,
                "rows_flushed": s.rows_flushed,
                "last_flush_unix_ms": s.last_flush_unix_ms,
                "database_bytes": s.database_bytes,
                "live_tickets": s.live_tickets,
                "tables": tables,
            });
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&out).expect("serialisable")
                );
            } else {
                println!(
                    "version {} (flushed {}), {} flushes ({} failed), database {} bytes, {} live tickets",
                    s.version, s.flushed_version, s.flushes, s.flush_failures, s.database_bytes, s.live_tickets
                );
                for t in &tables {
                    print_table(t, false);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_specs_parse_and_bad_ones_are_named() {
        let f = feature("genres:chunks=2,type=int64,pooling=mean,rows=100,offset=5").unwrap();
        assert_eq!(f.name, "genres");
        assert_eq!(f.chunks, 2);
        assert_eq!(f.value_type, pb::ValueType::Int64 as i32);
        assert_eq!(f.pooling, pb::Pooling::Mean as i32);
        assert_eq!(
            f.partitioned,
            Some(pb::Partitioned {
                offset: Some(5),
                rows: 100
            })
        );
        assert_eq!(feature("user").unwrap().partitioned, None);
        assert!(feature("x:pooling=max").unwrap_err().contains("pooling"));
        assert!(feature("x:offset=3").unwrap_err().contains("needs `rows`"));
    }
}
