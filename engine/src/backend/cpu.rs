//! The default backend: the table in one flat array of `f32` bits (and one
//! for the optimizer state), guarded by sequence locks striped by row block.
//!
//! Why this shape: one flat allocation is created fastest (a 10^8 × 16 table
//! is mostly page faults, filled in parallel by every core) and reads one row
//! with one memory access. Rows are grouped in blocks of [`BLOCK_ROWS`]; block
//! `b` is guarded by stripe `b % STRIPES`, a version counter that is odd
//! while a write to one of its blocks is under way. Readers take no lock:
//! they copy a row between two reads of its stripe's version and copy again
//! if a write overlapped. So a reader writes no shared memory (no cache line
//! moves between cores that read the same rows) and runs no locked
//! instruction (which would make each row's cache miss wait for the one
//! before it): the loads of many rows overlap, as a gather needs. A row is
//! never torn: a reader that raced a write retries. Writes take turns on one
//! mutex, which also lets an update compute and check every row's next value
//! beside the table first: a step that would make any row or state
//! non-finite refuses the whole push. Pushes arrive sorted by row, so an
//! update opens each block's stripe once, not once per row. A block is also
//! the unit the persistence flusher copies.
//!
//! One more sequence covers the whole table and is odd only while a write
//! stores rows (not while a push computes them). A gather that finds it
//! even before and after reads no row a write touched, so it copies rows
//! without their stripes; one that a store overlapped is done again, with
//! them.
//!
//! Memory (dense, materialised on create): `rows * (dim + state_width) * 4`
//! bytes, i.e. `4·d` bytes per row plus the optimizer's state (0, 4, `4·d`,
//! `8·d + 4`, `8·d` bytes for sgd, row-wise adagrad, adagrad, adam, ftrl),
//! plus a fixed 32 KiB of stripe versions.

use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};

use super::streamed::{answer_streams, store_fence, stream_row};
use super::{Backend, BlockSink, GatherPlan, GatherTarget, RowData, RowGradients, StorageSpec};
use crate::error::EngineError;
use crate::fanout::{self, Fanout};
use crate::layout::{Bags, BatchLayout, Entry, EntrySink, FeatureEntries, KeyColumn};
use crate::optimizer::all_finite;
use crate::plan::{gather_plan, gather_plan_of};
use crate::prefetch::CACHE_LINE;

/// Rows per block: the unit of locking and of flushing.
pub const BLOCK_ROWS: u64 = 64;

/// Number of stripes (a power of two): enough that a write rarely makes an
/// unrelated reader retry, few enough that all versions fit in L1/L2 cache.
pub const STRIPES: usize = 4096;

/// How many rows ahead updates (and the reference gather) prefetch:
/// enough to cover a memory access with the work on the rows in between.
/// A push's loads of 16 rows ahead ran as fast as 64 ahead.
const PREFETCH_AHEAD: usize = 16;

/// Rows a piece of a push's optimizer steps takes at least: fewer are
/// stepped before another thread would have woken up to take them.
const MIN_ROWS_PER_PIECE: usize = 8_192;

/// Entries a piece of a gather takes at least (see [`MIN_ROWS_PER_PIECE`];
/// a gather does less per entry than a push does per row).
const MIN_ENTRIES_PER_PIECE: usize = 16_384;

/// How far ahead, in bytes of rows, a plan's gather prefetches: the lead a
/// row's load needs is one memory latency, and fewer wide rows than
/// narrow ones take that long to copy. Measured in-process (4,096 × 26
/// single-valued int64 keys, 8 clients whose 32 batches take turns), in
/// rows ahead: at 16 floats a row, 16 ahead 125–133 M rows/s, 32 ahead
/// 151–157, 64 ahead 163–180 (128 no better); at 64 floats, 64 ahead was
/// 2–13 % slower than 16 (and 4 to 32 within noise of each other).
pub(super) const GATHER_BYTES_AHEAD: usize = 4096;

/// Rows of `width` floats in [`GATHER_BYTES_AHEAD`], within 4..=128
/// (folded to a constant where the width is one).
#[inline(always)]
fn gather_rows_ahead(width: usize) -> usize {
    (GATHER_BYTES_AHEAD / (width.max(1) * 4)).clamp(4, 128)
}

/// How many entries ahead of the one it pools [`CpuBackend::pool_entries`]
/// (and [`CpuBackend::pool_bags`]) hashes and prefetches. A loop that also
/// hashes takes more instructions per row, so fewer rows' loads are under
/// way at once without the hint reaching further. Bags of 20 in-process
/// (512 × 26, 8 clients whose 32 batches take turns), M rows/s against 32
/// ahead: int64 keys at 16 floats a row 201.4 / 218.5, 192.8 / 206.6,
/// 181.8 / 211.0, at 64 floats 49.1 / 50.0, 50.0 / 50.5, 49.4 / 51.1;
/// string keys at 16 floats 156.3 / 175.2, 164.5 / 191.9, 172.7 / 180.5.
/// 128 ahead was no faster at 16 floats and slower at 64.
const HASHED_AHEAD: usize = 64;
/// How many values ahead of the one it pools [`CpuBackend::pool_bags`]
/// asks for the value itself, which it hashes [`HASHED_AHEAD`] values
/// ahead: 1 KiB of int64 values further on than that.
const VALUES_AHEAD: usize = HASHED_AHEAD + 128;

/// A flat array of rows, each float kept as its bits in an `AtomicU32`, so
/// a reader may copy a row while a writer changes it (and then retries, see
/// [`Stripe`]) without a data race. Relaxed atomic stores compile to plain
/// moves, so this costs what plain floats would.
///
/// Row 0 starts on a cache line ([`CACHE_LINE`]): the allocator's large
/// blocks start 16 bytes past one, which made every 64-byte row straddle
/// two lines, i.e. two cache misses per row (measured: 17.6 against
/// 10.6 ns per random 16-float row).
struct RowArray {
    cells: Box<[AtomicU32]>,
    /// Cells before row 0, skipped to reach a cache line.
    skip: usize,
    width: usize,
}

impl RowArray {
    /// Allocates `rows` rows of `width` floats and lets `fill(first_row, part)`
    /// initialise them, in parallel over all cores.
    fn new(
        rows: usize,
        width: usize,
        fill: impl Fn(u64, &mut [f32]) + Sync,
    ) -> Result<Self, EngineError> {
        let len = rows * width;
        let slack = CACHE_LINE / 4 - 1;
        let mut values = super::try_zeroed_floats(len + slack, "the table")?;
        let skip = values.as_ptr().align_offset(CACHE_LINE).min(slack);
        let table = &mut values[skip..skip + len];
        advise_huge_pages(table);
        if width > 0 {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let rows_per_thread = rows.div_ceil(threads).max(1);
            std::thread::scope(|scope| {
                for (i, part) in table.chunks_mut(rows_per_thread * width).enumerate() {
                    let fill = &fill;
                    scope.spawn(move || fill((i * rows_per_thread) as u64, part));
                }
            });
        }
        let mut values = std::mem::ManuallyDrop::new(values);
        // SAFETY: `AtomicU32` has the size and alignment of `u32`, hence of
        // `f32`, and holds the float's bits as they are: the allocation is
        // reused as is (no second pass over the table).
        let cells = unsafe {
            Vec::from_raw_parts(
                values.as_mut_ptr().cast::<AtomicU32>(),
                values.len(),
                values.capacity(),
            )
        };
        Ok(RowArray {
            cells: cells.into_boxed_slice(),
            skip,
            width,
        })
    }

    /// The cells of `row`, which is `width` (the array's width) floats
    /// long: passed in so that a caller that knows the width at compile
    /// time gets its copy loops unrolled.
    #[inline(always)]
    fn cells(&self, row: usize, width: usize) -> &[AtomicU32] {
        debug_assert_eq!(width, self.width);
        let start = self.skip + row * width;
        &self.cells[start..start + width]
    }

    /// Asks the CPU to start loading `row` (each of its cache lines) into
    /// its cache. Batches read rows in hash order, i.e. at random: without
    /// a hint issued a few rows ahead, every row of a table larger than the
    /// cache is a full memory stall.
    #[inline(always)]
    fn prefetch(&self, row: usize) {
        self.prefetch_known_width(row, self.width);
    }

    /// [`Self::prefetch`] with the width passed in (see [`Self::cells`]).
    #[inline(always)]
    fn prefetch_known_width(&self, row: usize, width: usize) {
        crate::prefetch::prefetch(self.row_or_empty(row, width));
    }

    /// [`Self::prefetch_known_width`] for a row that is only read, once: a
    /// gather's (see [`crate::prefetch::prefetch_to_l2`]).
    #[inline(always)]
    fn prefetch_to_read(&self, row: usize, width: usize) {
        crate::prefetch::prefetch_to_l2(self.row_or_empty(row, width));
    }

    /// `row`'s cells, or none if it is past the end (a hint for it is then
    /// skipped, never a panic).
    #[inline(always)]
    fn row_or_empty(&self, row: usize, width: usize) -> &[AtomicU32] {
        debug_assert_eq!(width, self.width);
        let start = self.skip + row * width;
        self.cells.get(start..start + width).unwrap_or_default()
    }

    /// Copies `row` into `dst`. Whole only if no write overlapped: readers
    /// call it inside [`Stripe::read`], the writer wherever it likes.
    #[inline(always)]
    fn load<const AVX: bool>(&self, row: usize, dst: &mut [f32]) {
        // SAFETY: `dst` is valid for writes of its length.
        unsafe { self.load_to::<AVX, false>(row, dst.as_mut_ptr(), dst.len()) }
    }

    /// [`Self::load`] through a raw pointer (a gather's output may be
    /// memory another process shares, see [`super::GatherTarget`]).
    /// `AVX`: with 32-byte loads ([`load_by_8`]); `STREAM`: with
    /// non-temporal stores (see [`BlockOut::streams`]).
    ///
    /// # Safety
    ///
    /// `dst` is valid for writes of `width` floats; with `AVX`, the CPU
    /// has AVX; with `STREAM`, `AVX` too, `dst` is 16-byte aligned and
    /// `width` a multiple of 8.
    #[inline(always)]
    unsafe fn load_to<const AVX: bool, const STREAM: bool>(
        &self,
        row: usize,
        dst: *mut f32,
        width: usize,
    ) {
        let cells = self.cells(row, width);
        // SAFETY: the caller's promise, for the `width` floats of `cells`.
        unsafe {
            let copied = if AVX {
                load_by_8::<STREAM>(cells, dst)
            } else {
                load_by_4(cells, dst)
            };
            for (i, cell) in cells.iter().enumerate().skip(copied) {
                dst.add(i)
                    .write(f32::from_bits(cell.load(Ordering::Relaxed)));
            }
        }
    }

