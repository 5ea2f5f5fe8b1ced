//! featmux's cluster state, kept in etcd rather than in a consensus of our
//! own: each table's description (config and features with their salts,
//! so every shard and client hashes alike), its partition map (whose etcd
//! revision is the map's epoch), and shard membership under leases.
//! Changes are etcd transactions that compare the revision they read, so
//! two admins racing on one table cannot both win.
//!
//! Layout under a prefix (one per cluster): `tables/<name>` (a
//! `TableInfo`), `maps/<name>` (a `PartitionMap`), `members/<id>` (a
//! `ShardMember`, attached to the member's lease), `applied/<id>` (the
//! revision a shard has applied), `checkpoints/<id>` (a
//! `ClusterCheckpoint`), `replicas/<shard>/<id>` (a read replica of a
//! shard, a `ShardMember` attached to its lease).

mod store;

pub use store::{ClusterError, ClusterStore, Membership, Role, Snapshot, Versioned};
