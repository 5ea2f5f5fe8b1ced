//! The trainer's input: a CSV or TSV file with a header, turned into
//! labelled examples of categorical features and split into train,
//! validation and test sets.
//!
//! What becomes a feature is given by flags, so the trainer works on anyone's
//! table of events: single-valued categorical columns, multi-valued columns
//! with a separator (genres `Action|Comedy`), numeric columns bucketized by
//! quantiles of the training split (bucket boundaries from train only, so
//! validation and test do not leak into them), and a label column with a
//! positive rule (`rating>=4`).

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// When a row's label column makes it a positive example.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PositiveRule {
    op: Comparison,
    threshold: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Comparison {
    Ge,
    Gt,
    Le,
    Lt,
    Eq,
}

impl PositiveRule {
    /// Parses `>=4`, `>3.5`, `<=0`, `<1`, `==1` (the column name is given
    /// separately).
    pub fn parse(rule: &str) -> anyhow::Result<Self> {
        let rule = rule.trim();
        let (op, rest) = [
            (">=", Comparison::Ge),
            ("<=", Comparison::Le),
            ("==", Comparison::Eq),
            (">", Comparison::Gt),
            ("<", Comparison::Lt),
        ]
        .into_iter()
        .find_map(|(text, op)| rule.strip_prefix(text).map(|rest| (op, rest)))
        .ok_or_else(|| anyhow::anyhow!("positive rule `{rule}`: start with >=, >, <=, < or =="))?;
        let threshold = rest.trim().parse().map_err(|_| {
            anyhow::anyhow!("positive rule `{rule}`: `{}` is not a number", rest.trim())
        })?;
        Ok(PositiveRule { op, threshold })
    }

    fn is_positive(&self, value: f64) -> bool {
        match self.op {
            Comparison::Ge => value >= self.threshold,
            Comparison::Gt => value > self.threshold,
            Comparison::Le => value <= self.threshold,
            Comparison::Lt => value < self.threshold,
            Comparison::Eq => value == self.threshold,
        }
    }
}

/// How rows are split into train / validation / test.
#[derive(Debug, Clone, PartialEq)]
pub enum Split {
    /// Shuffled with a seed.
    Random { seed: u64 },
    /// Ordered by a numeric column (oldest rows train, newest test).
    ByColumn(String),
}

/// Which columns become what.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSpec {
    pub label: String,
    pub positive: PositiveRule,
    /// Single-valued categorical columns.
    pub categorical: Vec<String>,
    /// Multi-valued columns and their value separator.
    pub multi: Vec<(String, String)>,
    /// Numeric columns and their number of quantile buckets.
    pub numeric: Vec<(String, usize)>,
    pub split: Split,
    /// Fractions of rows for validation and test (train gets the rest).
    pub valid_fraction: f64,
    pub test_fraction: f64,
}

/// One labelled example: per feature (in [`Dataset::features`] order) its
/// bag of values; an empty bag where the row had no value.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub label: f32,
    pub values: Vec<Vec<String>>,
}

/// The examples of one file, split.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Feature names: the categorical, multi-valued, then numeric columns.
    pub features: Vec<String>,
    pub train: Vec<Example>,
    pub valid: Vec<Example>,
    pub test: Vec<Example>,
}

impl Dataset {
    /// Distinct values per feature in the training split, in feature
    /// order: what sizes a table (a collisionless one has exactly these
    /// rows). Validation and test values must not size it; one unseen in
    /// training hashes into the table like any out-of-vocabulary value.
    pub fn vocabulary_sizes(&self) -> Vec<usize> {
        let mut seen: Vec<HashSet<&str>> = vec![Default::default(); self.features.len()];
        for example in &self.train {
            for (set, bag) in seen.iter_mut().zip(&example.values) {
                set.extend(bag.iter().map(String::as_str));
            }
        }
        seen.iter().map(|s| s.len()).collect()
    }
}

/// A raw row: the label, the split key and the columns' text.
struct Row {
    label: f32,
    order: f64,
    cells: Vec<String>,
}

fn column_index(header: &[String], name: &str, path: &Path) -> anyhow::Result<usize> {
    header.iter().position(|h| h == name).ok_or_else(|| {
        anyhow::anyhow!(
            "{}: no column `{name}` (columns: {})",
            path.display(),
            header.join(", ")
        )
    })
}

