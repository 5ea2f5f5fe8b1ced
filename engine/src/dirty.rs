//! Which rows changed since they were last persisted.
//!
//! One bit per row in atomic words: marking is a `fetch_or` per row (no lock,
//! so pushes never wait for the flusher), draining swaps each non-zero word
//! with zero. A row updated while it is being flushed is simply marked again
//! and goes out with the next flush. 10^8 rows cost 12.5 MB.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A concurrent set of dirty row indices.
pub struct DirtyRows {
    words: Box<[AtomicU64]>,
    /// Approximate number of dirty rows (exact when no drain runs).
    count: AtomicUsize,
}

impl DirtyRows {
    /// An empty set over `rows` rows.
    pub fn new(rows: u64) -> Self {
        DirtyRows {
            words: (0..rows.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicUsize::new(0),
        }
    }

    /// Marks `rows` dirty.
    pub fn mark(&self, rows: &[u64]) {
        let mut newly = 0;
        for &row in rows {
            let bit = 1u64 << (row % 64);
            if self.words[(row / 64) as usize].fetch_or(bit, Ordering::AcqRel) & bit == 0 {
                newly += 1;
            }
        }
        self.count.fetch_add(newly, Ordering::Relaxed);
    }

    /// Number of dirty rows (approximate while marks and drains race).
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// True when no row is dirty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes and returns every dirty row, in ascending order.
    pub fn drain(&self) -> Vec<u64> {
        let mut rows = Vec::new();
        for (i, word) in self.words.iter().enumerate() {
            if word.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut bits = word.swap(0, Ordering::AcqRel);
            while bits != 0 {
                rows.push(i as u64 * 64 + bits.trailing_zeros() as u64);
                bits &= bits - 1;
            }
        }
        // Saturating: marks racing with this drain may have counted rows
        // that this drain already took.
        let taken = rows.len();
        let _ = self
            .count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some(c.saturating_sub(taken))
            });
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_drained_once_in_order() {
        let dirty = DirtyRows::new(200);
        dirty.mark(&[130, 5, 64, 5, 199]);
        assert_eq!(dirty.len(), 4);
        assert_eq!(dirty.drain(), [5, 64, 130, 199]);
        assert!(dirty.is_empty());
        assert!(dirty.drain().is_empty());
    }
}
