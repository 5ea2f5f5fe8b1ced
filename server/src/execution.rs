//! Where a request's CPU work runs, so serving keeps its latency while
//! training saturates the server.
//!
//! Training traffic (batch lookups, pushes, Train streams, a shard's row
//! calls) can keep every core busy for as long as trainers run. On tokio's
//! blocking pool each such request got a thread of its own: 48 training
//! clients made 48 runnable threads on two cores, and the two async
//! workers that move every request's bytes (and serve small HTTP lookups
//! inline) got 2 of 50 shares of the CPU. Serving lookups starved (260 of
//! 500 req/s answered, p99 47 s: docs/results/serving.md). So work goes to
//! one of two lanes, and HTTP has async threads of its own
//! (`execution.http_threads`, started in [`crate::startup`]):
//!
//! - **Bulk** ([`BulkPool`]): a fixed pool of `execution.bulk_threads`
//!   threads (default: one per core) whose CPU priority is lowered
//!   (`execution.bulk_nice`, default 10: the kernel's weight for nice 10 is
//!   about a tenth of nice 0's), the way RocksDB lowers its compaction
//!   threads' priority. Whenever serving work or the async workers want a
//!   core they get it first; training runs on what is left, and all the
//!   cores when nothing else wants them. Jobs run in arrival order; one
//!   that waited longer than `execution.bulk_max_wait_ms` is refused with
//!   RESOURCE_EXHAUSTED instead of run (its client has likely given up).
//!   A job's large independent work (a push's sums, optimizer steps and
//!   commit, a lookup's gather) is shared with the bulk threads that are
//!   idle at the time ([`featmux_engine::fanout`]): one trainer's request
//!   no longer runs on one core while the others wait.
//! - **Serving**: lookups without a ticket of at most
//!   `execution.serving_max_values` values, and admin calls, run where they
//!   did (tokio's blocking pool at normal priority; the smallest HTTP
//!   lookups inline).

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntGauge};

use featmux_engine::fanout::{self, Fanout, HelperThreads};

use crate::error::{ApiError, ErrorKind};

/// Which lane a request's work takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Training work: the low-priority bulk pool.
    Bulk,
    /// Serving lookups and admin calls: tokio's blocking pool.
    Serving,
}

/// Fixed threads at lowered CPU priority running bulk work in arrival
/// order.
pub struct BulkPool {
    /// The one strong reference: dropping the pool closes the queue (the
    /// threads' fanouts hold weak ones), which ends the threads.
    threads: Arc<HelperThreads>,
    max_wait: Duration,
    /// Jobs submitted and not yet started.
    queued: IntGauge,
    /// Seconds from submitted to started.
    waited: Histogram,
}

/// Where a [`BulkPool`] reports how long its queue is and how long jobs
/// waited in it.
pub struct BulkMetrics {
    pub queued: IntGauge,
    pub waited: Histogram,
}

impl BulkPool {
    /// Starts `threads` threads at nice `nice` (0: unchanged); jobs that
    /// waited longer than `max_wait` are refused.
    pub fn start(threads: usize, nice: i32, max_wait: Duration, metrics: BulkMetrics) -> Self {
        let threads = Arc::new_cyclic(|pool: &Weak<HelperThreads>| {
            let helpers: Arc<dyn Fanout> = Arc::new(IdleBulkThreads(pool.clone()));
            HelperThreads::start_with(threads.max(1), "featmux-bulk", move || {
                lower_priority(nice);
                fanout::install(helpers.clone());
            })
        });
        BulkPool {
            threads,
            max_wait,
            queued: metrics.queued,
            waited: metrics.waited,
        }
    }

    /// Jobs waiting for a bulk thread now.
    pub fn queued(&self) -> i64 {
        self.queued.get()
    }

    /// Runs `op` on a bulk thread; a panic in it is an INTERNAL error, not
    /// a lost thread.
    pub async fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let submitted = Instant::now();
        let (queued, max_wait, waited) = (self.queued.clone(), self.max_wait, self.waited.clone());
        let job = Box::new(move || {
            queued.dec();
            let wait = submitted.elapsed();
            waited.observe(wait.as_secs_f64());
            let result = if wait > max_wait {
                Err(ApiError::new(
                    ErrorKind::Overloaded,
                    format!(
                        "the server is saturated with training work: this request waited {} ms \
                         for a bulk thread (execution.bulk_max_wait_ms = {}); retry with backoff \
                         or send less at once",
                        wait.as_millis(),
                        max_wait.as_millis()
                    ),
                ))
            } else {
                std::panic::catch_unwind(AssertUnwindSafe(op)).unwrap_or_else(|_| {
                    Err(ApiError::new(
                        ErrorKind::Internal,
                        "the request panicked (a bug: please report it)",
                    ))
                })
            };
            let _ = tx.send(result);
        });
        self.queued.inc();
        if !self.threads.send(job) {
            self.queued.dec();
            return Err(ApiError::new(
                ErrorKind::Unavailable,
                "the server is shutting down",
            ));
        }
        rx.await
            .map_err(|_| ApiError::new(ErrorKind::Internal, "a bulk thread dropped the request"))?
    }
}

