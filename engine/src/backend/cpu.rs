//! The default backend: the table in one flat `f32` array (and one for the
//! optimizer state), guarded by reader-writer locks striped by row block.
//!
//! Why this shape: one flat allocation is created fastest (a 10^8 × 16 table
//! is mostly page faults, filled in parallel by every core) and reads one row
//! with one memory access. Rows are grouped in blocks of [`BLOCK_ROWS`]; block
//! `b` is guarded by stripe `b % STRIPES`. Any number of lookups and pushes
//! run in parallel on different stripes, and a row is never torn: readers
//! hold the stripe's read lock while copying a row, an update holds its write
//! lock while it writes. Pushes arrive sorted by row, so an update takes
//! each block's lock once, not once per row. An update is checked before it
//! is written: every row's next value is computed beside the table, and a
//! step that would make any row or state non-finite refuses the whole push
//! (writes take turns on one mutex so the checked rows cannot change
//! before they are written). A block is also the
//! unit the persistence flusher copies, so it never holds a lock longer than
//! one block copy.
//!
//! Memory (dense, materialised on create): `rows * (dim + state_width) * 4`
//! bytes, i.e. `4·d` bytes per row plus the optimizer's state (0, 4, `4·d`,
//! `8·d + 4`, `8·d` bytes for sgd, row-wise adagrad, adagrad, adam, ftrl),
//! plus a fixed 32 KiB of locks.

use std::cell::UnsafeCell;

use std::ops::Range;

use parking_lot::{Mutex, RwLock};

use super::{Backend, GatherPlan, RowData, RowGradients, StorageSpec};
use crate::error::EngineError;
use crate::optimizer::all_finite;

/// Rows per block: the unit of locking and of flushing.
pub const BLOCK_ROWS: u64 = 64;

/// Number of lock stripes (a power of two): enough that two threads rarely
/// want the same stripe, few enough that all locks fit in L1/L2 cache.
pub const STRIPES: usize = 4096;

/// How many rows ahead gathers and updates prefetch: enough to cover a
/// memory access (~100 ns) with the work on the rows in between.
const PREFETCH_AHEAD: usize = 8;

/// A flat array of rows whose elements are only ever accessed while the
/// caller holds the row's stripe lock (shared to read, exclusive to write).
struct RowArray {
    cells: Box<[UnsafeCell<f32>]>,
    width: usize,
}

// SAFETY: all access to the cells goes through `row` / `row_mut`, whose
// callers hold the row's stripe lock; stripes partition the rows, so a row
// is never written while another thread reads or writes it.
unsafe impl Sync for RowArray {}

impl RowArray {
    /// Allocates `rows` rows of `width` floats and lets `fill(first_row, part)`
    /// initialise them, in parallel over all cores.
    fn new(
        rows: usize,
        width: usize,
        fill: impl Fn(u64, &mut [f32]) + Sync,
    ) -> Result<Self, EngineError> {
        let mut values = super::try_zeroed_floats(rows * width, "the table")?;
        advise_huge_pages(&mut values);
        if width > 0 {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let rows_per_thread = rows.div_ceil(threads).max(1);
            std::thread::scope(|scope| {
                for (i, part) in values.chunks_mut(rows_per_thread * width).enumerate() {
                    let fill = &fill;
                    scope.spawn(move || fill((i * rows_per_thread) as u64, part));
                }
            });
        }
        let mut values = std::mem::ManuallyDrop::new(values);
        // SAFETY: `UnsafeCell<f32>` is `repr(transparent)` over `f32`, so the
        // allocation is reused as is (no second pass over the table).
        let cells = unsafe {
            Vec::from_raw_parts(
                values.as_mut_ptr().cast::<UnsafeCell<f32>>(),
                values.len(),
                values.capacity(),
            )
        };
        Ok(RowArray {
            cells: cells.into_boxed_slice(),
            width,
        })
    }

    /// Asks the CPU to start loading `row` into its cache. Batches read rows
    /// in hash order, i.e. at random: without a hint issued a few rows ahead,
    /// every row of a table larger than the cache is a full memory stall.
    fn prefetch(&self, row: usize) {
        #[cfg(target_arch = "x86_64")]
        if let Some(cell) = self.cells.get(row * self.width).filter(|_| self.width > 0) {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            // SAFETY: a prefetch reads nothing architecturally and cannot
            // fault; SSE is part of the x86_64 baseline.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(UnsafeCell::raw_get(cell).cast::<i8>().cast_const())
            };
        }
    }

    /// # Safety
    /// The caller holds `row`'s stripe lock (shared or exclusive).
    unsafe fn row(&self, row: usize) -> &[f32] {
        let start = self.cells[row * self.width..(row + 1) * self.width].as_ptr();
        // SAFETY: in bounds (indexed above); `UnsafeCell<f32>` has the layout
        // of `f32`; no writer exists while the stripe lock is held.
        unsafe { std::slice::from_raw_parts(UnsafeCell::raw_get(start), self.width) }
    }

    /// # Safety
    /// The caller holds `row`'s stripe lock exclusively.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row_mut(&self, row: usize) -> &mut [f32] {
        let start = self.cells[row * self.width..(row + 1) * self.width].as_ptr();
        // SAFETY: as in `row`, and the exclusive lock rules out any other
        // reference to this row.
        unsafe { std::slice::from_raw_parts_mut(UnsafeCell::raw_get(start), self.width) }
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

