//! The wire conversions only the CLI needs (the server decodes batches and
//! encodes table descriptions; the CLI does the opposite), so the service
//! library does not carry them.

use anyhow::Context;
use featmux_client::pb;
use featmux_engine::batch::{Batch, Values};
use featmux_engine::occupancy::{FeatureOccupancy, OccupancyReport};
use featmux_server::api::{FeatureInfo, TableInfo};
use featmux_server::convert::{feature_spec_from_pb, table_spec_from_pb};

/// A batch in wire form (what `lookup` sends).
pub fn batch_to_pb(batch: Batch) -> pb::Batch {
    let features = batch
        .features
        .into_iter()
        .map(|f| pb::FeatureValues {
            feature: f.feature,
            values: Some(match f.values {
                Values::Strings(values) => {
                    pb::feature_values::Values::Strings(pb::StringValues { values })
                }
                Values::PackedStrings(p) => {
                    pb::feature_values::Values::PackedStrings(pb::PackedStrings {
                        lengths: p.lengths_le().into(),
                        data: p.data().clone(),
                    })
                }
                Values::Int64(values) => {
                    pb::feature_values::Values::PackedInt64s(pb::PackedInt64s::from_values(values))
                }
            }),
            lengths: f.lengths,
            weights: f.weights.unwrap_or_default(),
            values_per_example: 0,
        })
        .collect();
    pb::Batch { features }
}

/// A table's description, back from the wire in the HTTP API's shape (what
/// `--json` prints).
pub fn table_info_from_pb(t: pb::TableInfo) -> anyhow::Result<TableInfo> {
    let config = table_spec_from_pb(t.config).context("the server sent a malformed table")?;
    let features = t
        .features
        .into_iter()
        .map(|f| {
            let spec = f
                .config
                .context("the server sent a feature without config")?;
            Ok(FeatureInfo {
                spec: feature_spec_from_pb(spec)?,
                salt: f.salt,
                width: f.width as usize,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(TableInfo {
        config,
        features,
        bytes_in_memory: t.bytes_in_memory,
        dirty_rows: t.dirty_rows,
        row_format: t.row_format.clone(),
        bytes_per_row: t.bytes_per_row,
    })
}

/// An occupancy report as the HTTP API shows it.
pub fn occupancy_from_pb(o: pb::OccupancyResponse) -> OccupancyReport {
    OccupancyReport {
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
            .map(|f| FeatureOccupancy {
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
    use featmux_engine::batch::FeatureBatch;
    use featmux_server::convert::batch_from_pb;

    use super::*;

    #[test]
    fn batches_round_trip_through_the_server_decoder() {
        let batch = Batch::new(vec![
            FeatureBatch::strings("u", ["a", "b"], vec![2, 0]),
            FeatureBatch::int64("n", vec![7], vec![0, 1]).with_weights(vec![0.5]),
        ]);
        assert_eq!(
            batch_from_pb(Some(batch_to_pb(batch.clone()))).unwrap(),
            batch
        );
    }
}
