//! Flushing: the dirty rows of every table copied out while no push is in
//! flight, and written in ONE WriteBatch with the training version they
//! cover, by the background flusher, on demand, before a checkpoint and at
//! shutdown. So every flush holds exactly the pushes up to its version:
//! what a restart recovers, a checkpoint keeps and a replica serves is a
//! state the tables passed through, never part of a push.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use featmux_engine::backend::RowData;
use featmux_engine::error::EngineError;

use super::{Catalog, CatalogError, Inner, LiveTable, ROW_CHUNK};
use crate::flusher::{FlushReport, FlushStats};
use crate::store::StoreBatch;

impl Catalog {
    /// Writes every dirty row now.
    pub fn flush(&self) -> Result<FlushReport, CatalogError> {
        self.writable()?.flush()
    }

    /// Flusher counters, for metrics.
    pub fn flush_stats(&self) -> &FlushStats {
        &self.inner.stats
    }

    /// Why flushes are failing, while they are (`None` once one works).
    pub fn flush_failure(&self) -> Option<String> {
        self.inner.stats.last_error.lock().clone()
    }

    /// Rows changed in memory and not yet written, over every table.
    pub fn dirty_rows(&self) -> u64 {
        self.inner
            .tables
            .read()
            .values()
            .map(|live| live.table.dirty().len() as u64)
            .sum()
    }

    /// Bytes of the live database on disk (SST files, WAL, manifest), for
    /// metrics and stats.
    pub fn database_bytes(&self) -> u64 {
        self.file_bytes(|_| true)
    }

    /// Bytes of write-ahead log (`*.log`): what the next start replays.
    pub fn wal_bytes(&self) -> u64 {
        self.file_bytes(|name| name.ends_with(".log"))
    }

    fn file_bytes(&self, counted: impl Fn(&str) -> bool) -> u64 {
        std::fs::read_dir(self.inner.store.path())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| counted(&e.file_name().to_string_lossy()))
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

impl Inner {
    pub(super) fn flush(&self) -> Result<FlushReport, CatalogError> {
        let _flush = self.flush_lock.lock();
        self.flush_locked()
    }

    /// One flush: with pushes held back, read the version, drain every
    /// table's dirty rows and copy them; then, pushes going on, encode the
    /// copies into ONE WriteBatch with that version and write it. On
    /// failure the rows are marked dirty again.
    pub(super) fn flush_locked(&self) -> Result<FlushReport, CatalogError> {
        let started = Instant::now();
        self.wake_pending.store(false, Ordering::Release);
        // Each table's drained rows, and their copies ROW_CHUNK rows at a
        // time (in that order).
        let mut drained: Vec<(Arc<LiveTable>, Vec<u64>)> = Vec::new();
        let mut copies: Vec<RowData> = Vec::new();
        let mut report = FlushReport::default();
        let gate_asked = Instant::now();
        let copied = {
            // No push is in flight while the gate is held: every push
            // numbered <= version has changed its rows and marked them
            // dirty, and none after it has begun. A push's table was in the
            // map before the push, so the tables listed now include it.
            let _gate = self.push_gate.write();
            report.version = self.version.load(Ordering::Acquire);
            let tables: Vec<Arc<LiveTable>> = self.tables.read().values().cloned().collect();
            tables.iter().try_for_each(|live| {
                let rows = live.table.dirty().drain();
                report.rows += rows.len() as u64;
                let copied = rows.chunks(ROW_CHUNK).try_for_each(|chunk| {
                    copies.push(live.table.backend().read_rows(chunk)?);
                    Ok::<(), EngineError>(())
                });
                drained.push((live.clone(), rows));
                copied
            })
        };
        let held = u64::try_from(gate_asked.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.stats
            .pushes_held_nanos
            .fetch_add(held, Ordering::Relaxed);
        let unchanged = report.rows == 0
            && report.version == self.stats.flushed_version.load(Ordering::Acquire);
        let written = match copied {
            Ok(()) if unchanged => Ok(()),
            Ok(()) => {
                let bytes = drained
                    .iter()
                    .map(|(live, rows)| {
                        rows.len() * StoreBatch::row_record_bytes(live.table.backend().spec())
                    })
                    .sum();
                let mut batch = self.store.batch_with_capacity(bytes);
                // Each copy is freed once encoded, so the flush holds about
                // one set of its rows' bytes at a time, not two.
                let mut copies = copies.into_iter();
                for (live, rows) in &drained {
                    for chunk in rows.chunks(ROW_CHUNK) {
                        let data = copies.next().expect("one copy per chunk");
                        batch.put_rows(live.id, chunk, &data);
                    }
                }
                batch.put_version(report.version);
                report.bytes = batch.payload_bytes() as u64;
                batch
                    .commit(self.options.sync_flushes)
                    .map_err(CatalogError::from)
            }
            Err(e) => Err(CatalogError::from(e)),
        };
        if let Err(e) = written {
            for (live, rows) in drained {
                live.table.dirty().mark(&rows);
            }
            self.stats.record_failure(&e.to_string());
            return Err(e);
        }
        self.stats.record(&report, started.elapsed());
        Ok(report)
    }
}
