//! Occupancy and collision statistics against exact counts: a real server
//! looks up every value of known vocabularies (shared, chunked, partitioned
//! and tiny features); the test computes the exact rows of every value
//! with `explain` and replays the traffic, then checks the HTTP report,
//! the gRPC report and `featmux table occupancy`: exact counts equal,
//! sketch counts within 4 standard errors.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::process::Command;

use featmux_client::{pb, BatchBuilder, Client};
use featmux_tests::requests::{feature, Http};
use featmux_tests::server::{featmux_binary, ServerSettings, TestServer};
use serde_json::Value;

const ROWS: u64 = 20_000;
const EXAMPLES: usize = 30_000;

/// (feature, vocabulary, chunks): values `0..vocabulary`, each looked up.
const FEATURES: [(&str, usize, u32); 4] = [
    ("user", 30_000, 1),
    ("item", 8_000, 2),
    ("city", 1_500, 1),
    ("age", 100, 1),
];

fn value(feature: &str, i: usize) -> String {
    format!("{feature}-{i}")
}

/// Example `j` holds value `j % vocabulary` of every feature.
fn batch(examples: std::ops::Range<usize>) -> pb::Batch {
    let mut b = BatchBuilder::new();
    for j in examples {
        b.example();
        for (name, vocabulary, _) in FEATURES {
            b.add_str(name, value(name, j % vocabulary));
        }
    }
    b.build().unwrap()
}

/// The rows of every chunk of every value of `name`.
async fn rows_of(client: &Client, name: &str, vocabulary: usize) -> Vec<Vec<u64>> {
    let mut rows = Vec::new();
    for start in (0..vocabulary).step_by(5_000) {
        let values: Vec<String> = (start..vocabulary.min(start + 5_000))
            .map(|i| value(name, i))
            .collect();
        let n = values.len();
        let column = BatchBuilder::strings_column(name, values, vec![1; n]);
        let explained = client.explain("t", vec![column]).await.unwrap();
        rows.extend(explained.features[0].values.iter().map(|v| v.rows.clone()));
    }
    rows
}

fn within(reported: f64, exact: f64, relative: f64, what: &str) {
    assert!(
        (reported - exact).abs() <= relative * exact,
        "{what}: reported {reported}, exact {exact} (allowed ±{:.2} %)",
        relative * 100.0
    );
}

