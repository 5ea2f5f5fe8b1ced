//! Protobuf messages ↔ the server's API types. The engine types' own
//! conversions (batches, table and feature specs) live in
//! [`featmux_proto::engine`], shared with cluster clients, and are
//! re-exported here for the handlers. Decoding names the field at fault.

use featmux_proto::payload_gradients::PayloadGradients;
use featmux_proto::precision;
use featmux_proto::v1 as pb;
use featmux_proto::v1::Precision;

use crate::api::{
    Checkpoint, ExplainedValue, FeatureInfo, GradientBlock, PushResult, ShardCheckpoint, Stats,
    TableInfo,
};
use crate::error::ApiError;
use bytes::Bytes;
use featmux_engine::backend::BlockSink;
use featmux_engine::batch::FeatureEmbeddings;
use featmux_engine::layout::OutputBlock;
use featmux_engine::occupancy::OccupancyReport;
pub use featmux_proto::engine::{
    batch_from_pb, feature_spec_from_pb, feature_specs_from_pb, optimizer_from_pb,
    table_spec_from_pb, values_from_pb, WireError,
};
use featmux_proto::engine::{feature_spec_to_pb, table_spec_to_pb};

/// Output blocks as raw little-endian f32 payloads: each the gathered
/// vector itself, no copy.
pub fn embeddings_to_pb(embeddings: Vec<FeatureEmbeddings>) -> Vec<pb::Embeddings> {
    embeddings
        .into_iter()
        .map(|e| pb::Embeddings {
            data: featmux_proto::payload::encode_owned(e.data),
            rows: e.rows as u32,
            width: e.width as u32,
            feature: e.feature,
            precision: Precision::F32.into(),
        })
        .collect()
}

/// A lookup's payloads in a precision of its own (16 bits), each block
/// converted as the gather finishes it, while its floats are still in the
/// core's cache ([`BlockSink`]).
pub struct EncodedPayloads {
    precision: Precision,
    payloads: Vec<Bytes>,
}

impl EncodedPayloads {
    pub fn new(precision: Precision) -> Self {
        EncodedPayloads {
            precision,
            payloads: Vec::new(),
        }
    }

    /// The answer's blocks, `outputs` naming them in the order they came.
    pub fn into_pb(self, outputs: Vec<OutputBlock>) -> Vec<pb::Embeddings> {
        assert_eq!(outputs.len(), self.payloads.len(), "one payload per block");
        outputs
            .into_iter()
            .zip(self.payloads)
            .map(|(o, data)| pb::Embeddings {
                data,
                rows: o.rows as u32,
                width: o.width as u32,
                feature: o.feature,
                precision: self.precision.into(),
            })
            .collect()
    }
}

impl BlockSink for EncodedPayloads {
    fn block(&mut self, _: usize, floats: &[f32]) {
        self.payloads
            .push(precision::encode_slice(floats, self.precision));
    }
}

/// Gradient blocks from their payloads, each float in `precision`, read
/// in place by the push (widened to f32 as it sums them).
pub fn gradients_from_pb(
    gradients: Vec<pb::Gradient>,
    precision: Precision,
) -> Result<Vec<GradientBlock<PayloadGradients>>, ApiError> {
    gradients
        .into_iter()
        .enumerate()
        .map(|(i, g)| {
            let bytes = g.data.len();
            let data = PayloadGradients::new(g.data, precision).ok_or_else(|| {
                ApiError::invalid(format!(
                    "gradient block {i} (`{}`) has {bytes} bytes, not a whole number of {}",
                    g.feature,
                    precision.name()
                ))
            })?;
            Ok(GradientBlock {
                feature: g.feature,
                data,
            })
        })
        .collect()
}

/// A push's result.
pub fn push_result_to_pb(r: PushResult) -> pb::PushResponse {
    pb::PushResponse {
        version: r.version,
        entries: r.entries,
        unique_rows: r.unique_rows,
    }
}

fn feature_info_to_pb(f: &FeatureInfo) -> pb::FeatureInfo {
    pb::FeatureInfo {
        config: Some(feature_spec_to_pb(&f.spec)),
        salt: f.salt,
        width: f.width as u32,
    }
}

/// A table's description.
pub fn table_info_to_pb(t: &TableInfo) -> pb::TableInfo {
    pb::TableInfo {
        config: Some(table_spec_to_pb(&t.config)),
        features: t.features.iter().map(feature_info_to_pb).collect(),
        bytes_in_memory: t.bytes_in_memory,
        dirty_rows: t.dirty_rows,
        row_format: t.row_format.clone(),
        bytes_per_row: t.bytes_per_row,
    }
}

