//! Smoke test of `featmux bench` against a real server: every workload
//! runs briefly with zero errors and a well-formed JSON report; pushes land
//! (the training version counts them); open-loop mode keeps to its rate.

use std::process::Command;

use featmux_tests::server::{featmux_binary, ServerSettings, TestServer};
use serde_json::Value;

fn bench(server: &TestServer, args: &[&str]) -> Value {
    let out = Command::new(featmux_binary())
        .args([
            "--addr",
            &server.grpc_url(),
            "--json",
            "bench",
            "--http",
            &server.http_url(),
        ])
        .args([
            "--table",
            "lg",
            "--rows",
            "10000",
            "--examples",
            "32",
            "--features",
            "4",
            "--vocab",
            "500",
        ])
        .args(args)
        .output()
        .expect("run featmux bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[test]
fn every_workload_runs_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &ServerSettings::default());
    for workload in ["lookup", "push", "train", "http-lookup"] {
        let report = bench(
            &server,
            &[
                "--workload",
                workload,
                "--duration",
                "0.5",
                "--concurrency",
                "2",
                "--zipf",
                "1.1",
            ],
        );
        assert_eq!(report["errors"], 0, "{report}");
        let requests = report["requests"].as_u64().unwrap();
        assert!(requests > 0, "{report}");
        let rows = report["rows_per_s"].as_f64().unwrap();
        let expected = requests as f64 * 32.0 * 4.0 / report["elapsed_s"].as_f64().unwrap();
        assert!((rows - expected).abs() < 1e-6 * expected, "{report}");
        assert!(
            report["payload_mb_per_s"].as_f64().unwrap() > 0.0,
            "{report}"
        );
        let p = &report["latency_us"];
        assert!(
            p["p50"].as_u64().unwrap() <= p["p99"].as_u64().unwrap(),
            "{report}"
        );
        assert!(
            p["p99"].as_u64().unwrap() <= p["max"].as_u64().unwrap(),
            "{report}"
        );
    }

    // A request budget is exact, and every push is applied.
    let before = stats_version(&server);
    let report = bench(
        &server,
        &["--workload", "push", "--requests", "25", "--duration", "60"],
    );
    assert_eq!(report["requests"], 25);
    assert_eq!(stats_version(&server), before + 25);

    // Open loop at 40 req/s for 1 s: about 40 requests, not as many as fit.
    let report = bench(
        &server,
        &[
            "--workload",
            "lookup",
            "--rate",
            "40",
            "--duration",
            "1",
            "--concurrency",
            "2",
        ],
    );
    let requests = report["requests"].as_u64().unwrap();
    assert!((30..=42).contains(&requests), "{report}");
    assert!(server.stop().success());
}

fn stats_version(server: &TestServer) -> u64 {
    let out = Command::new(featmux_binary())
        .args(["--addr", &server.grpc_url(), "--json", "stats"])
        .output()
        .expect("run featmux stats");
    let stats: Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    stats["version"].as_u64().unwrap()
}
