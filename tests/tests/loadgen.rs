//! Smoke test of `featmux bench` against a real server: every workload
//! runs briefly with zero errors and a well-formed JSON report; pushes land
//! (the training version counts them); open-loop mode keeps to its rate.
//! The peers (in-process engine, TCP exchange, Redis MGET against a real
//! `redis-server`) run through the same harness.

use std::process::{Command, Output};

use featmux_tests::etcd::Etcd;
use featmux_tests::server::{featmux_binary, ServerSettings, TestServer};
use serde_json::Value;

fn bench(server: &TestServer, args: &[&str]) -> Value {
    bench_with(
        &[
            "--addr",
            &server.grpc_url(),
            "--json",
            "bench",
            "--http",
            &server.http_url(),
        ],
        args,
    )
}

fn bench_with(prefix: &[&str], args: &[&str]) -> Value {
    let out = bench_output(prefix, args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// A bench run on table `lg` of 10,000 rows, 32 examples × 4 features,
/// whatever its outcome.
fn bench_output(prefix: &[&str], args: &[&str]) -> Output {
    Command::new(featmux_binary())
        .args(prefix)
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
        .expect("run featmux bench")
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
        assert_well_formed(&report, workload, 1);
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

/// `--key-type int64`: the ids as int64 values, into a table of int64
/// features the first run creates (the server refuses int64 values for
/// string features, so a string table would make every request fail).
#[test]
fn int64_ids_run_through_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &ServerSettings::default());
    for workload in ["lookup", "train", "http-lookup"] {
        let report = bench(
            &server,
            &[
                "--workload",
                workload,
                "--key-type",
                "int64",
                "--values",
                "2",
                "--duration",
                "0.5",
                "--concurrency",
                "2",
            ],
        );
        assert_well_formed(&report, workload, 2);
    }
    assert!(server.stop().success());
}

/// A run that finds its table with features of another value type is
/// refused before it starts, naming the feature and both types (it used to
/// run, every request failing on the server).
#[test]
fn an_existing_table_of_another_key_type_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &ServerSettings::default());
    let (grpc, http) = (server.grpc_url(), server.http_url());
    let prefix = ["--addr", &grpc, "--json", "bench", "--http", &http];
    let run = [
        "--workload",
        "lookup",
        "--duration",
        "0.2",
        "--concurrency",
        "1",
    ];
    assert_well_formed(&bench_with(&prefix, &run), "lookup", 1);
    let int64 = [&run[..], &["--key-type", "int64"]].concat();
    let out = bench_output(&prefix, &int64);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ran on a string table: {stderr}");
    assert!(
        stderr.contains("feature `f0` as type=string,chunks=1,pooling=sum")
            && stderr.contains("sends type=int64"),
        "{stderr}"
    );
    assert!(server.stop().success());
}

