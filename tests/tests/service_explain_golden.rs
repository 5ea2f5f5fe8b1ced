//! Explain, over gRPC and HTTP, returns exactly the rows of the golden
//! hashing vectors (`engine/tests/fixtures/hashing_golden.json`, computed
//! by an independent Python implementation) for every case a real table
//! can reproduce: salts are handed out in registration order, so salt `s`
//! is the `s`-th feature; rows up to 1,000,003 (larger tables would not fit
//! in memory here).

use std::collections::BTreeMap;

use featmux_client::{pb, BatchBuilder};
use featmux_tests::requests::Http;
use featmux_tests::server::{ServerSettings, TestServer};
use serde_json::{json, Value};

const MAX_SALT: u64 = 7;
const MAX_ROWS: u64 = 1_000_003;

#[test]
fn explain_returns_the_golden_rows() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../engine/tests/fixtures/hashing_golden.json"
    );
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    // One table per (seed, span rows, offset, value type), features f0..=f7.
    let mut groups: BTreeMap<(u64, u64, u64, String), Vec<&Value>> = BTreeMap::new();
    for case in golden["cases"].as_array().unwrap() {
        let (salt, rows) = (
            case["salt"].as_u64().unwrap(),
            case["rows"].as_u64().unwrap(),
        );
        let offset = case["offset"].as_u64().unwrap_or(0);
        if salt > MAX_SALT || rows > MAX_ROWS || offset + rows > 10 * MAX_ROWS {
            continue;
        }
        let key = (
            case["table_seed"].as_u64().unwrap(),
            rows,
            offset,
            case["value_type"].as_str().unwrap().to_owned(),
        );
        groups.entry(key).or_default().push(case);
    }
    let covered: usize = groups.values().map(Vec::len).sum();
    assert!(covered >= 30, "only {covered} golden cases reachable");

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &ServerSettings::default());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = server.client(None).await;
        let http = Http::new(reqwest::Client::new(), server.http_url(), "");
        for (i, ((seed, rows, offset, value_type), cases)) in groups.iter().enumerate() {
            let table = format!("g{i}");
            let int64 = value_type == "int64";
            let features = (0..=MAX_SALT)
                .map(|s| pb::FeatureConfig {
                    name: format!("f{s}"),
                    chunks: 4,
                    value_type: if int64 {
                        pb::ValueType::Int64
                    } else {
                        pb::ValueType::String
                    } as i32,
                    partitioned: (*offset > 0)
                        .then_some(pb::Partitioned {
                            offset: Some(*offset),
                            rows: *rows,
                        })
                        .filter(|_| s == cases[0]["salt"].as_u64().unwrap()),
                    ..Default::default()
                })
                .collect();
            let table_rows = if *offset > 0 { offset + rows } else { *rows };
            // Partitioned slices may not overlap: only the case's own salt gets one.
            client
                .create_table(
                    pb::TableConfig {
                        name: table.clone(),
                        rows: table_rows,
                        chunk_dim: 1,
                        seed: *seed,
                        ..Default::default()
                    },
                    features,
                )
                .await
                .unwrap();
            for case in cases {
                let salt = case["salt"].as_u64().unwrap();
                let chunk = case["chunk"].as_u64().unwrap() as usize;
                let feature = format!("f{salt}");
                let column = if int64 {
                    BatchBuilder::int64_column(
                        &feature,
                        vec![case["value"].as_i64().unwrap()],
                        vec![1],
                    )
                } else {
                    BatchBuilder::strings_column(
                        &feature,
                        vec![case["value"].as_str().unwrap().to_owned()],
                        vec![1],
                    )
                };
                let explained = client.explain(&table, vec![column]).await.unwrap();
                let row = explained.features[0].values[0].rows[chunk];
                assert_eq!(row, case["row"].as_u64().unwrap(), "gRPC explain of {case}");
                let (status, body) = http
                    .post(
                        &format!("/v1/tables/{table}/explain"),
                        "",
                        json!({"features": {feature.clone(): case["value"].clone()}}),
                    )
                    .await;
                assert_eq!(status, 200, "{body}");
                assert_eq!(
                    body["features"][&feature][0]["rows"][chunk], case["row"],
                    "HTTP explain of {case}"
                );
            }
        }
    });
    assert!(server.stop().success());
}
