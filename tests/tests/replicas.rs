//! Read replicas against real processes: a primary `featmux serve` and
//! replicas started with `[replica] primary = …`, over real gRPC and HTTP.
//! A replica copies the primary from an empty directory, follows its log
//! (never showing a torn flush), refuses writes naming the primary,
//! survives kill -9 of itself (resuming from its own data) and of its
//! primary (serving its last state, reporting it stale), and copies again
//! when the primary's retained log no longer reaches it.

use std::time::{Duration, Instant};

use featmux_client::{pb, BatchBuilder, Client, ClientError};
use featmux_tests::requests::{floats, Http};
use featmux_tests::server::{ServerSettings, TestServer};
use serde_json::json;
use tonic::Code;

const ROWS: u64 = 256;

fn table() -> pb::TableConfig {
    featmux_tests::requests::sgd_table("t", ROWS, 4, 0.5)
}

fn feature() -> pb::FeatureConfig {
    featmux_tests::requests::feature("id", pb::ValueType::Int64, pb::Pooling::Sum, 1)
}

/// Ids `ids`, one example each.
fn batch(ids: impl IntoIterator<Item = i64>) -> pb::Batch {
    let mut b = BatchBuilder::new();
    for id in ids {
        b.example().add_i64("id", id);
    }
    b.build().unwrap()
}

/// Every value the tests push, looked up: the state of the table.
fn probe() -> pb::Batch {
    batch(0..64)
}

async fn state(client: &Client) -> Vec<f32> {
    let looked_up = client.lookup("t", &probe(), false).await.unwrap();
    looked_up
        .embeddings
        .into_iter()
        .flat_map(|e| e.data)
        .collect()
}

/// Push `step`: three values, gradients that differ per step.
async fn push(client: &Client, step: u64) {
    let ids = [step % 64, (step * 7 + 3) % 64, (step * 13 + 5) % 64].map(|v| v as i64);
    let grads = vec![vec![0.01 * (step % 11 + 1) as f32; 3 * 4]];
    client.push("t", &batch(ids), &grads).await.unwrap();
}

fn primary_settings(extra: &str) -> ServerSettings {
    ServerSettings {
        extra_toml: format!("[storage]\nflush_interval_ms = 20\n{extra}"),
    }
}

fn replica_settings(primary: &TestServer, format: &str) -> ServerSettings {
    ServerSettings {
        extra_toml: format!(
            "[replica]\nprimary = \"{}\"\nrow_format = \"{format}\"\n",
            primary.grpc_url()
        ),
    }
}

