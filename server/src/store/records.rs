//! What the `meta` column family stores about tables and checkpoints, as JSON
//! (small, rare writes; readable with `ldb` when debugging).

use serde::{Deserialize, Serialize};

use crate::registry::Feature;
use crate::schema::TableSpec;

/// A table's durable configuration: enough to rebuild it exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableRecord {
    /// Key prefix of the table's rows; never reused.
    pub id: u32,
    pub spec: TableSpec,
    /// Registered features in registration order, with salts and slices.
    pub features: Vec<Feature>,
    /// Salt the next feature gets (salts are never reused).
    pub next_salt: u32,
}

/// A checkpoint in the catalog of the live database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
