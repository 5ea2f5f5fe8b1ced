//! One request's work split over threads that would otherwise wait.
//!
//! A trainer waits for each push, and a server answering one trainer at a
//! time ran each push on one core while its others idled. Work whose pieces
//! are independent (a push's rows, cut into ranges) asks [`current`] how
//! many threads could take a piece now, cuts itself into that many pieces
//! and [`Fanout::run`]s them. A thread gets a fanout with [`install`]: the
//! server installs its bulk pool's on every bulk thread, so a push fans out
//! only to bulk threads that are idle (and run at the bulk lane's lowered
//! priority); the in-process engine installs one over [`HelperThreads`]
//! on its callers' threads; on every other thread (serving threads)
//! pieces run one after another on the caller's thread ([`Serial`]). A
//! hand-off costs a wake-up: a radix sort cut into pieces (four hand-offs
//! per sort) made one trainer's push slower here, and was dropped
//! (docs/results/profile.md, section 30).

use std::any::Any;
use std::cell::RefCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use parking_lot::{Condvar, Mutex};

/// Runs the pieces of one job on the threads that can take one.
pub trait Fanout: Send + Sync {
    /// Threads that could run a piece now, the caller's included (at
    /// least 1).
    fn threads(&self) -> usize;

    /// Calls `piece(i)` once for each `i` in `0..pieces`, on the caller's
    /// thread and any thread that joins; returns once every call has
    /// returned. A piece's panic is raised again on the caller's thread.
    fn run(&self, pieces: usize, piece: &(dyn Fn(usize) + Sync));
}

/// Every piece on the caller's thread, in order.
pub struct Serial;

impl Fanout for Serial {
    fn threads(&self) -> usize {
        1
    }

    fn run(&self, pieces: usize, piece: &(dyn Fn(usize) + Sync)) {
        (0..pieces).for_each(piece);
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<dyn Fanout>>> = const { RefCell::new(None) };
}

/// Makes `fanout` the calling thread's: what [`current`] answers on it
/// from now on.
pub fn install(fanout: Arc<dyn Fanout>) {
    CURRENT.with(|current| *current.borrow_mut() = Some(fanout));
}

/// The calling thread's fanout: the one [`install`]ed on it, or [`Serial`]
/// (made once per thread: serving lookups ask on every call).
pub fn current() -> Arc<dyn Fanout> {
    CURRENT.with(|current| {
        current
            .borrow_mut()
            .get_or_insert_with(|| Arc::new(Serial))
            .clone()
    })
}

/// How many pieces to cut `items` into on `fanout`: one per thread that
/// could take one, but no piece under `min_per_piece` items (handing a
/// piece to another thread costs a wake-up, tens of microseconds).
pub fn pieces_for(fanout: &dyn Fanout, items: usize, min_per_piece: usize) -> usize {
    (items / min_per_piece.max(1)).clamp(1, fanout.threads().max(1))
}

/// Runs `piece` for `0..pieces` on the caller's thread and on helpers: it
/// hands `send` one job per helper wanted (`pieces - 1`), to run on
/// another thread whenever that thread gets to it. Helpers and the caller
/// take pieces in turn until none is left; a helper that starts after
/// that does nothing. The tool a [`Fanout`] over a thread pool is built
/// with.
pub fn run_with_helpers(
    pieces: usize,
    piece: &(dyn Fn(usize) + Sync),
    mut send: impl FnMut(Box<dyn FnOnce() + Send>),
) {
    if pieces <= 1 {
        (0..pieces).for_each(piece);
        return;
    }
    // SAFETY: the erased reference is only called by `Claims::take`'s
    // callers between claiming a piece and `finish`, and only while the
    // claims are open; `CloseOnDrop` closes them and waits for every such
    // call to return before this function returns or unwinds, so `piece`
    // outlives every call through it.
    let erased: &'static (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(piece) };
    let claims = Arc::new(Claims {
        state: Mutex::new(ClaimState {
            next: 0,
            running: 0,
            closed: false,
            panic: None,
        }),
        finished: Condvar::new(),
        pieces,
        piece: erased,
    });
    for _ in 1..pieces {
        let claims = claims.clone();
        send(Box::new(move || claims.work()));
    }
    let open = CloseOnDrop(&claims);
    claims.work();
    drop(open);
    let panic = claims.state.lock().panic.take();
    if let Some(panic) = panic {
        resume_unwind(panic);
    }
}

/// The pieces of one [`run_with_helpers`], claimed one at a time.
struct Claims {
    state: Mutex<ClaimState>,
    /// Signalled when the last running piece finishes.
    finished: Condvar,
    pieces: usize,
    piece: &'static (dyn Fn(usize) + Sync),
}

struct ClaimState {
    /// The next piece nobody has taken.
    next: usize,
    /// Pieces taken and not finished.
    running: usize,
    /// Set once the caller stops waiting: nothing is taken after.
    closed: bool,
    /// The first panic of a piece run by a helper.
    panic: Option<Box<dyn Any + Send>>,
}

impl Claims {
    /// Takes and runs pieces until none is left.
    fn work(&self) {
        while let Some(i) = self.take() {
            let result = catch_unwind(AssertUnwindSafe(|| (self.piece)(i)));
            let mut state = self.state.lock();
            state.running -= 1;
            if let Err(panic) = result {
                state.panic.get_or_insert(panic);
            }
            if state.running == 0 {
                self.finished.notify_all();
            }
        }
    }

