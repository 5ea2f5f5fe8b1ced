//! The background flusher: writes dirty rows to the store on an interval, or
//! early when too many rows are dirty, and once more on shutdown.
//!
//! It is a plain thread (not an async task) because a flush is blocking work:
//! copying rows under their stripe locks and one RocksDB write. Counters are
//! plain atomics the service exports as Prometheus metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

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
    pub rows_flushed: AtomicU64,
    pub bytes_flushed: AtomicU64,
    /// Version covered by the last completed flush (gauge).
    pub flushed_version: AtomicU64,
    /// Milliseconds the last completed flush took (gauge).
    pub last_flush_ms: AtomicU64,
    /// Unix milliseconds when the last flush completed (gauge); lag = now − this.
    pub last_flush_unix_ms: AtomicU64,
}

impl FlushStats {
    pub(crate) fn record(&self, report: &FlushReport, took: Duration) {
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

impl Flusher {
    /// Starts a thread that calls `flush` every `interval`, on [`Flusher::wake`],
    /// and a last time on [`Flusher::stop`].
    pub fn start(interval: Duration, mut flush: impl FnMut() + Send + 'static) -> Self {
        let (signals, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("featmux-flusher".into())
            .spawn(move || loop {
                match receiver.recv_timeout(interval) {
                    Ok(Signal::Wake) | Err(RecvTimeoutError::Timeout) => flush(),
                    Ok(Signal::Stop) | Err(RecvTimeoutError::Disconnected) => {
                        flush();
                        return;
                    }
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
