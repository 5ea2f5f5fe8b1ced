//! The cluster store against a real etcd (Debian's `etcd-server`, which
//! `./dev` installs): tables and maps created atomically, compare-and-swap
//! that refuses a stale revision and changes nothing, and leased members
//! that vanish when their shard stops keeping the lease alive.

use std::time::{Duration, Instant};

use featmux_cluster::{ClusterError, Role};
use featmux_proto::v1 as pb;
use featmux_tests::etcd::Etcd;

fn info(name: &str, features: &[&str]) -> pb::TableInfo {
    pb::TableInfo {
        config: Some(pb::TableConfig {
            name: name.into(),
            rows: 1000,
            chunk_dim: 8,
            ..Default::default()
        }),
        features: features
            .iter()
            .enumerate()
            .map(|(salt, f)| pb::FeatureInfo {
                config: Some(pb::FeatureConfig {
                    name: (*f).into(),
                    chunks: 1,
                    ..Default::default()
                }),
                salt: salt as u32,
                width: 8,
            })
            .collect(),
        ..Default::default()
    }
}

fn map(shards: &[&str], owners: Vec<u32>) -> pb::PartitionMap {
    pb::PartitionMap {
        shards: shards.iter().map(|s| (*s).into()).collect(),
        owners,
    }
}

#[tokio::test]
async fn tables_and_maps_change_only_by_compare_and_swap() {
    let etcd = Etcd::start();
    let store = etcd.store("/featmux/test").await;
    let created = store
        .create_table(&info("t", &["user"]), &map(&["a", "b"], vec![0, 0, 1, 1]))
        .await
        .unwrap();
    let table = store.table("t").await.unwrap().unwrap();
    assert_eq!(table.value, info("t", &["user"]));
    assert_eq!(table.revision, created);
    let epoch = store.map("t").await.unwrap().unwrap();
    assert_eq!(epoch.value.owners, [0, 0, 1, 1]);
    assert!(matches!(
        store
            .create_table(&info("t", &["other"]), &map(&["a"], vec![0]))
            .await,
        Err(ClusterError::AlreadyExists(name)) if name == "t"
    ));

    // Two admins read revision r; the first write wins, the second is
    // refused naming both revisions and changes nothing.
    let first = store
        .update_table("t", table.revision, &info("t", &["user", "genres"]))
        .await
        .unwrap();
    assert!(first > table.revision);
    match store
        .update_table("t", table.revision, &info("t", &["user", "city"]))
        .await
    {
        Err(ClusterError::Conflict {
            expected, found, ..
        }) => assert_eq!((expected, found), (table.revision, first)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let now = store.table("t").await.unwrap().unwrap();
    assert_eq!(now.value, info("t", &["user", "genres"]));

    // A new map is a new epoch; a stale one is refused.
    let moved = store
        .set_map("t", epoch.revision, &map(&["a", "b"], vec![0, 1, 1, 1]))
        .await
        .unwrap();
    assert!(moved > epoch.revision);
    assert!(store
        .set_map("t", epoch.revision, &map(&["a"], vec![0, 0, 0, 0]))
        .await
        .is_err());
    assert_eq!(store.map("t").await.unwrap().unwrap().revision, moved);

    // Prefixes keep clusters apart; dropping removes table and map.
    let other = etcd.store("/featmux/other").await;
    assert!(other.table("t").await.unwrap().is_none());
    assert!(store.drop_table("t").await.unwrap().is_some());
    assert!(store.drop_table("t").await.unwrap().is_none());
    assert!(store.table("t").await.unwrap().is_none());
    assert!(store.map("t").await.unwrap().is_none());
}

/// A member `id` at made-up addresses.
fn member(id: &str) -> pb::ShardMember {
    pb::ShardMember {
        id: id.into(),
        grpc: format!("http://{id}:50051"),
        http: format!("http://{id}:8080"),
    }
}

#[tokio::test]
async fn a_member_that_stops_renewing_its_lease_disappears() {
    let etcd = Etcd::start();
    let store = etcd.store("/featmux/test").await;
    let kept = store.join(&Role::Shard, &member("s0"), 2).await.unwrap();
    let lost = store.join(&Role::Shard, &member("s1"), 2).await.unwrap();
    let left = store.join(&Role::Shard, &member("s2"), 2).await.unwrap();
    let ids = |members: Vec<pb::ShardMember>| -> Vec<String> {
        members.into_iter().map(|m| m.id).collect()
    };
    assert_eq!(ids(store.members().await.unwrap()), ["s0", "s1", "s2"]);
    left.leave().await.unwrap();
    assert_eq!(ids(store.members().await.unwrap()), ["s0", "s1"]);
    // s1 stops renewing (its process died): gone after its TTL, while s0,
    // kept alive, stays past several TTLs.
    drop(lost);
    let deadline = Instant::now() + Duration::from_secs(15);
    while ids(store.members().await.unwrap()) != ["s0"] {
        assert!(Instant::now() < deadline, "s1's lease did not expire");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(ids(store.members().await.unwrap()), ["s0"]);
    drop(kept);
}

#[tokio::test]
async fn replicas_are_listed_by_shard_apart_from_members_and_wake_no_shard() {
    let etcd = Etcd::start();
    let store = etcd.store("/featmux/test").await;
    let _shard = store.join(&Role::Shard, &member("a"), 5).await.unwrap();
    let revision = store.snapshot().await.unwrap().revision;
    let woken = tokio::spawn({
        let store = store.clone();
        async move { store.changed_after(revision).await }
    });
    let replica = |shard: &str| Role::ReplicaOf(shard.into());
    let _r1 = store.join(&replica("a"), &member("a-r1"), 5).await.unwrap();
    let r2 = store.join(&replica("b"), &member("b-r1"), 5).await.unwrap();
    let mut replicas = store.replicas().await.unwrap();
    replicas.sort_by(|x, y| x.1.id.cmp(&y.1.id));
    assert_eq!(
        replicas,
        [
            ("a".to_owned(), member("a-r1")),
            ("b".to_owned(), member("b-r1"))
        ]
    );
    let members: Vec<String> = store
        .members()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(members, ["a"], "replicas are not shards");
    r2.leave().await.unwrap();
    assert_eq!(store.replicas().await.unwrap().len(), 1);
    // Replicas coming and going changed nothing a shard applies; a table
    // does.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!woken.is_finished(), "a replica joining woke the shards");
    store
        .create_table(&info("t", &["user"]), &map(&["a"], vec![0]))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), woken)
        .await
        .expect("a new table wakes the shards")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn losing_one_etcd_member_of_three_changes_nothing() {
    let mut etcd = Etcd::cluster(3);
    let store = etcd.store("/featmux/test").await;
    store
        .create_table(&info("t", &["user"]), &map(&["a"], vec![0]))
        .await
        .unwrap();
    let member = store
        .join(
            &Role::Shard,
            &pb::ShardMember {
                id: "s0".into(),
                ..Default::default()
            },
            3,
        )
        .await
        .unwrap();
    etcd.kill(0);
    // Reads, compare-and-swap writes, new tables and the lease (3 s) all go
    // on with two members of three (a quorum), past three lease TTLs.
    let deadline = Instant::now() + Duration::from_secs(9);
    while Instant::now() < deadline {
        let table = store.table("t").await.unwrap().unwrap();
        store
            .update_table("t", table.revision, &info("t", &["user"]))
            .await
            .unwrap();
        assert_eq!(store.members().await.unwrap().len(), 1);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    store
        .create_table(&info("u", &["item"]), &map(&["a"], vec![0]))
        .await
        .unwrap();
    drop(member);
}
