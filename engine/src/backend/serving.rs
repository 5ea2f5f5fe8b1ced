//! Read-only serving storage: a replica's rows in fp32, fp16 or int8, with
//! no optimizer state.
//!
//! Why a separate backend: a serving copy only gathers, so it need not pay
//! for optimizer state (Adagrad doubles a table) nor for full precision.
//! Rows are converted once when they arrive from the primary and
//! dequantized while gathering; pooling is always in f32, so a pooled
//! output differs from the primary's only by each row's conversion error:
//!
//! - fp16: IEEE half precision, round to nearest; relative error at most
//!   2^-11 per element for values in fp16's normal range.
//! - int8: FBGEMM's row-wise format (per-row fp32 scale and bias, one byte
//!   per element): `x ≈ q · scale + bias` with `bias = min(row)` and
//!   `scale = (max(row) − min(row)) / 255`, so the error is at most
//!   `scale / 2` per element. The scale and bias sit in a side array rather
//!   than at each row's end; the bytes per row are the same, `dim + 8`.
//!
//! The whole table is one reader-writer lock: a replica applies one primary
//! write batch's rows under the write lock, so a lookup sees all of a flush
//! or none of it (never a torn flush), which per-row stripes would not give.

use std::ops::Range;

use half::{f16, slice::HalfFloatSliceExt};
use parking_lot::RwLock;

use super::cpu::GATHER_BYTES_AHEAD;
use super::streamed::{answer_streams, store_fence, stream_row};
use super::{cut_at, Backend, GatherPlan, GatherTarget, RowData, RowGradients, StorageSpec};
use crate::error::EngineError;
use crate::prefetch::{prefetch_to_l2, CACHE_LINE};

/// How a serving copy stores each row's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RowFormat {
    /// 4 bytes per element, exact.
    #[default]
    F32,
    /// 2 bytes per element (IEEE half).
    F16,
    /// 1 byte per element plus an fp32 scale and bias per row.
    Int8,
}

impl RowFormat {
    /// Bytes one row of `dim` elements takes.
    pub fn row_bytes(self, dim: usize) -> usize {
        match self {
            RowFormat::F32 => 4 * dim,
            RowFormat::F16 => 2 * dim,
            RowFormat::Int8 => dim + 8,
        }
    }

    /// The name used in configuration, stats and metrics.
    pub fn name(self) -> &'static str {
        match self {
            RowFormat::F32 => "f32",
            RowFormat::F16 => "f16",
            RowFormat::Int8 => "int8",
        }
    }
}

impl std::str::FromStr for RowFormat {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" | "fp32" => Ok(RowFormat::F32),
            "f16" | "fp16" => Ok(RowFormat::F16),
            "int8" => Ok(RowFormat::Int8),
            _ => Err(EngineError::invalid(
                "row format",
                format!("{s:?} is not one of `f32`, `f16`, `int8`"),
            )),
        }
    }
}

/// A format's values with row 0 on a cache line ([`CACHE_LINE`]), as the
/// training table's are: the allocator's large blocks start 16 bytes past
/// one, which puts every 64-byte row across two lines (two cache misses
/// per row).
struct LineAligned<T> {
    values: Vec<T>,
    /// Values before row 0, skipped to reach a cache line.
    skip: usize,
    len: usize,
}

impl<T: Copy> LineAligned<T> {
    /// `len` values of `zero`, or `None` if they cannot be allocated.
    fn zeroed(len: usize, zero: T) -> Option<Self> {
        let slack = (CACHE_LINE / std::mem::size_of::<T>()).saturating_sub(1);
        let mut values = Vec::new();
        values.try_reserve_exact(len.checked_add(slack)?).ok()?;
        values.resize(len + slack, zero);
        let skip = values.as_ptr().align_offset(CACHE_LINE).min(slack);
        Some(LineAligned { values, skip, len })
    }

    fn get(&self) -> &[T] {
        &self.values[self.skip..self.skip + self.len]
    }

    fn get_mut(&mut self) -> &mut [T] {
        &mut self.values[self.skip..self.skip + self.len]
    }
}

/// The rows, in their format.
enum Rows {
    F32(LineAligned<f32>),
    F16(LineAligned<f16>),
    Int8 {
        codes: LineAligned<u8>,
        /// `(scale, bias)` per row.
        scale_bias: Vec<[f32; 2]>,
    },
}

