//! The memory budget: how many bytes all tables of a catalog may hold
//! (weights and optimizer state, on the host or a device). A table's size
//! comes from a client, and a dense allocation past the machine's memory
//! aborts the process (or wakes the OOM killer), losing every push since the
//! last flush; so every allocation of a table reserves its bytes here first
//! and is refused, changing nothing, when they are not left.
//!
//! A [`Reservation`] gives its bytes back when dropped: a live table keeps
//! its reservation, so dropping or replacing the table frees the budget.

use std::sync::Arc;

use parking_lot::Mutex;

/// The bytes asked were not left.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} needs {asked} bytes of memory but only {left} of the {limit}-byte memory budget \
     are left (limits.max_memory_bytes)"
)]
pub struct OverBudget {
    pub what: String,
    pub asked: u64,
    pub left: u64,
    pub limit: u64,
}

/// Bytes reserved against a limit (`None`: no limit, only counted).
#[derive(Debug)]
pub struct MemoryBudget {
    limit: Option<u64>,
    used: Mutex<u64>,
}

impl MemoryBudget {
    /// A budget of `limit` bytes (`None` counts without refusing).
    pub fn new(limit: Option<u64>) -> Arc<Self> {
        Arc::new(MemoryBudget {
            limit,
            used: Mutex::new(0),
        })
    }

    /// Reserves `asked` bytes for `what`, or refuses when they are not left.
    pub fn reserve(self: &Arc<Self>, asked: u64, what: &str) -> Result<Reservation, OverBudget> {
        let mut used = self.used.lock();
        if let Some(limit) = self.limit {
            let left = limit.saturating_sub(*used);
            if asked > left {
                return Err(OverBudget {
                    what: what.to_owned(),
                    asked,
                    left,
                    limit,
                });
            }
        }
        *used += asked;
        Ok(Reservation {
            budget: self.clone(),
            bytes: asked,
        })
    }

    /// Reserves `bytes` even past the limit: for tables already on disk,
    /// which recovery must load whatever the budget says now.
    pub fn reserve_anyway(self: &Arc<Self>, bytes: u64) -> Reservation {
        *self.used.lock() += bytes;
        Reservation {
            budget: self.clone(),
            bytes,
        }
    }

    /// The limit, if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        *self.used.lock()
    }
}

/// Bytes held against a [`MemoryBudget`] until dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        *self.budget.used.lock() -= self.bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_refused_past_the_limit_and_freed_on_drop() {
        let budget = MemoryBudget::new(Some(100));
        let a = budget.reserve(60, "a").unwrap();
        let err = budget.reserve(50, "table `b`").unwrap_err();
        assert_eq!((err.asked, err.left, err.limit), (50, 40, 100));
        assert!(
            err.to_string().starts_with("table `b` needs 50 bytes"),
            "{err}"
        );
        drop(a);
        let b = budget.reserve(100, "b").unwrap();
        assert_eq!(budget.used(), 100);
        let over = budget.reserve_anyway(30);
        assert_eq!(budget.used(), 130);
        drop((b, over));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn without_a_limit_everything_is_counted() {
        let budget = MemoryBudget::new(None);
        let r = budget.reserve(u64::MAX / 2, "x").unwrap();
        assert_eq!(budget.used(), u64::MAX / 2);
        drop(r);
        assert_eq!(budget.used(), 0);
    }
}
