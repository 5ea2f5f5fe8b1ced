//! The write-ahead log as a replication stream: RocksDB's own record of
//! every committed WriteBatch, read back with `GetUpdatesSince`, and a
//! decoder for one batch's operations.
//!
//! Why decode batches ourselves: a replica must know which rows a batch
//! changed to update its in-memory copy, and RocksDB's batch iterator (the
//! C API's `Handler`) stops silently at a range deletion, which every table
//! drop writes. The format is RocksDB's stable WAL record format
//! (`db/write_batch.cc`):
//!
//! ```text
//! rep    := sequence: fixed64, count: fixed32, record[count]
//! record := tag [cf: varint32] key: varstring [value: varstring]
//! ```
//!
//! featmux writes only puts, deletes and range deletions, so any other
//! record is refused as an error naming its tag rather than skipped.

/// One operation of a write batch, borrowing the batch's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalOp<'a> {
    Put {
        cf: u32,
        key: &'a [u8],
        value: &'a [u8],
    },
    Delete {
        cf: u32,
        key: &'a [u8],
    },
    DeleteRange {
        cf: u32,
        start: &'a [u8],
        end: &'a [u8],
    },
}

/// One committed write batch, as the log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalBatch {
    /// Sequence number of the batch's first operation; its operations take
    /// `sequence..sequence + count`.
    pub sequence: u64,
    pub count: u32,
    /// The batch's bytes (RocksDB's `rep`).
    pub data: Vec<u8>,
}

impl WalBatch {
    /// The sequence number of the batch's last operation.
    pub fn last_sequence(&self) -> u64 {
        self.sequence + u64::from(self.count).max(1) - 1
    }
}

const HEADER: usize = 12;

// Record tags (RocksDB's `ValueType`, db/dbformat.h).
const DELETION: u8 = 0x0;
const VALUE: u8 = 0x1;
const LOG_DATA: u8 = 0x3;
const CF_DELETION: u8 = 0x4;
const CF_VALUE: u8 = 0x5;
const SINGLE_DELETION: u8 = 0x7;
const CF_SINGLE_DELETION: u8 = 0x8;
const NOOP: u8 = 0xD;
const CF_RANGE_DELETION: u8 = 0xE;
const RANGE_DELETION: u8 = 0xF;

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint32(&mut self) -> Result<u32, String> {
        let mut value = 0u32;
        for shift in (0..35).step_by(7) {
            let (&byte, rest) = self
                .bytes
                .split_first()
                .ok_or("the batch ends inside a varint")?;
            self.bytes = rest;
            value |= u32::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("a varint32 longer than 5 bytes".into())
    }

    fn slice(&mut self) -> Result<&'a [u8], String> {
        let len = self.varint32()? as usize;
        if len > self.bytes.len() {
            return Err(format!(
                "a {len}-byte string with {} bytes left",
                self.bytes.len()
            ));
        }
        let (slice, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(slice)
    }
}

/// Decodes a batch's bytes into its operations, in order. Returns the
/// batch's own count of sequence-consuming records as well.
pub fn decode(rep: &[u8]) -> Result<(u32, Vec<WalOp<'_>>), String> {
    if rep.len() < HEADER {
        return Err(format!(
            "a write batch of {} bytes is shorter than its header",
            rep.len()
        ));
    }
    let count = u32::from_le_bytes(rep[8..12].try_into().expect("4 bytes"));
    let mut reader = Reader {
        bytes: &rep[HEADER..],
    };
    let mut ops = Vec::with_capacity(count as usize);
    while let Some((&tag, rest)) = reader.bytes.split_first() {
        reader.bytes = rest;
        let cf = match tag {
            CF_VALUE | CF_DELETION | CF_SINGLE_DELETION | CF_RANGE_DELETION => reader.varint32()?,
            _ => 0,
        };
        let op = match tag {
            VALUE | CF_VALUE => WalOp::Put {
                cf,
                key: reader.slice()?,
                value: reader.slice()?,
            },
            DELETION | CF_DELETION | SINGLE_DELETION | CF_SINGLE_DELETION => WalOp::Delete {
                cf,
                key: reader.slice()?,
            },
            RANGE_DELETION | CF_RANGE_DELETION => WalOp::DeleteRange {
                cf,
                start: reader.slice()?,
                end: reader.slice()?,
            },
            LOG_DATA => {
                reader.slice()?;
                continue;
            }
            NOOP => continue,
            other => {
                return Err(format!(
                    "record type {other:#x} (featmux writes only puts, deletes and range \
                     deletions)"
                ))
            }
        };
        ops.push(op);
    }
    if ops.len() != count as usize {
        return Err(format!(
            "the batch's header counts {count} records, it holds {}",
            ops.len()
        ));
    }
    Ok((count, ops))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rocksdb::{Options, WriteBatch, DB};

    #[test]
    fn decodes_what_rocksdb_encodes() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let db = DB::open_cf(&options, dir.path(), ["a", "b"]).unwrap();
        let (a, b) = (db.cf_handle("a").unwrap(), db.cf_handle("b").unwrap());
        let mut batch = WriteBatch::default();
        batch.put_cf(&a, b"k1", b"v1");
        batch.delete_range_cf(&b, b"r0", b"r9");
        // Long enough that its length takes a two-byte varint.
        batch.put_cf(&b, b"k2", vec![7u8; 300]);
        batch.delete_cf(&a, b"k3");
        batch.put(b"plain", b"");
        let (count, ops) = decode(batch.data()).unwrap();
        assert_eq!(count, 5);
        assert_eq!(
            ops,
            vec![
                WalOp::Put {
                    cf: 1,
                    key: b"k1",
                    value: b"v1"
                },
                WalOp::DeleteRange {
                    cf: 2,
                    start: b"r0",
                    end: b"r9"
                },
                WalOp::Put {
                    cf: 2,
                    key: b"k2",
                    value: &[7u8; 300]
                },
                WalOp::Delete { cf: 1, key: b"k3" },
                WalOp::Put {
                    cf: 0,
                    key: b"plain",
                    value: b""
                },
            ]
        );
    }

    #[test]
    fn a_truncated_or_foreign_batch_is_an_error() {
        let mut batch = WriteBatch::default();
        batch.put(b"key", b"value");
        let data = batch.data();
        assert!(decode(&data[..data.len() - 1]).is_err());
        assert!(decode(&data[..5]).is_err());
        let mut merge = WriteBatch::default();
        merge.merge(b"key", b"value");
        let err = decode(merge.data()).unwrap_err();
        assert!(err.contains("0x2"), "{err}");
    }
}
