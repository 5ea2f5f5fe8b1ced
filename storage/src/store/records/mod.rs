//! What the `meta` column family stores about tables and checkpoints, as JSON
//! (small, rare writes; readable with `ldb` when debugging).
//!
//! The structs in [`v1`] ARE the stored format of layout version 1 (and 2,
//! which added the optional `max_abs_gradient`, and 3, which added the
//! optional `held` row range of a shard: a record without them has the
//! same bytes as before, and the version keeps an older featmux from
//! opening a database whose clipping or row numbering it would ignore): they
//! belong to the store, not to the engine or the API, so renaming a field of
//! `TableSpec` in the HTTP API (or anywhere in the engine) cannot silently
//! change what is on disk. Changing them means a new layout version and a
//! migration (`migrations/`). `tests` pins the exact bytes.

use serde::{Deserialize, Serialize};

use featmux_engine::registry::Feature;
use featmux_engine::schema::TableSpec;

/// A table's durable configuration: enough to rebuild it exactly. Held in
/// the engine's types; [`TableRecord::encode`] and [`TableRecord::decode`]
/// translate to and from the stored format.
#[derive(Debug, Clone, PartialEq)]
pub struct TableRecord {
    /// Key prefix of the table's rows; never reused.
    pub id: u32,
    pub spec: TableSpec,
    /// Registered features in registration order, with salts and slices.
    pub features: Vec<Feature>,
    /// Salt the next feature gets (salts are never reused).
    pub next_salt: u32,
    /// Set when the table is one shard's part of a cluster table.
    pub shard: Option<ShardPart>,
}

/// The part of a cluster table one shard holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPart {
    /// The table rows held; stored rows are numbered from `held.start`.
    pub held: std::ops::Range<u64>,
    /// Which creation of the cluster table this is (the etcd revision that
    /// created it): a table dropped and created again under the same name
    /// is a new incarnation, whose shards must not keep the old rows.
    pub incarnation: u64,
}

impl TableRecord {
    /// Bytes the table takes in memory once loaded (its held rows only).
    pub fn memory_bytes(&self) -> Option<u64> {
        self.spec.storage_of(self.held_rows()).memory_bytes()
    }

    /// The table rows this data directory holds: all, or a shard's part.
    pub fn held_rows(&self) -> std::ops::Range<u64> {
        self.shard
            .as_ref()
            .map_or(0..self.spec.rows, |s| s.held.clone())
    }

    /// The stored bytes (format version 1).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&v1::TableRecord::from(self)).expect("table records serialise")
    }

    /// Reads stored bytes; the error says what is malformed.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let stored: v1::TableRecord = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        Ok(stored.into())
    }
}

/// A checkpoint in the catalog of the live database. Owned by the store
/// (the service maps it to its own response type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub id: u64,
    /// Training version: the checkpoint holds exactly the pushes `<= version`.
    pub version: u64,
    pub created_unix_ms: u64,
    /// Tables it contains.
    pub tables: Vec<String>,
    /// Directory of the RocksDB checkpoint (hard links), relative to the data dir.
    pub dir: String,
}

impl CheckpointRecord {
    /// The stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("checkpoint records serialise")
    }

    /// Reads stored bytes; the error says what is malformed.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// What a cluster shard serves (see [`super::keys::SHARD_ROUTING`]): its
/// id and, per table, the partition-map epoch requests must carry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRouting {
    pub shard: String,
    pub epochs: std::collections::BTreeMap<String, u64>,
}

impl ShardRouting {
    /// The stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("routing records serialise")
    }

    /// Reads stored bytes; the error says what is malformed.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

pub mod v1;

#[cfg(test)]
mod tests {
    use featmux_engine::init::Initializer;
    use featmux_engine::optimizer::Optimizer;
    use featmux_engine::pooling::Pooling;
    use featmux_engine::schema::{Placement, ValueType};

    use super::*;

    fn feature(
        name: &str,
        salt: u32,
        value_type: ValueType,
        pooling: Pooling,
        placement: Placement,
    ) -> Feature {
        Feature {
            name: name.into(),
            salt,
            chunks: salt + 1,
            value_type,
            pooling,
            placement,
        }
    }

