//! On-disk key layout, version 4 (see `featmux_migrations::layout`).
//!
//! | column family | key                                  | value                          |
//! | ------------- | ------------------------------------ | ------------------------------ |
//! | `rows`        | table id `u32` BE ++ row `u64` BE     | `chunk_dim` × f32 LE weights, then `state_width` × f32 LE optimizer state |
//! | `state`       | same as `rows`                       | empty (the state of layouts 1–3) |
//! | `meta`        | `table/` ++ table id `u32` BE         | [`super::records::TableRecord`] as JSON |
//! | `meta`        | `checkpoint/` ++ id `u64` BE          | [`super::records::CheckpointRecord`] as JSON |
//! | `meta`        | `next_table_id`                      | `u32` BE                       |
//! | `meta`        | `next_checkpoint_id`                 | `u64` BE                       |
//! | `meta`        | `version`                            | `u64` BE: pushes covered by the last completed flush |
//! | `meta`        | `version_reserved`                   | `u64` BE: versions handed out at most |
//! | `meta`        | `lost_versions/` ++ first `u64` BE    | first, last `u64` BE: versions lost in a crash |
//! | `meta`        | `restoring/` ++ table id `u32` BE     | table id `u32` BE: a restore writing rows under this id has not finished |
//!
//! Big-endian ids make one table one contiguous key range (bulk load is one
//! forward scan, dropping a table is one range delete) with rows in order.
//! Changing any of this needs a migration.

/// Bytes of a row key.
pub const ROW_KEY_LEN: usize = 12;

/// Key of `row` of table `table_id` in the `rows` family.
pub fn row_key(table_id: u32, row: u64) -> [u8; ROW_KEY_LEN] {
    let mut key = [0u8; ROW_KEY_LEN];
    key[..4].copy_from_slice(&table_id.to_be_bytes());
    key[4..].copy_from_slice(&row.to_be_bytes());
    key
}

/// `[start, end)` keys covering every row of `table_id`.
pub fn table_range(table_id: u32) -> ([u8; 4], [u8; 4]) {
    // Table ids stop below u32::MAX (see `Catalog::create_table`), so +1 fits.
    (table_id.to_be_bytes(), (table_id + 1).to_be_bytes())
}

/// The row index of a row key, if it belongs to `table_id`.
pub fn parse_row_key(table_id: u32, key: &[u8]) -> Option<u64> {
    let key: &[u8; ROW_KEY_LEN] = key.try_into().ok()?;
    if key[..4] != table_id.to_be_bytes() {
        return None;
    }
    Some(u64::from_be_bytes(key[4..].try_into().ok()?))
}

/// The table id and row of a row key.
pub fn split_row_key(key: &[u8]) -> Option<(u32, u64)> {
    let key: &[u8; ROW_KEY_LEN] = key.try_into().ok()?;
    let id = u32::from_be_bytes(key[..4].try_into().ok()?);
    Some((id, u64::from_be_bytes(key[4..].try_into().ok()?)))
}

/// Prefix of table records in `meta`.
pub const TABLE_PREFIX: &[u8] = b"table/";
/// Prefix of checkpoint records in `meta`.
pub const CHECKPOINT_PREFIX: &[u8] = b"checkpoint/";
/// Next table id to assign.
pub const NEXT_TABLE_ID: &[u8] = b"next_table_id";
/// Next checkpoint id to assign.
pub const NEXT_CHECKPOINT_ID: &[u8] = b"next_checkpoint_id";
/// Training version covered by the last completed flush.
pub const VERSION: &[u8] = b"version";
/// Versions up to this one may have been handed out (reserved ahead, like a
/// database sequence cache, so a crash never reissues one).
pub const VERSION_RESERVED: &[u8] = b"version_reserved";
/// Prefix of lost version ranges: `lost_versions/<first>` → `first, last`
/// (two big-endian u64), versions handed out but not flushed before a crash.
pub const LOST_VERSIONS_PREFIX: &[u8] = b"lost_versions/";

/// When the last flush was committed (u64 microseconds since the Unix
/// epoch), written with [`VERSION`]; optional (older flushes lack it).
pub const FLUSHED_AT: &[u8] = b"flushed_at";
/// On a replica: the last primary log sequence applied (u64), written in
/// the same batch as that write. Never present on a primary.
pub const REPLICA_SEQUENCE: &[u8] = b"replica/sequence";
/// On a replica: a bootstrap (copy of the primary) started and has not
/// finished; the data is incomplete and is copied again.
pub const REPLICA_BOOTSTRAPPING: &[u8] = b"replica/bootstrapping";
/// On a cluster shard: its id and the partition-map epoch it serves each
/// table at (a [`super::records::ShardRouting`], JSON), rewritten when they
/// change. In the database so that a replica of the shard learns them
/// through the log, in order with the data they describe.
pub const SHARD_ROUTING: &[u8] = b"shard/routing";
/// Prefix of restore markers: `restoring/<id>` → `id` (big-endian u32). A
/// restore streams rows under a fresh table id marked this way and removes
/// the marker in the write that records the table; rows under an id still
/// marked at start-up are what a crash left of a restore, and are deleted.
pub const RESTORING_PREFIX: &[u8] = b"restoring/";

/// Meta key of the restore marker of table id `id`.
pub fn restoring_key(id: u32) -> Vec<u8> {
    [RESTORING_PREFIX, &id.to_be_bytes()].concat()
}

/// Meta key of the lost range starting at `first`.
pub fn lost_versions_key(first: u64) -> Vec<u8> {
    [LOST_VERSIONS_PREFIX, &first.to_be_bytes()].concat()
}

/// Meta key of table `id`'s record.
pub fn table_key(id: u32) -> Vec<u8> {
    [TABLE_PREFIX, &id.to_be_bytes()].concat()
}

/// Meta key of checkpoint `id`'s record.
pub fn checkpoint_key(id: u64) -> Vec<u8> {
    [CHECKPOINT_PREFIX, &id.to_be_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_keys_sort_by_table_then_row() {
        let mut keys = vec![
            row_key(2, 0),
            row_key(1, 300),
            row_key(1, 2),
            row_key(1, 1 << 40),
        ];
        keys.sort();
        assert_eq!(
            keys,
            vec![
                row_key(1, 2),
                row_key(1, 300),
                row_key(1, 1 << 40),
                row_key(2, 0)
            ]
        );
        assert_eq!(parse_row_key(1, &row_key(1, 300)), Some(300));
        assert_eq!(parse_row_key(2, &row_key(1, 300)), None);
        let (start, end) = table_range(1);
        assert!(start.as_slice() <= row_key(1, u64::MAX).as_slice());
        assert!(row_key(1, u64::MAX).as_slice() < end.as_slice());
    }
}