    /// Overwrites `row` with `src`; callers are inside [`Stripe::write`].
    #[inline(always)]
    fn store(&self, row: usize, src: &[f32]) {
        let cells = self.cells(row, src.len());
        let copied = store_by_4(src, cells);
        for (cell, s) in cells[copied..].iter().zip(&src[copied..]) {
            cell.store(s.to_bits(), Ordering::Relaxed);
        }
    }
}

/// Copies the leading groups of 4 floats of `src` into `cells`, one 16-byte
/// store each; returns how many floats it copied (the rest is the
/// caller's). The writer's half of [`load_by_4`], for the same reason: a
/// push commits rows that have left the cache since it read them, and one
/// relaxed atomic store per float is four times the stores per row to
/// wait on (that loop was half of [`CpuBackend`]'s `apply` samples; with
/// 16-byte stores an in-process push ran 24 % faster). Readers never keep
/// a half-written row: the stripe's sequence lock is odd while it is
/// written.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn store_by_4(src: &[f32], cells: &[AtomicU32]) -> usize {
    use std::arch::x86_64::{__m128, _mm_loadu_ps};
    let n = cells.len().min(src.len()) / 4 * 4;
    for i in (0..n).step_by(4) {
        // SAFETY: `src[i..i + 4]` and `cells[i..i + 4]` are in bounds
        // (i + 4 <= n); the assembly writes only those 16 bytes of the
        // cells (interior mutability: `AtomicU32` allows writes through a
        // shared reference), and SSE is part of the x86_64 baseline.
        unsafe {
            let group: __m128 = _mm_loadu_ps(src.as_ptr().add(i));
            std::arch::asm!(
                "movups [{cells}], {group}",
                cells = in(reg) cells.as_ptr().add(i),
                group = in(xmm_reg) group,
                options(nostack, preserves_flags),
            );
        }
    }
    n
}

/// Elsewhere every float is a relaxed atomic store.
#[cfg(not(target_arch = "x86_64"))]
fn store_by_4(_src: &[f32], _cells: &[AtomicU32]) -> usize {
    0
}

/// Copies the leading groups of 4 floats of `cells` into `dst` (valid for
/// writes of `cells.len()` floats), one 16-byte load each; returns how many
/// floats it copied (the rest is the caller's).
///
/// Why assembly: a gather is bound by how many rows' cache misses the CPU
/// overlaps, and that shrinks with every instruction a row takes. Relaxed
/// atomic loads are one instruction per float (measured on this machine:
/// 60 ns per 16-float row against 17 ns with 16-byte loads), and plain
/// loads of memory a writer may be changing would be a data race. Loads in
/// `asm!` are opaque to the compiler, so they are no data race in Rust's
/// sense; what they may read mid-write is what the stripe's sequence lock
/// discards (the byte-wise atomic copy of C++ proposal P1478).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load_by_4(cells: &[AtomicU32], dst: *mut f32) -> usize {
    use std::arch::x86_64::{__m128, _mm_storeu_ps};
    let n = cells.len() / 4 * 4;
    for i in (0..n).step_by(4) {
        let group: __m128;
        // SAFETY: `cells[i..i + 4]` is in bounds (i + 4 <= n) and so is
        // `dst[i..i + 4]` (the caller's promise); the assembly only reads
        // those 16 bytes, and SSE is part of the x86_64 baseline.
        unsafe {
            std::arch::asm!(
                "movups {group}, [{cells}]",
                cells = in(reg) cells.as_ptr().add(i),
                group = out(xmm_reg) group,
                options(nostack, preserves_flags, readonly),
            );
            _mm_storeu_ps(dst.add(i), group);
        }
    }
    n
}

/// Elsewhere every float is a relaxed atomic load.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn load_by_4(_cells: &[AtomicU32], _dst: *mut f32) -> usize {
    0
}

/// [`load_by_4`] with one 32-byte load per 8 floats: half the
/// instructions per row. Copies the leading groups of 8 only; the caller
/// copies the rest float by float (none at the common widths, 8 to 64).
/// `STREAM`: each group stored past the caches, 16 bytes at a time (what
/// `malloc` aligns to; [`BlockOut::streams`]).
///
/// # Safety
///
/// As [`load_by_4`], and the CPU has AVX; with `STREAM`, `dst` is 16-byte
/// aligned.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
unsafe fn load_by_8<const STREAM: bool>(cells: &[AtomicU32], dst: *mut f32) -> usize {
    use std::arch::x86_64::{
        __m256, _mm256_castps256_ps128, _mm256_extractf128_ps, _mm256_storeu_ps, _mm_stream_ps,
    };
    let n = cells.len() / 8 * 8;
    for i in (0..n).step_by(8) {
        let group: __m256;
        // SAFETY: as in `load_by_4`, for 32 bytes.
        unsafe {
            std::arch::asm!(
                "vmovups {group}, [{cells}]",
                cells = in(reg) cells.as_ptr().add(i),
                group = out(ymm_reg) group,
                options(nostack, preserves_flags, readonly),
            );
            if STREAM {
                _mm_stream_ps(dst.add(i), _mm256_castps256_ps128(group));
                _mm_stream_ps(dst.add(i + 4), _mm256_extractf128_ps::<1>(group));
            } else {
                _mm256_storeu_ps(dst.add(i), group);
            }
        }
    }
    n
}

/// Never called elsewhere ([`CpuBackend::avx`] is false).
#[cfg(not(target_arch = "x86_64"))]
unsafe fn load_by_8<const STREAM: bool>(_cells: &[AtomicU32], _dst: *mut f32) -> usize {
    0
}

/// Whether this CPU has AVX (checked once; the answer is cached).
fn has_avx() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The sequence lock of the blocks of one stripe: even while no write to
/// them is under way, odd during one, and raised by two by each write.
struct Stripe(AtomicU64);

impl Stripe {
    /// Runs `read` (which copies rows of this stripe) until no write
    /// overlapped it, so what it copied is whole.
    #[inline(always)]
    fn read(&self, mut read: impl FnMut()) {
        while !self.try_read(&mut read) {
            std::hint::spin_loop();
        }
    }

    /// Runs `read` once unless a write is under way; whether it ran and no
    /// write overlapped it (what it copied is whole only then).
    #[inline(always)]
    fn try_read(&self, read: impl FnOnce()) -> bool {
        let before = self.0.load(Ordering::Acquire);
        if before & 1 != 0 {
            return false;
        }
        read();
        // Orders the row loads above before the version check below.
        fence(Ordering::Acquire);
        self.0.load(Ordering::Relaxed) == before
    }

    /// Runs `write` (which stores rows of this stripe) so that readers see
    /// all of it or retry. Writes take turns: the caller shows the writer
    /// mutex's guard.
    #[inline(always)]
    fn write(&self, turn: &MutexGuard<'_, ()>, write: impl FnOnce()) {
        let next = self.begin_write(turn);
        write();
        self.end_write(next);
    }

    /// Marks a write under way (the version odd) before its row stores;
    /// returns the version [`Self::end_write`] ends it with. Writes take
    /// turns: the caller shows the writer mutex's guard.
    #[inline(always)]
    fn begin_write(&self, _turn: &MutexGuard<'_, ()>) -> u64 {
        let version = self.0.load(Ordering::Relaxed);
        self.0.store(version + 1, Ordering::Relaxed);
        // Orders the odd version before the row stores that follow.
        fence(Ordering::Release);
        version + 2
    }

    /// Ends the write [`Self::begin_write`] began, after its row stores.
    #[inline(always)]
    fn end_write(&self, next: u64) {
        self.0.store(next, Ordering::Release);
    }
}

/// Asks Linux to back a large, not yet touched allocation with transparent
/// huge pages. Creating a 10^8 × 16 table is otherwise dominated by 1.6 M
/// page faults, and random row reads by TLB misses. Advisory: where THP is
/// off or unsupported nothing changes.
fn advise_huge_pages(values: &mut [f32]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE_PAGE: usize = 2 << 20;
        let start = values.as_mut_ptr() as usize;
        let end = start + std::mem::size_of_val(values);
        let aligned = start.next_multiple_of(HUGE_PAGE);
        if end > aligned + HUGE_PAGE {
            // SAFETY: the range lies inside `values`' allocation; MADV_HUGEPAGE
            // changes how pages are backed, never their contents.
            unsafe {
                libc::madvise(
                    aligned as *mut libc::c_void,
                    end - aligned,
                    libc::MADV_HUGEPAGE,
                )
            };
        }
    }
}

/// Where a block of a gather's output starts, handed to the threads that
/// pool its parts.
struct BlockStart(*mut f32);

// SAFETY: each piece of a gather ([`write_blocks_in_pieces`]) writes only
// its own slots' rows of the block, and nothing reads them until every
// piece is done.
unsafe impl Sync for BlockStart {}

/// Writes `out`'s blocks (slots `bounds`, `d` floats each) in `runs`
/// pieces on `fanout`: every block is started first, `write(p, starts)`
/// writes run `p`'s part of them, and every block is marked written once
/// all runs are done.
///
/// # Safety
///
/// `out`'s blocks are apart ([`BlockOut::blocks_apart`]), and the runs
/// together write every float of every block, each exactly once.
unsafe fn write_blocks_in_pieces(
    out: &mut impl BlockOut,
    bounds: &[usize],
    d: usize,
    fanout: &dyn Fanout,
    runs: usize,
    write: &(dyn Fn(usize, &[BlockStart]) + Sync),
) {
    let starts: Vec<BlockStart> = bounds
        .windows(2)
        .enumerate()
        .map(|(index, slots)| BlockStart(out.start(index, (slots[1] - slots[0]) * d)))
        .collect();
    fanout.run(runs, &|p| write(p, &starts));
    for (index, slots) in bounds.windows(2).enumerate() {
        // SAFETY: `run` returned, and the runs wrote every block whole
        // (the caller's promise).
        unsafe { out.written(index, (slots[1] - slots[0]) * d) };
    }
}

/// Blocks an output started before the gather that writes them
/// ([`write_blocks_in_pieces`]): a piece's [`BlockPooler`] writes each of
/// its blocks where it starts.
struct Prestarted<'a>(&'a [BlockStart]);

// SAFETY: each block was started by an output whose blocks are apart, with
// room for its floats, and is written by one piece only.
unsafe impl BlockOut for Prestarted<'_> {
    fn start(&mut self, index: usize, _: usize) -> *mut f32 {
        self.0[index].0
    }

    unsafe fn written(&mut self, _: usize, _: usize) {}
}

