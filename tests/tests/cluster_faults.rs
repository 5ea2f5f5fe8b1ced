//! A cluster of three real `featmux serve` shards in a real etcd, under
//! failures: a shard killed with SIGKILL fails only the requests that need
//! its partitions (the error names the shard and the partitions) and, once
//! restarted, serves exactly what it had flushed; with etcd stopped the
//! data plane keeps serving on the last known map while admin changes are
//! refused naming etcd, and all is back once etcd is; a shard waits for
//! etcd to start, and refuses a data directory of standalone tables or of
//! another cluster's tables rather than drop them.

use std::time::Duration;

use featmux_client::{pb, BatchBuilder, Client, ClientError, ClientOptions, ClusterClient, Code};
use featmux_tests::etcd::Etcd;
use featmux_tests::requests::{adagrad_table, feature};
use featmux_tests::server::{ServerSettings, TestServer};

const PREFIX: &str = "/featmux/faults";

fn settings(etcd: &Etcd, id: &str) -> ServerSettings {
    ServerSettings {
        extra_toml: format!(
            "[storage]\nflush_interval_ms = 50\n[cluster]\netcd = {:?}\nprefix = {PREFIX:?}\n\
             shard_id = {id:?}\nlease_ttl_secs = 2\npartitions = 30\n",
            etcd.endpoints
        ),
    }
}

/// One example with one value of `user`.
fn one(user: &str) -> pb::Batch {
    let mut b = BatchBuilder::new();
    b.example().add_str("user", user);
    b.build().unwrap()
}

fn users() -> Vec<String> {
    (0..60).map(|u| format!("u{u}")).collect()
}

async fn client(etcd: &Etcd) -> ClusterClient {
    ClusterClient::connect(&etcd.endpoints, PREFIX, ClientOptions::new(""))
        .await
        .unwrap()
}

/// Table `t` (one feature, `user`), created through `admin`.
async fn create_table(admin: &Client) {
    let user = feature("user", pb::ValueType::String, pb::Pooling::Sum, 1);
    admin
        .create_table(adagrad_table("t", 3000, 8, 0.1), vec![user])
        .await
        .unwrap();
}

/// Each user's embedding, or the error its lookup failed with.
async fn lookups(cluster: &ClusterClient) -> Vec<Result<Vec<f32>, ClientError>> {
    let mut out = Vec::new();
    for user in users() {
        out.push(
            cluster
                .lookup("t", &one(&user), false)
                .await
                .map(|(l, _)| l.embeddings[0].data.clone()),
        );
    }
    out
}

#[test]
fn a_killed_shard_fails_only_its_partitions_and_recovers_what_it_flushed() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let ids = ["s0", "s1", "s2"];
    let mut shards: Vec<Option<TestServer>> = ids
        .iter()
        .map(|id| {
            // s1 is started again at its address once killed.
            Some(TestServer::start_restartable(
                &dir.path().join(id),
                &settings(&etcd, id),
            ))
        })
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let admin: Client = shards[0].as_ref().unwrap().client(None).await;
        create_table(&admin).await;
        let cluster = client(&etcd).await;
        // Train every user once, then let the flush reach disk.
        for user in users() {
            let (looked_up, _) = cluster.lookup("t", &one(&user), false).await.unwrap();
            let g = vec![vec![0.5; looked_up.embeddings[0].data.len()]];
            cluster.push("t", &one(&user), &g).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let trained: Vec<Vec<f32>> = lookups(&cluster)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let s1 = shards[1].as_ref().unwrap();
        let (grpc, http) = (s1.grpc, s1.http);
        assert_eq!(admin.get_table("t").await.unwrap().dirty_rows, 0);

        // Load from another client while the shard dies: lookups of every
        // user, round and round, until told to stop.
        let load = std::sync::Arc::new(client(&etcd).await);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let looping = {
            let (load, stop) = (load.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for result in lookups(&load).await {
                        match result {
                            Ok(_) => ok += 1,
                            Err(e) => failed.push(e.to_string()),
                        }
                    }
                }
                (ok, failed)
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;

        // SIGKILL (TestServer's drop) one shard.
        drop(shards[1].take());
        let after = lookups(&cluster).await;
        let failed: Vec<&ClientError> = after.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(
            !failed.is_empty() && failed.len() < after.len(),
            "{after:?}"
        );
        for e in &failed {
            assert_eq!(e.code(), Some(Code::Unavailable), "{e}");
            let text = e.to_string();
            assert!(
                text.contains("shard `s1`") && text.contains("partitions 10..=19"),
                "{text}"
            );
        }
        // The other shards answer as before.
        for (now, before) in after.iter().zip(&trained) {
            if let Ok(now) = now {
                assert_eq!(now, before);
            }
        }
        // Under load: the other shards kept answering, and only lookups of
        // s1's rows failed, each naming it.
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (ok, failed_under_load) = looping.await.unwrap();
        assert!(ok > users().len(), "{ok} lookups succeeded");
        assert!(!failed_under_load.is_empty());
        assert!(
            failed_under_load.iter().all(|e| e.contains("shard `s1`")),
            "{failed_under_load:?}"
        );
        // Once its lease expires it is not a member; still the named error.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let fresh = client(&etcd).await;
        let err = lookups(&fresh)
            .await
            .into_iter()
            .find_map(Result::err)
            .unwrap();
        assert!(err.to_string().contains("not a live member"), "{err}");

        // Restarted on its data: exactly what it flushed, through both the
        // old client (same address) and a new one.
        shards[1] = Some(TestServer::start_at(
            &dir.path().join("s1"),
            &settings(&etcd, "s1"),
            grpc,
            http,
        ));
        for cluster in [&cluster, &fresh] {
            let back: Vec<Vec<f32>> = lookups(cluster)
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
            assert_eq!(back, trained);
        }
    });
}

