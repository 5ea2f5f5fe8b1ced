//! Training on a user's own data through featmux: `featmux train` reads a
//! CSV/TSV of events into labelled examples of categorical features
//! ([`data`]), places the features in a table ([`layout`]), and trains an
//! MLP ([`model`]) whose embeddings live in featmux: each step looks a batch
//! up with a ticket, runs forward and backward, and pushes the embedding
//! gradients (the sparse optimizer runs in the server). `--in-process` does
//! the same against the engine in this process, to measure what the network
//! path costs. AUC and log loss ([`metrics`]) on validation and test.
//!
//! `featmux dataset` shows what a set of flags makes of a file (split sizes,
//! label balance, each feature's vocabulary).

pub mod data;
pub mod layout;
pub mod metrics;
pub mod model;
mod occupancy_check;

use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, ValueEnum};
use featmux_client::{pb, BatchBuilder, Client, ClientOptions};
use featmux_engine::plan::BatchPlan;
use featmux_engine::table::Table;
use featmux_server::convert;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::{json, Value};

use crate::in_process::InProcess;
use data::{DataSpec, Dataset, Example, PositiveRule, Split};
use featmux_client::spec::{optimizer_with, OptimizerParams};
use layout::Layout;

/// Which file and which columns.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// CSV file with a header (`.tsv`: tab-separated).
    #[arg(long)]
    pub data: PathBuf,
    /// Label column.
    #[arg(long)]
    pub label: String,
    /// When the label column makes a row positive: `>=4`, `>0`, `==1`, …
    #[arg(long, default_value = ">0")]
    pub positive: String,
    /// Single-valued categorical columns (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub categorical: Vec<String>,
    /// Multi-valued column and its separator, `genres:|` (repeatable).
    #[arg(long)]
    pub multi: Vec<String>,
    /// Numeric column bucketized by training-split quantiles, `year:10`
    /// (repeatable).
    #[arg(long)]
    pub numeric: Vec<String>,
    /// Split by this numeric column (oldest rows train, newest test)
    /// instead of at random.
    #[arg(long)]
    pub split_by: Option<String>,
    /// Seed of the random split and, for `train`, of the table, the MLP's
    /// initial weights and the batch order.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Fraction of rows for validation.
    #[arg(long, default_value_t = 0.1)]
    pub valid: f64,
    /// Fraction of rows for test.
    #[arg(long, default_value_t = 0.1)]
    pub test: f64,
}