/// Quantizes one row to int8 codes; returns its `(scale, bias)`.
fn quantize_int8(row: &[f32], codes: &mut [u8]) -> [f32; 2] {
    let (min, max) = row
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    let range = max - min;
    let scale = range / 255.0;
    let inverse = if range > 0.0 { 255.0 / range } else { 0.0 };
    for (code, &x) in codes.iter_mut().zip(row) {
        *code = ((x - min) * inverse).round().clamp(0.0, 255.0) as u8;
    }
    [scale, min]
}

impl Rows {
    fn allocate(format: RowFormat, rows: usize, dim: usize) -> Result<Rows, EngineError> {
        let refused = || EngineError::Backend {
            backend: "serving",
            reason: format!(
                "cannot allocate {rows} rows of {} bytes",
                format.row_bytes(dim)
            ),
        };
        let len = rows.checked_mul(dim).ok_or_else(refused)?;
        Ok(match format {
            RowFormat::F32 => Rows::F32(LineAligned::zeroed(len, 0.0).ok_or_else(refused)?),
            RowFormat::F16 => Rows::F16(LineAligned::zeroed(len, f16::ZERO).ok_or_else(refused)?),
            RowFormat::Int8 => Rows::Int8 {
                codes: LineAligned::zeroed(len, 0).ok_or_else(refused)?,
                scale_bias: {
                    let mut v = Vec::new();
                    v.try_reserve_exact(rows).map_err(|_| refused())?;
                    v.resize(rows, [0.0; 2]);
                    v
                },
            },
        })
    }

    /// Stores `values` (whole rows of `dim`) as rows `first..`.
    fn store(&mut self, first: usize, dim: usize, values: &[f32]) {
        let (start, end) = (first * dim, first * dim + values.len());
        match self {
            Rows::F32(v) => v.get_mut()[start..end].copy_from_slice(values),
            Rows::F16(v) => v.get_mut()[start..end].convert_from_f32_slice(values),
            Rows::Int8 { codes, scale_bias } => {
                let rows = codes.get_mut()[start..end].chunks_exact_mut(dim);
                for (i, (codes, row)) in rows.zip(values.chunks_exact(dim)).enumerate() {
                    scale_bias[first + i] = quantize_int8(row, codes);
                }
            }
        }
    }
}

/// How one format turns its rows into floats: the only part of the
/// pooling loop ([`pool_slots`]) that differs between formats.
trait RowRead {
    /// Bytes one row of `d` elements takes.
    fn row_bytes(&self, d: usize) -> usize;

    /// How many entries ahead a gather hints rows: the training table's
    /// distance in bytes ([`GATHER_BYTES_AHEAD`]), within 4..=128 rows.
    fn rows_ahead(&self, d: usize) -> usize {
        (GATHER_BYTES_AHEAD / self.row_bytes(d).max(1)).clamp(4, 128)
    }

    /// Asks the CPU to start loading `row` into its second-level cache
    /// (see [`crate::prefetch::prefetch_to_l2`]), or nothing past the end.
    fn hint(&self, row: usize, d: usize);

    /// `dst = weight · row`.
    fn scaled(&self, row: usize, weight: f32, dst: &mut [f32]);

    /// `dst += weight · row`.
    fn add_scaled(&self, row: usize, weight: f32, dst: &mut [f32]);
}

/// `row`'s `d` values of `values`, or none past the end (for hints).
fn row_or_empty<T>(values: &[T], row: usize, d: usize) -> &[T] {
    values.get(row * d..(row + 1) * d).unwrap_or_default()
}

impl RowRead for [f32] {
    fn row_bytes(&self, d: usize) -> usize {
        4 * d
    }

    #[inline(always)]
    fn hint(&self, row: usize, d: usize) {
        prefetch_to_l2(row_or_empty(self, row, d));
    }

    #[inline(always)]
    fn scaled(&self, row: usize, weight: f32, dst: &mut [f32]) {
        let d = dst.len();
        for (o, &x) in dst.iter_mut().zip(&self[row * d..(row + 1) * d]) {
            *o = weight * x;
        }
    }

    #[inline(always)]
    fn add_scaled(&self, row: usize, weight: f32, dst: &mut [f32]) {
        let d = dst.len();
        for (o, &x) in dst.iter_mut().zip(&self[row * d..(row + 1) * d]) {
            *o += weight * x;
        }
    }
}

/// Elements an f16 row is converted in at a time (on the stack).
const F16_CHUNK: usize = 16;

impl RowRead for [f16] {
    fn row_bytes(&self, d: usize) -> usize {
        2 * d
    }

