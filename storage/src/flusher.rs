//! The background flusher: writes dirty rows to the store on an interval, or
//! early when too many rows are dirty, and once more on shutdown.
//!
//! It is a plain thread (not an async task) because a flush is blocking work:
//! copying rows out of the tables and one RocksDB write. Counters are
//! plain atomics the service exports as Prometheus metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// What one completed flush wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Rows written (weights and state).
    pub rows: u64,
    /// Key and value bytes written.
    pub bytes: u64,
    /// Every push with a version up to this one is durable.
    pub version: u64,
}

/// Flusher counters (monotonic unless noted).
#[derive(Debug, Default)]
pub struct FlushStats {
    pub flushes: AtomicU64,
    pub failures: AtomicU64,
    /// Failures since the last flush that worked (gauge): non-zero means
    /// acknowledged pushes are not becoming durable.
    pub consecutive_failures: AtomicU64,
    /// Why the last flush failed, while flushes keep failing.
    pub last_error: Mutex<Option<String>>,
    pub rows_flushed: AtomicU64,
    pub bytes_flushed: AtomicU64,
    /// Version covered by the last completed flush (gauge).
    pub flushed_version: AtomicU64,
    /// Milliseconds the last completed flush took (gauge).
    pub last_flush_ms: AtomicU64,
    /// Unix milliseconds when the last flush completed (gauge); lag = now − this.
    pub last_flush_unix_ms: AtomicU64,
    /// Nanoseconds pushes were held back while flushes copied rows: what
    /// flushes that hold whole pushes cost training.
    pub pushes_held_nanos: AtomicU64,
}

impl FlushStats {
    pub(crate) fn record_failure(&self, cause: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let consecutive = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        *self.last_error.lock() = Some(cause.to_owned());
        tracing::error!(
            cause,
            consecutive,
            "flush failed: pushes stay in memory until a flush succeeds"
        );
    }

    pub(crate) fn record(&self, report: &FlushReport, took: Duration) {
        if self.consecutive_failures.swap(0, Ordering::Relaxed) > 0 {
            tracing::info!("flushes work again");
        }
        *self.last_error.lock() = None;
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.rows_flushed.fetch_add(report.rows, Ordering::Relaxed);
        self.bytes_flushed
            .fetch_add(report.bytes, Ordering::Relaxed);
        self.flushed_version
            .fetch_max(report.version, Ordering::Relaxed);
        self.last_flush_ms
            .store(took.as_millis() as u64, Ordering::Relaxed);
        self.last_flush_unix_ms.store(unix_ms(), Ordering::Relaxed);
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

enum Signal {
    /// Too many dirty rows: flush now.
    Wake,
    /// Flush once more and exit.
    Stop,
}

/// Handle to the flusher thread; dropping it without [`Flusher::stop`]
/// leaves the thread to exit on its own when the channel closes.
pub struct Flusher {
    signals: Sender<Signal>,
    thread: Option<JoinHandle<()>>,
}

/// Longest wait between two attempts while flushes fail.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl Flusher {
    /// Starts a thread that calls `flush` every `interval`, on [`Flusher::wake`],
    /// and a last time on [`Flusher::stop`]. `flush` returns whether it
    /// worked; while it fails, attempts back off (doubling from `interval`
    /// up to [`MAX_BACKOFF`]) and wakes are ignored, so a full disk is not
    /// hammered with back-to-back rebuilds of the same batch.
    pub fn start(interval: Duration, mut flush: impl FnMut() -> bool + Send + 'static) -> Self {
        let (signals, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("featmux-flusher".into())
            .spawn(move || {
                let mut wait = interval;
                let mut next_try = Instant::now() + wait;
                loop {
                    let timeout = next_try.saturating_duration_since(Instant::now());
                    let due = match receiver.recv_timeout(timeout) {
                        Ok(Signal::Wake) => wait == interval,
                        Err(RecvTimeoutError::Timeout) => true,
                        Ok(Signal::Stop) | Err(RecvTimeoutError::Disconnected) => {
                            flush();
                            return;
                        }
                    };
                    if !due {
                        continue;
                    }
                    wait = if flush() {
                        interval
                    } else {
                        (wait * 2).min(MAX_BACKOFF.max(interval))
                    };
                    next_try = Instant::now() + wait;
                }
            })
            .expect("spawning the flusher thread");
        Flusher {
            signals,
            thread: Some(thread),
        }
    }

    /// Asks for an early flush (non-blocking).
    pub fn wake(&self) {
        let _ = self.signals.send(Signal::Wake);
    }

    /// Flushes once more and waits for the thread to finish.
    pub fn stop(mut self) {
        let _ = self.signals.send(Signal::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