/// Reads `path` (`.tsv` is tab-separated, anything else comma-separated),
/// applies `spec` and splits. Errors name the file, the line and the column.
pub fn load(path: &Path, spec: &DataSpec) -> anyhow::Result<Dataset> {
    let fractions_ok = (0.0..1.0).contains(&spec.valid_fraction)
        && (0.0..1.0).contains(&spec.test_fraction)
        && spec.valid_fraction + spec.test_fraction < 1.0;
    if !fractions_ok {
        return Err(anyhow::anyhow!(
            "validation ({}) and test ({}) fractions must be in [0, 1) and leave rows to train on",
            spec.valid_fraction,
            spec.test_fraction
        ));
    }
    let delimiter = if path.extension().is_some_and(|e| e == "tsv") {
        b'\t'
    } else {
        b','
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .from_path(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        .iter()
        .map(str::to_owned)
        .collect();
    let label = column_index(&header, &spec.label, path)?;
    let order = match &spec.split {
        Split::ByColumn(name) => Some(column_index(&header, name, path)?),
        Split::Random { .. } => None,
    };
    let mut columns: Vec<usize> = Vec::new();
    for name in spec
        .categorical
        .iter()
        .chain(spec.multi.iter().map(|(n, _)| n))
        .chain(spec.numeric.iter().map(|(n, _)| n))
    {
        columns.push(column_index(&header, name, path)?);
    }
    if columns.is_empty() {
        return Err(anyhow::anyhow!(
            "no feature columns: give categorical, multi-valued or numeric ones"
        ));
    }
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let line = i + 2; // 1-based, after the header
        let record = record.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let number = |col: usize, what: &str| -> anyhow::Result<f64> {
            let text = record.get(col).unwrap_or("").trim();
            text.parse::<f64>().map_err(|_| {
                anyhow::anyhow!(
                    "{}:{line}: {what} column `{}` is `{text}`, not a number",
                    path.display(),
                    header[col]
                )
            })
        };
        let label_value = number(label, "label")?;
        let order_value = match order {
            Some(col) => number(col, "split")?,
            None => 0.0,
        };
        rows.push(Row {
            label: f32::from(u8::from(spec.positive.is_positive(label_value))),
            order: order_value,
            cells: columns
                .iter()
                .map(|&c| record.get(c).unwrap_or("").trim().to_owned())
                .collect(),
        });
    }
    if rows.is_empty() {
        return Err(anyhow::anyhow!("{}: no data rows", path.display()));
    }
    match &spec.split {
        Split::Random { seed } => rows.shuffle(&mut StdRng::seed_from_u64(*seed)),
        Split::ByColumn(_) => rows.sort_by(|a, b| a.order.total_cmp(&b.order)),
    }
    let n = rows.len();
    let n_test = (n as f64 * spec.test_fraction).round() as usize;
    let n_valid = (n as f64 * spec.valid_fraction).round() as usize;
    let test = rows.split_off(n - n_test);
    let valid = rows.split_off(n - n_test - n_valid);
    let train = rows;

    let singles = spec.categorical.len();
    let multis = spec.multi.len();
    // Quantile boundaries of each numeric column, from the training split.
    let mut boundaries = Vec::with_capacity(spec.numeric.len());
    for (k, (name, buckets)) in spec.numeric.iter().enumerate() {
        let col = singles + multis + k;
        let mut values = Vec::with_capacity(train.len());
        for (i, row) in train.iter().enumerate() {
            if row.cells[col].is_empty() {
                continue;
            }
            values.push(row.cells[col].parse::<f64>().map_err(|_| {
                anyhow::anyhow!(
                    "{}: numeric column `{name}` has `{}` (training row {i})",
                    path.display(),
                    row.cells[col]
                )
            })?);
        }
        values.sort_by(f64::total_cmp);
        let cuts: Vec<f64> = (1..*buckets)
            .filter_map(|q| values.get(q * values.len() / buckets).copied())
            .collect();
        boundaries.push(cuts);
    }
    let to_example = |row: Row| -> anyhow::Result<Example> {
        let mut values = Vec::with_capacity(row.cells.len());
        for (col, cell) in row.cells.into_iter().enumerate() {
            let bag = if cell.is_empty() {
                Vec::new()
            } else if col < singles {
                vec![cell]
            } else if col < singles + multis {
                let separator = &spec.multi[col - singles].1;
                cell.split(separator.as_str())
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned)
                    .collect()
            } else {
                let k = col - singles - multis;
                let value: f64 = cell.parse().map_err(|_| {
                    anyhow::anyhow!(
                        "{}: numeric column `{}` has `{cell}`",
                        path.display(),
                        spec.numeric[k].0
                    )
                })?;
                let bucket = boundaries[k].partition_point(|&cut| cut <= value);
                vec![format!("b{bucket}")]
            };
            values.push(bag);
        }
        Ok(Example {
            label: row.label,
            values,
        })
    };
    let convert = |rows: Vec<Row>| {
        rows.into_iter()
            .map(to_example)
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Dataset {
        features: spec
            .categorical
            .iter()
            .chain(spec.multi.iter().map(|(n, _)| n))
            .chain(spec.numeric.iter().map(|(n, _)| n))
            .cloned()
            .collect(),
        train: convert(train)?,
        valid: convert(valid)?,
        test: convert(test)?,
    })
}

