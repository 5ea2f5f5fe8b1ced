//! A table sharded over three real `featmux serve` processes that joined a
//! cluster in a real etcd, routed by `ClusterClient`, against one
//! standalone server holding the same table: lookups agree (rows bit for
//! bit, pooled sums within 1e-6 relative), pushes by batch and by ticket
//! move the same rows by the same amounts, each shard holds only its rows,
//! admin changes made through any shard reach every shard, and a client
//! routing with a stale map is refused by the shards and retries by itself.

use featmux_client::{pb, BatchBuilder, Client, ClientOptions, ClusterClient, Code, Lookup};
use featmux_engine::backend::GatherPlan;
use featmux_tests::etcd::Etcd;
use featmux_tests::requests::{adagrad_table, feature};
use featmux_tests::server::{ServerSettings, TestServer};

const ROWS: u64 = 20_000;
const PREFIX: &str = "/featmux/test";

fn features() -> Vec<pb::FeatureConfig> {
    let mut city = feature("city", pb::ValueType::String, pb::Pooling::Sum, 1);
    city.partitioned = Some(pb::Partitioned {
        offset: None,
        rows: 700,
    });
    vec![
        feature("user", pb::ValueType::String, pb::Pooling::Sum, 2),
        feature("tags", pb::ValueType::String, pb::Pooling::Mean, 1),
        feature("clicks", pb::ValueType::Int64, pb::Pooling::Sqrtn, 3),
        feature("history", pb::ValueType::String, pb::Pooling::None, 1),
        city,
    ]
}

fn batch(step: i64) -> pb::Batch {
    let mut b = BatchBuilder::new();
    for e in 0..64i64 {
        let k = e + step * 64;
        b.example()
            .add_str("user", format!("u{}", k % 41))
            .add_strs("tags", (0..k % 5).map(|t| format!("t{}", (k + t) % 23)))
            .add_i64s("clicks", [k, k * 7 % 31])
            .add_strs("history", (0..k % 3).map(|t| format!("h{}", k + t)))
            .add_str("city", format!("c{}", k % 9));
    }
    b.build().unwrap()
}

fn assert_same(cluster: &Lookup, single: &Lookup) {
    assert_eq!(cluster.embeddings.len(), single.embeddings.len());
    for (c, s) in cluster.embeddings.iter().zip(&single.embeddings) {
        assert_eq!((&c.feature, c.rows, c.width), (&s.feature, s.rows, s.width));
        // One row per output value (single-valued sum features, `none`
        // pooling): the stored row itself, bit for bit.
        if c.feature == "user" || c.feature == "history" || c.feature == "city" {
            assert_eq!(c.data, s.data, "{}", c.feature);
        }
        for (a, b) in c.data.iter().zip(&s.data) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{}: {a} vs {b}",
                c.feature
            );
        }
    }
}

fn grads(looked_up: &Lookup) -> Vec<Vec<f32>> {
    looked_up
        .embeddings
        .iter()
        .map(|e| {
            (0..e.data.len())
                .map(|i| ((i % 11) as f32 - 5.0) * 0.02)
                .collect()
        })
        .collect()
}

/// Shard `id` of the cluster in `etcd`, on its own data directory.
fn shard(dir: &std::path::Path, etcd: &Etcd, id: &str) -> TestServer {
    let settings = ServerSettings {
        extra_toml: format!(
            "[cluster]\netcd = {:?}\nprefix = {PREFIX:?}\nshard_id = {id:?}\n\
             lease_ttl_secs = 3\npartitions = 64\n",
            etcd.endpoints
        ),
    };
    TestServer::start(&dir.join(id), &settings)
}

async fn cluster_client(etcd: &Etcd) -> ClusterClient {
    ClusterClient::connect(&etcd.endpoints, PREFIX, ClientOptions::new(""))
        .await
        .unwrap()
}