/// The `slots` of a plan (entries in slot order) cut into at most `pieces`
/// runs of about equal entries, never inside a slot: run `p` is slots
/// `cuts[p]..cuts[p + 1]`.
fn slot_cuts(plan: &GatherPlan, slots: usize, pieces: usize) -> Vec<usize> {
    let mut cuts = vec![0];
    for p in 1..pieces {
        let slot = plan.slots[p * plan.rows.len() / pieces] as usize;
        if slot > *cuts.last().unwrap() && slot < slots {
            cuts.push(slot);
        }
    }
    cuts.push(slots);
    cuts
}

/// The stripe guarding `row`'s block.
fn stripe_index(row: u64) -> usize {
    (row / BLOCK_ROWS) as usize % STRIPES
}

/// Index ranges of `rows` (sorted) whose rows share a block, so a writer
/// opens each block's stripe once.
fn same_block_runs(rows: &[u64]) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start == rows.len() {
            return None;
        }
        let block = rows[start] / BLOCK_ROWS;
        let len = rows[start..]
            .iter()
            .take_while(|&&r| r / BLOCK_ROWS == block)
            .count();
        let run = start..start + len;
        start += len;
        Some(run)
    })
}

/// `sum += weight * row`, element-wise.
#[inline(always)]
fn add_scaled(sum: &mut [f32], weight: f32, row: &[f32]) {
    for (o, x) in sum.iter_mut().zip(row) {
        *o += weight * x;
    }
}

/// A row and a running sum for the pooling loops, `D` floats each (0: a
/// width known only at run time). For a known width they are arrays on
/// the stack, which the compiler keeps in vector registers.
struct RowScratch<const D: usize> {
    row: [f32; D],
    sum: [f32; D],
    heap: Vec<f32>,
}

impl<const D: usize> RowScratch<D> {
    fn new() -> Self {
        RowScratch {
            row: [0.0; D],
            sum: [0.0; D],
            heap: Vec::new(),
        }
    }

    /// The row and the sum, `d` floats each (`d == D` unless `D` is 0).
    #[inline(always)]
    fn row_and_sum(&mut self, d: usize) -> (&mut [f32], &mut [f32]) {
        if D == 0 {
            self.heap.resize(2 * d, 0.0);
            self.heap.split_at_mut(d)
        } else {
            (&mut self.row, &mut self.sum)
        }
    }
}

/// How far [`CpuBackend::pool_entries`] has written a block of `slots`
/// output rows from `out`: the slots before `written` hold their output,
/// `open` is being summed.
struct BlockCursor {
    out: *mut f32,
    slots: usize,
    written: usize,
    open: Option<usize>,
}

impl BlockCursor {
    /// Writes out every slot before `slot` (`slot <= slots`): the open one
    /// from `sum` (one row of floats), the rest as empty bags (zeros).
    ///
    /// # Safety
    ///
    /// `out` is valid for writes of `slots` rows of `sum.len()` floats.
    #[inline(always)]
    unsafe fn finish(&mut self, sum: &[f32], slot: usize) {
        let d = sum.len();
        if let Some(open) = self.open.take() {
            // SAFETY: `open < slots` (asserted in `pool_entry` when it opened).
            unsafe { std::ptr::copy_nonoverlapping(sum.as_ptr(), self.out.add(open * d), d) };
            self.written = open + 1;
        }
        // Entries come in slot order and stay inside the block, or what
        // follows would write outside `out`.
        assert!(
            self.written <= slot && slot <= self.slots,
            "entries in slot order"
        );
        if slot > self.written {
            // SAFETY: `written <= slot <= slots` (asserted).
            unsafe {
                std::ptr::write_bytes(self.out.add(self.written * d), 0, (slot - self.written) * d)
            };
            self.written = slot;
        }
    }
}

/// Where [`CpuBackend`]'s block-by-block gathers write each block: into a
/// vector of its own, kept ([`KeptBlocks`]), or into one buffer reused for
/// every block and handed to a [`BlockSink`] ([`SunkBlocks`]).
///
/// # Safety
///
/// [`Self::start`] returns memory valid for writes of `floats` floats,
/// which nothing else reads or writes until [`Self::written`] for the
/// same block.
unsafe trait BlockOut {
    /// Whether a gather of `floats` floats in all writes its rows with
    /// non-temporal stores (where the CPU has AVX, the rows are whole
    /// groups of 8 floats and each block starts 16-byte aligned). An
    /// ordinary store first reads the line it writes into the cache: for
    /// memory this process never reads back (a region another process
    /// maps), or an answer too large for the caches to keep until its
    /// next reader, that read is wasted, and it evicts table rows that
    /// later gathers read. See docs/results/profile.md, section 26.
    fn streams(&self, _floats: usize) -> bool {
        false
    }

    /// Whether every block's memory is its own, so that all blocks may be
    /// started before any is written (and written by several threads at
    /// once); [`SunkBlocks`] reuses one buffer.
    fn blocks_apart(&self) -> bool {
        true
    }

    /// Where block `index`, `floats` floats long, is to be written.
    fn start(&mut self, index: usize, floats: usize) -> *mut f32;

    /// Block `index` is written.
    ///
    /// # Safety
    ///
    /// All `floats` floats from [`Self::start`]'s pointer for this block
    /// have been written.
    unsafe fn written(&mut self, index: usize, floats: usize);
}

/// Each block into a vector of its own: what a lookup returns.
struct KeptBlocks(Vec<Vec<f32>>);

impl KeptBlocks {
    fn new(blocks: usize) -> Self {
        KeptBlocks(vec![Vec::new(); blocks])
    }
}

// SAFETY: each block's vector has room for its floats, and is touched
// again only in `written`.
unsafe impl BlockOut for KeptBlocks {
    fn streams(&self, floats: usize) -> bool {
        answer_streams(floats)
    }

    fn start(&mut self, index: usize, floats: usize) -> *mut f32 {
        self.0[index] = Vec::with_capacity(floats);
        self.0[index].as_mut_ptr()
    }

    unsafe fn written(&mut self, index: usize, floats: usize) {
        // SAFETY: the caller's promise.
        unsafe { self.0[index].set_len(floats) };
    }
}

/// Every block into one buffer, handed to a sink as soon as it is written
/// (while it is still in the core's cache) and then overwritten by the
/// next.
struct SunkBlocks<'s> {
    buffer: Vec<f32>,
    sink: &'s mut dyn BlockSink,
}

impl<'s> SunkBlocks<'s> {
    fn new(sink: &'s mut dyn BlockSink) -> Self {
        SunkBlocks {
            buffer: Vec::new(),
            sink,
        }
    }
}

// SAFETY: the buffer has room for the block, and is read only in
// `written`, by the sink, before the next block's `start`.
unsafe impl BlockOut for SunkBlocks<'_> {
    fn blocks_apart(&self) -> bool {
        false
    }

    fn start(&mut self, _: usize, floats: usize) -> *mut f32 {
        self.buffer.clear();
        self.buffer.reserve(floats);
        self.buffer.as_mut_ptr()
    }

    unsafe fn written(&mut self, index: usize, floats: usize) {
        // SAFETY: the caller's promise.
        unsafe { self.buffer.set_len(floats) };
        self.sink.block(index, &self.buffer);
    }
}

/// The blocks one after the other, into memory the caller lent (a
/// [`GatherTarget`]'s): each block starts where the one before ended.
struct BackToBack(*mut f32);

// SAFETY: made only from a target checked to hold all the blocks' floats
// (`CpuBackend::gather_into`, `CpuBackend::gather_layout_into`); each
// block's range follows the last one's.
unsafe impl BlockOut for BackToBack {
    /// Always: the memory is another process's to read.
    fn streams(&self, _: usize) -> bool {
        true
    }

    fn start(&mut self, _: usize, floats: usize) -> *mut f32 {
        let start = self.0;
        self.0 = start.wrapping_add(floats);
        start
    }

    unsafe fn written(&mut self, _: usize, _: usize) {}
}

/// Pools each feature of a [`BatchLayout`] into its own block
/// ([`CpuBackend::gather_layout`]).
struct BlockPooler<'b, O> {
    backend: &'b CpuBackend,
    out: &'b mut O,
}

impl<O: BlockOut> EntrySink for BlockPooler<'_, O> {
    fn feature<'v, K: KeyColumn<'v>>(
        &mut self,
        block: usize,
        slots: usize,
        entries: FeatureEntries<'_, K>,
    ) {
        let backend = self.backend;
        let floats = slots * backend.spec.dim;
        let out = self.out.start(block, floats);
        let quiet = || {
            // SAFETY: `out` has room for `slots` rows (`BlockOut`'s promise).
            unsafe { pool_feature_reading::<K, false>(backend, &entries, slots, out) }
        };
        if !backend.storing.try_read(quiet) {
            // A store overlapped: pooled again, every row under its stripe.
            // SAFETY: as above.
            unsafe { pool_feature_reading::<K, true>(backend, &entries, slots, out) };
        }
        // SAFETY: the pooling wrote all `slots` rows.
        unsafe { self.out.written(block, floats) };
    }
}

/// [`pool_feature`] compiled for AVX where the CPU has it; `STRIPED`: each
/// row read under its stripe.
///
/// # Safety
///
/// As [`CpuBackend::pool_entries`].
#[inline(always)]
unsafe fn pool_feature_reading<'v, K: KeyColumn<'v>, const STRIPED: bool>(
    backend: &CpuBackend,
    entries: &FeatureEntries<'_, K>,
    slots: usize,
    out: *mut f32,
) {
    // SAFETY: the caller's promise; the AVX loop runs only where the CPU
    // has AVX.
    unsafe {
        if backend.avx {
            pool_feature_avx::<K, STRIPED>(backend, entries, slots, out);
        } else {
            pool_feature::<K, false, STRIPED>(backend, entries, slots, out);
        }
    }
}