#[test]
fn without_etcd_the_data_plane_serves_and_admin_changes_are_refused() {
    let mut etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let shards: Vec<TestServer> = ["s0", "s1", "s2"]
        .iter()
        .map(|id| TestServer::start(&dir.path().join(id), &settings(&etcd, id)))
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let admin = shards[2].client(None).await;
        create_table(&admin).await;
        let cluster = client(&etcd).await;
        let before = lookups(&cluster).await;

        etcd.kill(0);
        // Lookups and pushes go on, on the map the client and shards have.
        assert_eq!(
            lookups(&cluster)
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect::<Vec<_>>(),
            before.into_iter().map(Result::unwrap).collect::<Vec<_>>()
        );
        let (looked_up, _) = cluster.lookup("t", &one("u1"), false).await.unwrap();
        let g = vec![vec![0.5; looked_up.embeddings[0].data.len()]];
        let pushed = cluster.push("t", &one("u1"), &g).await.unwrap();
        assert_eq!(pushed.len(), 1);
        // Admin changes are refused, naming etcd, and change nothing.
        let extra = feature("city", pb::ValueType::String, pb::Pooling::Sum, 1);
        let err = admin
            .add_features("t", vec![extra.clone()])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
        assert!(err.to_string().contains("etcd) is unreachable"), "{err}");
        assert_eq!(admin.get_table("t").await.unwrap().features.len(), 1);

        // etcd back: admin changes work again and reach every shard.
        etcd.restart(0);
        let _ = etcd.store(PREFIX).await;
        admin.add_features("t", vec![extra]).await.unwrap();
        for shard in &shards {
            let shard = shard.client(None).await;
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while shard.get_table("t").await.unwrap().features.len() != 2 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the feature never arrived"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
}

#[test]
fn a_shard_waits_for_etcd_and_refuses_a_data_directory_not_of_its_cluster() {
    let mut etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let any = "127.0.0.1:0".parse().unwrap();

    // etcd down: the shard listens, is not ready, and joins once etcd is up.
    runtime.block_on(etcd.store(PREFIX));
    etcd.kill(0);
    let mut waiting = TestServer::spawn(&dir.path().join("s0"), &settings(&etcd, "s0"), any, any);
    let readyz = format!("{}/readyz", waiting.http_url());
    let status = runtime.block_on(async { reqwest::get(&readyz).await.unwrap().status() });
    assert_eq!(status.as_u16(), 503);
    etcd.restart(0);
    waiting.wait_for_log("ready");
    assert!(waiting.stop().success());

    // A data directory of standalone tables is not a shard's.
    let standalone = dir.path().join("standalone");
    let server = TestServer::start(&standalone, &ServerSettings::default());
    runtime.block_on(async {
        let user = feature("user", pb::ValueType::String, pb::Pooling::Sum, 1);
        server
            .client(None)
            .await
            .create_table(adagrad_table("mine", 100, 4, 0.1), vec![user])
            .await
            .unwrap();
    });
    assert!(server.stop().success());
    let mut refused = TestServer::spawn(&standalone, &settings(&etcd, "s9"), any, any);
    let event = refused.wait_for_log("cannot join the cluster; stopping");
    assert!(
        event["error"]
            .as_str()
            .unwrap()
            .contains("standalone tables (mine)"),
        "{event}"
    );
    assert!(!refused.stop().success());

    // A shard's data directory started against another cluster (another
    // prefix) is refused, and its table is kept.
    let shard_dir = dir.path().join("s0");
    let mut server = TestServer::start(&shard_dir, &settings(&etcd, "s0"));
    runtime.block_on(async { create_table(&server.client(None).await).await });
    assert!(server.stop().success());
    let elsewhere = ServerSettings {
        extra_toml: settings(&etcd, "s0")
            .extra_toml
            .replace(PREFIX, "/featmux/another"),
    };
    let mut refused = TestServer::spawn(&shard_dir, &elsewhere, any, any);
    let event = refused.wait_for_log("cannot join the cluster; stopping");
    assert!(
        event["error"]
            .as_str()
            .unwrap()
            .contains("another cluster's?"),
        "{event}"
    );
    assert!(!refused.stop().success());
    server = TestServer::start(&shard_dir, &settings(&etcd, "s0"));
    runtime.block_on(async {
        assert!(server.client(None).await.get_table("t").await.is_ok());
    });
    assert!(server.stop().success());
}