#[test]
fn reported_occupancy_matches_exact_counts_within_the_sketch_error() {
    let dir = tempfile::tempdir().unwrap();
    let every_batch = ServerSettings {
        extra_toml: "[occupancy]\nsample_every = 1\n".into(),
    };
    let server = TestServer::start(&dir.path().join("data"), &every_batch);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(server.client(None));
    let http = Http::new(reqwest::Client::new(), server.http_url(), "");
    let (report, grpc) = runtime.block_on(async {
        let mut features: Vec<pb::FeatureConfig> = FEATURES
            .iter()
            .map(|&(name, _, chunks)| {
                feature(name, pb::ValueType::String, pb::Pooling::Sum, chunks)
            })
            .collect();
        features[2].partitioned = Some(pb::Partitioned {
            offset: None,
            rows: 2_000,
        });
        client
            .create_table(
                featmux_tests::requests::sgd_table("t", ROWS, 4, 0.1),
                features,
            )
            .await
            .unwrap();
        for start in (0..EXAMPLES).step_by(1_000) {
            client
                .lookup("t", &batch(start..start + 1_000), false)
                .await
                .unwrap();
        }
        let (status, report) = http.get("/v1/tables/t/occupancy").await;
        assert_eq!(status, 200, "{report}");
        (report, client.occupancy("t").await.unwrap())
    });

    // Exact: every value's rows, then the traffic replayed in lookup order
    // (features in batch order, values, chunks), first user of a row first.
    let rows: Vec<Vec<Vec<u64>>> = runtime.block_on(async {
        let mut all = Vec::new();
        for (name, vocabulary, _) in FEATURES {
            all.push(rows_of(&client, name, vocabulary).await);
        }
        all
    });
    let mut owner: HashMap<u64, Option<usize>> = HashMap::new();
    let mut entries = [0u64; 4];
    let mut on_shared = [0u64; 4];
    for start in (0..EXAMPLES).step_by(1_000) {
        for (f, (_, vocabulary, _)) in FEATURES.iter().enumerate() {
            for j in start..start + 1_000 {
                for &row in &rows[f][j % vocabulary] {
                    entries[f] += 1;
                    let slot = owner.entry(row).or_insert(Some(f));
                    if *slot != Some(f) {
                        *slot = None;
                        on_shared[f] += 1;
                    }
                }
            }
        }
    }
    let occupied = owner.len() as u64;
    let shared = owner.values().filter(|o| o.is_none()).count() as u64;
    let error = report["relative_error"].as_f64().unwrap();
    let tolerance = 4.0 * error;
    assert_eq!(report["occupied_rows"], occupied);
    assert_eq!(report["shared_rows"], shared);
    assert_eq!(report["rows"], ROWS);
    let total_values: usize = FEATURES.iter().map(|f| f.1).sum();
    within(
        report["distinct_values"].as_f64().unwrap(),
        total_values as f64,
        tolerance,
        "distinct values",
    );
    let total_items: f64 = FEATURES.iter().map(|f| (f.1 * f.2 as usize) as f64).sum();
    let exact_collision = 1.0 - occupied as f64 / total_items;
    let reported_collision = report["collision_rate"].as_f64().unwrap();
    assert!(
        (reported_collision - exact_collision).abs() <= tolerance * (1.0 - exact_collision),
        "table collision rate {reported_collision} vs {exact_collision}"
    );
    for (f, (name, vocabulary, chunks)) in FEATURES.iter().enumerate() {
        let r = &report["features"][f];
        assert_eq!(r["feature"], *name);
        let distinct_rows: HashSet<u64> = rows[f].iter().flatten().copied().collect();
        let items = (vocabulary * *chunks as usize) as f64;
        within(
            r["distinct_values"].as_f64().unwrap(),
            *vocabulary as f64,
            tolerance,
            name,
        );
        within(
            r["rows"].as_f64().unwrap(),
            distinct_rows.len() as f64,
            tolerance,
            name,
        );
        let exact = 1.0 - distinct_rows.len() as f64 / items;
        let got = r["collision_rate"].as_f64().unwrap();
        assert!(
            (got - exact).abs() <= 2.0 * tolerance * (1.0 - exact) + 1e-9,
            "{name}: collision rate {got} vs {exact}"
        );
        // Uniform hashing's prediction for the same items and span.
        let span = r["span_rows"].as_f64().unwrap();
        let expected = 1.0 - span * (1.0 - (1.0 - 1.0 / span).powf(items)) / items;
        assert!((r["expected_collision_rate"].as_f64().unwrap() - expected).abs() < tolerance);
        assert_eq!(r["entries"], entries[f], "{name}");
        assert_eq!(r["entries_on_shared_rows"], on_shared[f], "{name}");
    }
    assert_eq!(report["features"][2]["span_rows"], 2_000);
    assert_eq!(report["features"][0]["span_rows"], ROWS);
    // Every row is in the histogram; empty rows are the unoccupied ones.
    let histogram: Vec<u64> = report["items_per_row"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(histogram.iter().sum::<u64>(), ROWS);
    assert_eq!(histogram[0], ROWS - occupied);
    // One-item rows: exact when a row holds one item, and rows holding two
    // items are counted as one when both pick the same bit (1 in 16).
    let mut per_row: HashMap<u64, BTreeSet<(usize, usize, usize)>> = HashMap::new();
    for (f, values) in rows.iter().enumerate() {
        for (v, chunks) in values.iter().enumerate() {
            for (c, &row) in chunks.iter().enumerate() {
                per_row.entry(row).or_default().insert((f, v, c));
            }
        }
    }
    let singles = per_row.values().filter(|items| items.len() == 1).count() as f64;
    let doubles = per_row.values().filter(|items| items.len() == 2).count() as f64;
    let reported_singles = histogram[1] as f64;
    assert!(
        reported_singles >= singles && reported_singles <= singles + doubles / 16.0 * 2.0 + 50.0,
        "rows with one item: {reported_singles} reported, {singles} exact"
    );

    // gRPC and the CLI report the same numbers.
    assert_eq!(grpc.occupied_rows, occupied);
    assert_eq!(grpc.features.len(), 4);
    let out = Command::new(featmux_binary())
        .args([
            "--addr",
            &server.grpc_url(),
            "--json",
            "table",
            "occupancy",
            "t",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli["occupied_rows"], occupied);
    assert_eq!(cli["features"][1]["entries"], entries[1]);
    let text = Command::new(featmux_binary())
        .args(["--addr", &server.grpc_url(), "table", "occupancy", "t"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("{occupied} occupied")), "{text}");
    // And /metrics carries the table's figures.
    runtime.block_on(async {
        let (_, metrics) = http.get("/metrics").await;
        let metrics = metrics.as_str().unwrap().to_owned();
        assert!(
            metrics.contains(&format!(
                "featmux_table_occupied_rows{{table=\"t\"}} {occupied}"
            )),
            "{metrics}"
        );
        assert!(metrics.contains("featmux_feature_shared_traffic{feature=\"age\",table=\"t\"}"));
    });
}
