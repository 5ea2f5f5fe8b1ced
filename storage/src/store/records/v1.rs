//! The table record of layout version 1, field for field as it is stored.
//! Field order is the JSON key order: keep it. Changing anything here
//! changes the database format (see the module above).

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
    /// Layout 3: the part of a cluster table a shard holds; absent for a
    /// standalone server's table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Shard {
    /// `[start, end)` of the rows held.
    pub held: [u64; 2],
    pub incarnation: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Spec {
    pub name: String,
    pub rows: u64,
    pub chunk_dim: usize,
    pub seed: u64,
    pub initializer: Init,
    pub optimizer: Opt,
    /// Layout 2; absent means no clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_abs_gradient: Option<f32>,
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
                max_abs_gradient: s.max_abs_gradient,
            },
            features: r.features.iter().map(StoredFeature::from).collect(),
            next_salt: r.next_salt,
            shard: r.shard.as_ref().map(|s| Shard {
                held: [s.held.start, s.held.end],
                incarnation: s.incarnation,
            }),
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
                max_abs_gradient: s.max_abs_gradient,
            },
            features: r.features.into_iter().map(Feature::from).collect(),
            next_salt: r.next_salt,
            shard: r.shard.map(|s| super::ShardPart {
                held: s.held[0]..s.held[1],
                incarnation: s.incarnation,
            }),
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
