//! Read replicas of cluster shards, against real processes and a real
//! etcd: three shards, one replica of each started with `[replica]` and
//! `[cluster]`. Each replica lists itself under its shard in etcd, follows
//! its shard's map epochs through the shard's log (a new epoch reaches it
//! only with the data), and serves a `ClusterClient` reading from replicas
//! with what the shards serve, even once every shard is dead (a client
//! started before the replicas existed finds them by reading its route
//! again); pushes and ticket lookups still go to the shards, and a replica
//! refuses writes.

use std::time::{Duration, Instant};

use featmux_client::{pb, BatchBuilder, ClientError, ClientOptions, ClusterClient, Code, ReadFrom};
use featmux_engine::backend::RowGradients;
use featmux_tests::etcd::Etcd;
use featmux_tests::requests::{feature, sgd_table, Http};
use featmux_tests::server::{ServerSettings, TestServer};

const PREFIX: &str = "/featmux/replicas";
const ROWS: u64 = 3_000;
const IDS: i64 = 400;

fn cluster_toml(etcd: &Etcd, id: &str) -> String {
    format!(
        "[cluster]\netcd = {:?}\nprefix = {PREFIX:?}\nshard_id = {id:?}\n\
         lease_ttl_secs = 2\npartitions = 30\n",
        etcd.endpoints
    )
}

fn shard(dir: &std::path::Path, etcd: &Etcd, id: &str) -> TestServer {
    let settings = ServerSettings {
        extra_toml: format!(
            "[storage]\nflush_interval_ms = 20\n{}",
            cluster_toml(etcd, id)
        ),
    };
    TestServer::start(&dir.join(id), &settings)
}

/// A replica of `primary`, listed in etcd as `id`.
fn replica(dir: &std::path::Path, etcd: &Etcd, primary: &TestServer, id: &str) -> TestServer {
    let settings = ServerSettings {
        extra_toml: format!(
            "[replica]\nprimary = \"{}\"\n{}",
            primary.grpc_url(),
            cluster_toml(etcd, id)
        ),
    };
    TestServer::start(&dir.join(id), &settings)
}

/// Ids `ids`, one example each.
fn batch(ids: impl IntoIterator<Item = i64>) -> pb::Batch {
    let mut b = BatchBuilder::new();
    for id in ids {
        b.example().add_i64("id", id);
    }
    b.build().unwrap()
}

async fn connect(etcd: &Etcd, read_from: ReadFrom) -> ClusterClient {
    ClusterClient::connect(&etcd.endpoints, PREFIX, ClientOptions::new(""))
        .await
        .unwrap()
        .read_from(read_from)
}

/// Every id's row, as `client` reads it.
async fn state(client: &ClusterClient) -> Result<Vec<f32>, ClientError> {
    let (looked_up, _) = client.lookup("t", &batch(0..IDS), false).await?;
    Ok(looked_up
        .embeddings
        .into_iter()
        .flat_map(|e| e.data)
        .collect())
}

/// Round `round` of pushes: every id, gradients that differ per round.
async fn train(client: &ClusterClient, round: u32) {
    for ids in (0..IDS).collect::<Vec<_>>().chunks(100) {
        let g = vec![vec![0.01 * (round + 1) as f32; ids.len() * 4]];
        client
            .push("t", &batch(ids.iter().copied()), &g)
            .await
            .unwrap();
    }
}