    #[inline(always)]
    fn hint(&self, row: usize, d: usize) {
        prefetch_to_l2(row_or_empty(self, row, d));
    }

    #[inline(always)]
    fn scaled(&self, row: usize, weight: f32, dst: &mut [f32]) {
        let d = dst.len();
        // Whole runs at once: F16C when the CPU has it.
        self[row * d..(row + 1) * d].convert_to_f32_slice(dst);
        if weight != 1.0 {
            dst.iter_mut().for_each(|o| *o *= weight);
        }
    }

    #[inline(always)]
    fn add_scaled(&self, row: usize, weight: f32, dst: &mut [f32]) {
        let d = dst.len();
        let mut floats = [0.0f32; F16_CHUNK];
        let halves = self[row * d..(row + 1) * d].chunks(F16_CHUNK);
        for (out, half) in dst.chunks_mut(F16_CHUNK).zip(halves) {
            let floats = &mut floats[..half.len()];
            half.convert_to_f32_slice(floats);
            for (o, &x) in out.iter_mut().zip(floats.iter()) {
                *o += weight * x;
            }
        }
    }
}

/// An int8 copy's codes and their per-row `(scale, bias)`.
struct Int8Rows<'a> {
    codes: &'a [u8],
    scale_bias: &'a [[f32; 2]],
}

impl RowRead for Int8Rows<'_> {
    fn row_bytes(&self, d: usize) -> usize {
        d + 8
    }

    #[inline(always)]
    fn hint(&self, row: usize, d: usize) {
        prefetch_to_l2(row_or_empty(self.codes, row, d));
        prefetch_to_l2(row_or_empty(self.scale_bias, row, 1));
    }

    #[inline(always)]
    fn scaled(&self, row: usize, weight: f32, dst: &mut [f32]) {
        let d = dst.len();
        let [scale, bias] = self.scale_bias[row];
        let (scale, bias) = (weight * scale, weight * bias);
        for (o, &q) in dst.iter_mut().zip(&self.codes[row * d..(row + 1) * d]) {
            *o = q as f32 * scale + bias;
        }
    }

    #[inline(always)]
    fn add_scaled(&self, row: usize, weight: f32, dst: &mut [f32]) {
        let d = dst.len();
        let [scale, bias] = self.scale_bias[row];
        let (scale, bias) = (weight * scale, weight * bias);
        for (o, &q) in dst.iter_mut().zip(&self.codes[row * d..(row + 1) * d]) {
            *o += q as f32 * scale + bias;
        }
    }
}

/// Pools the slots `slots` of a plan whose slots ascend, from entry
/// `first` on, into one row of `d` floats per slot from `out`; returns the
/// entry after the last one pooled. Each slot's row is its first entry's
/// row scaled, plus the others' (a slot with no entry is zeros), summed
/// on the stack and written once: the output is never zeroed and read
/// back. Rows of `D` floats (0: `d`, known only at run time), so common
/// widths unroll; `STREAM`: written with non-temporal stores. Rows are
/// written through a pointer to room reserved beforehand:
/// `extend_from_slice`'s capacity check per row cost 12 % at 16 floats
/// (docs/results/profile.md, section 28).
///
/// # Safety
///
/// `out` is valid for writes of `slots.len() * d` floats; with `STREAM`,
/// it is 16-byte aligned and `d` is a multiple of 4.
#[inline(always)]
unsafe fn pool_slots<const D: usize, const STREAM: bool, R: RowRead + ?Sized>(
    rows: &R,
    plan: &GatherPlan,
    first: usize,
    slots: Range<usize>,
    d: usize,
    out: *mut f32,
) -> usize {
    let d = if D == 0 { d } else { D };
    let n = plan.rows.len();
    let (entry_rows, entry_slots, weights) =
        (&plan.rows[..n], &plan.slots[..n], &plan.weights[..n]);
    let ahead = rows.rows_ahead(d);
    let mut stack = [0.0f32; D];
    let mut heap = Vec::new();
    let sum: &mut [f32] = if D == 0 {
        heap.resize(d, 0.0);
        &mut heap
    } else {
        &mut stack
    };
    let mut e = first;
    for (i, slot) in slots.enumerate() {
        if e < n && entry_slots[e] as usize == slot {
            if let Some(&row) = entry_rows.get(e + ahead) {
                rows.hint(row as usize, d);
            }
            rows.scaled(entry_rows[e] as usize, weights[e], sum);
            e += 1;
            while e < n && entry_slots[e] as usize == slot {
                if let Some(&row) = entry_rows.get(e + ahead) {
                    rows.hint(row as usize, d);
                }
                rows.add_scaled(entry_rows[e] as usize, weights[e], sum);
                e += 1;
            }
        } else {
            sum.fill(0.0);
        }
        // SAFETY: the caller's promise: room for the block's `i`-th row
        // and, streamed, 16-byte aligned (whole groups of 4 from `out`).
        unsafe {
            let row = out.add(i * d);
            if STREAM {
                stream_row(sum, row);
            } else {
                std::ptr::copy_nonoverlapping(sum.as_ptr(), row, d);
            }
        }
    }
    e
}