    fn take(&self) -> Option<usize> {
        let mut state = self.state.lock();
        if state.closed || state.next == self.pieces {
            return None;
        }
        state.next += 1;
        state.running += 1;
        Some(state.next - 1)
    }
}

/// Closes the claims and waits for the pieces still running, however the
/// caller leaves [`run_with_helpers`].
struct CloseOnDrop<'a>(&'a Claims);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.closed = true;
        while state.running > 0 {
            self.0.finished.wait(&mut state);
        }
    }
}

/// Threads that run jobs from one queue in arrival order, counting those
/// that wait: as a [`Fanout`], they take pieces of other threads' jobs,
/// offered only while one waits ([`Fanout::threads`] counts the idle ones),
/// so a piece never queues behind other work. The in-process engine's
/// callers use them as helpers; the server's bulk pool is built on them,
/// its own jobs and their pieces sharing the queue. They end when this is
/// dropped.
pub struct HelperThreads {
    jobs: mpsc::Sender<Box<dyn FnOnce() + Send>>,
    /// Threads waiting for a job.
    idle: Arc<AtomicUsize>,
}

impl HelperThreads {
    /// Starts `n` threads named `name-0`, `name-1`, ….
    pub fn start(n: usize, name: &str) -> Self {
        Self::start_with(n, name, || {})
    }

    /// The same, each thread calling `on_start` before its first job (to
    /// lower its priority, install a fanout of its own).
    pub fn start_with(n: usize, name: &str, on_start: impl Fn() + Send + Sync + 'static) -> Self {
        let (sender, receiver) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let receiver = Arc::new(Mutex::new(receiver));
        let idle = Arc::new(AtomicUsize::new(0));
        let on_start = Arc::new(on_start);
        for i in 0..n {
            let (receiver, idle, on_start) = (receiver.clone(), idle.clone(), on_start.clone());
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    on_start();
                    loop {
                        idle.fetch_add(1, Ordering::Relaxed);
                        let job = receiver.lock().recv();
                        idle.fetch_sub(1, Ordering::Relaxed);
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })
                .expect("spawning a helper thread");
        }
        HelperThreads { jobs: sender, idle }
    }

    /// Threads waiting for a job now.
    pub fn idle(&self) -> usize {
        self.idle.load(Ordering::Relaxed)
    }

    /// Queues `job` behind what the threads have queued; false when no
    /// thread will run it (none was started). A job that panics ends its
    /// thread: jobs catch their own panics.
    pub fn send(&self, job: Box<dyn FnOnce() + Send>) -> bool {
        self.jobs.send(job).is_ok()
    }
}

impl Fanout for HelperThreads {
    fn threads(&self) -> usize {
        1 + self.idle()
    }

    fn run(&self, pieces: usize, piece: &(dyn Fn(usize) + Sync)) {
        run_with_helpers(pieces, piece, |job| {
            // Unsent, it is never run and the caller takes its piece.
            self.send(job);
        });
    }
}

/// A fanout over plain threads for the engine's tests, which cuts every
/// job for all its threads whether or not they are idle yet (a test must
/// not depend on when a helper reaches its queue).
#[cfg(test)]
pub(crate) mod test_pool {
    use super::*;

    pub(crate) struct Threads {
        helpers: HelperThreads,
        n: usize,
    }