/// The fanout of a bulk thread: the pool's threads idle at the time take
/// pieces of its job, through the pool's queue.
struct IdleBulkThreads(Weak<HelperThreads>);

impl Fanout for IdleBulkThreads {
    fn threads(&self) -> usize {
        self.0.upgrade().map_or(1, |pool| pool.threads())
    }

    fn run(&self, pieces: usize, piece: &(dyn Fn(usize) + Sync)) {
        match self.0.upgrade() {
            Some(pool) => pool.run(pieces, piece),
            // Once the pool is gone nobody helps: the caller takes every
            // piece itself.
            None => (0..pieces).for_each(piece),
        }
    }
}

/// Lowers the calling thread's CPU priority to nice `nice` (Linux: each
/// thread has its own); raising it back needs privileges, lowering never
/// does.
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority on this thread's own id changes only its
        // scheduling weight.
        let done =
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
        if done != 0 {
            tracing::warn!(
                nice,
                error = %std::io::Error::last_os_error(),
                "cannot lower the bulk threads' CPU priority; training competes with serving"
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    tracing::warn!(nice, "bulk thread priority is only lowered on Linux");
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use parking_lot::Mutex;

    use super::*;

    fn metrics() -> BulkMetrics {
        BulkMetrics {
            queued: IntGauge::new("q", "q").unwrap(),
            waited: Histogram::with_opts(prometheus::HistogramOpts::new("w", "w")).unwrap(),
        }
    }

    #[tokio::test]
    async fn runs_jobs_and_survives_a_panic() {
        let pool = BulkPool::start(1, 10, Duration::from_secs(5), metrics());
        assert_eq!(pool.run(|| Ok(6 * 7)).await.unwrap(), 42);
        let panicked = pool
            .run(|| -> Result<(), ApiError> { panic!("boom") })
            .await;
        assert_eq!(panicked.unwrap_err().kind, ErrorKind::Internal);
        // The one thread is still there.
        assert_eq!(pool.run(|| Ok("alive")).await.unwrap(), "alive");
    }

    /// A bulk job's pieces are taken by the pool's idle thread: both run
    /// at once (each piece waits for the other to start).
    #[tokio::test]
    async fn an_idle_bulk_thread_takes_pieces_of_a_running_job() {
        let pool = BulkPool::start(2, 0, Duration::from_secs(5), metrics());
        let threads = pool
            .run(|| {
                let fanout = fanout::current();
                let deadline = Instant::now() + Duration::from_secs(5);
                while fanout.threads() < 2 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let started = AtomicUsize::new(0);
                let ran_on = Mutex::new(Vec::new());
                fanout.run(2, &|_| {
                    started.fetch_add(1, Ordering::SeqCst);
                    while started.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    ran_on
                        .lock()
                        .push(std::thread::current().name().map(str::to_owned));
                });
                Ok(ran_on.into_inner())
            })
            .await
            .unwrap();
        assert_eq!(threads.len(), 2);
        assert_ne!(threads[0], threads[1], "{threads:?}");
        assert!(threads
            .iter()
            .all(|t| t.as_deref().is_some_and(|n| n.starts_with("featmux-bulk-"))));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn bulk_threads_run_at_the_lowered_priority() {
        let pool = BulkPool::start(1, 7, Duration::from_secs(5), metrics());
        let nice = pool
            .run(|| {
                // SAFETY: reads this thread's own priority.
                Ok(unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) })
            })
            .await
            .unwrap();
        // SAFETY: as above, for the test's thread.
        let here = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        assert_eq!(nice, (here + 7).min(19));
    }

    #[tokio::test]
    async fn a_job_that_waited_too_long_is_refused_not_run() {
        let pool = Arc::new(BulkPool::start(1, 0, Duration::from_millis(50), metrics()));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let (started, running) = std::sync::mpsc::channel::<()>();
        let blocker = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.run(move || {
                    started.send(()).unwrap();
                    hold.recv().ok();
                    Ok(())
                })
                .await
            }
        });
        // The one thread is busy before the next job comes.
        while running.try_recv().is_err() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ran = Arc::new(AtomicUsize::new(0));
        let late = tokio::spawn({
            let (pool, ran) = (pool.clone(), ran.clone());
            async move {
                pool.run(move || {
                    ran.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                })
                .await
            }
        });
        // Queued behind the blocker, then kept waiting past max_wait.
        while pool.queued() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(pool.queued(), 1);
        release.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        let refused = late.await.unwrap().unwrap_err();
        assert_eq!(refused.kind, ErrorKind::Overloaded);
        assert!(
            refused.message.contains("bulk_max_wait_ms"),
            "{}",
            refused.message
        );
        assert_eq!(ran.load(Ordering::Relaxed), 0, "a refused job must not run");
        assert_eq!(pool.queued(), 0);
    }
}
