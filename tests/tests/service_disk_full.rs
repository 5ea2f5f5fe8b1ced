//! A server whose disk fills: pushes keep working in memory, `/readyz`
//! reports the failing flushes, a graceful stop exits non-zero saying how
//! many rows it could not write, and once space is free the data directory
//! opens again, reporting the unflushed pushes' versions as lost.
//! Needs root (it mounts a small tmpfs); skipped otherwise.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use featmux_client::{pb, BatchBuilder};
use featmux_tests::requests::{feature, sgd_table, Http};
use featmux_tests::server::{ServerSettings, TestServer};

/// Bytes free on the filesystem holding `path`, from `df`.
fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df prints the free bytes")
}

#[test]
fn a_full_disk_degrades_readiness_and_a_stop_names_the_unwritten_rows() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("a_full_disk_degrades…: needs root to mount a tmpfs; not run");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=32m", "tmpfs"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs failed");
    let result = std::panic::catch_unwind(|| {
        let data = dir.path().join("data");
        let settings = ServerSettings {
            extra_toml: "[storage]\nflush_interval_ms = 50\n".into(),
        };
        let server = TestServer::start(&data, &settings);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let filler = dir.path().join("filler");
        runtime.block_on(async {
            let client = server.client(None).await;
            client
                .create_table(
                    sgd_table("t", 100_000, 16, 0.1),
                    vec![feature("u", pb::ValueType::String, pb::Pooling::Sum, 1)],
                )
                .await
                .unwrap();
            let free = free_bytes(dir.path());
            std::fs::write(&filler, vec![0u8; (free - (256 << 10)) as usize]).unwrap();
            // 20,000 rows × 64 bytes cannot be flushed into 256 KiB.
            let mut batch = BatchBuilder::new();
            for i in 0..20_000 {
                batch.example().add_str("u", format!("user{i}"));
            }
            let pushed = client
                .push("t", &batch.build().unwrap(), &[vec![0.1; 20_000 * 16]])
                .await
                .expect("pushes keep working in memory");
            assert_eq!(pushed.version, 1);
            let http = Http::new(reqwest::Client::new(), server.http_url(), "");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let (status, body) = http.send(reqwest::Method::GET, "/readyz", None, None).await;
                if status == 503 {
                    let message = body["error"]["message"].as_str().unwrap_or_default();
                    assert!(message.contains("degraded"), "{body}");
                    assert!(message.contains("disk full"), "{body}");
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "/readyz never reported the failing flushes"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let (status, logs) = server.stop_with_logs();
        assert!(!status.success(), "a stop that lost rows exited 0");
        let said = logs.join("\n");
        assert!(
            said.contains("rows changed by acknowledged pushes were not written"),
            "the stop did not name the unwritten rows:\n{said}"
        );
        std::fs::remove_file(&filler).unwrap();
        let server = TestServer::start(&data, &settings);
        runtime.block_on(async {
            let stats = server.client(None).await.stats().await.unwrap();
            assert_eq!(stats.tables.len(), 1, "the table survives");
            assert!(
                stats
                    .lost_versions
                    .iter()
                    .any(|r| r.first <= 1 && 1 <= r.last),
                "push 1 was never written but is not reported lost: {:?}",
                stats.lost_versions
            );
        });
        assert!(server.stop().success());
    });
    let _ = Command::new("umount").arg("-l").arg(dir.path()).status();
    result.unwrap();
}