#[test]
fn a_sharded_table_answers_and_trains_like_one_server() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let single_server = TestServer::start(&dir.path().join("single"), &Default::default());
    let shards = three_shards(dir.path(), &etcd);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = etcd.store(PREFIX).await;
        let single: Client = single_server.client(None).await;
        let admins: Vec<Client> = admin_clients(&shards).await;
        single
            .create_table(adagrad_table("t", ROWS, 8, 0.1), features())
            .await
            .unwrap();
        // Created through one shard: one etcd transaction, applied by all.
        let info = admins[1]
            .create_table(adagrad_table("t", ROWS, 8, 0.1), features())
            .await
            .unwrap();
        assert_eq!(info.features.len(), 5);
        // Each shard holds its third of the rows (64 partitions dealt in
        // runs of 22, 21, 21), not the whole table.
        let whole = single.get_table("t").await.unwrap().bytes_in_memory;
        let mut held = 0;
        for admin in &admins {
            let part = admin.get_table("t").await.unwrap().bytes_in_memory;
            assert!(part < whole / 2, "{part} of {whole}");
            held += part;
        }
        assert_eq!(held, whole);

        let cluster = cluster_client(&etcd).await;
        for step in 0..3 {
            let batch = batch(step);
            let (looked_up, ticket) = cluster.lookup("t", &batch, true).await.unwrap();
            let reference = single.lookup("t", &batch, true).await.unwrap();
            assert_same(&looked_up, &reference);
            let g = grads(&reference);
            let single_push = single
                .push_ticket("t", reference.ticket.unwrap(), &g)
                .await
                .unwrap();
            // By ticket on even steps, by batch on odd ones.
            let pushed = if step % 2 == 0 {
                cluster.push_ticket(&ticket.unwrap(), &g).await.unwrap()
            } else {
                cluster.push("t", &batch, &g).await.unwrap()
            };
            // Every shard got a share, and together they stepped the rows
            // the single server stepped.
            let mut stepped_by: Vec<&str> = pushed.iter().map(|p| p.shard.as_str()).collect();
            stepped_by.sort();
            assert_eq!(stepped_by, ["s0", "s1", "s2"]);
            let stepped: u64 = pushed.iter().map(|p| p.response.unique_rows).sum();
            assert_eq!(stepped, single_push.unique_rows);
        }
        for step in 0..3 {
            let batch = batch(step);
            let (looked_up, _) = cluster.lookup("t", &batch, false).await.unwrap();
            assert_same(
                &looked_up,
                &single.lookup("t", &batch, false).await.unwrap(),
            );
        }

        // A batch call on a shard is refused: it holds a third of the rows.
        let err = admins[0].lookup("t", &batch(0), false).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
        assert!(err.to_string().contains("cluster client"), "{err}");

        // A feature added through another shard reaches every shard and
        // the client (which reads the table again when refused).
        let extra = feature("device", pb::ValueType::String, pb::Pooling::Sum, 1);
        admins[2]
            .add_features("t", vec![extra.clone()])
            .await
            .unwrap();
        single.add_features("t", vec![extra]).await.unwrap();
        let salts = |info: pb::TableInfo| -> Vec<(String, u32)> {
            info.features
                .into_iter()
                .map(|f| (f.config.unwrap().name, f.salt))
                .collect()
        };
        let expected = salts(single.get_table("t").await.unwrap());
        for admin in &admins {
            assert_eq!(salts(admin.get_table("t").await.unwrap()), expected);
        }
        let mut with_device = BatchBuilder::new();
        with_device
            .example()
            .add_str("device", "ios")
            .add_str("user", "u1");
        let with_device = with_device.build().unwrap();
        let fresh = cluster_client(&etcd).await;
        let (looked_up, _) = fresh.lookup("t", &with_device, false).await.unwrap();
        assert_same(
            &looked_up,
            &single.lookup("t", &with_device, false).await.unwrap(),
        );

        // A new map epoch for the same table (the map written again): every
        // shard refuses `cluster`'s cached epoch, and the client routes the
        // refused rows again; the push steps exactly the rows it should.
        let map = store.map("t").await.unwrap().unwrap();
        let epoch = store.set_map("t", map.revision, &map.value).await.unwrap() as u64;
        for admin in &admins {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while admin
                .lookup_rows("t", GatherPlan::default(), epoch)
                .await
                .is_err()
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "epoch {epoch} never applied"
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        let reference = single.lookup("t", &batch(1), false).await.unwrap();
        let g = grads(&reference);
        let pushed = cluster.push("t", &batch(1), &g).await.unwrap();
        let single_push = single.push("t", &batch(1), &g).await.unwrap();
        let stepped: u64 = pushed.iter().map(|p| p.response.unique_rows).sum();
        assert_eq!(stepped, single_push.unique_rows);
        let (looked_up, _) = cluster.lookup("t", &batch(1), false).await.unwrap();
        assert_same(
            &looked_up,
            &single.lookup("t", &batch(1), false).await.unwrap(),
        );

        // The table dropped and created again (a new map epoch, new rows):
        // `cluster` still routes with the old epoch; the shards refuse it
        // and the client reads the new map and retries by itself.
        admins[0].drop_table("t").await.unwrap();
        for admin in &admins {
            let err = admin.get_table("t").await.unwrap_err();
            assert_eq!(err.code(), Some(Code::NotFound), "{err}");
        }
        admins[0]
            .create_table(adagrad_table("t", ROWS, 8, 0.1), features())
            .await
            .unwrap();
        single.drop_table("t").await.unwrap();
        single
            .create_table(adagrad_table("t", ROWS, 8, 0.1), features())
            .await
            .unwrap();
        let (looked_up, _) = cluster.lookup("t", &batch(0), false).await.unwrap();
        assert_same(
            &looked_up,
            &single.lookup("t", &batch(0), false).await.unwrap(),
        );
        // A ticket taken before the table was created again is refused,
        // not applied to the new table's rows.
        let (old, ticket) = cluster.lookup("t", &batch(1), true).await.unwrap();
        admins[1].drop_table("t").await.unwrap();
        admins[1]
            .create_table(adagrad_table("t", ROWS, 8, 0.1), features())
            .await
            .unwrap();
        let err = cluster
            .push_ticket(&ticket.unwrap(), &grads(&old))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("created again"), "{err}");

        // A row-level request with another epoch gets ABORTED, naming it.
        let stale = admins[0]
            .lookup_rows(
                "t",
                GatherPlan {
                    rows: vec![1],
                    slots: vec![0],
                    weights: vec![1.0],
                    num_slots: 1,
                },
                1,
            )
            .await
            .unwrap_err();
        assert_eq!(stale.code(), Some(Code::Aborted), "{stale}");
        assert!(stale.to_string().contains("epoch 1"), "{stale}");
    });
    for server in shards {
        assert!(server.stop().success());
    }
}

