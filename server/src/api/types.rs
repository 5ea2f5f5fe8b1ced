//! What the operations report, shared by both transports: the HTTP API
//! serialises these (with their OpenAPI schemas), gRPC converts them.

use featmux_engine::registry::Feature;
use featmux_engine::schema::{FeatureSpec, TableSpec};
use featmux_storage::store::records::CheckpointRecord;
use serde::Serialize;
use utoipa::ToSchema;

/// The gradient of one output block; `feature` may be left empty, and is
/// checked against the batch when set. `data` is the floats a request
/// carried, or where they lie in a region shared with the trainer
/// ([`featmux_engine::gradients::SharedGradients`]), read in place.
#[derive(Debug, Clone, Default)]
pub struct GradientBlock<D = Vec<f32>> {
    pub feature: String,
    pub data: D,
}

/// A checkpoint, as the API describes it (the store keeps its own record).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Checkpoint {
    pub id: u64,
    /// Training version: the checkpoint holds exactly the pushes `<= version`.
    pub version: u64,
    pub created_unix_ms: u64,
    /// Tables it contains.
    pub tables: Vec<String>,
    /// Directory of the RocksDB checkpoint (hard links), relative to the data dir.
    pub dir: String,
    /// A cluster checkpoint: each shard's checkpoint and version (its own
    /// `version` is then 0: versions are per shard).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardCheckpoint>,
}

/// One shard's part of a cluster checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ShardCheckpoint {
    pub shard: String,
    /// The shard's own checkpoint id.
    pub checkpoint: u64,
    /// The shard's training version it holds exactly.
    pub version: u64,
}

impl From<CheckpointRecord> for Checkpoint {
    fn from(c: CheckpointRecord) -> Self {
        Checkpoint {
            id: c.id,
            version: c.version,
            created_unix_ms: c.created_unix_ms,
            tables: c.tables,
            dir: c.dir,
            shards: Vec::new(),
        }
    }
}

/// A push's result.
#[derive(Debug, Clone, Copy)]
pub struct PushResult {
    /// Training version of the push.
    pub version: u64,
    pub entries: u64,
    pub unique_rows: u64,
}

/// A registered feature, as admin calls report it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FeatureInfo {
    /// Its configuration; a partitioned slice shows the offset it got.
    #[serde(flatten)]
    pub spec: FeatureSpec,
    /// Hash salt (fixed at registration, never reused).
    pub salt: u32,
    /// Output floats per example: `chunks * chunk_dim`.
    pub width: usize,
}

impl FeatureInfo {
    /// The registered feature this describes.
    pub fn feature(&self) -> Feature {
        Feature {
            name: self.spec.name.clone(),
            salt: self.salt,
            chunks: self.spec.chunks,
            value_type: self.spec.value_type,
            pooling: self.spec.pooling,
            placement: self.spec.placement,
        }
    }
}

/// A table's configuration, features and footprint.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TableInfo {
    pub config: TableSpec,
    pub features: Vec<FeatureInfo>,
    /// Weights plus optimizer state held in memory.
    pub bytes_in_memory: u64,
    /// Rows changed since the last flush.
    pub dirty_rows: u64,
    /// How rows are held: `f32` (with optimizer state) on a training
    /// server; `f32`, `f16` or `int8` (weights only) on a replica.
    pub row_format: String,
    /// Memory per held row, weights and optimizer state together.
    pub bytes_per_row: u64,
}

/// Server-wide counters.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Stats {
    /// Pushes applied since the data directory was created.
    pub version: u64,
    /// Highest version durable on disk.
    pub flushed_version: u64,
    pub flushes: u64,
    pub flush_failures: u64,
    pub rows_flushed: u64,
    pub last_flush_unix_ms: u64,
    pub database_bytes: u64,
    pub live_tickets: u64,
    pub tables: Vec<TableInfo>,
    /// Versions handed out by runs that died before flushing them: those
    /// pushes are lost. A push is durable once `flushed_version >= v` and
    /// `v` is in none of these ranges.
    pub lost_versions: Vec<VersionRange>,
}

/// Versions `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct VersionRange {
    pub first: u64,
    pub last: u64,
}

/// One table's footprint and how far its pushes are from disk.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TableStats {
    pub table: TableInfo,
    /// Pushes applied (to any table) since the data directory was created.
    pub version: u64,
    /// Highest version durable on disk; the table's `dirty_rows` are the
    /// rows changed by pushes after it.
    pub flushed_version: u64,
    pub last_flush_unix_ms: u64,
}

/// The rows one value maps to, one per chunk.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ExplainedValue {
    pub value: String,
    pub rows: Vec<u64>,
}