/// [`pool_slots`] with the width known at compile time where it is a
/// common one; `stream`: with non-temporal stores where `out` allows them.
///
/// # Safety
///
/// `out` is valid for writes of `slots.len() * d` floats.
unsafe fn pool_to<R: RowRead + ?Sized>(
    rows: &R,
    plan: &GatherPlan,
    first: usize,
    slots: Range<usize>,
    d: usize,
    stream: bool,
    out: *mut f32,
) -> usize {
    let stream = stream && d % 4 == 0 && out as usize % 16 == 0;
    let e = first;
    // SAFETY: the caller's promise; streamed only where `out` is 16-byte
    // aligned and `d` a multiple of 4 (checked above).
    let next = unsafe {
        match (d, stream) {
            (8, false) => pool_slots::<8, false, R>(rows, plan, e, slots, d, out),
            (8, true) => pool_slots::<8, true, R>(rows, plan, e, slots, d, out),
            (16, false) => pool_slots::<16, false, R>(rows, plan, e, slots, d, out),
            (16, true) => pool_slots::<16, true, R>(rows, plan, e, slots, d, out),
            (32, false) => pool_slots::<32, false, R>(rows, plan, e, slots, d, out),
            (32, true) => pool_slots::<32, true, R>(rows, plan, e, slots, d, out),
            (64, false) => pool_slots::<64, false, R>(rows, plan, e, slots, d, out),
            (64, true) => pool_slots::<64, true, R>(rows, plan, e, slots, d, out),
            (_, false) => pool_slots::<0, false, R>(rows, plan, e, slots, d, out),
            (_, true) => pool_slots::<0, true, R>(rows, plan, e, slots, d, out),
        }
    };
    if stream {
        // Streamed stores are weakly ordered: all of them land before
        // the output is handed on.
        store_fence();
    }
    next
}

/// Something done with a copy's rows whatever their format: the one
/// place that matches on the format ([`Rows::visit`]), so each use is
/// compiled once per format and the format is not re-checked per entry.
trait WithRows {
    type Output;

    fn with<R: RowRead + ?Sized>(self, rows: &R) -> Self::Output;
}

impl Rows {
    /// Runs `work` on the rows as their format reads them.
    fn visit<W: WithRows>(&self, work: W) -> W::Output {
        match self {
            Rows::F32(v) => work.with(v.get()),
            Rows::F16(v) => work.with(v.get()),
            Rows::Int8 { codes, scale_bias } => work.with(&Int8Rows {
                codes: codes.get(),
                scale_bias,
            }),
        }
    }
}

/// A plan whose slots ascend pooled into one vector per block of
/// `bounds` (see [`pool_slots`]); an answer too large for the caches is
/// streamed (see [`answer_streams`]).
struct IntoBlocks<'p> {
    plan: &'p GatherPlan,
    bounds: &'p [usize],
    d: usize,
}

impl WithRows for IntoBlocks<'_> {
    type Output = Vec<Vec<f32>>;

    fn with<R: RowRead + ?Sized>(self, rows: &R) -> Vec<Vec<f32>> {
        let (plan, d) = (self.plan, self.d);
        let total = self.bounds.last().copied().unwrap_or(0).saturating_mul(d);
        let stream = answer_streams(total);
        let mut first = 0;
        self.bounds
            .windows(2)
            .map(|block| {
                let floats = (block[1] - block[0]) * d;
                let mut out = Vec::with_capacity(floats);
                // SAFETY: `out` has room for the block's floats, which
                // the pooling writes, every one.
                unsafe {
                    first = pool_to(
                        rows,
                        plan,
                        first,
                        block[0]..block[1],
                        d,
                        stream,
                        out.as_mut_ptr(),
                    );
                    out.set_len(floats);
                }
                out
            })
            .collect()
    }
}