/// `--shared-region`: lookups and training steps through a Train stream's
/// shared-memory region on the Unix socket, every step applied.
#[test]
fn shared_region_workloads_run_over_the_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("grpc.sock");
    let settings = ServerSettings {
        extra_toml: format!("grpc_unix_socket = {socket:?}\n"),
    };
    let server = TestServer::start(&dir.path().join("data"), &settings);
    let addr = format!("unix://{}", socket.display());
    let prefix = [
        "--addr",
        addr.as_str(),
        "--json",
        "bench",
        "--shared-region",
    ];
    let report = bench_with(
        &prefix,
        &[
            "--workload",
            "lookup",
            "--duration",
            "0.5",
            "--concurrency",
            "2",
        ],
    );
    assert_well_formed(&report, "lookup", 1);
    assert_eq!(report["shared_region"], true);
    // Every step and every push applied.
    for workload in ["train", "push"] {
        let before = stats_version(&server);
        let report = bench_with(
            &prefix,
            &[
                "--workload",
                workload,
                "--requests",
                "12",
                "--duration",
                "60",
            ],
        );
        assert_eq!(report["requests"], 12, "{report}");
        assert_eq!(report["errors"], 0, "{report}");
        assert_eq!(stats_version(&server), before + 12, "{workload}");
    }

    let refused = Command::new(featmux_binary())
        .args(prefix)
        .args(["--workload", "http-lookup", "--requests", "1"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("for the lookup, push and train workloads"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(server.stop().success());
}

/// Zero errors, rows/s = requests × 32 examples × 4 features × `values`
/// per second, payload moved, ordered percentiles.
fn assert_well_formed(report: &Value, workload: &str, values: u64) {
    assert_eq!(report["workload"], workload, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let requests = report["requests"].as_u64().unwrap();
    assert!(requests > 0, "{report}");
    let rows = report["rows_per_s"].as_f64().unwrap();
    let expected = (requests * 32 * 4 * values) as f64 / report["elapsed_s"].as_f64().unwrap();
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

/// The peers need no featmux server: the in-process engine, the plain TCP
/// exchange, and Redis (a real `redis-server` on a free port) with the
/// client pooling bags of 3 in one MGET and in pipelined MGETs of 7 keys.
#[test]
fn peers_run_through_the_same_harness() {
    let peer = |args: &[&str]| {
        bench_with(
            &["--json", "bench"],
            &[&["--duration", "0.5", "--concurrency", "2"], args].concat(),
        )
    };
    for workload in ["engine-lookup", "engine-push", "engine-train", "tcp-blast"] {
        assert_well_formed(&peer(&["--workload", workload]), workload, 1);
    }
    for workload in ["engine-lookup", "engine-train"] {
        let report = peer(&["--workload", workload, "--key-type", "int64"]);
        assert_well_formed(&report, workload, 1);
    }
    let tcp = peer(&["--workload", "tcp-blast", "--requests", "10"]);
    // Each exchange returns a lookup's embeddings: 32 × 4 × 16 floats.
    let mb = tcp["payload_mb_per_s"].as_f64().unwrap() * tcp["elapsed_s"].as_f64().unwrap();
    assert!(
        (mb * 1e6 - 10.0 * 32.0 * 4.0 * 16.0 * 4.0).abs() < 1.0,
        "{tcp}"
    );

    let redis = RedisServer::start();
    let addr = redis.addr();
    for mget_keys in ["0", "7"] {
        let report = peer(&[
            "--workload",
            "redis-mget",
            "--redis",
            &addr,
            "--values",
            "3",
            "--mget-keys",
            mget_keys,
        ]);
        assert_well_formed(&report, "redis-mget", 3);
    }
    // Only the keys the batches use were loaded: 2 clients × 8 batches ×
    // 32 examples × 4 features × 3 values draws from 4 × 500 keys.
    let keys: u64 = redis.command(&["dbsize"]).trim().parse().unwrap();
    assert!(keys > 1000 && keys <= 2000, "{keys} keys");
}

/// An in-process request never waits, so a client that did not give way
/// after each one would keep its runtime worker for the whole run: with
/// more clients than workers, the others (and their batches) never ran,
/// and the engine's rate was measured on a fraction of the rows the
/// service runs touch. One worker, three clients: each must get turns.
#[test]
fn in_process_clients_take_turns_on_the_runtime() {
    for workload in ["engine-lookup", "engine-push", "engine-train"] {
        let out = Command::new(featmux_binary())
            .env("TOKIO_WORKER_THREADS", "1")
            .args(["--json", "bench", "--workload", workload])
            .args(["--rows", "10000", "--examples", "32", "--features", "4"])
            .args(["--vocab", "500", "--concurrency", "3", "--duration", "0.5"])
            .output()
            .expect("run featmux bench");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{workload}: {stdout}");
        let report: Value = serde_json::from_str(&stdout).expect("JSON report");
        let per_client: Vec<u64> = report["requests_per_client"]
            .as_array()
            .expect("requests per client")
            .iter()
            .map(|n| n.as_u64().unwrap())
            .collect();
        assert_eq!(per_client.len(), 3, "{report}");
        assert_eq!(
            per_client.iter().sum::<u64>(),
            report["requests"].as_u64().unwrap(),
            "{report}"
        );
        // Turns alternate, so no client falls far behind another.
        let (least, most) = (per_client.iter().min(), per_client.iter().max());
        assert!(
            least.unwrap() * 2 >= *most.unwrap() && *least.unwrap() > 0,
            "{workload}: {per_client:?}"
        );
    }
}

/// A `redis-server` on a free loopback port, without persistence; killed on
/// drop.
struct RedisServer {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server; ./dev test installs it)");
        let server = RedisServer {
            child,
            port,
            _dir: dir,
        };
        for _ in 0..100 {
            if server.command(&["ping"]).trim() == "PONG" {
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("redis-server did not answer on port {port}");
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn command(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stats_version(server: &TestServer) -> u64 {
    let out = Command::new(featmux_binary())
        .args(["--addr", &server.grpc_url(), "--json", "stats"])
        .output()
        .expect("run featmux stats");
    let stats: Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    stats["version"].as_u64().unwrap()
}

/// Benches started together against a missing table: one creates it, the
/// others (refused with AlreadyExists) use it, since it is the table they
/// would have created.
#[test]
fn benches_started_together_share_the_table_they_create() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &ServerSettings::default());
    let (grpc, http) = (server.grpc_url(), server.http_url());
    let prefix = ["--addr", &grpc, "--json", "bench", "--http", &http];
    std::thread::scope(|scope| {
        let runs: Vec<_> = (0..6)
            .map(|_| {
                scope.spawn(|| {
                    bench_with(
                        &prefix,
                        &[
                            "--workload",
                            "lookup",
                            "--duration",
                            "0.3",
                            "--concurrency",
                            "1",
                        ],
                    )
                })
            })
            .collect();
        for run in runs {
            assert_well_formed(&run.join().unwrap(), "lookup", 1);
        }
    });
    assert!(server.stop().success());
}

/// `--shards`: lookups and pushes routed by a `ClusterClient` over two
/// servers; every push reaches both (each applies its rows: both training
/// versions count it), and workloads it cannot route are refused.
#[test]
fn sharded_lookups_and_pushes_reach_every_shard() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let settings = |id: &str| ServerSettings {
        extra_toml: format!(
            "[cluster]\netcd = {:?}\nprefix = \"/bench\"\nshard_id = {id:?}\n",
            etcd.endpoints
        ),
    };
    let shards: Vec<TestServer> = ["s0", "s1"]
        .iter()
        .map(|id| TestServer::start(&dir.path().join(id), &settings(id)))
        .collect();
    let endpoints = etcd.endpoints.join(",");
    let prefix = [
        "--json",
        "bench",
        "--etcd",
        &endpoints,
        "--cluster-prefix",
        "/bench",
    ];
    let report = bench_with(
        &prefix,
        &[
            "--workload",
            "lookup",
            "--duration",
            "0.5",
            "--concurrency",
            "2",
        ],
    );
    assert_well_formed(&report, "lookup", 1);
    assert_eq!(report["etcd"].as_array().unwrap().len(), 1);
    let before: Vec<u64> = shards.iter().map(stats_version).collect();
    let report = bench_with(
        &prefix,
        &["--workload", "push", "--requests", "10", "--duration", "60"],
    );
    assert_eq!(report["requests"], 10);
    for (shard, before) in shards.iter().zip(before) {
        assert_eq!(stats_version(shard), before + 10);
    }
    let refused = Command::new(featmux_binary())
        .args(prefix)
        .args(["--workload", "train", "--requests", "1"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--etcd routes"));
    for shard in shards {
        assert!(shard.stop().success());
    }
}
