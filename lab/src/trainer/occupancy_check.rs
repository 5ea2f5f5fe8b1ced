//! `featmux train --check-occupancy`: after training (every value of every
//! split has been looked up), the server's occupancy report beside exact
//! counts computed here from the dataset's values and the rows `explain`
//! gives for each: how far the sketches are from the truth on real data.

use std::collections::{HashMap, HashSet};

use featmux_client::{BatchBuilder, Client};
use serde_json::{json, Value};

use super::data::Dataset;

/// Values per `explain` call.
const EXPLAIN_CHUNK: usize = 4096;

/// Every distinct value of each feature, over all splits.
fn values(dataset: &Dataset) -> Vec<Vec<String>> {
    let mut seen: Vec<HashSet<&str>> = vec![HashSet::new(); dataset.features.len()];
    let examples = dataset
        .train
        .iter()
        .chain(&dataset.valid)
        .chain(&dataset.test);
    for example in examples {
        for (set, bag) in seen.iter_mut().zip(&example.values) {
            set.extend(bag.iter().map(String::as_str));
        }
    }
    seen.into_iter()
        .map(|set| {
            let mut values: Vec<String> = set.into_iter().map(str::to_owned).collect();
            values.sort();
            values
        })
        .collect()
}

/// Whether `reported` is within `sigmas` standard errors of `exact`.
fn within(reported: f64, exact: f64, relative_error: f64, sigmas: f64) -> bool {
    (reported - exact).abs() <= sigmas * relative_error * exact.abs().max(1.0)
}

/// The comparison, as JSON: per feature and for the table.
pub async fn check(client: &Client, table: &str, dataset: &Dataset) -> anyhow::Result<Value> {
    let report = client.occupancy(table).await?;
    if report.sample_every != 1 {
        anyhow::bail!(
            "the server observes one batch in {} (occupancy.sample_every); comparing with \
             exact counts needs every batch observed: start it with `sample_every = 1` \
             in its [occupancy] config",
            report.sample_every
        );
    }
    let error = report.relative_error;
    let mut occupied: HashMap<u64, usize> = HashMap::new();
    let mut features = Vec::new();
    for ((name, values), reported) in dataset
        .features
        .iter()
        .zip(values(dataset))
        .zip(&report.features)
    {
        let mut rows = HashSet::new();
        for chunk in values.chunks(EXPLAIN_CHUNK) {
            let column = BatchBuilder::strings_column(name, chunk, vec![1; chunk.len()]);
            let explained = client.explain(table, vec![column]).await?;
            for value in &explained.features[0].values {
                rows.extend(value.rows.iter().copied());
            }
        }
        for &row in &rows {
            *occupied.entry(row).or_default() += 1;
        }
        let collision = 1.0 - rows.len() as f64 / values.len().max(1) as f64;
        features.push(json!({
            "feature": name,
            "distinct_values": { "exact": values.len(), "reported": reported.distinct_values },
            "rows": { "exact": rows.len(), "reported": reported.rows },
            "collision_rate": {
                "exact": collision,
                "reported": reported.collision_rate,
                "expected_uniform": reported.expected_collision_rate,
            },
            "shared_traffic": reported.shared_traffic,
            "within_4_sigma": within(reported.distinct_values, values.len() as f64, error, 4.0)
                && within(reported.rows, rows.len() as f64, error, 4.0),
        }));
    }
    let total_values: usize = features
        .iter()
        .map(|f| f["distinct_values"]["exact"].as_u64().unwrap_or(0) as usize)
        .sum();
    let shared = occupied.values().filter(|&&n| n > 1).count();
    Ok(json!({
        "relative_error": error,
        "rows": report.rows,
        "occupied_rows": { "exact": occupied.len(), "reported": report.occupied_rows },
        "shared_rows": { "exact": shared, "reported": report.shared_rows },
        "distinct_values": { "exact": total_values, "reported": report.distinct_values },
        "collision_rate": {
            "exact": 1.0 - occupied.len() as f64 / total_values.max(1) as f64,
            "reported": report.collision_rate,
            "expected_uniform": report.expected_collision_rate,
        },
        "features": features,
    }))
}