impl DataArgs {
    /// The flags as a [`DataSpec`]; mistakes are named.
    pub fn spec(&self) -> anyhow::Result<DataSpec> {
        let numeric = self
            .numeric
            .iter()
            .map(|v| {
                let (column, buckets) = data::split_flag("numeric", v)?;
                match buckets.parse::<usize>() {
                    Ok(b) if b >= 1 => Ok((column, b)),
                    _ => Err(anyhow::anyhow!(
                        "--numeric `{v}`: buckets must be a whole number ≥ 1"
                    )),
                }
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(DataSpec {
            label: self.label.clone(),
            positive: PositiveRule::parse(&self.positive)?,
            categorical: self.categorical.clone(),
            multi: self
                .multi
                .iter()
                .map(|v| data::split_flag("multi", v))
                .collect::<Result<_, _>>()?,
            numeric,
            split: match &self.split_by {
                Some(column) => Split::ByColumn(column.clone()),
                None => Split::Random { seed: self.seed },
            },
            valid_fraction: self.valid,
            test_fraction: self.test,
        })
    }
}

/// `featmux dataset` settings.
#[derive(Debug, Clone, Args)]
pub struct DatasetArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Also write the split's examples to `train.jsonl`, `valid.jsonl` and
    /// `test.jsonl` in this directory (one `{"label", "features": {name:
    /// [values]}}` per line), so another trainer (the Python example)
    /// learns and is scored on exactly the rows `featmux train` uses.
    #[arg(long)]
    pub export: Option<PathBuf>,
}

/// `featmux dataset`: loads the file as training would and prints the split
/// sizes, positives and per-feature vocabulary (of the training split).
pub fn describe(args: &DatasetArgs, as_json: bool) -> anyhow::Result<()> {
    let dataset = data::load(&args.data.data, &args.data.spec()?)?;
    if let Some(dir) = &args.export {
        data::export(&dataset, dir)?;
    }
    let vocabulary = dataset.vocabulary_sizes();
    let split = |examples: &[data::Example]| json!({ "examples": examples.len(), "positives": data::positives(examples) });
    let report = json!({
        "train": split(&dataset.train),
        "valid": split(&dataset.valid),
        "test": split(&dataset.test),
        "features": dataset.features.iter().zip(&vocabulary)
            .map(|(name, v)| json!({ "name": name, "vocabulary": v }))
            .collect::<Vec<_>>(),
        "total_vocabulary": vocabulary.iter().sum::<usize>(),
    });
    if as_json {
        println!("{report}");
    } else {
        for name in ["train", "valid", "test"] {
            println!(
                "{name}: {} examples, {} positive",
                report[name]["examples"], report[name]["positives"]
            );
        }
        for (name, v) in dataset.features.iter().zip(&vocabulary) {
            println!("feature {name}: {v} distinct values");
        }
    }
    Ok(())
}

/// `featmux train` settings.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Table to create and train (it must not exist yet).
    #[arg(long, default_value = "train")]
    pub table: String,
    /// How the features share the table.
    #[arg(long, value_enum, default_value = "unified")]
    pub layout: Layout,
    /// Table rows: the memory budget (`collisionless` sizes its own).
    #[arg(long, default_value_t = 100_000)]
    pub rows: u64,
    #[arg(long, default_value_t = 16)]
    pub chunk_dim: u32,
    /// Optimizer of the embeddings, run in featmux: sgd, adagrad,
    /// row-wise-adagrad, adam, ftrl.
    #[arg(long, default_value = "adagrad")]
    pub sparse_optimizer: String,
    /// Its learning rate (FTRL's alpha; the loss is summed over the batch).
    #[arg(long, default_value_t = 0.05)]
    pub sparse_lr: f32,
    /// Epsilon of the sparse Adagrad, row-wise Adagrad or Adam (1e-8).
    #[arg(long)]
    pub sparse_eps: Option<f32>,
    /// First accumulator of the sparse Adagrad, row-wise Adagrad or FTRL (0).
    #[arg(long)]
    pub sparse_initial_accumulator: Option<f32>,
    /// The sparse Adam's beta1 (0.9).
    #[arg(long)]
    pub sparse_beta1: Option<f32>,
    /// The sparse Adam's beta2 (0.999).
    #[arg(long)]
    pub sparse_beta2: Option<f32>,
    /// The sparse FTRL's beta (1).
    #[arg(long)]
    pub sparse_ftrl_beta: Option<f32>,
    /// The sparse FTRL's L1 strength (0).
    #[arg(long)]
    pub sparse_l1: Option<f32>,
    /// The sparse FTRL's L2 strength (0).
    #[arg(long)]
    pub sparse_l2: Option<f32>,
    /// Adam's learning rate on the dense weights.
    #[arg(long, default_value_t = 1e-3)]
    pub dense_lr: f64,
    /// The dense Adam's beta1.
    #[arg(long, default_value_t = 0.9)]
    pub dense_beta1: f64,
    /// The dense Adam's beta2.
    #[arg(long, default_value_t = 0.999)]
    pub dense_beta2: f64,
    /// The dense Adam's epsilon.
    #[arg(long, default_value_t = 1e-8)]
    pub dense_eps: f64,
    /// Hidden layer widths of the MLP.
    #[arg(long, value_delimiter = ',', default_value = "64,32")]
    pub hidden: Vec<usize>,
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    /// Examples per step.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Train against the engine in this process instead of the server.
    #[arg(long)]
    pub in_process: bool,
    /// Also write the result JSON to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// After training, evaluate the test split again through these read
    /// replicas of the server (gRPC addresses), once each has caught up
    /// with the last flushed push: what serving from a (quantized) copy
    /// costs in quality.
    #[arg(long, value_delimiter = ',')]
    pub eval_replicas: Vec<String>,
    /// After training, compare the server's occupancy report with exact
    /// counts of the dataset's values and their rows.
    #[arg(long)]
    pub check_occupancy: bool,
}

