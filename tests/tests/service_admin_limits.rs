//! Admin calls against the memory budget and each other: a table past the
//! budget is refused (the process used to abort allocating it), a big
//! create does not hold up other admin calls while it fills, and a table is
//! never seen without the features it was created with.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use featmux_client::{pb, Code};
use featmux_tests::requests::{feature, sgd_table, Http};
use featmux_tests::server::{ServerSettings, TestServer};
use serde_json::json;

fn start(dir: &tempfile::TempDir, extra_toml: &str) -> TestServer {
    TestServer::start(
        &dir.path().join("data"),
        &ServerSettings {
            extra_toml: extra_toml.into(),
        },
    )
}

/// With no budget configured the default (80 % of this machine's memory)
/// applies: a 72 TB table (16 floats + 1 of row-wise Adagrad state per row,
/// and 4 bytes of occupancy statistics) is refused with the bytes asked and left, over
/// both transports, and the server goes on.
#[test]
fn a_table_past_the_memory_budget_is_refused_and_the_server_lives() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, "");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let admin = server.client(None).await;
        let http = Http::new(reqwest::Client::new(), server.http_url(), "");
        let (status, body) = http
            .send(
                reqwest::Method::POST,
                "/v1/tables",
                None,
                Some(json!({"table": {"name": "huge", "rows": 1_000_000_000_000u64, "chunk_dim": 16}})),
            )
            .await;
        assert_eq!(status, 413, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("72000000000000 bytes") && message.contains("max_memory_bytes"),
            "{message}"
        );
        let err = admin
            .create_table(sgd_table("huge", 1 << 40, 16, 0.1), vec![])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
        // Still serving, nothing created.
        assert!(admin.list_tables().await.unwrap().is_empty());
        admin
            .create_table(sgd_table("small", 1000, 8, 0.1), vec![])
            .await
            .unwrap();
    });
    assert!(server.stop().success());
}

/// An explicit budget counts every table; dropping one gives its memory back.
#[test]
fn the_budget_counts_every_table_and_drop_frees_it() {
    let dir = tempfile::tempdir().unwrap();
    // 1000 rows × (8 floats × 4 bytes + 4 bytes of occupancy statistics)
    // = 36,000 bytes per SGD table.
    let server = start(&dir, "[limits]\nmax_memory_bytes = 76000\n");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let admin = server.client(None).await;
        for name in ["a", "b"] {
            admin
                .create_table(sgd_table(name, 1000, 8, 0.1), vec![])
                .await
                .unwrap();
        }
        let err = admin
            .create_table(sgd_table("c", 1000, 8, 0.1), vec![])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
        assert!(err.to_string().contains("4000 of the 76000-byte"), "{err}");
        admin.drop_table("a").await.unwrap();
        admin
            .create_table(sgd_table("c", 1000, 8, 0.1), vec![])
            .await
            .unwrap();
        // A restore builds the table beside the live ones: budgeted too.
        let checkpoint = admin.create_checkpoint().await.unwrap();
        let err = admin
            .restore_checkpoint(checkpoint.id, "b", Some("b2"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
        assert!(err.to_string().contains("restoring table `b`"), "{err}");
    });
    assert!(server.stop().success());
}

/// A create that fills 800 MB must not make every other admin call wait:
/// a small create started after it finishes first.
#[test]
fn a_big_create_does_not_block_other_admin_calls() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, "");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let admin = server.client(None).await;
        let big_done = Arc::new(AtomicBool::new(false));
        let big = {
            let admin = server.client(None).await;
            let big_done = big_done.clone();
            tokio::spawn(async move {
                admin
                    .create_table(sgd_table("big", 25_000_000, 8, 0.1), vec![])
                    .await
                    .unwrap();
                big_done.store(true, Ordering::SeqCst);
            })
        };
        // Let the big create take the admin path first.
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        admin
            .create_table(sgd_table("small", 100, 8, 0.1), vec![])
            .await
            .unwrap();
        assert!(
            !big_done.load(Ordering::SeqCst),
            "the small create waited for the big one"
        );
        big.await.unwrap();
        // The big table's name was claimed while it filled.
        let err = admin
            .create_table(sgd_table("big", 10, 8, 0.1), vec![])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(Code::AlreadyExists), "{err}");
    });
    assert!(server.stop().success());
}

/// Create-with-features is one change: a reader never sees the table with
/// only some of its features (and a crash cannot leave it so).
#[test]
fn a_table_is_never_seen_without_its_features() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, "");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let admin = server.client(None).await;
        let watcher = server.client(None).await;
        let done = Arc::new(AtomicBool::new(false));
        let watch = {
            let done = done.clone();
            tokio::spawn(async move {
                let mut seen = 0;
                while !done.load(Ordering::SeqCst) {
                    for table in watcher.list_tables().await.unwrap() {
                        assert_eq!(
                            table.features.len(),
                            3,
                            "table {} seen with {} of its 3 features",
                            table.config.unwrap().name,
                            table.features.len()
                        );
                        seen += 1;
                    }
                }
                seen
            })
        };
        for i in 0..40 {
            admin
                .create_table(
                    sgd_table(&format!("t{i}"), 100, 4, 0.1),
                    ["a", "b", "c"]
                        .iter()
                        .map(|f| feature(f, pb::ValueType::String, pb::Pooling::Sum, 1))
                        .collect(),
                )
                .await
                .unwrap();
        }
        done.store(true, Ordering::SeqCst);
        let seen = watch.await.unwrap();
        assert!(seen > 0, "the watcher saw no table");
    });
    assert!(server.stop().success());
}
