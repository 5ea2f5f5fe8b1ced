//! Lookup tickets: a lookup can leave its hashed batch (the [`BatchPlan`])
//! on the server, so the matching push sends only gradients — no second
//! upload of the keys, no second round of hashing.
//!
//! Tickets live at most `ttl` and the cache holds at most `max_bytes` of
//! plans; the oldest tickets go first when either bound is hit. A push
//! consumes its ticket (one push per lookup, like one training step).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{ApiError, ErrorKind};
use featmux_engine::plan::BatchPlan;
use featmux_engine::table::Table;

/// A kept plan and the table object it was planned on.
#[derive(Clone)]
pub struct Ticket {
    pub table: Arc<Table>,
    pub plan: Arc<BatchPlan>,
}

/// A ticket taken out of the cache for a push.
pub struct TakenTicket {
    id: u64,
    entry: Entry,
}

impl TakenTicket {
    /// The kept plan and its table.
    pub fn ticket(&self) -> &Ticket {
        &self.entry.ticket
    }
}

struct Entry {
    ticket: Ticket,
    expires: Instant,
    bytes: usize,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<u64, Entry>,
    /// Ticket ids in issue order; ids of consumed tickets are skipped lazily.
    order: VecDeque<u64>,
    bytes: usize,
    issued: u64,
}

/// Tickets by id, bounded in time and memory.
pub struct TicketCache {
    inner: Mutex<Inner>,
    ttl: Duration,
    max_bytes: usize,
    /// Mixed into ids, so tickets of an earlier process are not mistaken
    /// for live ones after a restart.
    id_salt: u64,
}

impl TicketCache {
    /// An empty cache.
    pub fn new(ttl: Duration, max_bytes: usize) -> Self {
        TicketCache {
            inner: Mutex::default(),
            ttl,
            max_bytes,
            id_salt: RandomState::new().hash_one(Instant::now()),
        }
    }