impl TrainArgs {
    /// The sparse optimizer's hyper-parameters beyond the learning rate.
    fn sparse_params(&self) -> OptimizerParams {
        OptimizerParams {
            eps: self.sparse_eps,
            initial_accumulator: self.sparse_initial_accumulator,
            beta1: self.sparse_beta1,
            beta2: self.sparse_beta2,
            ftrl_beta: self.sparse_ftrl_beta,
            l1: self.sparse_l1,
            l2: self.sparse_l2,
        }
    }

    /// The dense Adam's settings (no weight decay).
    fn dense_params(&self) -> candle_nn::ParamsAdamW {
        candle_nn::ParamsAdamW {
            lr: self.dense_lr,
            beta1: self.dense_beta1,
            beta2: self.dense_beta2,
            eps: self.dense_eps,
            weight_decay: 0.0,
        }
    }
}

/// Where the embeddings live. One per run: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Sparse {
    Service(Client),
    InProcess(InProcess),
}

/// What a training lookup leaves for its push.
enum Ticket {
    Service(u64),
    InProcess(Arc<Table>, BatchPlan),
}

impl Sparse {
    async fn lookup(
        &self,
        table: &str,
        batch: pb::Batch,
        for_training: bool,
    ) -> anyhow::Result<(Vec<Vec<f32>>, Option<Ticket>)> {
        match self {
            Sparse::Service(client) => {
                let looked_up = client.lookup(table, &batch, for_training).await?;
                let blocks = looked_up.embeddings.into_iter().map(|e| e.data).collect();
                Ok((blocks, looked_up.ticket.map(Ticket::Service)))
            }
            Sparse::InProcess(engine) => {
                let batch = convert::batch_from_pb(Some(batch))?;
                let (embeddings, table, plan) = engine.lookup_planned(&batch)?;
                let blocks = embeddings.into_iter().map(|e| e.data).collect();
                Ok((
                    blocks,
                    for_training.then_some(Ticket::InProcess(table, plan)),
                ))
            }
        }
    }

    async fn push(&self, table: &str, ticket: Ticket, grads: Vec<Vec<f32>>) -> anyhow::Result<()> {
        match (self, ticket) {
            (Sparse::Service(client), Ticket::Service(id)) => client
                .push_ticket(table, id, grads)
                .await
                .map(drop)
                .map_err(Into::into),
            (Sparse::InProcess(engine), Ticket::InProcess(table, plan)) => {
                engine.push_planned(&table, &plan, &grads)
            }
            _ => unreachable!("tickets come from the same backend"),
        }
    }
}

/// The examples as a featmux batch: every feature, bags as they are.
fn to_batch(features: &[String], examples: &[&Example]) -> pb::Batch {
    let mut batch = BatchBuilder::new();
    for example in examples {
        batch.example();
        for (name, bag) in features.iter().zip(&example.values) {
            batch.add_strs(name, bag);
        }
    }
    batch.build().expect("every feature is strings")
}

/// Per-feature blocks `[n, width]` → one row-major `[n, features × width]`.
fn concatenate(blocks: &[Vec<f32>], n: usize, width: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(n * blocks.len() * width);
    for i in 0..n {
        for block in blocks {
            x.extend_from_slice(&block[i * width..(i + 1) * width]);
        }
    }
    x
}

/// The inverse of [`concatenate`].
fn split_blocks(x: &[f32], n: usize, features: usize, width: usize) -> Vec<Vec<f32>> {
    (0..features)
        .map(|f| {
            (0..n)
                .flat_map(|i| {
                    let start = (i * features + f) * width;
                    x[start..start + width].iter().copied()
                })
                .collect()
        })
        .collect()
}

