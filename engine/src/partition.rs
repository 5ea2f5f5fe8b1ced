//! How a table's rows are cut over the shards of a cluster: `[0, rows)` in
//! P equal contiguous partitions, each owned by one shard. Unified
//! Embedding hashes values uniformly over the rows, so equal ranges carry
//! equal load and no value-level rebalancing is needed.
//!
//! The client routes with this map and each shard allocates only the rows
//! of its partitions, so both must compute the same ranges: that is why it
//! lives here, next to the hashing, and nowhere else.

use std::ops::Range;

use crate::error::EngineError;

/// Which shard owns each partition: partition `p` (rows
/// [`Self::rows_of`]`(p)`) belongs to shard `owners[p]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMap {
    pub owners: Vec<usize>,
}

impl PartitionMap {
    /// `partitions` partitions dealt to `shards` shards in contiguous runs
    /// (so every shard holds one row range).
    pub fn even(partitions: usize, shards: usize) -> Self {
        PartitionMap {
            owners: (0..partitions).map(|p| p * shards / partitions).collect(),
        }
    }

    /// Number of partitions.
    pub fn partitions(&self) -> usize {
        self.owners.len()
    }

    /// The partition of `row` in a table of `rows` rows.
    pub fn partition_of(&self, row: u64, rows: u64) -> usize {
        (row as u128 * self.owners.len() as u128 / rows.max(1) as u128) as usize
    }

    /// The shard that owns `row`.
    pub fn shard_of(&self, row: u64, rows: u64) -> usize {
        self.owners[self.partition_of(row, rows)]
    }

    /// The rows of partition `p`: those whose [`Self::partition_of`] is `p`
    /// (partition p starts at `ceil(p · rows / P)`).
    pub fn rows_of(&self, p: usize, rows: u64) -> Range<u64> {
        let start = |p: usize| -> u64 {
            let p = p as u128;
            let n = self.owners.len() as u128;
            ((p * rows as u128).div_ceil(n)) as u64
        };
        start(p)..start(p + 1)
    }

    /// The one contiguous row range `shard` owns (`None` when it owns no
    /// partition); an error if its partitions are not one run, which a
    /// shard cannot hold.
    pub fn held_by(&self, shard: usize, rows: u64) -> Result<Option<Range<u64>>, EngineError> {
        let owned: Vec<usize> = (0..self.owners.len())
            .filter(|&p| self.owners[p] == shard)
            .collect();
        let (Some(&first), Some(&last)) = (owned.first(), owned.last()) else {
            return Ok(None);
        };
        if last - first + 1 != owned.len() {
            return Err(EngineError::invalid(
                "partition map",
                format!(
                    "shard {shard} owns partitions {first}..={last} with gaps; a shard holds one \
                     contiguous run"
                ),
            ));
        }
        Ok(Some(
            self.rows_of(first, rows).start..self.rows_of(last, rows).end,
        ))
    }

    /// Checks the map against a table of `rows` rows and `shards` shards:
    /// at least one partition, no more partitions than rows, owners in range.
    pub fn validate(&self, rows: u64, shards: usize) -> Result<(), EngineError> {
        let p = self.owners.len();
        if p == 0 || p as u64 > rows {
            return Err(EngineError::invalid(
                "partitions",
                format!("{p} is outside 1..={rows} (the table's rows)"),
            ));
        }
        if let Some(bad) = self.owners.iter().find(|&&s| s >= shards) {
            return Err(EngineError::invalid(
                "partition map",
                format!("owner {bad} is not one of the {shards} shards"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_cut_the_rows_evenly_and_deal_them_in_runs() {
        let map = PartitionMap::even(8, 3);
        assert_eq!(map.owners, [0, 0, 0, 1, 1, 1, 2, 2]);
        // 1000 rows, 8 partitions of 125.
        assert_eq!(map.partition_of(0, 1000), 0);
        assert_eq!(map.partition_of(124, 1000), 0);
        assert_eq!(map.partition_of(125, 1000), 1);
        assert_eq!(map.partition_of(999, 1000), 7);
        assert_eq!(map.shard_of(999, 1000), 2);
        assert_eq!(map.shard_of(374, 1000), 0);
        assert_eq!(map.shard_of(375, 1000), 1);
        assert_eq!(map.rows_of(1, 1000), 125..250);
        assert_eq!(map.held_by(1, 1000).unwrap(), Some(375..750));
        // Huge tables do not overflow.
        assert_eq!(map.partition_of(u64::MAX - 1, u64::MAX), 7);
    }

    #[test]
    fn rows_of_agrees_with_partition_of_for_uneven_sizes() {
        for (rows, p) in [(10u64, 3usize), (1001, 7), (64, 64), (5, 1), (97, 13)] {
            let map = PartitionMap::even(p, 3.min(p));
            let mut next = 0;
            for part in 0..p {
                let range = map.rows_of(part, rows);
                assert_eq!(range.start, next, "{rows} rows, {p} partitions");
                for row in range.clone() {
                    assert_eq!(map.partition_of(row, rows), part);
                }
                next = range.end;
            }
            assert_eq!(next, rows);
            let held: u64 = (0..3.min(p))
                .map(|s| map.held_by(s, rows).unwrap().map_or(0, |r| r.end - r.start))
                .sum();
            assert_eq!(held, rows);
        }
    }

    #[test]
    fn a_shard_with_gaps_or_a_bad_map_is_refused() {
        let map = PartitionMap {
            owners: vec![0, 1, 0],
        };
        assert!(map.held_by(0, 30).unwrap_err().to_string().contains("gaps"));
        assert_eq!(map.held_by(2, 30).unwrap(), None);
        assert!(map.validate(30, 1).is_err());
        assert!(PartitionMap::even(40, 2).validate(30, 2).is_err());
        assert!(PartitionMap::even(30, 2).validate(30, 2).is_ok());
    }
}