    /// A fanout over `n` helpers of its own (they end with it).
    pub(crate) fn threads(n: usize) -> Arc<Threads> {
        Arc::new(Threads {
            helpers: HelperThreads::start(n, "featmux-test-helper"),
            n,
        })
    }

    impl Threads {
        /// Sends `job` to the threads, behind what they have queued.
        pub(crate) fn send(&self, job: Box<dyn FnOnce() + Send>) {
            assert!(self.helpers.send(job), "the test pool has threads");
        }
    }

    impl Fanout for Threads {
        fn threads(&self) -> usize {
            self.n + 1
        }

        fn run(&self, pieces: usize, piece: &(dyn Fn(usize) + Sync)) {
            self.helpers.run(pieces, piece);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_pool::threads;
    use super::*;

    #[test]
    fn every_piece_runs_once_on_several_threads() {
        let pool = threads(3);
        let counts: Vec<AtomicUsize> = (0..64).map(|_| AtomicUsize::new(0)).collect();
        let seen = Mutex::new(std::collections::HashSet::new());
        pool.run(64, &|i| {
            counts[i].fetch_add(1, Ordering::Relaxed);
            seen.lock().insert(std::thread::current().id());
            std::thread::sleep(std::time::Duration::from_millis(2));
        });
        assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        assert!(seen.lock().len() > 1, "the helpers took pieces");
    }

    /// Helpers that start only after the caller took every piece do
    /// nothing, and the borrowed closure is not touched after `run`
    /// returns (the caller does not wait for them).
    #[test]
    fn late_helpers_do_nothing() {
        let pool = threads(1);
        let (hold, held) = mpsc::channel::<()>();
        pool.send(Box::new(move || held.recv().unwrap()));
        {
            let ran = AtomicUsize::new(0);
            pool.run(4, &|_| {
                ran.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(ran.load(Ordering::Relaxed), 4);
        }
        hold.send(()).unwrap();
        // The late helper runs now, on a closure that is gone: it must not
        // call it. Another run proves the thread survived it.
        let again = AtomicUsize::new(0);
        pool.run(2, &|_| {
            again.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(again.load(Ordering::Relaxed), 2);
    }

    /// A helper's panic is raised on the caller, which first waits for
    /// the helper to have taken its piece; the pool keeps working.
    #[test]
    fn a_helpers_panic_is_raised_on_the_caller() {
        let pool = threads(1);
        let caller = std::thread::current().id();
        let helper_took_one = std::sync::atomic::AtomicBool::new(false);
        let raised = catch_unwind(AssertUnwindSafe(|| {
            pool.run(2, &|_| {
                if std::thread::current().id() == caller {
                    while !helper_took_one.load(Ordering::Acquire) {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                } else {
                    helper_took_one.store(true, Ordering::Release);
                    panic!("piece failed");
                }
            })
        }));
        let panic = raised.expect_err("the helper's panic reaches the caller");
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"piece failed"));
        let ran = AtomicUsize::new(0);
        pool.run(3, &|_| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 3);
    }

    /// Waits up to 5 s for `ready`.
    fn wait_until(ready: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !ready() {
            assert!(std::time::Instant::now() < deadline, "timed out");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Only helpers waiting for a piece count: one busy with another job
    /// is not offered a piece.
    #[test]
    fn helper_threads_count_only_the_idle_ones() {
        let helpers = HelperThreads::start(2, "featmux-test-helper");
        wait_until(|| helpers.idle() == 2);
        assert_eq!(helpers.threads(), 3);
        let (hold, held) = mpsc::channel::<()>();
        helpers.send(Box::new(move || held.recv().unwrap()));
        wait_until(|| helpers.idle() == 1);
        assert_eq!(helpers.threads(), 2);
        let ran = AtomicUsize::new(0);
        helpers.run(8, &|_| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 8);
        hold.send(()).unwrap();
        wait_until(|| helpers.idle() == 2);
    }

    #[test]
    fn the_current_fanout_is_the_threads_own() {
        assert_eq!(current().threads(), 1);
        std::thread::spawn(|| {
            install(threads(2));
            assert_eq!(current().threads(), 3);
            assert_eq!(pieces_for(&*current(), 100, 10), 3);
            assert_eq!(pieces_for(&*current(), 25, 10), 2);
            assert_eq!(pieces_for(&*current(), 5, 10), 1);
        })
        .join()
        .unwrap();
        assert_eq!(current().threads(), 1, "another thread's install");
    }
}
