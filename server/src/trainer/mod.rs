//! Training on a user's own data: reading a CSV/TSV of events into labelled
//! examples of categorical features ([`data`]).
//!
//! `featmux dataset` shows what a set of flags makes of a file (split sizes,
//! label balance, each feature's vocabulary, which sizes a collisionless
//! table and a memory budget are computed from).

pub mod data;

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use data::{DataSpec, PositiveRule, Split};

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
    /// Seed of the random split.
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
    pub fn spec(&self) -> Result<DataSpec, String> {
        let numeric = self
            .numeric
            .iter()
            .map(|v| {
                let (column, buckets) = data::split_flag("numeric", v)?;
                match buckets.parse::<usize>() {
                    Ok(b) if b >= 1 => Ok((column, b)),
                    _ => Err(format!(
                        "--numeric `{v}`: buckets must be a whole number ≥ 1"
                    )),
                }
            })
            .collect::<Result<_, String>>()?;
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

/// `featmux dataset`: loads the file as training would and prints the split
/// sizes, positives and per-feature vocabulary.
pub fn describe(args: &DataArgs, as_json: bool) -> Result<(), String> {
    let dataset = data::load(&args.data, &args.spec()?)?;
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
