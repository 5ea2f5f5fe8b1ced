//! What the `meta` column family stores about tables and checkpoints, as JSON
//! (small, rare writes; readable with `ldb` when debugging).
//!
//! The structs in [`v1`] ARE the stored format of layout version 1: they
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
}

impl TableRecord {
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

/// The table record of layout version 1, field for field as it is stored.
/// Field order is the JSON key order: keep it.
pub mod v1 {
    use serde::{Deserialize, Serialize};

    use featmux_engine::init::Initializer;
    use featmux_engine::optimizer::Optimizer;
    use featmux_engine::pooling::Pooling;
    use featmux_engine::registry::Feature;
    use featmux_engine::schema::{Placement, TableSpec, ValueType};

    #[derive(Debug, Serialize, Deserialize)]
    pub struct TableRecord {
        pub id: u32,
        pub spec: Spec,
        pub features: Vec<StoredFeature>,
        pub next_salt: u32,
    }

    #[derive(Debug, Serialize, Deserialize)]
    pub struct Spec {
        pub name: String,
        pub rows: u64,
        pub chunk_dim: usize,
        pub seed: u64,
        pub initializer: Init,
        pub optimizer: Opt,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "kind", rename_all = "snake_case")]
    pub enum Init {
        Uniform { bound: Option<f32> },
        Normal { std: f32 },
        Zeros,
    }

