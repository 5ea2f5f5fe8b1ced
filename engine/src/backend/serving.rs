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

use super::{cut_at, Backend, GatherPlan, RowData, RowGradients, StorageSpec};
use crate::error::EngineError;

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

/// The rows, in their format.
enum Rows {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Int8 {
        codes: Vec<u8>,
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
        fn zeroed<T: Clone>(len: usize, zero: T) -> Option<Vec<T>> {
            let mut v = Vec::new();
            v.try_reserve_exact(len).ok()?;
            v.resize(len, zero);
            Some(v)
        }
        let len = rows.checked_mul(dim).ok_or_else(refused)?;
        Ok(match format {
            RowFormat::F32 => Rows::F32(zeroed(len, 0.0).ok_or_else(refused)?),
            RowFormat::F16 => Rows::F16(zeroed(len, f16::ZERO).ok_or_else(refused)?),
            RowFormat::Int8 => Rows::Int8 {
                codes: zeroed(len, 0).ok_or_else(refused)?,
                scale_bias: zeroed(rows, [0.0; 2]).ok_or_else(refused)?,
            },
        })
    }

    /// Stores `values` (whole rows of `dim`) as rows `first..`.
    fn store(&mut self, first: usize, dim: usize, values: &[f32]) {
        let (start, end) = (first * dim, first * dim + values.len());
        match self {
            Rows::F32(v) => v[start..end].copy_from_slice(values),
            Rows::F16(v) => v[start..end].convert_from_f32_slice(values),
            Rows::Int8 { codes, scale_bias } => {
                let rows = codes[start..end].chunks_exact_mut(dim);
                for (i, (codes, row)) in rows.zip(values.chunks_exact(dim)).enumerate() {
                    scale_bias[first + i] = quantize_int8(row, codes);
                }
            }
        }
    }
}

/// How many entries ahead a gather prefetches (as the CPU backend does).
const PREFETCH_AHEAD: usize = 8;

/// Asks the CPU to start loading `values[at]`: rows are read in hash order,
/// at random, and each would otherwise be a full memory stall.
fn prefetch<T>(values: &[T], at: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(value) = values.get(at) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch reads nothing architecturally and cannot
        // fault; SSE is part of the x86_64 baseline.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast::<i8>()) };
    }
}

/// Runs the plan's entries `entries` in order: `add(row, weight, out_row)`,
/// `out_row` being the entry's slot counted from `first_slot`, with
/// `prefetch(row)` issued [`PREFETCH_AHEAD`] entries early.
fn pool(
    plan: &GatherPlan,
    entries: Range<usize>,
    first_slot: usize,
    d: usize,
    out: &mut [f32],
    prefetch: impl Fn(usize),
    mut add: impl FnMut(usize, f32, &mut [f32]),
) {
    for i in entries {
        if let Some(&next) = plan.rows.get(i + PREFETCH_AHEAD) {
            prefetch(next as usize);
        }
        let slot = plan.slots[i] as usize - first_slot;
        add(
            plan.rows[i] as usize,
            plan.weights[i],
            &mut out[slot * d..(slot + 1) * d],
        );
    }
}

impl Rows {
    /// Pools the plan's entries `entries` into `out`, which holds the
    /// slots from `first_slot` on (`[slots, d]`, zeroed): one loop per
    /// format, so the format is not re-checked per entry.
    fn pool_into(
        &self,
        plan: &GatherPlan,
        entries: Range<usize>,
        first_slot: usize,
        d: usize,
        out: &mut [f32],
    ) {
        match self {
            Rows::F32(v) => pool(
                plan,
                entries,
                first_slot,
                d,
                out,
                |r| prefetch(v, r * d),
                |r, w, dst| {
                    for (o, &x) in dst.iter_mut().zip(&v[r * d..(r + 1) * d]) {
                        *o += w * x;
                    }
                },
            ),
            Rows::F16(v) => {
                let mut row = vec![0.0f32; d];
                pool(
                    plan,
                    entries,
                    first_slot,
                    d,
                    out,
                    |r| prefetch(v, r * d),
                    |r, w, dst| {
                        // Whole rows at once: F16C when the CPU has it.
                        v[r * d..(r + 1) * d].convert_to_f32_slice(&mut row);
                        for (o, &x) in dst.iter_mut().zip(&row) {
                            *o += w * x;
                        }
                    },
                )
            }
            Rows::Int8 { codes, scale_bias } => pool(
                plan,
                entries,
                first_slot,
                d,
                out,
                |r| {
                    prefetch(codes, r * d);
                    prefetch(scale_bias, r);
                },
                |r, w, dst| {
                    let [scale, bias] = scale_bias[r];
                    let (scale, bias) = (w * scale, w * bias);
                    for (o, &q) in dst.iter_mut().zip(&codes[r * d..(r + 1) * d]) {
                        *o += q as f32 * scale + bias;
                    }
                },
            ),
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
        let mut out = vec![0.0f32; plan.num_slots * d];
        self.rows
            .read()
            .pool_into(plan, 0..plan.rows.len(), 0, d, &mut out);
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
        let rows = self.rows.read();
        // Entries in slot order: each block's are the run before the
        // first entry of the next block's slots.
        let mut first = 0;
        let blocks = bounds
            .windows(2)
            .map(|block| {
                let (from, to) = (block[0], block[1]);
                let end = first + plan.slots[first..].partition_point(|&s| (s as usize) < to);
                let mut out = vec![0.0f32; (to - from) * d];
                rows.pool_into(plan, first..end, from, d, &mut out);
                first = end;
                out
            })
            .collect();
        Ok(blocks)
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