/// [`CpuBackend::pool_bags`] for a feature of plain bags, otherwise
/// [`CpuBackend::pool_entries`], at the table's width; `AVX`: with
/// [`load_by_8`]; `STRIPED`: each row read under its stripe.
///
/// # Safety
///
/// As [`CpuBackend::pool_entries`]; with `AVX`, the CPU has AVX.
#[inline(always)]
unsafe fn pool_feature<'v, K: KeyColumn<'v>, const AVX: bool, const STRIPED: bool>(
    backend: &CpuBackend,
    entries: &FeatureEntries<'_, K>,
    slots: usize,
    out: *mut f32,
) {
    // SAFETY: the caller's promise, which every arm passes on.
    unsafe {
        if let Some(bags) = entries.bags() {
            return match backend.spec.dim {
                8 => backend.pool_bags::<8, K, AVX, STRIPED>(bags, slots, out),
                16 => backend.pool_bags::<16, K, AVX, STRIPED>(bags, slots, out),
                32 => backend.pool_bags::<32, K, AVX, STRIPED>(bags, slots, out),
                64 => backend.pool_bags::<64, K, AVX, STRIPED>(bags, slots, out),
                _ => backend.pool_bags::<0, K, AVX, STRIPED>(bags, slots, out),
            };
        }
        match backend.spec.dim {
            8 => backend.pool_entries::<8, K, AVX, STRIPED>(entries, slots, out),
            16 => backend.pool_entries::<16, K, AVX, STRIPED>(entries, slots, out),
            32 => backend.pool_entries::<32, K, AVX, STRIPED>(entries, slots, out),
            64 => backend.pool_entries::<64, K, AVX, STRIPED>(entries, slots, out),
            _ => backend.pool_entries::<0, K, AVX, STRIPED>(entries, slots, out),
        }
    }
}

/// [`pool_feature`] compiled for AVX.
///
/// # Safety
///
/// As [`CpuBackend::pool_entries`], and the CPU has AVX.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx"))]
unsafe fn pool_feature_avx<'v, K: KeyColumn<'v>, const STRIPED: bool>(
    backend: &CpuBackend,
    entries: &FeatureEntries<'_, K>,
    slots: usize,
    out: *mut f32,
) {
    // SAFETY: the caller's promise.
    unsafe { pool_feature::<K, true, STRIPED>(backend, entries, slots, out) }
}

/// Plain-Rust storage with lock-free readers.
pub struct CpuBackend {
    spec: StorageSpec,
    weights: RowArray,
    state: RowArray,
    stripes: Box<[Stripe]>,
    /// The whole table's sequence, odd while a write stores rows: gathers
    /// that no store overlapped skip the stripes, each of which is a load
    /// at a random place in 32 KiB of versions and a second one after the
    /// row. Bags of 20 in-process pooled 1–16 % faster, in every round
    /// (docs/results/profile.md, section 17).
    storing: Stripe,
    /// Held by every write (push or restore) for its whole duration: a push
    /// checks its rows' next values before it writes any of them, and no
    /// other write may change those rows in between.
    writer: Mutex<()>,
    /// Whether gathers run their loops compiled for AVX, which copy a row
    /// with half the instructions ([`load_by_8`]): where the CPU has it.
    /// The build targets baseline x86-64, so this is chosen at run time.
    avx: bool,
}

impl CpuBackend {
    /// Allocates and initialises the table on all cores.
    pub fn new(spec: StorageSpec) -> Result<Self, EngineError> {
        let rows = spec
            .memory_bytes()
            .and_then(|b| usize::try_from(b).ok())
            .and_then(|_| usize::try_from(spec.rows).ok())
            .ok_or_else(|| {
                EngineError::invalid(
                    "rows",
                    format!(
                        "{} rows of {} floats do not fit in this machine's address space",
                        spec.rows, spec.dim
                    ),
                )
            })?;
        let initial_state = spec.optimizer.initial_state(spec.dim);
        let weights = RowArray::new(rows, spec.dim, |first, part| {
            spec.initializer
                .fill_rows(spec.seed, spec.first_row + first, spec.dim, part)
        })?;
        let state = RowArray::new(rows, initial_state.len(), |_, part| {
            for row in part.chunks_exact_mut(initial_state.len()) {
                row.copy_from_slice(&initial_state);
            }
        })?;
        Ok(CpuBackend {
            spec,
            weights,
            state,
            stripes: (0..STRIPES).map(|_| Stripe(AtomicU64::new(0))).collect(),
            storing: Stripe(AtomicU64::new(0)),
            writer: Mutex::new(()),
            avx: has_avx(),
        })
    }

    fn stripe(&self, row: u64) -> &Stripe {
        &self.stripes[stripe_index(row)]
    }

    /// Copies the weights of `row` into `dst`: whole under the row's
    /// stripe (`STRIPED`), or plainly for a gather [`Self::storing`]
    /// guards.
    #[inline(always)]
    fn read_weights<const AVX: bool, const STRIPED: bool>(&self, row: u64, dst: &mut [f32]) {
        if STRIPED {
            self.stripe(row)
                .read(|| self.weights.load::<AVX>(row as usize, dst));
        } else {
            self.weights.load::<AVX>(row as usize, dst);
        }
    }

    /// [`Self::read_weights`] through a raw pointer; `STREAM`: with
    /// non-temporal stores.
    ///
    /// # Safety
    ///
    /// `dst` is valid for writes of the table's width in floats; with
    /// `STREAM`, as [`RowArray::load_to`] asks.
    #[inline(always)]
    unsafe fn read_weights_to<const AVX: bool, const STRIPED: bool, const STREAM: bool>(
        &self,
        row: u64,
        dst: *mut f32,
        width: usize,
    ) {
        if STRIPED {
            // SAFETY: the caller's promise.
            self.stripe(row).read(|| unsafe {
                self.weights
                    .load_to::<AVX, STREAM>(row as usize, dst, width)
            });
        } else {
            // SAFETY: the caller's promise.
            unsafe {
                self.weights
                    .load_to::<AVX, STREAM>(row as usize, dst, width)
            };
        }
    }

    /// Pools a plan whose slots never decrease (what a batch plans, except
    /// bags of multi-chunk features) one slot after the other, the slots of
    /// block `k` (`bounds[k]..bounds[k + 1]`) to consecutive rows where
    /// `out` puts the block: each slot is summed while it sits in L1 and
    /// its output row written once, never read back (no `[num_slots, dim]`
    /// buffer to zero first, none to cut afterwards). Each block is read
    /// without stripes unless a store overlaps it (then again, with them):
    /// a block at a time, so a push's store wastes at most one block's
    /// reads.
    fn pool_in_slot_order(&self, plan: &GatherPlan, bounds: &[usize], out: &mut impl BlockOut) {
        let d = self.spec.dim;
        let total = bounds.last().copied().unwrap_or(0).saturating_mul(d);
        let streams = self.avx && d % 8 == 0 && out.streams(total);
        let blocks = bounds.len().saturating_sub(1);
        let fanout = fanout::current();
        let pieces = if out.blocks_apart() {
            fanout::pieces_for(&*fanout, plan.rows.len(), MIN_ENTRIES_PER_PIECE)
        } else {
            1
        };
        if pieces <= 1 {
            let mut first = 0;
            for (index, slots) in bounds.windows(2).enumerate() {
                let floats = (slots[1] - slots[0]) * d;
                let start = out.start(index, floats);
                // SAFETY: `start` has room for the block (`BlockOut`'s
                // promise).
                first = unsafe {
                    self.pool_whole_block(plan, first, slots[0]..slots[1], start, streams)
                };
                // SAFETY: the pooling wrote every slot of the block.
                unsafe { out.written(index, floats) };
            }
            return;
        }
        // Runs of slots of about equal entries, pooled at once by threads
        // the caller has to spare: each run starts at the first entry of
        // its first slot (entries come in slot order) and pools its part of
        // each block it spans.
        let cuts = slot_cuts(plan, bounds[blocks], pieces);
        let pool_run = |p: usize, starts: &[BlockStart]| {
            let run = cuts[p]..cuts[p + 1];
            let mut first = plan.slots.partition_point(|&s| (s as usize) < run.start);
            let from_block = bounds[1..].partition_point(|&end| end <= run.start);
            for index in from_block..blocks {
                let block = bounds[index]..bounds[index + 1];
                if block.start >= run.end {
                    break;
                }
                let part = block.start.max(run.start)..block.end.min(run.end);
                // SAFETY: block `index` has room for its slots from
                // `starts[index]` on, and only this run writes `part`.
                first = unsafe {
                    let start = starts[index].0.add((part.start - block.start) * d);
                    self.pool_whole_block(plan, first, part, start, streams)
                };
            }
        };
        // SAFETY: the runs' parts are every slot of every block, once.
        unsafe { write_blocks_in_pieces(out, bounds, d, &*fanout, cuts.len() - 1, &pool_run) };
    }

    /// Pools one block's `slots` from entry `first` on to `start`, every
    /// row under its stripe if a store overlapped, and fences
    /// non-temporal stores (`streams`, where `start` is aligned for them)
    /// before the block is handed on; returns the entry after the block's
    /// last.
    ///
    /// # Safety
    ///
    /// `start` is valid for writes of `slots.len() * dim` floats, which
    /// nothing else reads or writes meanwhile.
    unsafe fn pool_whole_block(
        &self,
        plan: &GatherPlan,
        first: usize,
        slots: Range<usize>,
        start: *mut f32,
        streams: bool,
    ) -> usize {
        let stream = streams && start as usize % 16 == 0;
        let mut next = first;
        let quiet = || {
            // SAFETY: `start` has room for the block (the caller's
            // promise); `stream` only where it is aligned for it.
            next = unsafe { self.pool_block::<false>(plan, first, slots.clone(), start, stream) };
        };
        if !self.storing.try_read(quiet) {
            // SAFETY: as above.
            next = unsafe { self.pool_block::<true>(plan, first, slots.clone(), start, stream) };
        }
        if stream {
            // Non-temporal stores are weakly ordered: the fence makes every
            // one of them visible before the block is handed on (to its
            // reader, or to the client with the answer).
            store_fence();
        }
        next
    }

    /// Pools the `slots` of one block of a plan in slot order, from entry
    /// `first` on, to consecutive rows from `start`; returns the entry after
    /// the block's last. Compiled for AVX where the CPU has it; `STRIPED`:
    /// each row read under its stripe; `stream`: each row written with
    /// non-temporal stores (see [`BlockOut::streams`]).
    ///
    /// # Safety
    ///
    /// `start` is valid for writes of `slots.len() * dim` floats; with
    /// `stream`, the CPU has AVX, `start` is 16-byte aligned and `dim` a
    /// multiple of 8.
    #[inline(always)]
    unsafe fn pool_block<const STRIPED: bool>(
        &self,
        plan: &GatherPlan,
        first: usize,
        slots: Range<usize>,
        start: *mut f32,
        stream: bool,
    ) -> usize {
        // SAFETY: the caller's promise; the AVX loops run only where the
        // CPU has AVX.
        unsafe {
            match (self.avx, stream) {
                (true, true) => self.pool_block_avx::<STRIPED, true>(plan, first, slots, start),
                (true, false) => self.pool_block_avx::<STRIPED, false>(plan, first, slots, start),
                (false, _) => {
                    self.pool_block_with::<false, STRIPED, false>(plan, first, slots, start)
                }
            }
        }
    }