    /// Optimizer kinds and their hyper-parameters, in stored key order.
    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "kind", rename_all = "snake_case")]
    pub enum Opt {
        Sgd {
            lr: f32,
        },
        Adagrad {
            lr: f32,
            eps: f32,
            initial_accumulator: f32,
        },
        RowWiseAdagrad {
            lr: f32,
            eps: f32,
            initial_accumulator: f32,
        },
        Adam {
            lr: f32,
            beta1: f32,
            beta2: f32,
            eps: f32,
        },
        Ftrl {
            alpha: f32,
            beta: f32,
            l1: f32,
            l2: f32,
            initial_accumulator: f32,
        },
    }

    #[derive(Debug, Serialize, Deserialize)]
    pub struct StoredFeature {
        pub name: String,
        pub salt: u32,
        pub chunks: u32,
        pub value_type: Type,
        pub pooling: Pool,
        pub placement: Place,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Type {
        String,
        Int64,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Pool {
        Sum,
        Mean,
        Sqrtn,
        None,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "kind", rename_all = "snake_case")]
    pub enum Place {
        Shared,
        Partitioned { offset: Option<u64>, rows: u64 },
    }

    impl From<&super::TableRecord> for TableRecord {
        fn from(r: &super::TableRecord) -> Self {
            let s = &r.spec;
            TableRecord {
                id: r.id,
                spec: Spec {
                    name: s.name.clone(),
                    rows: s.rows,
                    chunk_dim: s.chunk_dim,
                    seed: s.seed,
                    initializer: s.initializer.into(),
                    optimizer: s.optimizer.into(),
                },
                features: r.features.iter().map(StoredFeature::from).collect(),
                next_salt: r.next_salt,
            }
        }
    }

    impl From<TableRecord> for super::TableRecord {
        fn from(r: TableRecord) -> Self {
            let s = r.spec;
            super::TableRecord {
                id: r.id,
                spec: TableSpec {
                    name: s.name,
                    rows: s.rows,
                    chunk_dim: s.chunk_dim,
                    seed: s.seed,
                    initializer: s.initializer.into(),
                    optimizer: s.optimizer.into(),
                },
                features: r.features.into_iter().map(Feature::from).collect(),
                next_salt: r.next_salt,
            }
        }
    }

    impl From<Initializer> for Init {
        fn from(i: Initializer) -> Self {
            match i {
                Initializer::Uniform { bound } => Init::Uniform { bound },
                Initializer::Normal { std } => Init::Normal { std },
                Initializer::Zeros => Init::Zeros,
            }
        }
    }

    impl From<Init> for Initializer {
        fn from(i: Init) -> Self {
            match i {
                Init::Uniform { bound } => Initializer::Uniform { bound },
                Init::Normal { std } => Initializer::Normal { std },
                Init::Zeros => Initializer::Zeros,
            }
        }
    }

    impl From<Optimizer> for Opt {
        fn from(o: Optimizer) -> Self {
            match o {
                Optimizer::Sgd { lr } => Opt::Sgd { lr },
                Optimizer::Adagrad {
                    lr,
                    eps,
                    initial_accumulator,
                } => Opt::Adagrad {
                    lr,
                    eps,
                    initial_accumulator,
                },
                Optimizer::RowWiseAdagrad {
                    lr,
                    eps,
                    initial_accumulator,
                } => Opt::RowWiseAdagrad {
                    lr,
                    eps,
                    initial_accumulator,
                },
                Optimizer::Adam {
                    lr,
                    beta1,
                    beta2,
                    eps,
                } => Opt::Adam {
                    lr,
                    beta1,
                    beta2,
                    eps,
                },
                Optimizer::Ftrl {
                    alpha,
                    beta,
                    l1,
                    l2,
                    initial_accumulator,
                } => Opt::Ftrl {
                    alpha,
                    beta,
                    l1,
                    l2,
                    initial_accumulator,
                },
            }
        }
    }

    impl From<Opt> for Optimizer {
        fn from(o: Opt) -> Self {
            match o {
                Opt::Sgd { lr } => Optimizer::Sgd { lr },
                Opt::Adagrad {
                    lr,
                    eps,
                    initial_accumulator,
                } => Optimizer::Adagrad {
                    lr,
                    eps,
                    initial_accumulator,
                },
                Opt::RowWiseAdagrad {
                    lr,
                    eps,
                    initial_accumulator,
                } => Optimizer::RowWiseAdagrad {
                    lr,
                    eps,
                    initial_accumulator,
                },
                Opt::Adam {
                    lr,
                    beta1,
                    beta2,
                    eps,
                } => Optimizer::Adam {
                    lr,
                    beta1,
                    beta2,
                    eps,
                },
                Opt::Ftrl {
                    alpha,
                    beta,
                    l1,
                    l2,
                    initial_accumulator,
                } => Optimizer::Ftrl {
                    alpha,
                    beta,
                    l1,
                    l2,
                    initial_accumulator,
                },
            }
        }
    }

    impl From<&Feature> for StoredFeature {
        fn from(f: &Feature) -> Self {
            StoredFeature {
                name: f.name.clone(),
                salt: f.salt,
                chunks: f.chunks,
                value_type: match f.value_type {
                    ValueType::String => Type::String,
                    ValueType::Int64 => Type::Int64,
                },
                pooling: match f.pooling {
                    Pooling::Sum => Pool::Sum,
                    Pooling::Mean => Pool::Mean,
                    Pooling::Sqrtn => Pool::Sqrtn,
                    Pooling::None => Pool::None,
                },
                placement: match f.placement {
                    Placement::Shared => Place::Shared,
                    Placement::Partitioned { offset, rows } => Place::Partitioned { offset, rows },
                },
            }
        }
    }

    impl From<StoredFeature> for Feature {
        fn from(f: StoredFeature) -> Self {
            Feature {
                name: f.name,
                salt: f.salt,
                chunks: f.chunks,
                value_type: match f.value_type {
                    Type::String => ValueType::String,
                    Type::Int64 => ValueType::Int64,
                },
                pooling: match f.pooling {
                    Pool::Sum => Pooling::Sum,
                    Pool::Mean => Pooling::Mean,
                    Pool::Sqrtn => Pooling::Sqrtn,
                    Pool::None => Pooling::None,
                },
                placement: match f.placement {
                    Place::Shared => Placement::Shared,
                    Place::Partitioned { offset, rows } => Placement::Partitioned { offset, rows },
                },
            }
        }
    }
}

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
            })
            .collect()
    }

    const GOLDEN: &str = include_str!("../../tests/fixtures/table_records_v1.jsonl");

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

    #[test]
    fn malformed_table_records_are_refused_with_the_reason() {
        let err = TableRecord::decode(br#"{"id": 1}"#).unwrap_err();
        assert!(err.contains("missing field"), "{err}");
    }
}