/// Shards s0, s1 and s2 of the cluster in `etcd`.
fn three_shards(dir: &std::path::Path, etcd: &Etcd) -> Vec<TestServer> {
    ["s0", "s1", "s2"]
        .iter()
        .map(|id| shard(dir, etcd, id))
        .collect()
}

/// A client of each shard (for admin calls).
async fn admin_clients(shards: &[TestServer]) -> Vec<Client> {
    let mut clients = Vec::new();
    for shard in shards {
        clients.push(shard.client(None).await);
    }
    clients
}

#[test]
fn a_cluster_checkpoint_restores_every_shard_to_its_cut() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let shards = three_shards(dir.path(), &etcd);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let _ = etcd.store(PREFIX).await;
        let admins: Vec<Client> = admin_clients(&shards).await;
        admins[0]
            .create_table(adagrad_table("t", ROWS, 8, 0.1), features())
            .await
            .unwrap();
        let cluster = cluster_client(&etcd).await;
        let train = |step: i64| {
            let cluster = &cluster;
            async move {
                let (looked_up, ticket) = cluster.lookup("t", &batch(step), true).await.unwrap();
                cluster
                    .push_ticket(&ticket.unwrap(), &grads(&looked_up))
                    .await
                    .unwrap();
            }
        };
        train(0).await;
        let mut at_checkpoint = Vec::new();
        for step in 0..3 {
            at_checkpoint.push(cluster.lookup("t", &batch(step), false).await.unwrap().0);
        }
        // Through any shard: every shard checkpoints, the set is in etcd.
        let checkpoint = admins[2].create_checkpoint().await.unwrap();
        let mut parts: Vec<&str> = checkpoint.shards.iter().map(|s| s.shard.as_str()).collect();
        parts.sort();
        assert_eq!(parts, ["s0", "s1", "s2"]);
        assert!(checkpoint.shards.iter().all(|s| s.version == 1));
        assert_eq!(checkpoint.tables, ["t"]);
        assert_eq!(
            admins[0].list_checkpoints().await.unwrap(),
            std::slice::from_ref(&checkpoint)
        );

        train(1).await;
        train(2).await;
        // Restored through another shard: every shard is back at its cut.
        admins[1]
            .restore_checkpoint(checkpoint.id, "t", None)
            .await
            .unwrap();
        for step in 0..3 {
            let (now, _) = cluster.lookup("t", &batch(step), false).await.unwrap();
            assert_same(&now, &at_checkpoint[step as usize]);
            assert_eq!(
                now.embeddings[0].data,
                at_checkpoint[step as usize].embeddings[0].data
            );
        }
        // `into` needs a table the cluster would not know: refused.
        let err = admins[1]
            .restore_checkpoint(checkpoint.id, "t", Some("copy"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
        // A table created again is another table: refused, nothing changes.
        admins[0].drop_table("t").await.unwrap();
        admins[0]
            .create_table(adagrad_table("t", ROWS, 8, 0.1), features())
            .await
            .unwrap();
        let err = admins[0]
            .restore_checkpoint(checkpoint.id, "t", None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
        assert!(err.to_string().contains("created again"), "{err}");
        // Deleted everywhere.
        admins[0].delete_checkpoint(checkpoint.id).await.unwrap();
        assert!(admins[1].list_checkpoints().await.unwrap().is_empty());
        for shard in &shards {
            assert_eq!(
                std::fs::read_dir(shard.data_dir.join("checkpoints")).map_or(0, |d| d.count()),
                0,
                "{}",
                shard.data_dir.display()
            );
        }
    });
    for server in shards {
        assert!(server.stop().success());
    }
}