    /// [`Self::pool_block`] compiled for AVX.
    ///
    /// # Safety
    ///
    /// As [`Self::pool_block`], and the CPU has AVX.
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx"))]
    unsafe fn pool_block_avx<const STRIPED: bool, const STREAM: bool>(
        &self,
        plan: &GatherPlan,
        first: usize,
        slots: Range<usize>,
        start: *mut f32,
    ) -> usize {
        // SAFETY: the caller's promise.
        unsafe { self.pool_block_with::<true, STRIPED, STREAM>(plan, first, slots, start) }
    }

    /// [`Self::pool_block`], `AVX`: with [`load_by_8`]; `STREAM`: its
    /// `stream`.
    ///
    /// # Safety
    ///
    /// As [`Self::pool_block`]; with `AVX`, the CPU has AVX.
    #[inline(always)]
    unsafe fn pool_block_with<const AVX: bool, const STRIPED: bool, const STREAM: bool>(
        &self,
        plan: &GatherPlan,
        first: usize,
        slots: Range<usize>,
        start: *mut f32,
    ) -> usize {
        // Common widths get their own copy of the loop, in which every
        // row's copy and sum unroll into a few vector instructions: the
        // fewer instructions a row takes, the more rows' cache misses the
        // CPU overlaps.
        // SAFETY: the caller's promise, which every arm passes on.
        unsafe {
            match self.spec.dim {
                8 => self.pool_slots::<8, AVX, STRIPED, STREAM>(plan, first, slots, start),
                16 => self.pool_slots::<16, AVX, STRIPED, STREAM>(plan, first, slots, start),
                32 => self.pool_slots::<32, AVX, STRIPED, STREAM>(plan, first, slots, start),
                64 => self.pool_slots::<64, AVX, STRIPED, STREAM>(plan, first, slots, start),
                _ => self.pool_slots::<0, AVX, STRIPED, STREAM>(plan, first, slots, start),
            }
        }
    }

    /// [`Self::pool_block`] for rows of `D` floats (0: the table's width,
    /// known at run time).
    ///
    /// Plain loops on purpose: the body of a closure that captured `d`
    /// (an iterator's `map`) compiled to one function for every `D`, which
    /// the linker folded into one, so no width got its own copy and every
    /// row's copy was a call to `memcpy` (17 % of an in-process lookup).
    ///
    /// # Safety
    ///
    /// As [`Self::pool_block`].
    #[inline(always)]
    unsafe fn pool_slots<
        const D: usize,
        const AVX: bool,
        const STRIPED: bool,
        const STREAM: bool,
    >(
        &self,
        plan: &GatherPlan,
        first: usize,
        slots: Range<usize>,
        start: *mut f32,
    ) -> usize {
        let d = if D == 0 { self.spec.dim } else { D };
        let n = plan.rows.len();
        let (rows, entry_slots, weights) = (&plan.rows[..n], &plan.slots[..n], &plan.weights[..n]);
        let mut scratch = RowScratch::<D>::new();
        let (row, sum) = scratch.row_and_sum(d);
        let ahead = gather_rows_ahead(d);
        let mut e = first;
        for (i, slot) in slots.enumerate() {
            // SAFETY: slot `i` of the block is within what the caller
            // promised writable.
            let out = unsafe { start.add(i * d) };
            // One entry of weight 1 (every single-valued feature): the
            // row is the output, read straight into it (the same floats
            // as 0 + 1·x, but for the sign of a zero).
            let alone = entry_slots.get(e + 1).is_none_or(|&s| s as usize != slot);
            if e < n && entry_slots[e] as usize == slot && weights[e] == 1.0 && alone {
                self.prefetch_entry_row::<D>(rows, e + ahead);
                // SAFETY: `out` has room for one row (above).
                unsafe { self.read_weights_to::<AVX, STRIPED, STREAM>(rows[e], out, d) };
                e += 1;
                continue;
            }
            sum.fill(0.0);
            while e < n && entry_slots[e] as usize == slot {
                self.prefetch_entry_row::<D>(rows, e + ahead);
                self.read_weights::<AVX, STRIPED>(rows[e], row);
                add_scaled(sum, weights[e], row);
                e += 1;
            }
            // SAFETY: as above; `sum` is this function's own memory.
            unsafe {
                if STREAM {
                    stream_row(sum, out);
                } else {
                    std::ptr::copy_nonoverlapping(sum.as_ptr(), out, d);
                }
            }
        }
        e
    }

    /// Pools one feature's entries, hashed as they come, into its `slots`
    /// output rows from `out` (a feature of plain bags goes to
    /// [`Self::pool_bags`] instead). Each entry's row is prefetched as it is
    /// hashed and read [`HASHED_AHEAD`] entries later, so the hashing of
    /// the values ahead runs while the rows behind are still loading. A
    /// slot's entries are summed as [`Self::pool_slots`] sums them (an
    /// entry alone in its slot with weight 1 is copied as is), and a slot
    /// with none is zeros.
    ///
    /// # Safety
    ///
    /// `out` is valid for writes of `slots * dim` floats.
    #[inline(always)]
    unsafe fn pool_entries<
        'v,
        const D: usize,
        K: KeyColumn<'v>,
        const AVX: bool,
        const STRIPED: bool,
    >(
        &self,
        entries: &FeatureEntries<'_, K>,
        slots: usize,
        out: *mut f32,
    ) {
        let d = if D == 0 { self.spec.dim } else { D };
        let mut scratch = RowScratch::<D>::new();
        let (row, sum) = scratch.row_and_sum(d);
        let mut block = BlockCursor {
            out,
            slots,
            written: 0,
            open: None,
        };
        let mut ahead = [Entry::default(); HASHED_AHEAD];
        let (mut hashed, mut pooled) = (0, 0);
        entries.for_each(|e| {
            self.weights.prefetch_to_read(e.row as usize, d);
            if hashed - pooled == HASHED_AHEAD {
                let next = ahead[(pooled + 1) % HASHED_AHEAD].slot;
                // SAFETY: the caller's promise.
                unsafe {
                    self.pool_entry::<AVX, STRIPED>(
                        &mut block,
                        row,
                        sum,
                        ahead[pooled % HASHED_AHEAD],
                        Some(next),
                    )
                };
                pooled += 1;
            }
            ahead[hashed % HASHED_AHEAD] = e;
            hashed += 1;
        });
        while pooled < hashed {
            let next = (pooled + 1 < hashed).then(|| ahead[(pooled + 1) % HASHED_AHEAD].slot);
            // SAFETY: the caller's promise.
            unsafe {
                self.pool_entry::<AVX, STRIPED>(
                    &mut block,
                    row,
                    sum,
                    ahead[pooled % HASHED_AHEAD],
                    next,
                )
            };
            pooled += 1;
        }
        // SAFETY: the caller's promise.
        unsafe { block.finish(sum, block.slots) };
    }

    /// Pools a feature of plain bags into its `slots` output rows (one per
    /// bag) from `out`, with the sums [`Self::pool_entries`] makes, in a
    /// loop that carries only rows: each value is hashed and its row
    /// prefetched [`HASHED_AHEAD`] values before it is summed, and nothing
    /// else is kept per value (no slot, no weight, no entry to copy, no
    /// slot to compare). Bags of 20 in-process (8 clients) ran 22–29 %
    /// faster than through `pool_entries` at 16 floats a row and 7–17 %
    /// at 64 (docs/results/profile.md, section 14).
    ///
    /// # Safety
    ///
    /// `out` is valid for writes of `slots * dim` floats.
    #[inline(always)]
    unsafe fn pool_bags<
        'v,
        const D: usize,
        K: KeyColumn<'v>,
        const AVX: bool,
        const STRIPED: bool,
    >(
        &self,
        bags: Bags<'_, K>,
        slots: usize,
        out: *mut f32,
    ) {
        let d = if D == 0 { self.spec.dim } else { D };
        assert_eq!(bags.lengths.len(), slots, "one output row per bag");
        let mut scratch = RowScratch::<D>::new();
        let (row, sum) = scratch.row_and_sum(d);
        let mut ahead = [0u64; HASHED_AHEAD];
        for (i, r) in ahead.iter_mut().enumerate().take(bags.values) {
            *r = bags.row(i);
            self.weights.prefetch_to_read(*r as usize, d);
        }
        let mut value = 0;
        for (slot, &len) in bags.lengths.iter().enumerate() {
            // SAFETY: `slot < slots` (asserted), within the caller's promise.
            let target = unsafe { out.add(slot * d) };
            let (len, weight) = (len as usize, bags.weight(len as usize));
            if len == 1 && weight == 1.0 {
                // Alone in its bag with weight 1: the row is the output.
                let r = self.next_bag_row(&bags, &mut ahead, value, d);
                // SAFETY: `target` has room for one row.
                unsafe { self.read_weights_to::<AVX, STRIPED, false>(r, target, d) };
                value += 1;
                continue;
            }
            sum.fill(0.0);
            for _ in 0..len {
                let r = self.next_bag_row(&bags, &mut ahead, value, d);
                self.read_weights::<AVX, STRIPED>(r, row);
                add_scaled(sum, weight, row);
                value += 1;
            }
            // SAFETY: as above; `sum` is this function's own memory.
            unsafe { std::ptr::copy_nonoverlapping(sum.as_ptr(), target, d) };
        }
    }

    /// The row of value `value` of `bags`, from `ahead` (the rows of the
    /// next [`HASHED_AHEAD`] values), whose place then takes the row
    /// [`HASHED_AHEAD`] values on, hashed and prefetched.
    #[inline(always)]
    fn next_bag_row<'v, K: KeyColumn<'v>>(
        &self,
        bags: &Bags<'_, K>,
        ahead: &mut [u64; HASHED_AHEAD],
        value: usize,
        d: usize,
    ) -> u64 {
        let place = &mut ahead[value % HASHED_AHEAD];
        let row = *place;
        bags.prefetch_value(value + VALUES_AHEAD);
        if value + HASHED_AHEAD < bags.values {
            *place = bags.row(value + HASHED_AHEAD);
            self.weights.prefetch_to_read(*place as usize, d);
        }
        row
    }