/// Writes each split as JSON lines (`train.jsonl`, `valid.jsonl`,
/// `test.jsonl` in `dir`, created if missing), one example per line:
/// `{"label": 0|1, "features": {name: [values]}}`.
pub fn export(dataset: &Dataset, dir: &Path) -> anyhow::Result<()> {
    let named = |e: &std::io::Error, path: &Path| anyhow::anyhow!("{}: {e}", path.display());
    std::fs::create_dir_all(dir).map_err(|e| named(&e, dir))?;
    for (name, examples) in [
        ("train", &dataset.train),
        ("valid", &dataset.valid),
        ("test", &dataset.test),
    ] {
        let path = dir.join(format!("{name}.jsonl"));
        let mut out =
            std::io::BufWriter::new(std::fs::File::create(&path).map_err(|e| named(&e, &path))?);
        for example in examples {
            let features: serde_json::Map<String, serde_json::Value> = dataset
                .features
                .iter()
                .zip(&example.values)
                .map(|(f, bag)| (f.clone(), serde_json::json!(bag)))
                .collect();
            let line = serde_json::json!({ "label": example.label, "features": features });
            writeln!(out, "{line}").map_err(|e| named(&e, &path))?;
        }
        out.flush().map_err(|e| named(&e, &path))?;
    }
    Ok(())
}

/// Parses `column:separator` (multi-valued) or `column:buckets` (numeric)
/// flag values.
pub fn split_flag(flag: &str, value: &str) -> anyhow::Result<(String, String)> {
    match value.split_once(':') {
        Some((column, rest)) if !column.is_empty() && !rest.is_empty() => {
            Ok((column.to_owned(), rest.to_owned()))
        }
        _ => Err(anyhow::anyhow!(
            "--{flag} `{value}`: expected column:{}",
            if flag == "numeric" {
                "buckets"
            } else {
                "separator"
            }
        )),
    }
}

