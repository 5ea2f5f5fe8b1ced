//! Every kind of bad request over HTTP gets the right status and a message
//! naming the problem, and leaves every table unchanged (a lookup, the
//! training version and the tables are compared before and after each).
//! One server per test; the fixture is `featmux_tests::refusals`.

use featmux_tests::refusals::*;
use featmux_tests::requests::Http;
use featmux_tests::server::TestServer;
use featmux_tests::unchanged;
use serde_json::{json, Value};

#[test]
fn http_serving_errors_use_the_same_statuses() {
    run(async |f| {
        let Fixture { admin, http, .. } = f;
        let before = snapshot(admin).await;
        let lookup = |body: Value| http.post("/v1/tables/t/lookup", DATA, body);
        expect_http(
            http.post(
                "/v1/tables/nope/lookup",
                DATA,
                json!({"examples": [{"u": "a"}]}),
            )
            .await,
            404,
            "unknown table `nope`",
        );
        expect_http(
            lookup(json!({"examples": [{"u": "a"}, {"zzz": 1}]})).await,
            404,
            "example 1: unknown feature `zzz`",
        );
        expect_http(
            lookup(json!({"examples": [{"n": "seven"}]})).await,
            400,
            "example 0, feature `n`: expected a 64-bit integer",
        );
        expect_http(
            lookup(json!({"examples": [{"u": 3}]})).await,
            400,
            "expected a string",
        );
        expect_http(lookup(json!({"examples": "nope"})).await, 400, "examples");
        expect_http(
            lookup(json!({"examples": [], "extra": 1})).await,
            400,
            "extra",
        );
        expect_http(
            http.send_raw(
                "/v1/tables/t/lookup",
                DATA,
                "application/json",
                b"{\"examples\": [".to_vec(),
            )
            .await,
            400,
            "EOF",
        );
        // A feature given twice in one example (JSON allows the repeat).
        expect_http(
            http.send_raw(
                "/v1/tables/t/lookup",
                DATA,
                "application/json",
                br#"{"examples": [{"u": "a", "u": "b"}]}"#.to_vec(),
            )
            .await,
            400,
            "example 0: feature `u` is given twice",
        );
        expect_http(
            http.send_raw("/v1/tables/t/lookup", DATA, "text/plain", b"{}".to_vec())
                .await,
            400,
            "Content-Type",
        );
        let ints: Vec<i64> = (0..1001).collect();
        expect_http(
            lookup(json!({"examples": [{"n": ints}]})).await,
            413,
            "max_batch_values",
        );
        let wide_examples: Vec<Value> = (0..100).map(|_| json!({"w": "a"})).collect();
        expect_http(
            http.post(
                "/v1/tables/wide/lookup",
                DATA,
                json!({"examples": wide_examples}),
            )
            .await,
            413,
            "split the batch",
        );
        // As JSON, 20 examples × 256 floats (up to 16 bytes each) are over
        // the 64 KiB message limit although their 20 KiB of floats are not.
        let json_examples: Vec<Value> = (0..20).map(|_| json!({"w": "a"})).collect();
        expect_http(
            http.post(
                "/v1/tables/wide/lookup",
                DATA,
                json!({"examples": json_examples}),
            )
            .await,
            413,
            "5120 floats",
        );
        // Values × chunks, before anything is built: 300 × 4 = 1,200.
        expect_http(
            http.post(
                "/v1/tables/wide/lookup",
                DATA,
                json!({"examples": [{"w": vec!["a"; 300]}]}),
            )
            .await,
            413,
            "1200 (value, chunk) entries",
        );
        expect_http(
            http.post(
                "/v1/tables/wide/explain",
                ADMIN,
                json!({"features": {"w": vec!["a"; 300]}}),
            )
            .await,
            413,
            "1200 (value, chunk) entries",
        );
        // 5,000 empty examples × 2 features: refused before the per-feature
        // lengths are built.
        let empty: Vec<Value> = (0..5000).map(|_| json!({})).collect();
        expect_http(
            lookup(json!({"examples": empty, "concat": true})).await,
            413,
            "10000 (example, feature) bags",
        );
        let long = "y".repeat(20_000);
        expect_http(
            lookup(json!({"examples": [{"u": long}]})).await,
            413,
            "max_request_bytes",
        );
        expect_http(
            http.send(
                reqwest::Method::POST,
                "/v1/tables/t/lookup",
                None,
                Some(json!({"examples": []})),
            )
            .await,
            401,
            "missing",
        );
        expect_http(lookup_with(http, "nope").await, 401, "wrong token");
        unchanged!(admin, before, "HTTP serving errors");
    });
}

