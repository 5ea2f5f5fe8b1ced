//! A table sharded over three real `featmux serve` processes by a static
//! partition map, routed by `ClusterClient`, against one server holding
//! the same table: lookups agree (rows bit for bit, pooled sums within
//! 1e-6 relative), pushes by batch and by ticket move the same rows by the
//! same amounts, and each shard applies only the rows it owns.

use featmux_client::{pb, BatchBuilder, Client, ClusterClient, Lookup, PartitionMap};
use featmux_tests::requests::{adagrad_table, feature};
use featmux_tests::server::{ServerSettings, TestServer};

const ROWS: u64 = 20_000;

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

#[test]
fn a_sharded_table_answers_and_trains_like_one_server() {
    let dir = tempfile::tempdir().unwrap();
    let settings = ServerSettings::default();
    let servers: Vec<TestServer> = (0..4)
        .map(|i| TestServer::start(&dir.path().join(format!("s{i}")), &settings))
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let single: Client = servers[0].client(None).await;
        let mut shards = Vec::new();
        for server in &servers[1..] {
            shards.push(server.client(None).await);
        }
        let cluster = ClusterClient::new(shards, PartitionMap::even(256, 3)).unwrap();
        single
            .create_table(adagrad_table("t", ROWS, 8, 0.1), features())
            .await
            .unwrap();
        let info = cluster
            .create_table(adagrad_table("t", ROWS, 8, 0.1), features())
            .await
            .unwrap();
        assert_eq!(info.features.len(), 5);

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
            let mut shards: Vec<usize> = pushed.iter().map(|p| p.shard).collect();
            shards.sort();
            assert_eq!(shards, [0, 1, 2]);
            let stepped: u64 = pushed.iter().map(|p| p.response.unique_rows).sum();
            assert_eq!(stepped, single_push.unique_rows);
        }
        // After the pushes the tables still agree everywhere.
        for step in 0..3 {
            let batch = batch(step);
            let (looked_up, _) = cluster.lookup("t", &batch, false).await.unwrap();
            assert_same(
                &looked_up,
                &single.lookup("t", &batch, false).await.unwrap(),
            );
        }
        // A batch the table does not know is refused before any shard is asked.
        let mut unknown = BatchBuilder::new();
        unknown.example().add_str("nope", "x");
        let err = cluster
            .lookup("t", &unknown.build().unwrap(), false)
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("nope"), "{err}");
    });
    for server in servers {
        assert!(server.stop().success());
    }
}