    /// Adds entry `e` to its slot of `block` (`next_slot`: the slot of the
    /// entry after it, if any), writing out the slots before it.
    ///
    /// # Safety
    ///
    /// `block.out` is valid for writes of `block.slots * dim` floats.
    #[inline(always)]
    unsafe fn pool_entry<const AVX: bool, const STRIPED: bool>(
        &self,
        block: &mut BlockCursor,
        row: &mut [f32],
        sum: &mut [f32],
        e: Entry,
        next_slot: Option<u32>,
    ) {
        let slot = e.slot as usize;
        if block.open != Some(slot) {
            assert!(slot < block.slots, "entries inside the block");
            // SAFETY: the caller's promise.
            unsafe { block.finish(sum, slot) };
            if e.weight == 1.0 && next_slot != Some(e.slot) {
                // Alone in its slot with weight 1: the row is the output.
                // SAFETY: `slot < block.slots` (asserted).
                unsafe {
                    self.read_weights_to::<AVX, STRIPED, false>(
                        e.row,
                        block.out.add(slot * sum.len()),
                        sum.len(),
                    )
                };
                block.written = slot + 1;
                return;
            }
            sum.fill(0.0);
            block.open = Some(slot);
        }
        self.read_weights::<AVX, STRIPED>(e.row, row);
        add_scaled(sum, e.weight, row);
    }

    /// Prefetches the row of entry `e`, if there is one (rows of `D`
    /// floats, 0: the table's width).
    #[inline(always)]
    fn prefetch_entry_row<const D: usize>(&self, rows: &[u64], e: usize) {
        if let Some(&row) = rows.get(e) {
            let d = if D == 0 { self.spec.dim } else { D };
            self.weights.prefetch_to_read(row as usize, d);
        }
    }

    /// Loads `rows` into `weights` and `state` (`d` and `state.width`
    /// floats a row, in order) and steps each with its `d` gradients:
    /// the first row whose step is not finite, if one is (the rows after
    /// it are left unloaded). The caller holds the writer's turn.
    #[inline(always)]
    fn step_rows<const D: usize>(
        &self,
        rows: &[u64],
        grads: &[f32],
        weights: &mut [MaybeUninit<f32>],
        state: &mut [MaybeUninit<f32>],
    ) -> Option<u64> {
        let d = if D == 0 { self.spec.dim } else { D };
        let sw = self.state.width;
        assert!(weights.len() == rows.len() * d && state.len() == rows.len() * sw);
        for (i, &row) in rows.iter().enumerate() {
            if let Some(&next) = rows.get(i + PREFETCH_AHEAD) {
                self.weights.prefetch_known_width(next as usize, d);
                self.state.prefetch(next as usize);
            }
            let (w, s) = (
                &mut weights[i * d..(i + 1) * d],
                &mut state[i * sw..(i + 1) * sw],
            );
            // SAFETY: `w` and `s` are row `i`'s `d` and `sw` floats (the
            // lengths were asserted above), which `load_to` writes every
            // one of before they are read as floats.
            let (w, s) = unsafe {
                self.weights
                    .load_to::<false, false>(row as usize, w.as_mut_ptr().cast(), d);
                self.state
                    .load_to::<false, false>(row as usize, s.as_mut_ptr().cast(), sw);
                (
                    &mut *(w as *mut [MaybeUninit<f32>] as *mut [f32]),
                    &mut *(s as *mut [MaybeUninit<f32>] as *mut [f32]),
                )
            };
            self.spec.optimizer.step(w, s, &grads[i * d..(i + 1) * d]);
            if !all_finite(w) || !all_finite(s) {
                return Some(row);
            }
        }
        None
    }

    /// [`Backend::apply`] for rows of `D` floats (0: the table's width,
    /// known at run time).
    #[inline(always)]
    fn apply_rows<const D: usize>(&self, update: &RowGradients) -> Result<(), EngineError> {
        let d = if D == 0 { self.spec.dim } else { D };
        let sw = self.state.width;
        let rows = &update.rows;
        // Writers take turns, so the rows read below are the rows written
        // over (and, with no other writer, they read whole without a
        // stripe).
        let turn = self.writer.lock();
        // 1. Every row's next value, computed beside the table and checked:
        //    a step that would overflow refuses the whole push. Runs of
        //    rows are stepped at once by threads the caller has to spare
        //    (`fanout`); with the turn held, they only read the table.
        //    Not zeroed first: each row is loaded into its place, and the
        //    lengths take the rows in once every piece has loaded its own.
        let fanout = fanout::current();
        let pieces = fanout::pieces_for(&*fanout, rows.len(), MIN_ROWS_PER_PIECE);
        let bounds: Vec<usize> = (0..=pieces).map(|p| p * rows.len() / pieces).collect();
        let mut weights = Vec::<f32>::with_capacity(rows.len() * d);
        let mut state = Vec::<f32>::with_capacity(rows.len() * sw);
        let mut outs = Vec::with_capacity(pieces);
        let (mut w_rest, mut s_rest) = (
            &mut weights.spare_capacity_mut()[..rows.len() * d],
            &mut state.spare_capacity_mut()[..rows.len() * sw],
        );
        for pair in bounds.windows(2) {
            let n = pair[1] - pair[0];
            let (w, w_tail) = w_rest.split_at_mut(n * d);
            let (s, s_tail) = s_rest.split_at_mut(n * sw);
            outs.push(Mutex::new(Some((w, s))));
            (w_rest, s_rest) = (w_tail, s_tail);
        }
        // The first piece's first overflowing row, as stepping in order
        // would find it.
        let overflow = Mutex::new(None::<(usize, u64)>);
        fanout.run(pieces, &|p| {
            let (w, s) = outs[p].lock().take().expect("each piece runs once");
            let range = bounds[p]..bounds[p + 1];
            let grads = &update.grads[range.start * d..range.end * d];
            if let Some(row) = self.step_rows::<D>(&rows[range], grads, w, s) {
                let mut first = overflow.lock();
                if first.is_none_or(|(q, _)| p < q) {
                    *first = Some((p, row));
                }
            }
        });
        if let Some((_, row)) = overflow.into_inner() {
            return Err(EngineError::NonFiniteUpdate { row });
        }
        // SAFETY: `run` returned and no piece found an overflow, so every
        // piece loaded each of its rows' `d` weights and `sw` state floats
        // into its part, and together the parts are all of them.
        unsafe {
            weights.set_len(rows.len() * d);
            state.set_len(rows.len() * sw);
        }
        // 2. Commit, one block at a time (readers see old or new rows,
        //    never a torn one). Pieces take the blocks of disjoint sets of
        //    stripes: a stripe's version has one writer at a time.
        //    Not `storing.write` with a closure: the loop inside a closure
        //    was not inlined, and lost its copy for `D` floats a row.
        let stored = self.storing.begin_write(&turn);
        fanout.run(pieces, &|p| {
            for block in same_block_runs(rows) {
                let stripe = stripe_index(rows[block.start]);
                if stripe % pieces != p {
                    continue;
                }
                self.stripes[stripe].write(&turn, || {
                    for i in block {
                        let row = rows[i] as usize;
                        self.weights.store(row, &weights[i * d..(i + 1) * d]);
                        self.state.store(row, &state[i * sw..(i + 1) * sw]);
                    }
                });
            }
        });
        self.storing.end_write(stored);
        Ok(())
    }

    /// [`Backend::gather_layout`], each block written where `out` puts it.
    fn gather_layout_with(
        &self,
        layout: &BatchLayout<'_>,
        out: &mut impl BlockOut,
    ) -> Result<(), EngineError> {
        if layout.rows_end() > self.spec.rows || layout.chunk_dim != self.spec.dim {
            return Err(EngineError::invalid(
                "rows",
                format!(
                    "the batch hashes into rows up to {} of {} floats but the table holds {} of {}",
                    layout.rows_end(),
                    layout.chunk_dim,
                    self.spec.rows,
                    self.spec.dim
                ),
            ));
        }
        // Large gathers are cut into pieces that threads the caller has to
        // spare take (`fanout`), where the output's blocks are apart.
        let fanout = fanout::current();
        let pieces = if out.blocks_apart() {
            fanout::pieces_for(&*fanout, layout.entries, MIN_ENTRIES_PER_PIECE)
        } else {
            1
        };
        if !layout.sums_entries() {
            let bounds = layout.block_bounds();
            // Each entry its own output row: the gather is a copy per
            // entry, and hashing in a loop of its own first, several
            // values at once, is faster (in-process lookups of 4,096 × 26
            // single values: 73–86 M rows/s planned, 47–65 streamed).
            // The plan's rows and slots come from the layout checked above,
            // so its entries are not checked again (3.4 % of a lookup's
            // samples).
            if pieces > 1 {
                self.plan_and_pool_in_pieces(layout, &bounds, out, &*fanout, pieces);
                return Ok(());
            }
            let gather = gather_plan(layout, None);
            self.gather_checked_blocks(&gather, &bounds, out);
            return Ok(());
        }
        if pieces > 1 {
            // Runs of whole features, each pooled by one piece as the
            // serial loop pools it.
            let cuts = layout.feature_cuts(pieces);
            let pool_run = |p: usize, starts: &[BlockStart]| {
                let mut out = Prestarted(starts);
                let mut pooler = BlockPooler {
                    backend: self,
                    out: &mut out,
                };
                layout.for_each_feature_in(cuts[p]..cuts[p + 1], &mut pooler);
            };
            let (bounds, d) = (layout.block_bounds(), self.spec.dim);
            // SAFETY: each run pools every block of its features, whole.
            unsafe { write_blocks_in_pieces(out, &bounds, d, &*fanout, cuts.len() - 1, &pool_run) };
            return Ok(());
        }
        layout.for_each_feature(&mut BlockPooler { backend: self, out });
        Ok(())
    }