/// Waits until reading from replicas gives exactly what the shards give
/// (no push in flight).
async fn replicas_caught_up(shards: &ClusterClient, replicas: &ClusterClient) -> Vec<f32> {
    let want = state(shards).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if state(replicas).await.unwrap() == want {
            return want;
        }
        assert!(Instant::now() < deadline, "the replicas did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rows each server has looked up so far (its metrics).
async fn rows_looked_up(servers: &[TestServer]) -> Vec<f64> {
    let mut rows = Vec::new();
    for server in servers {
        let http = Http::new(reqwest::Client::new(), server.http_url(), "");
        rows.push(http.metric("featmux_rows_looked_up_total").await);
    }
    rows
}

#[test]
fn replicas_of_shards_serve_the_cluster_at_the_current_map_epoch() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let mut shards: Vec<TestServer> = ["s0", "s1", "s2"]
        .iter()
        .map(|id| shard(dir.path(), &etcd, id))
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let admin = shards[0].client(None).await;
        admin
            .create_table(
                sgd_table("t", ROWS, 4, 0.5),
                vec![feature("id", pb::ValueType::Int64, pb::Pooling::Sum, 1)],
            )
            .await
            .unwrap();
        let mut replicas = Vec::new();
        for (i, primary) in shards.iter().enumerate() {
            let mut r = replica(dir.path(), &etcd, primary, &format!("s{i}-r0"));
            r.wait_for_log("listed as a replica of the shard");
            replicas.push(r);
        }
        let store = etcd.store(PREFIX).await;
        let mut listed: Vec<(String, String)> = store
            .replicas()
            .await
            .unwrap()
            .into_iter()
            .map(|(shard, r)| (shard, r.id))
            .collect();
        listed.sort();
        assert_eq!(
            listed,
            [("s0", "s0-r0"), ("s1", "s1-r0"), ("s2", "s2-r0")]
                .map(|(s, r)| (s.to_owned(), r.to_owned()))
        );
        let from_shards = connect(&etcd, ReadFrom::Shards).await;
        let from_replicas = connect(&etcd, ReadFrom::Replicas).await;
        train(&from_shards, 0).await;
        let trained = replicas_caught_up(&from_shards, &from_replicas).await;

        // A new map epoch (same owners): the shards record it after
        // applying it, and the replicas learn it from their logs.
        let map = store.map("t").await.unwrap().unwrap();
        let epoch = store.set_map("t", map.revision, &map.value).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while store
            .applied()
            .await
            .unwrap()
            .iter()
            .any(|(_, r)| *r < epoch)
        {
            assert!(
                Instant::now() < deadline,
                "the shards did not apply the map"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        train(&from_shards, 1).await;
        let from_replicas = connect(&etcd, ReadFrom::Replicas).await;
        let retrained = replicas_caught_up(&from_shards, &from_replicas).await;
        assert_ne!(retrained, trained);

        // A replica takes no writes, whatever routes them there.
        let direct = replicas[1].client(None).await;
        let refused = direct
            .push_rows(
                "t",
                RowGradients {
                    rows: vec![1500],
                    grads: vec![0.1; 4],
                },
                epoch as u64,
            )
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Some(Code::FailedPrecondition), "{refused}");
        assert!(
            refused.to_string().contains(&shards[1].grpc_url()),
            "{refused}"
        );

        // Every shard dies (SIGKILL): reads from replicas go on at the new
        // epoch, with the last state; the shards' own clients cannot read,
        // and training (a ticket lookup) needs the shards.
        shards.clear();
        let survivor = connect(&etcd, ReadFrom::Replicas).await;
        assert_eq!(state(&survivor).await.unwrap(), retrained);
        let lost = state(&connect(&etcd, ReadFrom::Shards).await).await;
        assert!(
            matches!(lost, Err(ClientError::ShardUnavailable(_))),
            "{lost:?}"
        );
        let ticket = survivor.lookup("t", &batch(0..IDS), true).await;
        assert!(ticket.is_err(), "a ticket lookup went to a replica");
    });
}

/// A client reading from replicas that started before any replica was
/// listed finds them once its route is older than the re-read period,
/// with no failed call to make it look; with etcd down it serves on with
/// the route it has.
#[test]
fn a_serving_client_finds_replicas_listed_after_it_started() {
    let mut etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let primary = shard(dir.path(), &etcd, "s0");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        primary
            .client(None)
            .await
            .create_table(
                sgd_table("t", ROWS, 4, 0.5),
                vec![feature("id", pb::ValueType::Int64, pb::Pooling::Sum, 1)],
            )
            .await
            .unwrap();
        let early = connect(&etcd, ReadFrom::Replicas).await;
        let route_read = Instant::now();
        let want = state(&early).await.unwrap();
        let mut r = replica(dir.path(), &etcd, &primary, "s0-r0");
        r.wait_for_log("listed as a replica of the shard");
        let replicas = [r];
        state(&early).await.unwrap();
        assert_eq!(rows_looked_up(&replicas).await, [0.0], "a cached route");
        tokio::time::sleep_until((route_read + Duration::from_secs(11)).into()).await;
        assert_eq!(state(&early).await.unwrap(), want);
        assert!(rows_looked_up(&replicas).await[0] > 0.0, "read again");

        // With etcd gone, the next re-read fails: the route it has serves
        // on, promptly.
        etcd.kill(0);
        tokio::time::sleep_until((route_read + Duration::from_secs(22)).into()).await;
        let started = Instant::now();
        assert_eq!(state(&early).await.unwrap(), want);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    });
}