/// A plan whose slots ascend pooled straight into memory another process
/// reads (a shared-memory region), always streamed: this process never
/// reads it back.
struct IntoTarget<'p, 't> {
    plan: &'p GatherPlan,
    d: usize,
    /// Checked to hold the plan's `[num_slots, d]` floats.
    out: &'p mut GatherTarget<'t>,
}

impl WithRows for IntoTarget<'_, '_> {
    type Output = ();

    fn with<R: RowRead + ?Sized>(self, rows: &R) {
        let slots = 0..self.plan.num_slots;
        // SAFETY: the target holds `num_slots * d` floats (checked before
        // this was made).
        unsafe {
            pool_to(
                rows,
                self.plan,
                0,
                slots,
                self.d,
                true,
                self.out.as_mut_ptr(),
            )
        };
    }
}

/// Every entry of a plan, in any slot order, added into `out` (`[slots,
/// d]`, zeroed).
struct AddEach<'p> {
    plan: &'p GatherPlan,
    d: usize,
    out: &'p mut [f32],
}

impl WithRows for AddEach<'_> {
    type Output = ();

    fn with<R: RowRead + ?Sized>(self, rows: &R) {
        let (plan, d) = (self.plan, self.d);
        let ahead = rows.rows_ahead(d);
        for (i, (&row, &slot)) in plan.rows.iter().zip(&plan.slots).enumerate() {
            if let Some(&next) = plan.rows.get(i + ahead) {
                rows.hint(next as usize, d);
            }
            let slot = slot as usize;
            rows.add_scaled(
                row as usize,
                plan.weights[i],
                &mut self.out[slot * d..(slot + 1) * d],
            );
        }
    }
}

/// A serving copy's rows (see the module doc).
pub struct ServingBackend {
    spec: StorageSpec,
    format: RowFormat,
    rows: RwLock<Rows>,
}

/// Rows initialised per step while a serving table is created.
const INIT_ROWS: usize = 4096;

impl ServingBackend {
    /// Allocates `spec.rows` rows in `format`, each at its initial value
    /// (the same values a training table starts from, converted).
    pub fn new(spec: StorageSpec, format: RowFormat) -> Result<Self, EngineError> {
        let rows = usize::try_from(spec.rows).map_err(|_| {
            EngineError::invalid("rows", format!("{} rows do not fit in memory", spec.rows))
        })?;
        let mut storage = Rows::allocate(format, rows, spec.dim)?;
        let mut initial = vec![0.0f32; INIT_ROWS * spec.dim];
        for first in (0..rows).step_by(INIT_ROWS) {
            let n = INIT_ROWS.min(rows - first);
            let part = &mut initial[..n * spec.dim];
            spec.initializer
                .fill_rows(spec.seed, spec.first_row + first as u64, spec.dim, part);
            storage.store(first, spec.dim, part);
        }
        Ok(ServingBackend {
            spec,
            format,
            rows: RwLock::new(storage),
        })
    }
}

impl Backend for ServingBackend {
    fn name(&self) -> String {
        format!("serving-{}", self.format.name())
    }

    fn spec(&self) -> &StorageSpec {
        &self.spec
    }

    fn memory_bytes(&self) -> u64 {
        self.spec.rows * self.format.row_bytes(self.spec.dim) as u64
    }

    fn row_format(&self) -> RowFormat {
        self.format
    }

    fn gather(&self, plan: &GatherPlan) -> Result<Vec<f32>, EngineError> {
        plan.check(&self.spec)?;
        let d = self.spec.dim;
        let rows = self.rows.read();
        if plan.slots_ascend() {
            let bounds = [0, plan.num_slots];
            let mut whole = rows.visit(IntoBlocks {
                plan,
                bounds: &bounds,
                d,
            });
            return Ok(whole.pop().unwrap_or_default());
        }
        let mut out = vec![0.0f32; plan.num_slots * d];
        rows.visit(AddEach {
            plan,
            d,
            out: &mut out,
        });
        Ok(out)
    }

    /// Each block pooled into a vector of its own, as the CPU backend's
    /// are, not one `[num_slots, dim]` output cut up afterwards: that cost
    /// a second copy of the whole answer (27 MB at 4,096 × 26 × 64 floats)
    /// besides its zeroing. A replica's lookups of 4,096 × 26 ran 24–41 %
    /// faster without (docs/results/profile.md, section 27).
    fn gather_blocks(
        &self,
        plan: &GatherPlan,
        bounds: &[usize],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        plan.check_bounds(bounds)?;
        let d = self.spec.dim;
        if !plan.slots_ascend() {
            return Ok(cut_at(self.gather(plan)?, bounds, d));
        }
        plan.check(&self.spec)?;
        Ok(self.rows.read().visit(IntoBlocks { plan, bounds, d }))
    }