    /// The single-valued gather of [`Self::gather_layout_with`] cut into
    /// runs of whole features (one block each) of about equal entries,
    /// each piece hashing its features and pooling their blocks on a
    /// thread the caller has to spare: planning is half of such a
    /// lookup's work, and done in one piece before the gather it would
    /// leave the other threads waiting.
    fn plan_and_pool_in_pieces(
        &self,
        layout: &BatchLayout<'_>,
        bounds: &[usize],
        out: &mut impl BlockOut,
        fanout: &dyn Fanout,
        pieces: usize,
    ) {
        let d = self.spec.dim;
        let total = bounds.last().copied().unwrap_or(0).saturating_mul(d);
        let streams = self.avx && d % 8 == 0 && out.streams(total);
        let cuts = layout.feature_cuts(pieces);
        let plan_and_pool = |p: usize, starts: &[BlockStart]| {
            let features = cuts[p]..cuts[p + 1];
            let plan = gather_plan_of(layout, features.clone(), None);
            if !plan.slots_ascend() {
                // Entries out of slot order (bags of multi-chunk features,
                // rare where entries do not outnumber slots): pooled whole,
                // then copied into the blocks.
                let whole = self.gather_in_any_order(&plan);
                for index in features {
                    let block = &whole[bounds[index] * d..bounds[index + 1] * d];
                    // SAFETY: `starts[index]` has room for the block, which
                    // only this piece writes.
                    unsafe {
                        std::ptr::copy_nonoverlapping(block.as_ptr(), starts[index].0, block.len())
                    };
                }
                return;
            }
            let mut first = 0;
            for index in features {
                // SAFETY: as above.
                first = unsafe {
                    self.pool_whole_block(
                        &plan,
                        first,
                        bounds[index]..bounds[index + 1],
                        starts[index].0,
                        streams,
                    )
                };
            }
        };
        // SAFETY: each run writes every block of its features, whole.
        unsafe { write_blocks_in_pieces(out, bounds, d, fanout, cuts.len() - 1, &plan_and_pool) };
    }

    /// [`Backend::gather_blocks`] of a plan whose rows, slots and `bounds`
    /// are known to be valid. (An invalid one would panic on a slice
    /// index, never write outside its output: both loops index their
    /// output by the slots of `bounds`, or by checked slices.)
    fn gather_checked_blocks(&self, plan: &GatherPlan, bounds: &[usize], out: &mut impl BlockOut) {
        if plan.slots_ascend() {
            return self.pool_in_slot_order(plan, bounds, out);
        }
        let d = self.spec.dim;
        let whole = self.gather_in_any_order(plan);
        for (index, slots) in bounds.windows(2).enumerate() {
            let block = &whole[slots[0] * d..slots[1] * d];
            let start = out.start(index, block.len());
            // SAFETY: `start` has room for the block (`BlockOut`'s
            // promise), memory of its own.
            unsafe {
                std::ptr::copy_nonoverlapping(block.as_ptr(), start, block.len());
                out.written(index, block.len());
            }
        }
    }

    /// Pools a plan's entries, in any slot order, into one zeroed
    /// `[num_slots, dim]` output.
    fn gather_in_any_order(&self, plan: &GatherPlan) -> Vec<f32> {
        let d = self.spec.dim;
        let mut out = vec![0.0f32; plan.num_slots * d];
        let mut row = vec![0.0f32; d];
        let entries = plan.rows.iter().zip(&plan.slots).zip(&plan.weights);
        for (i, ((&r, &slot), &weight)) in entries.enumerate() {
            if let Some(&ahead) = plan.rows.get(i + PREFETCH_AHEAD) {
                self.weights.prefetch_to_read(ahead as usize, d);
            }
            self.read_weights::<false, true>(r, &mut row);
            add_scaled(
                &mut out[slot as usize * d..(slot as usize + 1) * d],
                weight,
                &row,
            );
        }
        out
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        "cpu".to_owned()
    }

    fn spec(&self) -> &StorageSpec {
        &self.spec
    }

    fn gather(&self, plan: &GatherPlan) -> Result<Vec<f32>, EngineError> {
        plan.check(&self.spec)?;
        if plan.slots_ascend() {
            let mut whole = KeptBlocks::new(1);
            self.pool_in_slot_order(plan, &[0, plan.num_slots], &mut whole);
            return Ok(whole.0.pop().unwrap_or_default());
        }
        Ok(self.gather_in_any_order(plan))
    }

    fn gather_blocks(
        &self,
        plan: &GatherPlan,
        bounds: &[usize],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        plan.check(&self.spec)?;
        plan.check_bounds(bounds)?;
        let mut blocks = KeptBlocks::new(bounds.len().saturating_sub(1));
        self.gather_checked_blocks(plan, bounds, &mut blocks);
        Ok(blocks.0)
    }

    fn gather_blocks_to(
        &self,
        plan: &GatherPlan,
        bounds: &[usize],
        sink: &mut dyn BlockSink,
    ) -> Result<(), EngineError> {
        plan.check(&self.spec)?;
        plan.check_bounds(bounds)?;
        self.gather_checked_blocks(plan, bounds, &mut SunkBlocks::new(sink));
        Ok(())
    }

    fn gather_into(&self, plan: &GatherPlan, out: &mut GatherTarget) -> Result<(), EngineError> {
        plan.check(&self.spec)?;
        out.check_len(plan.num_slots.saturating_mul(self.spec.dim))?;
        if plan.slots_ascend() {
            // `out` holds the plan's `num_slots` rows (checked).
            let mut at = BackToBack(out.as_mut_ptr());
            self.pool_in_slot_order(plan, &[0, plan.num_slots], &mut at);
            return Ok(());
        }
        out.write(&self.gather_in_any_order(plan));
        Ok(())
    }

    fn gather_layout(&self, layout: &BatchLayout<'_>) -> Result<Vec<Vec<f32>>, EngineError> {
        let mut blocks = KeptBlocks::new(layout.outputs.len());
        self.gather_layout_with(layout, &mut blocks)?;
        Ok(blocks.0)
    }

    fn gather_layout_to(
        &self,
        layout: &BatchLayout<'_>,
        sink: &mut dyn BlockSink,
    ) -> Result<(), EngineError> {
        self.gather_layout_with(layout, &mut SunkBlocks::new(sink))
    }

    fn gather_layout_into(
        &self,
        layout: &BatchLayout<'_>,
        out: &mut GatherTarget,
    ) -> Result<(), EngineError> {
        out.check_len(layout.num_slots.saturating_mul(self.spec.dim))?;
        // `out` holds every block (checked), back to back.
        self.gather_layout_with(layout, &mut BackToBack(out.as_mut_ptr()))
    }

    fn apply(&self, update: &RowGradients) -> Result<(), EngineError> {
        update.check(&self.spec)?;
        // As for gathers: common widths get their own copy of the loop, in
        // which each row's loads, prefetch and stores unroll at a width
        // known at compile time (apply's own instructions per push: −27 %).
        match self.spec.dim {
            8 => self.apply_rows::<8>(update),
            16 => self.apply_rows::<16>(update),
            32 => self.apply_rows::<32>(update),
            64 => self.apply_rows::<64>(update),
            _ => self.apply_rows::<0>(update),
        }
    }

    fn read_rows(&self, rows: &[u64]) -> Result<RowData, EngineError> {
        super::check_rows(&self.spec, rows)?;
        let (d, sw) = (self.weights.width, self.state.width);
        let mut data = RowData {
            weights: vec![0.0; rows.len() * d],
            state: vec![0.0; rows.len() * sw],
        };
        for (i, &row) in rows.iter().enumerate() {
            let w = &mut data.weights[i * d..(i + 1) * d];
            let s = &mut data.state[i * sw..(i + 1) * sw];
            self.stripe(row).read(|| {
                self.weights.load::<false>(row as usize, w);
                self.state.load::<false>(row as usize, s);
            });
        }
        Ok(data)
    }