    /// Keeps `ticket` and returns its (non-zero) id.
    pub fn insert(&self, ticket: Ticket) -> Result<u64, ApiError> {
        let bytes = ticket.plan.memory_bytes();
        if bytes > self.max_bytes {
            return Err(ApiError::too_large(format!(
                "a ticket for this batch needs {bytes} bytes, more than the ticket cache holds \
                 ({} bytes, tickets.max_bytes); look up without a ticket and push the batch",
                self.max_bytes
            )));
        }
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.evict(now, self.max_bytes - bytes);
        inner.issued += 1;
        // An odd multiplier makes this a bijection of the counter: ids never
        // repeat within a process, and are never 0 in practice.
        let id = (inner.issued ^ self.id_salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        inner.order.push_back(id);
        inner.bytes += bytes;
        inner.entries.insert(
            id,
            Entry {
                ticket,
                expires: now + self.ttl,
                bytes,
            },
        );
        Ok(id)
    }

    /// Takes the live ticket `id` of `table` out of the cache, so two
    /// pushes racing on one ticket cannot both apply it. A push that fails
    /// hands it back with [`TicketCache::restore`].
    pub fn take(&self, id: u64, table: &str) -> Result<TakenTicket, ApiError> {
        let mut inner = self.inner.lock();
        inner.evict(Instant::now(), self.max_bytes);
        let entry = inner.entries.get(&id).ok_or_else(|| {
            ApiError::new(
                ErrorKind::NotFound,
                format!(
                    "ticket {id} is unknown, already used, expired (tickets live {} s) or was \
                     evicted; push the batch instead",
                    self.ttl.as_secs_f64()
                ),
            )
        })?;
        let owner = &entry.ticket.table.spec().name;
        if owner != table {
            return Err(ApiError::invalid(format!(
                "ticket {id} belongs to table `{owner}`, not `{table}`"
            )));
        }
        let entry = inner.entries.remove(&id).expect("present: checked above");
        inner.bytes -= entry.bytes;
        Ok(TakenTicket { id, entry })
    }

    /// Puts back a ticket whose push was refused (same id, same expiry).
    pub fn restore(&self, taken: TakenTicket) {
        let mut inner = self.inner.lock();
        inner.bytes += taken.entry.bytes;
        // Its id may have left `order` while it was out; a second copy is
        // harmless (ids without an entry are skipped).
        inner.order.push_back(taken.id);
        inner.entries.insert(taken.id, taken.entry);
    }

    /// Live tickets, for stats and metrics.
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    /// Whether no ticket is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    /// Drops expired tickets, then the oldest until at most `budget` bytes
    /// are held.
    fn evict(&mut self, now: Instant, budget: usize) {
        while let Some(&id) = self.order.front() {
            let Some(entry) = self.entries.get(&id) else {
                self.order.pop_front();
                continue;
            };
            if entry.expires > now && self.bytes <= budget {
                break;
            }
            self.bytes -= entry.bytes;
            self.entries.remove(&id);
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use featmux_engine::backend::BackendKind;
    use featmux_engine::batch::{Batch, FeatureBatch};
    use featmux_engine::schema::{FeatureSpec, TableSpec};

    fn ticket(table: &Arc<Table>, values: usize) -> Ticket {
        let batch = Batch::new(vec![FeatureBatch::strings(
            "f",
            (0..values).map(|i| i.to_string()).collect::<Vec<String>>(),
            vec![1; values],
        )]);
        Ticket {
            table: table.clone(),
            plan: Arc::new(table.plan(&batch).unwrap()),
        }
    }

    fn table(name: &str) -> Arc<Table> {
        let t = Table::create(TableSpec::new(name, 100, 4), BackendKind::Cpu).unwrap();
        t.add_feature(FeatureSpec::new("f")).unwrap();
        Arc::new(t)
    }

    #[test]
    fn a_ticket_is_taken_once_restorable_and_bound_to_its_table() {
        let cache = TicketCache::new(Duration::from_secs(60), 1 << 20);
        let t = table("t");
        let id = cache.insert(ticket(&t, 3)).unwrap();
        assert_ne!(id, 0);
        let err = cache.take(id, "other").err().unwrap();
        assert!(err.message.contains("belongs to table `t`"), "{err}");
        let taken = cache.take(id, "t").unwrap();
        assert_eq!(taken.ticket().plan.gather.rows.len(), 3);
        assert_eq!(cache.take(id, "t").err().unwrap().kind, ErrorKind::NotFound);
        cache.restore(taken);
        let taken = cache.take(id, "t").unwrap();
        drop(taken);
        assert!(cache.is_empty());
    }

    #[test]
    fn expired_tickets_are_gone() {
        let cache = TicketCache::new(Duration::ZERO, 1 << 20);
        let t = table("t");
        let id = cache.insert(ticket(&t, 2)).unwrap();
        let err = cache.take(id, "t").err().unwrap();
        assert!(err.message.contains("expired"), "{err}");
    }

    #[test]
    fn the_memory_bound_evicts_the_oldest_and_refuses_oversized_plans() {
        let t = table("t");
        let one = ticket(&t, 100).plan.memory_bytes();
        let cache = TicketCache::new(Duration::from_secs(60), 2 * one + one / 2);
        let first = cache.insert(ticket(&t, 100)).unwrap();
        let second = cache.insert(ticket(&t, 100)).unwrap();
        let third = cache.insert(ticket(&t, 100)).unwrap();
        assert!(cache.take(first, "t").is_err());
        let err = cache.insert(ticket(&t, 1000)).err().unwrap();
        assert_eq!(err.kind, ErrorKind::TooLarge);
        assert_eq!(cache.len(), 2);
        assert!(cache.take(second, "t").is_ok());
        assert!(cache.take(third, "t").is_ok());
        assert!(cache.is_empty());
    }
}