/// Positive examples, for a look at the label balance.
pub fn positives(examples: &[Example]) -> usize {
    examples.iter().filter(|e| e.label > 0.5).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "user,item,genres,year,rating,ts\n\
        u1,i1,Action|Comedy,1995,5,10\n\
        u2,i2,Drama,1980,3,20\n\
        u1,i3,,2001,4,30\n\
        u3,i1,Action,1995,1,40\n\
        u2,i4,Comedy|Drama|Action,1970,4,50\n";

    fn spec() -> DataSpec {
        DataSpec {
            label: "rating".into(),
            positive: PositiveRule::parse(">=4").unwrap(),
            categorical: vec!["user".into(), "item".into()],
            multi: vec![("genres".into(), "|".into())],
            numeric: vec![("year".into(), 2)],
            split: Split::ByColumn("ts".into()),
            valid_fraction: 0.2,
            test_fraction: 0.2,
        }
    }

    fn file(text: &str, name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn rows_become_labelled_bags_split_by_time() {
        let (_dir, path) = file(CSV, "events.csv");
        let d = load(&path, &spec()).unwrap();
        assert_eq!(d.features, ["user", "item", "genres", "year"]);
        // Oldest three train, then one validation, the newest one test.
        assert_eq!((d.train.len(), d.valid.len(), d.test.len()), (3, 1, 1));
        assert_eq!(
            d.train.iter().map(|e| e.label).collect::<Vec<_>>(),
            [1.0, 0.0, 1.0]
        );
        assert_eq!(d.train[0].values[2], ["Action", "Comedy"]);
        assert!(
            d.train[2].values[2].is_empty(),
            "an empty cell is an empty bag"
        );
        assert_eq!(d.test[0].values[0], ["u2"]);
        assert_eq!(d.test[0].values[2], ["Comedy", "Drama", "Action"]);
        // Two year buckets with the cut at the training median (1995):
        // 1980 below it, 1995 and 2001 at or above; 1970 (test) below.
        assert_eq!(d.train[0].values[3], ["b1"]);
        assert_eq!(d.train[1].values[3], ["b0"]);
        assert_eq!(d.test[0].values[3], ["b0"]);
        // Training split only: users u1, u2; items i1-i3; three genres;
        // both year buckets. (u3 and i4 appear only in validation and test.)
        assert_eq!(d.vocabulary_sizes(), [2, 3, 3, 2]);
        assert_eq!(positives(&d.train), 2);
    }

    #[test]
    fn a_random_split_is_a_seeded_shuffle_and_tsv_is_tab_separated() {
        let (_dir, path) = file(&CSV.replace(',', "\t"), "events.tsv");
        let mut s = spec();
        s.split = Split::Random { seed: 7 };
        let a = load(&path, &s).unwrap();
        assert_eq!(a, load(&path, &s).unwrap());
        assert_eq!(a.train.len() + a.valid.len() + a.test.len(), 5);
        s.split = Split::Random { seed: 8 };
        let b = load(&path, &s).unwrap();
        let users = |d: &Dataset| {
            d.train
                .iter()
                .chain(&d.valid)
                .chain(&d.test)
                .map(|e| e.values[0][0].clone())
                .collect::<Vec<_>>()
        };
        let (mut ua, mut ub) = (users(&a), users(&b));
        ua.sort();
        ub.sort();
        assert_eq!(ua, ub, "same rows, other order");
    }

    #[test]
    fn rules_parse_and_bad_ones_are_named() {
        let r = PositiveRule::parse(">3.5").unwrap();
        assert!(r.is_positive(4.0) && !r.is_positive(3.5));
        assert!(PositiveRule::parse("==1").unwrap().is_positive(1.0));
        assert!(PositiveRule::parse("<=0").unwrap().is_positive(0.0));
        assert!(PositiveRule::parse("4")
            .unwrap_err()
            .to_string()
            .contains("start with"));
        assert!(PositiveRule::parse(">=four")
            .unwrap_err()
            .to_string()
            .contains("`four` is not a number"));
        assert_eq!(
            split_flag("multi", "genres:|").unwrap(),
            ("genres".into(), "|".into())
        );
        assert!(split_flag("numeric", "year")
            .unwrap_err()
            .to_string()
            .contains("column:buckets"));
    }

    #[test]
    fn bad_files_columns_and_labels_are_named() {
        let missing = load(Path::new("/nonexistent/events.csv"), &spec())
            .unwrap_err()
            .to_string();
        assert!(missing.contains("/nonexistent/events.csv"), "{missing}");
        let (_dir, path) = file(CSV, "events.csv");
        let mut s = spec();
        s.categorical.push("country".into());
        let err = load(&path, &s).unwrap_err().to_string();
        assert!(
            err.contains("no column `country`") && err.contains("columns: user, item"),
            "{err}"
        );
        let (_dir2, bad) = file(
            &CSV.replace("u2,i2,Drama,1980,3", "u2,i2,Drama,1980,three"),
            "bad.csv",
        );
        let err = load(&bad, &spec()).unwrap_err().to_string();
        assert!(
            err.contains("bad.csv:3: label column `rating` is `three`, not a number"),
            "{err}"
        );
        let mut s = spec();
        s.valid_fraction = 0.6;
        s.test_fraction = 0.5;
        assert!(load(&path, &s)
            .unwrap_err()
            .to_string()
            .contains("leave rows to train on"));
        let (_dir3, empty) = file("user,rating\n", "empty.csv");
        let mut s = spec();
        s.categorical = vec!["user".into()];
        s.multi.clear();
        s.numeric.clear();
        s.split = Split::Random { seed: 1 };
        assert!(load(&empty, &s)
            .unwrap_err()
            .to_string()
            .contains("no data rows"));
    }
}