/// A checkpoint.
pub fn checkpoint_to_pb(c: Checkpoint) -> pb::Checkpoint {
    pb::Checkpoint {
        id: c.id,
        version: c.version,
        created_unix_ms: c.created_unix_ms,
        tables: c.tables,
        shards: c
            .shards
            .into_iter()
            .map(|s| pb::ShardCheckpoint {
                shard: s.shard,
                checkpoint: s.checkpoint,
                version: s.version,
            })
            .collect(),
    }
}

/// A cluster checkpoint's description (as etcd stores it) for the API.
pub fn checkpoint_from_pb(c: pb::Checkpoint) -> Checkpoint {
    Checkpoint {
        id: c.id,
        version: c.version,
        created_unix_ms: c.created_unix_ms,
        tables: c.tables,
        dir: String::new(),
        shards: c
            .shards
            .into_iter()
            .map(|s| ShardCheckpoint {
                shard: s.shard,
                checkpoint: s.checkpoint,
                version: s.version,
            })
            .collect(),
    }
}

/// Server stats.
pub fn stats_to_pb(s: &Stats) -> pb::StatsResponse {
    pb::StatsResponse {
        version: s.version,
        flushed_version: s.flushed_version,
        flushes: s.flushes,
        flush_failures: s.flush_failures,
        rows_flushed: s.rows_flushed,
        last_flush_unix_ms: s.last_flush_unix_ms,
        database_bytes: s.database_bytes,
        live_tickets: s.live_tickets,
        tables: s.tables.iter().map(table_info_to_pb).collect(),
        lost_versions: s
            .lost_versions
            .iter()
            .map(|r| pb::VersionRange {
                first: r.first,
                last: r.last,
            })
            .collect(),
    }
}

/// An explanation.
pub fn explanation_to_pb(features: Vec<(String, Vec<ExplainedValue>)>) -> pb::ExplainResponse {
    pb::ExplainResponse {
        features: features
            .into_iter()
            .map(|(feature, values)| pb::FeatureExplanation {
                feature,
                values: values
                    .into_iter()
                    .map(|v| pb::ExplainedValue {
                        value: v.value,
                        rows: v.rows,
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// A table's occupancy statistics.
pub fn occupancy_to_pb(o: OccupancyReport) -> pb::OccupancyResponse {
    pb::OccupancyResponse {
        rows: o.rows,
        occupied_rows: o.occupied_rows,
        shared_rows: o.shared_rows,
        distinct_values: o.distinct_values,
        items: o.items,
        expected_occupied_rows: o.expected_occupied_rows,
        collision_rate: o.collision_rate,
        expected_collision_rate: o.expected_collision_rate,
        items_per_row: o.items_per_row,
        relative_error: o.relative_error,
        batches: o.batches,
        sample_every: o.sample_every,
        bytes: o.bytes,
        features: o
            .features
            .into_iter()
            .map(|f| pb::FeatureOccupancy {
                feature: f.feature,
                span_rows: f.span_rows,
                distinct_values: f.distinct_values,
                items: f.items,
                rows: f.rows,
                collision_rate: f.collision_rate,
                expected_collision_rate: f.expected_collision_rate,
                entries: f.entries,
                entries_on_shared_rows: f.entries_on_shared_rows,
                shared_traffic: f.shared_traffic,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use featmux_engine::gradients::GradientSource;

    #[test]
    fn ragged_gradients_name_their_block() {
        let ragged = vec![pb::Gradient {
            feature: "f".into(),
            data: vec![0u8; 6].into(),
        }];
        let err = gradients_from_pb(ragged.clone(), Precision::F32).unwrap_err();
        assert!(
            err.message.contains("6 bytes, not a whole number of f32"),
            "{err}"
        );
        let odd = vec![pb::Gradient {
            feature: "f".into(),
            data: vec![0u8; 7].into(),
        }];
        let err = gradients_from_pb(odd, Precision::Bf16).unwrap_err();
        assert!(
            err.message.contains("7 bytes, not a whole number of bf16"),
            "{err}"
        );
        let halves = gradients_from_pb(ragged, Precision::F16).unwrap();
        assert_eq!(halves[0].data.floats(), 3);
    }
}