    fn write_rows(&self, rows: &[u64], data: &RowData) -> Result<(), EngineError> {
        super::check_rows(&self.spec, rows)?;
        data.check(&self.spec, rows.len())?;
        let turn = self.writer.lock();
        let (d, sw) = (self.weights.width, self.state.width);
        let stored = self.storing.begin_write(&turn);
        for (i, &row) in rows.iter().enumerate() {
            self.stripe(row).write(&turn, || {
                self.weights
                    .store(row as usize, &data.weights[i * d..(i + 1) * d]);
                self.state
                    .store(row as usize, &data.state[i * sw..(i + 1) * sw]);
            });
        }
        self.storing.end_write(stored);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::streamed::streamed_answer_plan;
    use crate::batch::{Batch, FeatureBatch};
    use crate::init::Initializer;
    use crate::optimizer::Optimizer;
    use crate::plan::BatchPlan;
    use crate::pooling::Pooling;
    use crate::registry::FeatureRegistry;
    use crate::schema::{FeatureSpec, TableSpec, ValueType};

    /// Sums the plan's entries from rows read one by one: what every
    /// gather must produce, `[num_slots, dim]`.
    fn reference(backend: &CpuBackend, plan: &GatherPlan) -> Vec<f32> {
        let d = backend.spec.dim;
        let rows = backend.read_rows(&plan.rows).unwrap().weights;
        let mut out = vec![0.0f32; plan.num_slots * d];
        for (i, (&slot, &weight)) in plan.slots.iter().zip(&plan.weights).enumerate() {
            let slot = slot as usize;
            add_scaled(
                &mut out[slot * d..(slot + 1) * d],
                weight,
                &rows[i * d..(i + 1) * d],
            );
        }
        out
    }

    /// What a [`BlockSink`] got from `gather`: each block's floats, checked
    /// to come in batch order, each once.
    fn sunk(gather: impl FnOnce(&mut dyn BlockSink) -> Result<(), EngineError>) -> Vec<Vec<f32>> {
        struct Collected(Vec<(usize, Vec<f32>)>);
        impl BlockSink for Collected {
            fn block(&mut self, index: usize, floats: &[f32]) {
                self.0.push((index, floats.to_vec()));
            }
        }
        let mut collected = Collected(Vec::new());
        gather(&mut collected).unwrap();
        let order: Vec<usize> = collected.0.iter().map(|&(index, _)| index).collect();
        assert_eq!(
            order,
            (0..order.len()).collect::<Vec<_>>(),
            "blocks in order"
        );
        collected.0.into_iter().map(|(_, floats)| floats).collect()
    }

    /// The loops each CPU may run: the baseline ones, and the AVX ones
    /// where the CPU has AVX.
    fn loops() -> Vec<bool> {
        if has_avx() {
            vec![false, true]
        } else {
            vec![false]
        }
    }

    fn backend(rows: u64, dim: usize, avx: bool) -> CpuBackend {
        let mut backend = CpuBackend::new(StorageSpec {
            rows,
            first_row: 0,
            dim,
            seed: 3,
            initializer: Initializer::default(),
            optimizer: Optimizer::default(),
        })
        .unwrap();
        backend.avx = avx;
        backend
    }

    /// A push large enough to be stepped in pieces on several threads
    /// leaves every row as stepping it on one thread does; an overflow
    /// refuses it naming the first overflowing row either way, and changes
    /// nothing.
    #[test]
    fn updates_stepped_in_pieces_equal_serial_steps() {
        let (rows, dim) = (40_000u64, 16);
        let make = || {
            CpuBackend::new(StorageSpec {
                rows,
                first_row: 0,
                dim,
                seed: 3,
                initializer: Initializer::default(),
                optimizer: Optimizer::Sgd { lr: 1e10 },
            })
            .unwrap()
        };
        let update = RowGradients {
            rows: (0..rows).collect(),
            grads: (0..rows as usize * dim)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 1e-12)
                .collect(),
        };
        let mut overflowing = update.clone();
        overflowing.grads[35_000 * dim] = 1e30;
        overflowing.grads[12_000 * dim + 3] = -1e30;
        let all: Vec<u64> = (0..rows).collect();
        let serial = make();
        let refused = serial.apply(&overflowing).unwrap_err();
        assert!(
            matches!(refused, EngineError::NonFiniteUpdate { row: 12_000 }),
            "{refused}"
        );
        let untouched = serial.read_rows(&all).unwrap();
        serial.apply(&update).unwrap();
        let stepped = serial.read_rows(&all).unwrap();
        assert_ne!(stepped.weights, untouched.weights);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    fanout::install(crate::fanout::test_pool::threads(3));
                    assert_eq!(fanout::current().threads(), 4);
                    let fanned = make();
                    let refused = fanned.apply(&overflowing).unwrap_err();
                    assert!(matches!(
                        refused,
                        EngineError::NonFiniteUpdate { row: 12_000 }
                    ));
                    assert_eq!(fanned.read_rows(&all).unwrap(), untouched);
                    fanned.apply(&update).unwrap();
                    assert_eq!(fanned.read_rows(&all).unwrap(), stepped);
                })
                .join()
                .unwrap();
        });
    }

    /// Readers never see a torn row while pushes commit in pieces on
    /// several threads: rows start constant and every push adds a constant
    /// to each, so any row read whole is constant.
    #[test]
    fn readers_never_see_a_torn_row_of_a_push_committed_in_pieces() {
        let (rows, dim) = (65_536u64, 16);
        let backend = CpuBackend::new(StorageSpec {
            rows,
            first_row: 0,
            dim,
            seed: 3,
            initializer: Initializer::Zeros,
            optimizer: Optimizer::Sgd { lr: 1.0 },
        })
        .unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                fanout::install(crate::fanout::test_pool::threads(3));
                for push in 0..40u64 {
                    let picked: Vec<u64> = (0..rows).filter(|r| (r + push) % 3 != 0).collect();
                    let grads = picked
                        .iter()
                        .flat_map(|&r| [(r % 7) as f32 - 3.0; 16])
                        .collect();
                    backend
                        .apply(&RowGradients {
                            rows: picked,
                            grads,
                        })
                        .unwrap();
                }
                done.store(true, Ordering::Relaxed);
            });
            let all: Vec<u64> = (0..rows).step_by(5).collect();
            let mut checked = 0;
            while checked == 0 || !done.load(Ordering::Relaxed) {
                let read = backend.read_rows(&all).unwrap().weights;
                for row in read.chunks(dim) {
                    assert!(row.iter().all(|&v| v == row[0]), "torn row: {row:?}");
                }
                checked += 1;
            }
        });
    }

    /// A gather large enough to be pooled in pieces on several threads
    /// writes the same blocks as one thread, whether a run of slots spans
    /// several blocks or one block spans several runs, into blocks of
    /// their own or one after the other.
    #[test]
    fn gathers_pooled_in_pieces_equal_serial_gathers() {
        for avx in loops() {
            let backend = backend(5_000, 16, avx);
            // Blocks of 9,000, 0, 3 and 31,000 slots; one to three entries
            // a slot, rows spread over the table.
            let bounds = [0, 9_000, 9_000, 9_003, 40_003];
            let mut plan = GatherPlan {
                num_slots: 40_003,
                ..GatherPlan::default()
            };
            for slot in 0..plan.num_slots {
                for k in 0..1 + slot % 3 {
                    plan.rows.push(((slot * 7 + k * 131) % 5_000) as u64);
                    plan.slots.push(slot as u32);
                    plan.weights.push(1.0 / (1 + k) as f32);
                }
            }
            let serial = backend.gather_blocks(&plan, &bounds).unwrap();
            let whole = backend.gather(&plan).unwrap();
            assert_eq!(serial.concat(), whole);
            std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        fanout::install(crate::fanout::test_pool::threads(3));
                        assert!(slot_cuts(&plan, 40_003, 4).len() == 5);
                        assert_eq!(backend.gather_blocks(&plan, &bounds).unwrap(), serial);
                        assert_eq!(backend.gather(&plan).unwrap(), whole);
                    })
                    .join()
                    .unwrap();
            });
        }
    }

    #[test]
    fn blocks_pool_in_slot_order_or_any_order_to_the_same_sums() {
        // Rows of 6 floats: one 16-byte load and two single floats; 12: a
        // 32-byte load and four single floats in the AVX loop; 20: 16 + 4.
        for (dim, avx) in [6, 12, 16, 20]
            .into_iter()
            .flat_map(|d| loops().into_iter().map(move |a| (d, a)))
        {
            let backend = backend(100, dim, avx);
            let ascending = GatherPlan {
                rows: vec![5, 99, 5, 13, 0, 42, 7],
                slots: vec![0, 0, 1, 2, 3, 3, 3],
                // Slot 2: one entry of weight 1, copied as is.
                weights: vec![1.0, 0.5, -2.0, 1.0, 1.0, 0.25, 1.0],
                num_slots: 5, // slot 4 has no entries: zeros
            };
            let any_order = GatherPlan {
                slots: vec![3, 0, 1, 0, 3, 4, 2],
                ..ascending.clone()
            };
            for plan in [ascending, any_order] {
                let expected = reference(&backend, &plan);
                assert_eq!(backend.gather(&plan).unwrap(), expected);
                let blocks = backend.gather_blocks(&plan, &[0, 2, 2, 5]).unwrap();
                assert_eq!(blocks.len(), 3);
                assert_eq!(blocks[0], expected[..2 * dim]);
                assert!(blocks[1].is_empty());
                assert_eq!(blocks[2], expected[2 * dim..]);
                // Block by block through one reused buffer: the same blocks.
                let bounds = [0, 2, 2, 5];
                assert_eq!(
                    sunk(|sink| backend.gather_blocks_to(&plan, &bounds, sink)),
                    blocks
                );
                for bad in [&[0, 4][..], &[1, 5], &[0, 3, 2, 5], &[]] {
                    let err = backend.gather_blocks(&plan, bad).unwrap_err();
                    assert!(err.to_string().contains("block bounds"), "{err}");
                }
            }
        }
    }

    #[test]
    fn an_answer_too_large_to_cache_is_streamed_to_the_same_sums() {
        let dim = 64;
        let plan = streamed_answer_plan(dim);
        let slots = plan.num_slots;
        for avx in loops() {
            let backend = backend(1000, dim, avx);
            assert!(KeptBlocks::new(2).streams(slots * dim));
            let expected = reference(&backend, &plan);
            let blocks = backend.gather_blocks(&plan, &[0, 5, slots]).unwrap();
            assert_eq!(blocks.concat(), expected, "avx: {avx}");
        }
    }

    #[test]
    fn a_batch_hashing_past_the_held_rows_is_refused() {
        let table = TableSpec::new("t", 1000, 4);
        let mut registry = FeatureRegistry::default();
        registry
            .register(FeatureSpec::new("f"), table.rows)
            .unwrap();
        // A bag of two: the gather that hashes as it goes.
        let batch = Batch::new(vec![FeatureBatch::strings("f", ["a", "b"], vec![2])]);
        let layout = BatchLayout::new(&table, &registry, &batch, usize::MAX).unwrap();
        assert!(layout.sums_entries());
        let err = backend(10, 4, has_avx())
            .gather_layout(&layout)
            .unwrap_err();
        assert!(err.to_string().contains("holds 10 of 4"), "{err}");
    }

    #[test]
    fn bags_hashed_as_they_are_gathered_pool_to_the_planned_sums() {
        for (dim, avx) in [6, 12, 16, 64]
            .into_iter()
            .flat_map(|d| loops().into_iter().map(move |a| (d, a)))
        {
            let table = TableSpec::new("t", 1000, dim);
            let mut registry = FeatureRegistry::default();
            for spec in [
                FeatureSpec::new("a"),
                FeatureSpec::new("b"),
                FeatureSpec::new("c").pooling(Pooling::Mean),
                FeatureSpec::new("d").chunks(2),
                FeatureSpec::new("e").value_type(ValueType::Int64),
            ] {
                registry.register(spec, table.rows).unwrap();
            }
            // Plain bags (`pool_bags`) of 3, 0, 1 (one value of weight 1:
            // copied as is) and 2; the same values with weights, and in two
            // chunks (`pool_entries`); and 100 values in mean-pooled bags of
            // 0 to 13, more than `HASHED_AHEAD`, so the rows hashed ahead
            // wrap around their ring, as strings and as int64s.
            let values = ["x", "y", "z", "w", "v", "u"];
            let (mut long, mut lengths) = (Vec::new(), Vec::new());
            for len in [0, 1, 2, 3, 5, 8, 13].into_iter().cycle() {
                let len = len.min(100 - long.len());
                long.extend((long.len()..long.len() + len).map(|i| format!("k{i}")));
                lengths.push(len as u32);
                if long.len() == 100 {
                    break;
                }
            }
            let ints: Vec<i64> = (0..100).map(|i| i * 7919 - 500).collect();
            let batches = [
                Batch::new(vec![
                    FeatureBatch::strings("a", values, vec![3, 0, 1, 2]),
                    FeatureBatch::strings("b", values, vec![2, 2, 0, 2])
                        .with_weights(vec![0.5, -1.0, 2.0, 1.0, 0.25, 3.0]),
                    FeatureBatch::strings("d", values, vec![1, 3, 0, 2]),
                ]),
                Batch::new(vec![FeatureBatch::strings("c", long, lengths.clone())]),
                Batch::new(vec![FeatureBatch::int64("e", ints, lengths)]),
            ];
            let backend = backend(table.rows, dim, avx);
            for batch in &batches {
                let layout = BatchLayout::new(&table, &registry, batch, usize::MAX).unwrap();
                assert!(layout.sums_entries());
                let plan = BatchPlan::from_layout(&layout, None);
                let expected = reference(&backend, &plan.gather);
                let streamed = backend.gather_layout(&layout).unwrap();
                assert_eq!(streamed.concat(), expected, "dim {dim}, avx {avx}");
                assert_eq!(
                    sunk(|sink| backend.gather_layout_to(&layout, sink)),
                    streamed
                );
            }
        }
    }
}
