//! `scripts/cluster-local.sh` as the README tells developers to use it: a
//! 3-member etcd and three shards on loopback, `featmux bench` through the
//! cluster client, and one etcd member killed under it changes nothing
//! (the bench's table is even created after the kill).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use featmux_tests::server::featmux_binary;
use serde_json::Value;

/// A base whose etcd, peer, gRPC and HTTP ports (base + 0/100/200/300 +
/// i, i < 3) are all free now.
fn free_port_base() -> u16 {
    (0..200)
        .map(|i| 30_000 + i * 37)
        .find(|base| {
            [0, 100, 200, 300].iter().all(|offset| {
                (0..3).all(|i| TcpListener::bind(("127.0.0.1", base + offset + i)).is_ok())
            })
        })
        .expect("a free port range")
}

fn script(dir: &Path, base: u16, action: &str) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    Command::new(root.join("scripts/cluster-local.sh"))
        .arg(action)
        .env("DIR", dir)
        .env("PORT_BASE", base.to_string())
        .env("FEATMUX", featmux_binary())
        .output()
        .unwrap()
}

/// 20 requests of `workload`.
fn bench(endpoints: &str, table: &str, workload: &str) -> Value {
    run_bench(
        endpoints,
        table,
        workload,
        &["--requests", "20", "--duration", "60"],
    )
}

/// `workload` for `seconds`.
fn bench_for(endpoints: &str, table: &str, workload: &str, seconds: &str) -> Value {
    run_bench(endpoints, table, workload, &["--duration", seconds])
}

fn run_bench(endpoints: &str, table: &str, workload: &str, length: &[&str]) -> Value {
    let out = Command::new(featmux_binary())
        .args(["--json", "bench", "--etcd", endpoints, "--cluster-prefix"])
        .args(["/featmux/local", "--table", table, "--workload", workload])
        .args(length)
        .args(["--examples", "64"])
        .args(["--features", "4", "--rows", "100000", "--concurrency", "2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_local_cluster_script_runs_a_cluster_that_survives_an_etcd_member() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_port_base();
    let up = script(dir.path(), base, "up");
    let stop = || script(dir.path(), base, "down");
    if !up.status.success() {
        stop();
        panic!("up: {}", String::from_utf8_lossy(&up.stderr));
    }
    let endpoints = String::from_utf8(script(dir.path(), base, "endpoints").stdout).unwrap();
    let endpoints = endpoints.trim();
    assert_eq!(endpoints.split(',').count(), 3);
    let ran = std::panic::catch_unwind(|| {
        for workload in ["lookup", "push"] {
            assert_eq!(bench(endpoints, "before", workload)["errors"], 0);
        }
        // Kill the first etcd member (the bench's first endpoint) while a
        // bench pushes, then create a table with two members left.
        let under_load = std::thread::scope(|scope| {
            let pushing = scope.spawn(|| bench_for(endpoints, "before", "push", "4"));
            std::thread::sleep(std::time::Duration::from_millis(1500));
            let pid = std::fs::read_to_string(dir.path().join("etcd0.pid")).unwrap();
            assert!(Command::new("kill")
                .args(["-9", pid.trim()])
                .status()
                .unwrap()
                .success());
            pushing.join().unwrap()
        });
        assert_eq!(under_load["errors"], 0);
        assert!(under_load["requests"].as_u64().unwrap() > 0);
        for (table, workload) in [("after", "lookup"), ("after", "push")] {
            assert_eq!(bench(endpoints, table, workload)["errors"], 0);
        }
        let status = script(dir.path(), base, "status");
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        let status = String::from_utf8(status.stdout).unwrap();
        for shard in ["shard-0", "shard-1", "shard-2"] {
            assert!(status.contains(&format!("{shard}\n")), "{status}");
            assert!(status.contains(&format!("{shard} readyz 200")), "{status}");
        }
    });
    assert!(stop().status.success());
    if let Err(panic) = ran {
        std::panic::resume_unwind(panic);
    }
}