/// Index ranges of `rows` (sorted) whose rows share a block, so a caller
/// takes each block's lock once.
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

/// Plain-Rust, lock-striped storage.
pub struct CpuBackend {
    spec: StorageSpec,
    weights: RowArray,
    state: RowArray,
    stripes: Box<[RwLock<()>]>,
    /// Held by every write (push or restore) for its whole duration: a push
    /// checks its rows' next values before it writes any of them, and no
    /// other write may change those rows in between.
    writer: Mutex<()>,
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
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
            writer: Mutex::new(()),
        })
    }

    fn stripe(&self, row: u64) -> &RwLock<()> {
        &self.stripes[(row / BLOCK_ROWS) as usize % STRIPES]
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
        let d = self.spec.dim;
        let mut out = vec![0.0f32; plan.num_slots * d];
        let rows = plan.rows.iter().zip(&plan.slots).zip(&plan.weights);
        for (i, ((&row, &slot), &weight)) in rows.enumerate() {
            if let Some(&next) = plan.rows.get(i + PREFETCH_AHEAD) {
                self.weights.prefetch(next as usize);
            }
            let dst = &mut out[slot as usize * d..(slot as usize + 1) * d];
            let _guard = self.stripe(row).read();
            // SAFETY: the row's stripe is read-locked.
            let src = unsafe { self.weights.row(row as usize) };
            for (o, s) in dst.iter_mut().zip(src) {
                *o += weight * s;
            }
        }
        Ok(out)
    }

    fn apply(&self, update: &RowGradients) -> Result<(), EngineError> {
        update.check(&self.spec)?;
        let (d, sw) = (self.spec.dim, self.state.width);
        let rows = &update.rows;
        // Writers take turns, so the rows checked below are the rows written.
        let _writer = self.writer.lock();
        // 1. Every row's next value, computed beside the table and checked:
        //    a step that would overflow refuses the whole push.
        let mut weights = vec![0.0f32; rows.len() * d];
        let mut state = vec![0.0f32; rows.len() * sw];
        for block in same_block_runs(rows) {
            let _guard = self.stripe(rows[block.start]).read();
            for i in block {
                if let Some(&next) = rows.get(i + PREFETCH_AHEAD) {
                    self.weights.prefetch(next as usize);
                    self.state.prefetch(next as usize);
                }
                let row = rows[i] as usize;
                let (w, s) = (
                    &mut weights[i * d..(i + 1) * d],
                    &mut state[i * sw..(i + 1) * sw],
                );
                // SAFETY: the row's stripe is read-locked.
                unsafe {
                    w.copy_from_slice(self.weights.row(row));
                    s.copy_from_slice(self.state.row(row));
                }
                self.spec
                    .optimizer
                    .step(w, s, &update.grads[i * d..(i + 1) * d]);
                if !all_finite(w) || !all_finite(s) {
                    return Err(EngineError::NonFiniteUpdate { row: rows[i] });
                }
            }
        }
        // 2. Commit, one block lock at a time (readers see old or new rows,
        //    never a torn one).
        for block in same_block_runs(rows) {
            let _guard = self.stripe(rows[block.start]).write();
            for i in block {
                let row = rows[i] as usize;
                // SAFETY: the row's stripe is write-locked.
                unsafe {
                    self.weights
                        .row_mut(row)
                        .copy_from_slice(&weights[i * d..(i + 1) * d]);
                    self.state
                        .row_mut(row)
                        .copy_from_slice(&state[i * sw..(i + 1) * sw]);
                }
            }
        }
        Ok(())
    }

    fn read_rows(&self, rows: &[u64]) -> Result<RowData, EngineError> {
        super::check_rows(&self.spec, rows)?;
        let mut data = RowData {
            weights: Vec::with_capacity(rows.len() * self.weights.width),
            state: Vec::with_capacity(rows.len() * self.state.width),
        };
        for &row in rows {
            let _guard = self.stripe(row).read();
            // SAFETY: the row's stripe is read-locked.
            unsafe {
                data.weights
                    .extend_from_slice(self.weights.row(row as usize));
                data.state.extend_from_slice(self.state.row(row as usize));
            }
        }
        Ok(data)
    }

    fn write_rows(&self, rows: &[u64], data: &RowData) -> Result<(), EngineError> {
        super::check_rows(&self.spec, rows)?;
        data.check(&self.spec, rows.len())?;
        let _writer = self.writer.lock();
        let (d, sw) = (self.weights.width, self.state.width);
        for (i, &row) in rows.iter().enumerate() {
            let _guard = self.stripe(row).write();
            // SAFETY: the row's stripe is write-locked.
            unsafe {
                self.weights
                    .row_mut(row as usize)
                    .copy_from_slice(&data.weights[i * d..(i + 1) * d]);
                self.state
                    .row_mut(row as usize)
                    .copy_from_slice(&data.state[i * sw..(i + 1) * sw]);
            }
        }
        Ok(())
    }
}