/// Waits until the primary has flushed every push and `replica` serves
/// that version.
async fn caught_up(primary: &Client, replica: &Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = primary.stats().await.unwrap();
        let want = stats.flushed_version;
        let replica = replica.stats().await;
        if let Ok(replica) = replica {
            if stats.version == want && replica.version == want && replica.tables.len() == 1 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the replica never caught up with version {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (at most 10 s) until the server's metric `name` reads `value`.
async fn metric_reaches(http: &Http, name: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = http.metric(name).await;
        if now == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed {now}, not {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn expect_refused<T: std::fmt::Debug>(result: Result<T, ClientError>, primary: &TestServer) {
    let status = match result {
        Err(ClientError::Status(status)) => status,
        other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
    };
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains(&primary.grpc_url()),
        "the refusal names the primary: {status:?}"
    );
}

#[test]
fn a_replica_copies_the_primary_serves_what_it_serves_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let primary = TestServer::start(&dir.path().join("primary"), &primary_settings(""));
    let p = runtime.block_on(primary.client(None));
    runtime.block_on(async {
        p.create_table(table(), vec![feature()]).await.unwrap();
        for step in 0..20 {
            push(&p, step).await;
        }
    });
    let replica = TestServer::start(
        &dir.path().join("replica"),
        &replica_settings(&primary, "f32"),
    );
    runtime.block_on(async {
        let r = replica.client(None).await;
        caught_up(&p, &r).await;
        assert_eq!(state(&r).await, state(&p).await);
        // HTTP lookups read the same copy.
        let http = Http::new(reqwest::Client::new(), replica.http_url(), "");
        let (status, body) = http
            .post("/v1/tables/t/lookup", "", json!({"examples": [{"id": 3}]}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(floats(&body["examples"][0]["id"]), state(&p).await[12..16]);
        let info = r.get_table("t").await.unwrap();
        assert_eq!((info.row_format.as_str(), info.bytes_per_row), ("f32", 16));

        // Writes are refused, naming the primary, and change nothing.
        expect_refused(r.push("t", &batch([1]), &[vec![1.0; 4]]).await, &primary);
        expect_refused(r.create_table(table(), vec![]).await, &primary);
        expect_refused(r.drop_table("t").await, &primary);
        expect_refused(r.create_checkpoint().await, &primary);
        let mut stream = r.train().await.unwrap();
        let looked_up = stream.lookup("t", probe(), true).await.unwrap();
        let grads: Vec<Vec<f32>> = looked_up
            .embeddings
            .iter()
            .map(|e| vec![1.0; e.data.len()])
            .collect();
        expect_refused(
            stream
                .push_ticket("t", looked_up.ticket.unwrap(), &grads)
                .await,
            &primary,
        );
        let (status, body) = http
            .post(
                "/v1/tables",
                "",
                json!({"table": {"name": "x", "rows": 10, "chunk_dim": 4}}),
            )
            .await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(state(&r).await, state(&p).await);

        let (status, body) = http.get("/readyz").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.to_string().contains("replica of"), "{body}");
        assert_eq!(http.metric("featmux_replica_connected").await, 1.0);
        assert_eq!(http.metric("featmux_replica_bootstraps").await, 1.0);

        // A replica of a replica is refused: replicas follow the primary.
        let chained = TestServer::spawn(
            &dir.path().join("chained"),
            &replica_settings(&replica, "f32"),
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        );
        let chained_http = Http::new(reqwest::Client::new(), chained.http_url(), "");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = chained_http.get("/readyz").await;
            if body.to_string().contains("itself a replica") {
                assert_eq!(status, 503);
                break;
            }
            assert!(Instant::now() < deadline, "{status} {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

#[test]
fn under_continuous_pushes_a_replica_shows_only_whole_flushes_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let primary = TestServer::start(&dir.path().join("primary"), &primary_settings(""));
    let p = runtime.block_on(primary.client(None));
    runtime
        .block_on(p.create_table(table(), vec![feature()]))
        .unwrap();
    let replica = TestServer::start(
        &dir.path().join("replica"),
        &replica_settings(&primary, "f32"),
    );
    runtime.block_on(async {
        let r = replica.client(None).await;
        caught_up(&p, &r).await;
        // One pusher: the primary's state after push k is `states[k]`.
        let pusher = {
            let p = p.clone();
            tokio::spawn(async move {
                let mut states = vec![state(&p).await];
                for step in 0..150 {
                    push(&p, step).await;
                    states.push(state(&p).await);
                }
                states
            })
        };
        let mut seen = Vec::new();
        while !pusher.is_finished() {
            seen.push(state(&r).await);
        }
        let states = pusher.await.unwrap();
        caught_up(&p, &r).await;
        seen.push(state(&r).await);
        // Every observation is a state the primary passed through, never
        // going back (a torn flush would match none).
        let mut last = 0;
        for (i, observed) in seen.iter().enumerate() {
            let k = states[last..]
                .iter()
                .position(|s| s == observed)
                .unwrap_or_else(|| {
                    panic!("observation {i} is no state of the primary at or after push {last}")
                })
                + last;
            last = k;
        }
        assert_eq!(last, states.len() - 1, "the replica ends at the last push");
        let distinct = seen.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(
            distinct >= 3,
            "the replica moved while pushes ran ({distinct} changes)"
        );
    });
}

#[test]
fn a_replica_resumes_after_kill_9_and_serves_on_while_its_primary_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let primary_dir = dir.path().join("primary");
    let replica_dir = dir.path().join("replica");
    let primary = TestServer::start_restartable(&primary_dir, &primary_settings(""));
    let primary_grpc = primary.grpc;
    let primary_http = primary.http;
    let p = runtime.block_on(primary.client(None));
    runtime.block_on(async {
        p.create_table(table(), vec![feature()]).await.unwrap();
        for step in 0..10 {
            push(&p, step).await;
        }
    });
    let settings = replica_settings(&primary, "f32");
    let replica = TestServer::start(&replica_dir, &settings);
    runtime.block_on(async {
        caught_up(&p, &replica.client(None).await).await;
    });
    drop(replica); // kill -9
    runtime.block_on(async {
        for step in 10..30 {
            push(&p, step).await;
        }
    });
    let replica = TestServer::start(&replica_dir, &settings);
    let http = Http::new(reqwest::Client::new(), replica.http_url(), "");
    let r = runtime.block_on(replica.client(None));
    let last_state = runtime.block_on(async {
        // Serving at once from its own copy, then catching up by the log.
        assert_eq!(r.get_table("t").await.unwrap().bytes_per_row, 16);
        caught_up(&p, &r).await;
        assert_eq!(state(&r).await, state(&p).await);
        assert_eq!(
            http.metric("featmux_replica_bootstraps").await,
            0.0,
            "resumed, not copied again"
        );
        state(&p).await
    });

    drop(primary); // kill -9
    runtime.block_on(async {
        metric_reaches(&http, "featmux_replica_connected", 0.0).await;
        assert_eq!(state(&r).await, last_state, "serving its last state");
        let (status, body) = http.get("/readyz").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.to_string().contains("primary unreachable"), "{body}");
        let stale = http.metric("featmux_replica_staleness_milliseconds").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(http.metric("featmux_replica_staleness_milliseconds").await >= stale + 250.0);
    });

    // The primary comes back on the same addresses: the replica follows again.
    let primary = TestServer::start_at(
        &primary_dir,
        &primary_settings(""),
        primary_grpc,
        primary_http,
    );
    let p = runtime.block_on(primary.client(None));
    runtime.block_on(async {
        for step in 30..40 {
            push(&p, step).await;
        }
        caught_up(&p, &r).await;
        assert_eq!(state(&r).await, state(&p).await);
        assert_eq!(http.metric("featmux_replica_connected").await, 1.0);
    });
}

#[test]
fn a_replica_behind_the_primarys_retained_log_copies_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let replica_dir = dir.path().join("replica");
    // The primary keeps no log beyond what RocksDB itself needs, and no
    // commits in memory (which would serve this replica's gap).
    let primary = TestServer::start(
        &dir.path().join("primary"),
        &primary_settings(
            "retained_wal_mb = 0\nretained_wal_secs = 0\nreplication_buffer_mb = 0\n",
        ),
    );
    let p = runtime.block_on(primary.client(None));
    runtime
        .block_on(p.create_table(table(), vec![feature()]))
        .unwrap();
    let settings = replica_settings(&primary, "int8");
    let replica = TestServer::start(&replica_dir, &settings);
    runtime.block_on(async { caught_up(&p, &replica.client(None).await).await });
    drop(replica); // kill -9
    runtime.block_on(async {
        for step in 0..20 {
            push(&p, step).await;
        }
        // A checkpoint flushes the memtables: the log they were in goes.
        p.create_checkpoint().await.unwrap();
        push(&p, 20).await;
    });
    let mut replica = TestServer::start(&replica_dir, &settings);
    replica.wait_for_log("the primary's log no longer reaches this replica: copying it again");
    let http = Http::new(reqwest::Client::new(), replica.http_url(), "");
    runtime.block_on(async {
        let r = replica.client(None).await;
        caught_up(&p, &r).await;
        // The copy is served a moment before the follower counts it.
        metric_reaches(&http, "featmux_replica_bootstraps", 1.0).await;
        // int8: each row within half a quantization step of the primary's.
        let (exact, served) = (state(&p).await, state(&r).await);
        for (want, got) in exact.chunks(4).zip(served.chunks(4)) {
            let (lo, hi) = want
                .iter()
                .fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
            for (w, g) in want.iter().zip(got) {
                assert!((w - g).abs() <= (hi - lo) / 510.0 + 1e-6, "{g} vs {w}");
            }
        }
        assert_eq!(r.get_table("t").await.unwrap().bytes_per_row, 4 + 8);
    });
}