    /// Pooled straight into the target (a lookup into a shared-memory
    /// region), not gathered and then copied there.
    fn gather_into(&self, plan: &GatherPlan, out: &mut GatherTarget) -> Result<(), EngineError> {
        plan.check(&self.spec)?;
        let d = self.spec.dim;
        out.check_len(plan.num_slots.saturating_mul(d))?;
        if plan.slots_ascend() {
            self.rows.read().visit(IntoTarget { plan, d, out });
            return Ok(());
        }
        out.write(&self.gather(plan)?);
        Ok(())
    }

    fn apply(&self, _update: &RowGradients) -> Result<(), EngineError> {
        Err(EngineError::Backend {
            backend: "serving",
            reason: "a serving copy is read-only: its rows come from its primary".into(),
        })
    }

    fn read_rows(&self, _rows: &[u64]) -> Result<RowData, EngineError> {
        Err(EngineError::Backend {
            backend: "serving",
            reason: "a serving copy keeps no optimizer state to read back".into(),
        })
    }

    /// Converts and stores the weights of `rows` (optimizer state, if
    /// given, is dropped), all under one write lock.
    fn write_rows(&self, rows: &[u64], data: &RowData) -> Result<(), EngineError> {
        super::check_rows(&self.spec, rows)?;
        let d = self.spec.dim;
        if data.weights.len() != rows.len() * d {
            return Err(EngineError::invalid(
                "row data",
                format!(
                    "{} rows need {} weights, got {}",
                    rows.len(),
                    rows.len() * d,
                    data.weights.len()
                ),
            ));
        }
        let mut storage = self.rows.write();
        for (&row, values) in rows.iter().zip(data.weights.chunks_exact(d)) {
            storage.store(row as usize, d, values);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::streamed::streamed_answer_plan;
    use crate::init::Initializer;
    use crate::optimizer::Optimizer;

    fn spec(rows: u64, dim: usize) -> StorageSpec {
        StorageSpec {
            rows,
            first_row: 0,
            dim,
            seed: 7,
            initializer: Initializer::default(),
            optimizer: Optimizer::default(),
        }
    }

    fn one_row(backend: &ServingBackend, row: u64) -> Vec<f32> {
        let plan = GatherPlan {
            rows: vec![row],
            slots: vec![0],
            weights: vec![1.0],
            num_slots: 1,
        };
        backend.gather(&plan).unwrap()
    }

    #[test]
    fn blocks_hold_what_the_whole_output_cut_into_blocks_holds() {
        // Slots 0..6 in 4 blocks; slot 1 has no entry, slot 3 three.
        let ascending = GatherPlan {
            rows: vec![5, 9, 0, 3, 3, 7, 1, 2],
            slots: vec![0, 2, 2, 3, 3, 3, 4, 5],
            weights: vec![1.0, 0.5, -2.0, 1.0, 0.25, 3.0, 1.0, 1.5],
            num_slots: 6,
        };
        let shuffled = GatherPlan {
            slots: vec![3, 0, 2, 5, 3, 4, 3, 2],
            ..ascending.clone()
        };
        let bounds = [0, 2, 3, 5, 6];
        for format in [RowFormat::F32, RowFormat::F16, RowFormat::Int8] {
            let backend = ServingBackend::new(spec(10, 8), format).unwrap();
            for plan in [&ascending, &shuffled] {
                let whole = cut_at(backend.gather(plan).unwrap(), &bounds, 8);
                let blocks = backend.gather_blocks(plan, &bounds).unwrap();
                assert_eq!(blocks, whole, "{format:?}, slots {:?}", plan.slots);
            }
        }
    }

    /// `plan`'s entries with the even slots' first: the same sums, by
    /// the loop for plans whose slots do not ascend (each entry added to
    /// a zeroed output, in the order each slot's entries had).
    fn interleaved(plan: &GatherPlan) -> GatherPlan {
        let mut order: Vec<usize> = (0..plan.rows.len()).collect();
        order.sort_by_key(|&i| plan.slots[i] % 2);
        GatherPlan {
            rows: order.iter().map(|&i| plan.rows[i]).collect(),
            slots: order.iter().map(|&i| plan.slots[i]).collect(),
            weights: order.iter().map(|&i| plan.weights[i]).collect(),
            num_slots: plan.num_slots,
        }
    }

    #[test]
    fn pooling_in_slot_order_sums_what_adding_each_entry_sums() {
        // Slot 1 has no entry, slot 3 three, slot 4 one of weight 1.
        let ascending = GatherPlan {
            rows: vec![5, 9, 0, 3, 3, 7, 1, 2, 8],
            slots: vec![0, 2, 2, 3, 3, 3, 4, 5, 6],
            weights: vec![2.0, 0.5, -2.0, 1.0, 0.25, 3.0, 1.0, 1.5, 1.0],
            num_slots: 7,
        };
        let other = interleaved(&ascending);
        assert!(!other.slots_ascend());
        let bounds = [0, 2, 3, 5, 7];
        // 12: a width without a loop of its own.
        for dim in [8, 12, 16, 64] {
            for format in [RowFormat::F32, RowFormat::F16, RowFormat::Int8] {
                let backend = ServingBackend::new(spec(10, dim), format).unwrap();
                let want = backend.gather(&other).unwrap();
                assert_eq!(
                    backend.gather(&ascending).unwrap(),
                    want,
                    "{format:?} {dim}"
                );
                let blocks = backend.gather_blocks(&ascending, &bounds).unwrap();
                assert_eq!(blocks, cut_at(want, &bounds, dim), "{format:?} {dim}");
            }
        }
    }

    /// `plan` gathered into a target over a buffer of NaNs, `offset`
    /// floats into it (1: not 16-byte aligned, so not streamed).
    fn gathered_into(
        backend: &ServingBackend,
        plan: &GatherPlan,
        len: usize,
        offset: usize,
    ) -> Result<Vec<f32>, EngineError> {
        let mut buffer = vec![f32::NAN; offset + len];
        let start = std::ptr::NonNull::new(buffer[offset..].as_mut_ptr()).unwrap();
        // SAFETY: `buffer` outlives the target, and nothing else touches
        // it meanwhile.
        let mut target = unsafe { GatherTarget::new(start, len) };
        backend.gather_into(plan, &mut target)?;
        Ok(buffer.split_off(offset))
    }

    #[test]
    fn a_gather_into_shared_memory_writes_every_float_of_the_sums() {
        let ascending = GatherPlan {
            rows: vec![5, 9, 0, 3, 3, 7, 1, 2, 8],
            slots: vec![0, 2, 2, 3, 3, 3, 4, 5, 6],
            weights: vec![2.0, 0.5, -2.0, 1.0, 0.25, 3.0, 1.0, 1.5, 1.0],
            num_slots: 7,
        };
        let other = interleaved(&ascending);
        for dim in [8, 12, 16, 64] {
            for format in [RowFormat::F32, RowFormat::F16, RowFormat::Int8] {
                let backend = ServingBackend::new(spec(10, dim), format).unwrap();
                let want = backend.gather(&other).unwrap();
                for offset in [0, 1] {
                    for plan in [&ascending, &other] {
                        let got = gathered_into(&backend, plan, 7 * dim, offset).unwrap();
                        assert_eq!(got, want, "{format:?} {dim}, offset {offset}");
                    }
                }
                let short = gathered_into(&backend, &ascending, 7 * dim - 1, 0).unwrap_err();
                assert!(
                    short.to_string().contains(&(7 * dim).to_string()),
                    "{short}"
                );
            }
        }
    }

    #[test]
    fn an_answer_too_large_to_cache_is_streamed_to_the_same_sums() {
        let dim = 64;
        let plan = streamed_answer_plan(dim);
        let slots = plan.num_slots;
        let bounds = [0, slots / 3, slots];
        for format in [RowFormat::F32, RowFormat::F16, RowFormat::Int8] {
            let backend = ServingBackend::new(spec(1000, dim), format).unwrap();
            let want = cut_at(backend.gather(&interleaved(&plan)).unwrap(), &bounds, dim);
            let blocks = backend.gather_blocks(&plan, &bounds).unwrap();
            assert!(blocks == want, "{format:?}");
        }
    }

    #[test]
    fn rows_start_on_a_cache_line() {
        // Several of each: one could start on a line by chance.
        for len in (1..=8).map(|n| n * 100) {
            let f32s = LineAligned::zeroed(len, 0.0f32).unwrap();
            let f16s = LineAligned::zeroed(len, f16::ZERO).unwrap();
            let bytes = LineAligned::zeroed(len, 0u8).unwrap();
            assert_eq!(f32s.get().as_ptr() as usize % CACHE_LINE, 0);
            assert_eq!(f16s.get().as_ptr() as usize % CACHE_LINE, 0);
            assert_eq!(bytes.get().as_ptr() as usize % CACHE_LINE, 0);
            assert_eq!(
                (f32s.get().len(), f16s.get().len(), bytes.get().len()),
                (len, len, len)
            );
        }
    }

    #[test]
    fn int8_rows_are_within_half_a_step_of_their_values() {
        let backend = ServingBackend::new(spec(4, 8), RowFormat::Int8).unwrap();
        let values: Vec<f32> = (0..8).map(|i| (i as f32 - 3.3) * 0.37).collect();
        let data = RowData {
            weights: values.clone(),
            state: vec![],
        };
        backend.write_rows(&[2], &data).unwrap();
        let step = (values[7] - values[0]) / 255.0;
        for (got, want) in one_row(&backend, 2).iter().zip(&values) {
            assert!((got - want).abs() <= step / 2.0 + 1e-6, "{got} vs {want}");
        }
        // The extremes are exact: they are the bias and bias + 255 steps.
        assert_eq!(one_row(&backend, 2)[0], values[0]);
    }

    #[test]
    fn a_constant_row_is_exact_in_int8() {
        let backend = ServingBackend::new(spec(2, 4), RowFormat::Int8).unwrap();
        let data = RowData {
            weights: vec![0.25; 4],
            state: vec![],
        };
        backend.write_rows(&[1], &data).unwrap();
        assert_eq!(one_row(&backend, 1), vec![0.25; 4]);
    }

    #[test]
    fn f16_rows_are_within_half_precision() {
        let backend = ServingBackend::new(spec(3, 16), RowFormat::F16).unwrap();
        let values: Vec<f32> = (0..16).map(|i| (i as f32 + 0.1) / 7.0).collect();
        let data = RowData {
            weights: values.clone(),
            state: vec![],
        };
        backend.write_rows(&[0], &data).unwrap();
        for (got, want) in one_row(&backend, 0).iter().zip(&values) {
            assert!(
                (got - want).abs() <= want.abs() * 2f32.powi(-11),
                "{got} vs {want}"
            );
        }
    }

    #[test]
    fn rows_start_at_the_training_tables_initial_values() {
        let spec = spec(5000, 8);
        let exact = ServingBackend::new(spec, RowFormat::F32).unwrap();
        for row in [0, 4095, 4096, 4999] {
            let mut want = vec![0.0; 8];
            spec.initializer.fill_row(spec.seed, row, &mut want);
            assert_eq!(one_row(&exact, row), want);
        }
    }

    #[test]
    fn pooling_dequantizes_each_row_and_sums_in_f32() {
        let backend = ServingBackend::new(spec(10, 4), RowFormat::Int8).unwrap();
        let plan = GatherPlan {
            rows: vec![1, 2, 1],
            slots: vec![0, 0, 1],
            weights: vec![0.5, 2.0, 1.0],
            num_slots: 2,
        };
        let pooled = backend.gather(&plan).unwrap();
        let (r1, r2) = (one_row(&backend, 1), one_row(&backend, 2));
        for k in 0..4 {
            assert!((pooled[k] - (0.5 * r1[k] + 2.0 * r2[k])).abs() < 1e-6);
            assert!((pooled[4 + k] - r1[k]).abs() < 1e-6);
        }
    }

    #[test]
    fn bytes_per_row_follow_the_format() {
        for (format, bytes) in [
            (RowFormat::F32, 64),
            (RowFormat::F16, 32),
            (RowFormat::Int8, 24),
        ] {
            let backend = ServingBackend::new(spec(100, 16), format).unwrap();
            assert_eq!(backend.memory_bytes(), 100 * bytes);
        }
    }

    #[test]
    fn writes_of_gradients_are_refused() {
        let backend = ServingBackend::new(spec(2, 4), RowFormat::F32).unwrap();
        let update = RowGradients {
            rows: vec![0],
            grads: vec![1.0; 4],
        };
        assert!(backend.apply(&update).is_err());
        assert_eq!(one_row(&backend, 0), {
            let mut v = vec![0.0; 4];
            Initializer::default().fill_row(7, 0, &mut v);
            v
        });
    }
}
