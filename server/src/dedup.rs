//! Idempotent pushes: the answers of recent pushes by their client-chosen
//! request id, so a retried push (its first answer was lost with the
//! connection, after the server had applied it) gets that answer again
//! instead of applying its gradients twice. Kafka's idempotent producer
//! is the model: a bounded window, not a permanent log.
//!
//! A retry that arrives while the first attempt still runs waits for it.
//! Only applied pushes are remembered: a refused or failed push may be
//! retried and is then executed again.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::api::PushResult;
use crate::error::ApiError;

type Key = (String, u64);

/// One request id's answer; its lock is held while the push runs.
#[derive(Default)]
struct Slot {
    answer: Mutex<Option<PushResult>>,
}

#[derive(Default)]
struct Window {
    slots: HashMap<Key, (Instant, Arc<Slot>)>,
    /// Keys by arrival, for expiry and the size bound.
    order: VecDeque<(Instant, Key)>,
}

impl Window {
    fn evict(&mut self, now: Instant, window: Duration, max_entries: usize) {
        while let Some((arrived, _)) = self.order.front() {
            if now.duration_since(*arrived) <= window && self.order.len() <= max_entries {
                break;
            }
            let (arrived, key) = self.order.pop_front().expect("non-empty");
            if self.slots.get(&key).is_some_and(|(at, _)| *at == arrived) {
                self.slots.remove(&key);
            }
        }
    }
}

/// The answers of pushes seen within the last `window` (at most
/// `max_entries` of them).
pub struct PushDedup {
    window: Duration,
    max_entries: usize,
    recent: Mutex<Window>,
}

impl PushDedup {
    /// Remembers answers for `window`, at most `max_entries` of them.
    pub fn new(window: Duration, max_entries: usize) -> Self {
        PushDedup {
            window,
            max_entries,
            recent: Mutex::new(Window::default()),
        }
    }

    /// Runs `push` unless `request_id` (non-zero) was answered within the
    /// window for `table`, in which case that answer is returned.
    pub fn run(
        &self,
        table: &str,
        request_id: u64,
        push: impl FnOnce() -> Result<PushResult, ApiError>,
    ) -> Result<PushResult, ApiError> {
        if request_id == 0 {
            return push();
        }
        let key = (table.to_owned(), request_id);
        let now = Instant::now();
        let slot = {
            let mut recent = self.recent.lock();
            recent.evict(now, self.window, self.max_entries);
            match recent.slots.get(&key) {
                Some((_, slot)) => slot.clone(),
                None => {
                    let slot = Arc::new(Slot::default());
                    recent.slots.insert(key.clone(), (now, slot.clone()));
                    recent.order.push_back((now, key.clone()));
                    slot
                }
            }
        };
        // Waits here while the first attempt with this id runs.
        let mut answer = slot.answer.lock();
        if let Some(first) = *answer {
            return Ok(first);
        }
        let result = push();
        match &result {
            Ok(applied) => *answer = Some(*applied),
            Err(_) => {
                drop(answer);
                let mut recent = self.recent.lock();
                if recent
                    .slots
                    .get(&key)
                    .is_some_and(|(_, s)| Arc::ptr_eq(s, &slot))
                {
                    recent.slots.remove(&key);
                }
            }
        }
        result
    }

    /// Request ids remembered now.
    pub fn len(&self) -> usize {
        self.recent.lock().slots.len()
    }

    /// True when no request id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn applied(version: u64) -> Result<PushResult, ApiError> {
        Ok(PushResult {
            version,
            entries: 1,
            unique_rows: 1,
        })
    }

    #[test]
    fn a_repeated_id_gets_the_first_answer_and_failures_are_not_kept() {
        let dedup = PushDedup::new(Duration::from_secs(60), 100);
        assert_eq!(dedup.run("t", 7, || applied(1)).unwrap().version, 1);
        assert_eq!(dedup.run("t", 7, || applied(2)).unwrap().version, 1);
        assert_eq!(dedup.run("other", 7, || applied(3)).unwrap().version, 3);
        assert_eq!(dedup.run("t", 0, || applied(4)).unwrap().version, 4);
        assert_eq!(dedup.run("t", 0, || applied(5)).unwrap().version, 5);
        let refused = dedup.run("t", 8, || Err(ApiError::new(ErrorKind::Unavailable, "x")));
        assert!(refused.is_err());
        assert_eq!(dedup.run("t", 8, || applied(6)).unwrap().version, 6);
    }

    #[test]
    fn the_window_is_bounded_in_time_and_size() {
        let dedup = PushDedup::new(Duration::ZERO, 100);
        dedup.run("t", 1, || applied(1)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(dedup.run("t", 1, || applied(2)).unwrap().version, 2);
        let dedup = PushDedup::new(Duration::from_secs(60), 3);
        for id in 1..=10 {
            dedup.run("t", id, || applied(id)).unwrap();
        }
        assert!(dedup.len() <= 4, "{} ids kept", dedup.len());
    }

    #[test]
    fn a_retry_during_the_first_attempt_waits_for_its_answer() {
        let dedup = Arc::new(PushDedup::new(Duration::from_secs(60), 100));
        let started = Arc::new(std::sync::Barrier::new(2));
        let first = {
            let (dedup, started) = (dedup.clone(), started.clone());
            std::thread::spawn(move || {
                dedup.run("t", 9, || {
                    started.wait();
                    std::thread::sleep(Duration::from_millis(50));
                    applied(1)
                })
            })
        };
        started.wait();
        assert_eq!(dedup.run("t", 9, || applied(2)).unwrap().version, 1);
        assert_eq!(first.join().unwrap().unwrap().version, 1);
    }
}