/// AUC and log loss of the model on `examples`.
async fn evaluate(
    sparse: &Sparse,
    table: &str,
    model: &model::Mlp,
    features: &[String],
    examples: &[Example],
    width: usize,
) -> anyhow::Result<Value> {
    let (mut labels, mut scores) = (Vec::new(), Vec::new());
    for chunk in examples.chunks(2048) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let (blocks, _) = sparse
            .lookup(table, to_batch(features, &refs), false)
            .await?;
        scores.extend(model.predict(concatenate(&blocks, chunk.len(), width), chunk.len())?);
        labels.extend(chunk.iter().map(|e| e.label));
    }
    Ok(json!({
        "examples": examples.len(),
        "auc": metrics::auc(&labels, &scores),
        "log_loss": metrics::log_loss(&labels, &scores),
    }))
}

/// Waits until the primary has flushed every push and `replica` serves
/// that version; returns it.
async fn caught_up(primary: &Client, replica: &Client) -> anyhow::Result<u64> {
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let stats = primary.stats().await?;
        let served = replica.stats().await?.version;
        if stats.version == stats.flushed_version && served == stats.flushed_version {
            return Ok(served);
        }
        if Instant::now() > deadline {
            return Err(anyhow::anyhow!(
                "the replica serves version {served}, the primary has flushed {} of {}",
                stats.flushed_version,
                stats.version
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `featmux train`: creates the table, trains, evaluates, prints JSON.
pub async fn train(options: ClientOptions, args: TrainArgs) -> anyhow::Result<()> {
    if args.batch == 0 || args.epochs == 0 {
        return Err(anyhow::anyhow!("--batch and --epochs must be at least 1"));
    }
    let dataset: Dataset = data::load(&args.data.data, &args.data.spec()?)?;
    let vocabulary = dataset.vocabulary_sizes();
    let placement = layout::place(args.layout, &vocabulary, args.rows)?;
    let table = pb::TableConfig {
        name: args.table.clone(),
        rows: placement.rows,
        chunk_dim: args.chunk_dim,
        seed: args.data.seed,
        initializer: None,
        optimizer: Some(
            optimizer_with(
                &args.sparse_optimizer,
                args.sparse_lr,
                &args.sparse_params(),
            )
            .map_err(anyhow::Error::msg)?,
        ),
        max_abs_gradient: None,
    };
    let features: Vec<pb::FeatureConfig> = dataset
        .features
        .iter()
        .zip(&placement.slices)
        .map(|(name, slice)| pb::FeatureConfig {
            name: name.clone(),
            chunks: 1,
            pooling: pb::Pooling::Mean as i32,
            partitioned: slice.map(|rows| pb::Partitioned { offset: None, rows }),
            ..Default::default()
        })
        .collect();
    let sparse = if args.in_process {
        Sparse::InProcess(InProcess::create(table, features)?)
    } else {
        let client = Client::connect(options.clone()).await?;
        client.create_table(table, features).await?;
        Sparse::Service(client)
    };
    let width = args.chunk_dim as usize;
    let n_features = dataset.features.len();
    let mut model = model::Mlp::new(
        n_features * width,
        &args.hidden,
        args.dense_params(),
        args.data.seed,
    )?;
    let mut order: Vec<usize> = (0..dataset.train.len()).collect();
    let mut rng = StdRng::seed_from_u64(args.data.seed);
    let mut epochs = Vec::new();
    let mut training_seconds = 0.0;
    let started = Instant::now();
    for epoch in 1..=args.epochs {
        order.shuffle(&mut rng);
        let bar = ProgressBar::new(order.len() as u64)
            .with_prefix(format!("epoch {epoch}/{}", args.epochs));
        bar.set_style(
            ProgressStyle::with_template("{prefix} {bar:40} {pos}/{len} examples {msg}")
                .expect("a valid template"),
        );
        let (mut loss_sum, mut seen) = (0.0f64, 0usize);
        let clock = Instant::now();
        for chunk in order.chunks(args.batch) {
            let examples: Vec<&Example> = chunk.iter().map(|&i| &dataset.train[i]).collect();
            let labels: Vec<f32> = examples.iter().map(|e| e.label).collect();
            let (blocks, ticket) = sparse
                .lookup(&args.table, to_batch(&dataset.features, &examples), true)
                .await?;
            let n = examples.len();
            let (loss, grad) = model.train_step(concatenate(&blocks, n, width), &labels)?;
            let ticket = ticket.context("the lookup returned no ticket")?;
            sparse
                .push(
                    &args.table,
                    ticket,
                    split_blocks(&grad, n, n_features, width),
                )
                .await?;
            loss_sum += loss as f64;
            seen += n;
            bar.inc(n as u64);
            bar.set_message(format!("loss {:.4}", loss_sum / seen as f64));
        }
        training_seconds += clock.elapsed().as_secs_f64();
        bar.finish();
        let valid = evaluate(
            &sparse,
            &args.table,
            &model,
            &dataset.features,
            &dataset.valid,
            width,
        )
        .await?;
        epochs
            .push(json!({ "epoch": epoch, "train_loss": loss_sum / seen as f64, "valid": valid }));
    }
    let test = evaluate(
        &sparse,
        &args.table,
        &model,
        &dataset.features,
        &dataset.test,
        width,
    )
    .await?;
    let mut replicas = Vec::new();
    for address in &args.eval_replicas {
        let Sparse::Service(primary) = &sparse else {
            return Err(anyhow::anyhow!(
                "--eval-replicas needs the server, not --in-process"
            ));
        };
        let replica = Client::connect(ClientOptions {
            endpoint: address.clone(),
            ..options.clone()
        })
        .await?;
        let version = caught_up(primary, &replica).await?;
        let info = replica.get_table(&args.table).await?;
        let served = evaluate(
            &Sparse::Service(replica),
            &args.table,
            &model,
            &dataset.features,
            &dataset.test,
            width,
        )
        .await?;
        let auc = |v: &Value| v["auc"].as_f64().unwrap_or(f64::NAN);
        replicas.push(json!({
            "address": address,
            "row_format": info.row_format,
            "bytes_per_row": info.bytes_per_row,
            "version": version,
            "auc_change": auc(&served) - auc(&test),
            "test": served,
        }));
    }
    let occupancy = match &sparse {
        Sparse::Service(client) if args.check_occupancy => {
            Some(occupancy_check::check(client, &args.table, &dataset).await?)
        }
        _ => None,
    };
    let report = json!({
        "mode": if args.in_process { "in-process" } else { "service" },
        "layout": args.layout.to_possible_value().expect("no skipped variants").get_name(),
        "rows": placement.rows,
        "budget_rows": if args.layout == Layout::Collisionless { placement.rows } else { args.rows },
        "embedding_bytes": placement.rows * args.chunk_dim as u64 * 4,
        "features": dataset.features.iter().zip(&vocabulary).zip(&placement.slices)
            .map(|((name, v), slice)| json!({ "name": name, "vocabulary": v, "slice": slice }))
            .collect::<Vec<_>>(),
        "seed": args.data.seed,
        "epochs": epochs,
        "valid": epochs.last().map(|e| e["valid"].clone()),
        "test": test,
        "replicas": replicas,
        "occupancy": occupancy,
        "train_examples_per_s": (dataset.train.len() * args.epochs) as f64 / training_seconds,
        "seconds": started.elapsed().as_secs_f64(),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
    });
    if let Some(path) = &args.out {
        std::fs::write(path, format!("{report:#}\n"))
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    println!("{report:#}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_blocks_concatenate_per_example_and_split_back() {
        // Two examples, features of width 2: a = [a0 | a1], b = [b0 | b1].
        let blocks = vec![vec![1.0, 2.0, 3.0, 4.0], vec![5.0, 6.0, 7.0, 8.0]];
        let x = concatenate(&blocks, 2, 2);
        assert_eq!(x, [1.0, 2.0, 5.0, 6.0, 3.0, 4.0, 7.0, 8.0]);
        assert_eq!(split_blocks(&x, 2, 2, 2), blocks);
    }
}
