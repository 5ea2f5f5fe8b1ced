//! Read replicas (docs/DESIGN.md, "Replicas"): a primary serves its
//! database and write-ahead log over gRPC ([`source`]); a replica copies
//! the one and follows the other ([`follower`]), serving lookups from
//! read-only copies of the tables and refusing every write with
//! FAILED_PRECONDITION naming its primary.
//!
//! [`ReplicaStatus`] is what a replica knows about how fresh it is, for
//! `/readyz`, `/metrics` and stats.

pub mod follower;
pub mod source;

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus::Histogram;

/// A replica's view of its primary and of its own freshness.
pub struct ReplicaStatus {
    primary: String,
    state: Mutex<FollowState>,
    /// Seconds from a flush committed on the primary to applied here
    /// (clocks of both hosts: exact on one host, off by their skew across
    /// hosts).
    apply_lag: Histogram,
}

/// What the follower last saw.
#[derive(Debug, Clone, Default)]
pub struct FollowState {
    /// Whether a Follow stream to the primary is open.
    pub connected: bool,
    /// The last primary sequence applied here (`None`: never copied).
    pub applied_sequence: Option<u64>,
    /// The primary's last sequence and flushed version, as last heard.
    pub primary_sequence: u64,
    pub primary_version: u64,
    /// The training version served here.
    pub version: u64,
    /// When this replica last held everything the primary had committed.
    pub current_at: Option<Instant>,
    /// Copies of the whole primary so far (the first, and any after the
    /// primary's retained log no longer reached this replica's sequence).
    pub bootstraps: u64,
    /// Why the last connection ended, while disconnected.
    pub last_error: Option<String>,
}

impl ReplicaStatus {
    /// The status of a replica of `primary`, recording apply lag into
    /// `apply_lag`.
    pub fn new(primary: String, apply_lag: Histogram) -> Self {
        ReplicaStatus {
            primary,
            state: Mutex::new(FollowState::default()),
            apply_lag,
        }
    }

    /// The primary's address.
    pub fn primary(&self) -> &str {
        &self.primary
    }

    /// A copy of the current state.
    pub fn state(&self) -> FollowState {
        self.state.lock().clone()
    }

    pub(crate) fn update(&self, change: impl FnOnce(&mut FollowState)) {
        change(&mut self.state.lock());
    }

    pub(crate) fn observe_apply_lag(&self, lag: Duration) {
        self.apply_lag.observe(lag.as_secs_f64());
    }

    /// How long since this replica last held everything its primary had
    /// (zero while it keeps up; grows while the primary is unreachable).
    pub fn staleness(&self) -> Option<Duration> {
        self.state.lock().current_at.map(|at| at.elapsed())
    }

    /// `/readyz`: ready once a copy exists (a replica that lost its
    /// primary keeps serving and says so); the text says how fresh it is.
    pub fn readiness(&self) -> Result<String, String> {
        let state = self.state();
        let staleness_ms = self.staleness().map_or(0, |s| s.as_millis());
        let behind = state.primary_version.saturating_sub(state.version);
        match (state.applied_sequence, state.connected) {
            (None, _) => Err(format!(
                "replica of {}: copying the primary ({})",
                self.primary,
                state.last_error.as_deref().unwrap_or("in progress")
            )),
            (Some(_), true) => Ok(format!(
                "ready: replica of {} at version {} ({behind} versions behind, stale for \
                 {staleness_ms} ms)\n",
                self.primary, state.version
            )),
            (Some(_), false) => Ok(format!(
                "ready (stale): replica of {}, primary unreachable ({}); serving version {} \
                 (stale for {staleness_ms} ms)\n",
                self.primary,
                state.last_error.as_deref().unwrap_or("reconnecting"),
                state.version
            )),
        }
    }
}