#[test]
fn http_admin_errors_use_the_same_statuses() {
    run(async |f| {
        let Fixture { admin, http, .. } = f;
        let before = snapshot(admin).await;
        expect_http(
            http.post(
                "/v1/tables",
                ADMIN,
                json!({"table": {"name": "z", "rows": 0, "chunk_dim": 4}}),
            )
            .await,
            400,
            "rows",
        );
        expect_http(
            http.post(
                "/v1/tables",
                ADMIN,
                json!({"table": {"name": "t", "rows": 10, "chunk_dim": 4}}),
            )
            .await,
            409,
            "already exists",
        );
        expect_http(
            http.post(
                "/v1/tables",
                DATA,
                json!({"table": {"name": "z", "rows": 10, "chunk_dim": 4}}),
            )
            .await,
            401,
            "admin token",
        );
        expect_http(
            http.send(reqwest::Method::GET, "/v1/tables", None, None)
                .await,
            401,
            "missing",
        );
        expect_http(
            http.get("/v1/tables/nope").await,
            404,
            "unknown table `nope`",
        );
        expect_http(
            http.send(
                reqwest::Method::DELETE,
                "/v1/tables/nope",
                Some(ADMIN),
                None,
            )
            .await,
            404,
            "nope",
        );
        expect_http(
            http.send(
                reqwest::Method::DELETE,
                "/v1/checkpoints/42",
                Some(ADMIN),
                None,
            )
            .await,
            404,
            "checkpoint 42",
        );
        expect_http(
            http.post(
                "/v1/tables/t/features",
                ADMIN,
                json!({"features": [{"name": "ok"}, {"name": "n"}]}),
            )
            .await,
            409,
            "n",
        );
        expect_http(
            http.post(
                "/v1/tables/t/features",
                ADMIN,
                json!({"features": [{"name": "q", "pooling": "max"}]}),
            )
            .await,
            400,
            "max",
        );
        expect_http(
            http.post(
                "/v1/tables/t/explain",
                ADMIN,
                json!({"features": {"zzz": "a"}}),
            )
            .await,
            404,
            "zzz",
        );
        unchanged!(admin, before, "HTTP admin errors");
    });
}

/// Path, routing and method refusals come back in the same JSON error body
/// as every other refusal, with the status a client expects.
#[test]
fn every_refusal_uses_the_api_error_body() {
    run(async |f| {
        let Fixture { admin, http, .. } = f;
        let before = snapshot(admin).await;
        expect_http(
            http.post("/v1/checkpoints/abc/restore", ADMIN, json!({"table": "t"}))
                .await,
            400,
            "abc",
        );
        expect_http(
            http.send(
                reqwest::Method::DELETE,
                "/v1/checkpoints/-1",
                Some(ADMIN),
                None,
            )
            .await,
            400,
            "-1",
        );
        expect_http(http.get("/v1/nothing/here").await, 404, "/v1/nothing/here");
        expect_http(
            http.send(reqwest::Method::PUT, "/v1/tables", Some(ADMIN), None)
                .await,
            405,
            "PUT",
        );
        unchanged!(admin, before, "HTTP path and method refusals");
    });
}

/// `/metrics` names tables and their sizes: with tokens configured it needs
/// one (either token), unless the operator opts out with
/// `auth.public_metrics`.
#[test]
fn metrics_need_a_token_when_tokens_are_configured() {
    run(async |f| {
        let Fixture { http, .. } = f;
        expect_http(
            http.send(reqwest::Method::GET, "/metrics", None, None)
                .await,
            401,
            "missing",
        );
        expect_http(
            http.send(reqwest::Method::GET, "/metrics", Some("nope"), None)
                .await,
            401,
            "wrong token",
        );
        for token in [ADMIN, DATA] {
            let (status, text) = http
                .send(reqwest::Method::GET, "/metrics", Some(token), None)
                .await;
            assert_eq!(status, 200, "{text}");
            assert!(text.as_str().unwrap().contains("featmux_"), "{text}");
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut opted_out = settings();
    opted_out.extra_toml = opted_out
        .extra_toml
        .replace("[auth]\n", "[auth]\npublic_metrics = true\n");
    let server = TestServer::start(&dir.path().join("data"), &opted_out);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let http = Http::new(reqwest::Client::new(), server.http_url(), ADMIN);
        let (status, text) = http
            .send(reqwest::Method::GET, "/metrics", None, None)
            .await;
        assert_eq!(status, 200, "{text}");
        expect_http(
            http.send(reqwest::Method::GET, "/v1/tables", None, None)
                .await,
            401,
            "missing",
        );
    });
    assert!(server.stop().success());
}

async fn lookup_with(http: &Http, token: &str) -> (u16, Value) {
    http.post("/v1/tables/t/lookup", token, json!({"examples": []}))
        .await
}