    /// One record per initializer and optimizer kind, with every feature
    /// variant, and the exact bytes the pre-split server wrote for each
    /// (`GOLDEN`): a decoded database must keep decoding, and re-encoding
    /// must not change a byte.
    fn records() -> Vec<TableRecord> {
        let initializers = [
            Initializer::Uniform { bound: None },
            Initializer::Uniform { bound: Some(0.5) },
            Initializer::Normal { std: 0.25 },
            Initializer::Zeros,
            Initializer::Zeros,
        ];
        let optimizers = [
            Optimizer::Sgd { lr: 0.5 },
            Optimizer::Adagrad {
                lr: 0.25,
                eps: 1e-8,
                initial_accumulator: 0.125,
            },
            Optimizer::RowWiseAdagrad {
                lr: 0.05,
                eps: 1e-8,
                initial_accumulator: 0.0,
            },
            Optimizer::Adam {
                lr: 0.001,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            Optimizer::Ftrl {
                alpha: 0.5,
                beta: 1.0,
                l1: 0.25,
                l2: 0.125,
                initial_accumulator: 0.0625,
            },
        ];
        initializers
            .into_iter()
            .zip(optimizers)
            .enumerate()
            .map(|(i, (initializer, optimizer))| TableRecord {
                id: i as u32 + 1,
                spec: TableSpec {
                    name: format!("t{i}"),
                    rows: 1000,
                    chunk_dim: 8,
                    seed: 42 + i as u64,
                    initializer,
                    optimizer,
                    max_abs_gradient: None,
                },
                features: vec![
                    feature("a", 0, ValueType::String, Pooling::Sum, Placement::Shared),
                    feature("b", 1, ValueType::Int64, Pooling::Mean, Placement::Shared),
                    feature(
                        "c",
                        2,
                        ValueType::String,
                        Pooling::Sqrtn,
                        Placement::Partitioned {
                            offset: Some(100),
                            rows: 50,
                        },
                    ),
                    feature("d", 3, ValueType::Int64, Pooling::None, Placement::Shared),
                ],
                next_salt: 4,
                shard: None,
            })
            .collect()
    }

    const GOLDEN: &str = include_str!("../../../tests/fixtures/table_records_v1.jsonl");

    #[test]
    fn table_records_keep_their_stored_bytes() {
        let golden: Vec<&str> = GOLDEN.lines().collect();
        let records = records();
        assert_eq!(golden.len(), records.len());
        for (record, stored) in records.iter().zip(golden) {
            assert_eq!(String::from_utf8(record.encode()).unwrap(), stored);
            assert_eq!(&TableRecord::decode(stored.as_bytes()).unwrap(), record);
        }
    }

    /// Layout 2: a clipping limit is stored when set; the records above
    /// (none set) kept their layout-1 bytes.
    #[test]
    fn a_clipping_limit_is_stored_when_set() {
        let mut record = records().remove(0);
        record.spec.max_abs_gradient = Some(2.5);
        let stored = String::from_utf8(record.encode()).unwrap();
        assert!(stored.contains(r#""max_abs_gradient":2.5}"#), "{stored}");
        assert_eq!(TableRecord::decode(stored.as_bytes()).unwrap(), record);
    }

    /// Layout 3: a shard's part is stored when the table is a cluster's.
    #[test]
    fn a_shards_part_is_stored_when_set() {
        let mut record = records().remove(0);
        record.shard = Some(ShardPart {
            held: 40..90,
            incarnation: 17,
        });
        let stored = String::from_utf8(record.encode()).unwrap();
        assert!(
            stored.ends_with(r#""next_salt":4,"shard":{"held":[40,90],"incarnation":17}}"#),
            "{stored}"
        );
        assert_eq!(TableRecord::decode(stored.as_bytes()).unwrap(), record);
    }

    #[test]
    fn malformed_table_records_are_refused_with_the_reason() {
        let err = TableRecord::decode(br#"{"id": 1}"#).unwrap_err();
        assert!(err.contains("missing field"), "{err}");
    }
}
