//! 8 pushing and 8 looking-up clients against one server for several
//! seconds: zero errors, every push gets its own training version, and the
//! server's version equals the number of acknowledged pushes.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use featmux_client::{pb, BatchBuilder, Client, ClientError, ClientOptions};
use featmux_tests::requests::feature;
use featmux_tests::server::{ServerSettings, TestServer};

const RUN_FOR: Duration = Duration::from_secs(4);

fn batch(worker: usize, step: usize) -> pb::Batch {
    let mut b = BatchBuilder::new();
    for e in 0..32 {
        // A small vocabulary, so workers hit the same rows concurrently.
        let key = (worker * 7 + step * 13 + e) % 200;
        b.example()
            .add_str("item", format!("i{key}"))
            .add_strs("tags", [format!("t{}", key % 11), format!("t{}", key % 5)]);
    }
    b.build().unwrap()
}

async fn pusher(client: Client, worker: usize, stop: Arc<AtomicBool>) -> Vec<u64> {
    let mut versions = Vec::new();
    let mut step = 0;
    while !stop.load(Ordering::Relaxed) {
        let looked_up = client
            .lookup("t", &batch(worker, step), true)
            .await
            .expect("lookup");
        let grads: Vec<Vec<f32>> = looked_up
            .embeddings
            .iter()
            .map(|e| vec![0.01; e.data.len()])
            .collect();
        let pushed = if step % 2 == 0 {
            client
                .push_ticket("t", looked_up.ticket.unwrap(), &grads)
                .await
        } else {
            client.push("t", &batch(worker, step), &grads).await
        };
        versions.push(pushed.expect("push").version);
        step += 1;
    }
    versions
}

async fn looker(client: Client, worker: usize, stop: Arc<AtomicBool>) -> usize {
    let mut lookups = 0;
    while !stop.load(Ordering::Relaxed) {
        let looked_up = client
            .lookup("t", &batch(worker + 100, lookups), false)
            .await
            .expect("lookup");
        assert_eq!(looked_up.embeddings.len(), 2);
        assert!(looked_up
            .embeddings
            .iter()
            .all(|e| e.data.iter().all(|x| x.is_finite())));
        lookups += 1;
    }
    lookups
}

/// Table `t`: 4,096 rows of 16, features `item` and `tags` (2 chunks).
async fn create_table(admin: &Client) {
    admin
        .create_table(
            pb::TableConfig {
                name: "t".into(),
                rows: 4096,
                chunk_dim: 16,
                ..Default::default()
            },
            vec![
                feature("item", pb::ValueType::String, pb::Pooling::Sum, 1),
                feature("tags", pb::ValueType::String, pb::Pooling::Mean, 2),
            ],
        )
        .await
        .unwrap();
}

#[test]
fn eight_pushers_and_eight_lookers_run_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &ServerSettings::default());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let admin = server.client(None).await;
        create_table(&admin).await;
        let stop = Arc::new(AtomicBool::new(false));
        let mut pushers = Vec::new();
        let mut lookers = Vec::new();
        for worker in 0..8 {
            // Each client its own connection, as separate trainers would have.
            pushers.push(tokio::spawn(pusher(
                server.client(None).await,
                worker,
                stop.clone(),
            )));
            lookers.push(tokio::spawn(looker(
                server.client(None).await,
                worker,
                stop.clone(),
            )));
        }
        tokio::time::sleep(RUN_FOR).await;
        stop.store(true, Ordering::Relaxed);
        let mut versions = Vec::new();
        for p in pushers {
            versions.extend(p.await.expect("pusher finished without errors"));
        }
        let mut lookups = 0;
        for l in lookers {
            lookups += l.await.expect("looker finished without errors");
        }
        let unique: HashSet<u64> = versions.iter().copied().collect();
        assert_eq!(
            unique.len(),
            versions.len(),
            "every push has its own version"
        );
        let stats = admin.stats().await.unwrap();
        assert_eq!(stats.version, versions.len() as u64);
        assert!(
            versions.len() >= 8 && lookups >= 8,
            "{} pushes, {lookups} lookups",
            versions.len()
        );
        eprintln!(
            "{} pushes and {lookups} lookups in {RUN_FOR:?}",
            versions.len()
        );
    });
    assert!(server.stop().success());
}

/// Established TCP connections (in this network namespace) whose far end is
/// `port` on 127.0.0.1, by their near end's address.
fn connections_to(port: u16) -> std::collections::HashSet<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let remote = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2) == Some(&remote.as_str()) && fields.get(3) == Some(&"01"))
                .then(|| fields[1].to_owned())
        })
        .collect()
}

#[test]
fn a_client_opens_the_connections_it_is_asked_for_and_uses_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &ServerSettings::default());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let admin = server.client(None).await;
        create_table(&admin).await;
        let before = connections_to(server.grpc.port());
        let options = ClientOptions {
            connections: 3,
            ..ClientOptions::new(server.grpc_url())
        };
        let client = Client::connect(options.clone()).await.unwrap();
        // The connections that were not there before. Not a count against
        // the count before: under load, connections that were closing then
        // (the start-up's readiness checks) made that 2 too high for a
        // while (1 run in 5 beside two busy loops).
        let opened = || connections_to(server.grpc.port()).difference(&before).count();
        let mut open = opened();
        for _ in 0..50 {
            if open == 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            open = opened();
        }
        assert_eq!(open, 3);
        // Calls in turn on every connection, and concurrently: each answer
        // equals the one-connection client's.
        let expected = admin.lookup("t", &batch(0, 0), false).await.unwrap();
        let lookups: Vec<_> = (0..9)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { client.lookup("t", &batch(0, 0), false).await })
            })
            .collect();
        for looked_up in lookups {
            assert_eq!(looked_up.await.unwrap().unwrap(), expected);
        }
        let mut stream = client.train().await.unwrap();
        assert_eq!(
            stream.lookup("t", batch(0, 0), false).await.unwrap(),
            expected
        );

        let refused = Client::connect(ClientOptions {
            connections: 0,
            ..options
        })
        .await;
        assert!(
            matches!(&refused, Err(ClientError::Endpoint { reason, .. }) if reason.contains("connections must be at least 1")),
            "{:?}",
            refused.err()
        );
    });
    assert!(server.stop().success());
}
