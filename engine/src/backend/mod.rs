//! Where the table's floats live. One trait, several implementations that
//! give the same results on the same inputs (docs/DESIGN.md, "Backends"):
//!
//! - [`cpu`]: plain Rust over flat arrays, rows on cache lines, a sequence
//!   lock per stripe of row blocks (readers take no lock); the embedded
//!   default.
//! - [`candle`]: the table and optimizer state as candle tensors, on
//!   `Device::Cpu` or, with the `cuda` feature, `Device::Cuda(n)`.
//! - [`serving`]: a replica's read-only rows in fp32, fp16 or int8, without
//!   optimizer state.
//!
//! The engine does everything that is the same for every device (hashing,
//! validation, pooling factors, de-duplicating gradients) on the host and hands
//! a backend two dense, already-validated requests: a [`GatherPlan`] (lookup)
//! and a [`RowGradients`] (push). That keeps backends small, lets a GPU
//! backend do one upload and one download per batch, and means the
//! differential test compares exactly the part that differs.

pub mod block_sink;
pub mod candle;
pub mod cpu;
pub mod download;
pub mod gather_target;
pub mod row_ops;
pub mod serving;
mod streamed;

pub use self::block_sink::BlockSink;
pub use self::gather_target::GatherTarget;
use crate::error::EngineError;
use crate::init::Initializer;
use crate::layout::BatchLayout;
use crate::optimizer::Optimizer;
use crate::plan::gather_plan;

/// A pooled gather: `out[slot] += weight * table[row]` for every entry, over
/// `num_slots` output rows of `dim` floats, starting from zeros. Entries are
/// applied in order (so every backend sums in the same order).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatherPlan {
    pub rows: Vec<u64>,
    pub slots: Vec<u32>,
    pub weights: Vec<f32>,
    pub num_slots: usize,
}

/// One push, reduced to one gradient per unique row: `rows` sorted and
/// unique, `grads` row-major `[rows.len(), dim]`, all finite.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowGradients {
    pub rows: Vec<u64>,
    pub grads: Vec<f32>,
}

impl RowGradients {
    /// Clamps every gradient element to `[-limit, limit]`.
    pub fn clip(&mut self, limit: f32) {
        for g in &mut self.grads {
            *g = g.clamp(-limit, limit);
        }
    }

    /// The rows `keep` accepts with their `dim`-wide gradients, still
    /// sorted and unique (one shard's share of a push).
    pub fn rows_where(&self, dim: usize, keep: impl Fn(u64) -> bool) -> RowGradients {
        let mut kept = RowGradients::default();
        for (row, grad) in self.rows.iter().zip(self.grads.chunks_exact(dim)) {
            if keep(*row) {
                kept.rows.push(*row);
                kept.grads.extend_from_slice(grad);
            }
        }
        kept
    }
}

impl GatherPlan {
    /// The entries whose rows `keep` accepts, with the same slots (one
    /// shard's share of a lookup, answering partial sums of every slot).
    pub fn entries_where(&self, keep: impl Fn(u64) -> bool) -> GatherPlan {
        let mut part = GatherPlan {
            num_slots: self.num_slots,
            ..GatherPlan::default()
        };
        for i in (0..self.rows.len()).filter(|&i| keep(self.rows[i])) {
            part.rows.push(self.rows[i]);
            part.slots.push(self.slots[i]);
            part.weights.push(self.weights[i]);
        }
        part
    }
}

/// Full content of some rows: weights `[n, dim]` and optimizer state
/// `[n, state_width]`. What persistence writes and restores.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowData {
    pub weights: Vec<f32>,
    pub state: Vec<f32>,
}

/// Everything a backend needs to create a table's storage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StorageSpec {
    /// Rows held (the whole table, or one shard's range of it).
    pub rows: u64,
    /// The table row of held row 0: what lazy initialisation counts from,
    /// so a shard's rows start as the same rows of a whole table would.
    pub first_row: u64,
    pub dim: usize,
    pub seed: u64,
    pub initializer: Initializer,
    pub optimizer: Optimizer,
}

impl StorageSpec {
    /// Bytes of memory the dense table and its optimizer state take.
    pub fn memory_bytes(&self) -> Option<u64> {
        let floats_per_row = (self.dim + self.optimizer.state_width(self.dim)) as u64;
        self.rows.checked_mul(floats_per_row)?.checked_mul(4)
    }
}

/// A table's storage: gather, optimizer updates and whole-row access.
///
/// Implementations must never let a reader observe a torn row: a row read
/// concurrently with an update is entirely old or entirely new.
pub trait Backend: Send + Sync {
    /// Name for errors and metrics ("cpu", "candle-cpu", "candle-cuda:0").
    fn name(&self) -> String;

    /// The spec the storage was created with.
    fn spec(&self) -> &StorageSpec;

    /// Bytes of memory the rows and their optimizer state take (saturating).
    fn memory_bytes(&self) -> u64 {
        self.spec().memory_bytes().unwrap_or(u64::MAX)
    }

    /// How the weights are held (training backends: f32).
    fn row_format(&self) -> serving::RowFormat {
        serving::RowFormat::F32
    }

    /// Runs a pooled gather and returns `[num_slots, dim]` floats.
    fn gather(&self, plan: &GatherPlan) -> Result<Vec<f32>, EngineError>;

    /// [`Self::gather`]'s output cut into consecutive blocks of slots, block
    /// `k` holding slots `bounds[k]..bounds[k + 1]` (`bounds` runs from 0 to
    /// `num_slots`): one block per feature of a batch. This default cuts
    /// the whole output (one copy of it); a backend that can write each
    /// block in place does so.
    fn gather_blocks(
        &self,
        plan: &GatherPlan,
        bounds: &[usize],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        plan.check_bounds(bounds)?;
        Ok(cut_at(self.gather(plan)?, bounds, self.spec().dim))
    }

    /// [`Self::gather_blocks`] handed to `sink` one block at a time. This
    /// default gathers every block first; a backend that pools block after
    /// block hands each on as it finishes it.
    fn gather_blocks_to(
        &self,
        plan: &GatherPlan,
        bounds: &[usize],
        sink: &mut dyn BlockSink,
    ) -> Result<(), EngineError> {
        block_sink::feed(&self.gather_blocks(plan, bounds)?, sink);
        Ok(())
    }

    /// [`Self::gather`]'s `[num_slots, dim]` output written into `out`
    /// (exactly that many floats), memory another process may share. This
    /// default gathers and copies; a backend that can write each output
    /// row in place does so, saving the copy.
    fn gather_into(&self, plan: &GatherPlan, out: &mut GatherTarget) -> Result<(), EngineError> {
        out.check_len(plan.num_slots.saturating_mul(self.spec().dim))?;
        out.write(&self.gather(plan)?);
        Ok(())
    }

    /// A validated batch's blocks (one per feature, in batch order) with
    /// no plan kept: what a lookup that keeps no ticket needs. This default
    /// plans the batch and gathers the plan; a backend that can hash each
    /// value as its gather reaches it does so (see [`crate::layout`]).
    fn gather_layout(&self, layout: &BatchLayout<'_>) -> Result<Vec<Vec<f32>>, EngineError> {
        self.gather_blocks(&gather_plan(layout, None), &layout.block_bounds())
    }

    /// [`Self::gather_layout`] handed to `sink` one block at a time (this
    /// default as [`Self::gather_blocks_to`]'s).
    fn gather_layout_to(
        &self,
        layout: &BatchLayout<'_>,
        sink: &mut dyn BlockSink,
    ) -> Result<(), EngineError> {
        block_sink::feed(&self.gather_layout(layout)?, sink);
        Ok(())
    }

    /// [`Self::gather_layout`]'s blocks written one after the other into
    /// `out` (exactly their floats), memory another process may share:
    /// a lookup into a shared-memory region that keeps no ticket. This
    /// default plans the layout and gathers the plan into `out`.
    fn gather_layout_into(
        &self,
        layout: &BatchLayout<'_>,
        out: &mut GatherTarget,
    ) -> Result<(), EngineError> {
        self.gather_into(&gather_plan(layout, None), out)
    }

    /// Applies one optimizer step to each row in `update`.
    fn apply(&self, update: &RowGradients) -> Result<(), EngineError>;

    /// Reads weights and optimizer state of `rows` (any order, duplicates ok).
    fn read_rows(&self, rows: &[u64]) -> Result<RowData, EngineError>;

    /// Overwrites weights and optimizer state of `rows` (restore, recovery).
    fn write_rows(&self, rows: &[u64], data: &RowData) -> Result<(), EngineError>;
}

/// Which backend holds a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// Plain Rust, lock-free readers (the default).
    #[default]
    Cpu,
    /// candle tensors on the CPU.
    CandleCpu,
    /// candle tensors on CUDA device `n` (needs the `cuda` cargo feature).
    CandleCuda(usize),
}

impl std::str::FromStr for BackendKind {
    type Err = EngineError;

    /// Parses `cpu`, `candle` / `candle-cpu`, or `cuda:N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(BackendKind::Cpu),
            "candle" | "candle-cpu" => Ok(BackendKind::CandleCpu),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(BackendKind::CandleCuda)
                .ok_or_else(|| {
                    EngineError::invalid(
                        "backend",
                        format!("{s:?} is not one of `cpu`, `candle-cpu`, `cuda:N`"),
                    )
                }),
        }
    }
}

impl BackendKind {
    /// Checks that this backend can run here (for `cuda:N`: a binary built
    /// with CUDA and device N present), so a server configured for a GPU it
    /// cannot use fails at start-up, saying why, not at its first table.
    pub fn check_available(self) -> Result<(), EngineError> {
        match self {
            BackendKind::Cpu => Ok(()),
            _ => self.candle_device().map(drop),
        }
    }

    /// Bytes of device memory this backend keeps tables in: the GPU's total
    /// memory for `cuda:N` (what the default memory budget is derived from,
    /// since tables and optimizer state live there); `None` for the host
    /// backends, whose memory the server reads from the machine.
    pub fn device_memory(self) -> Result<Option<u64>, EngineError> {
        match self {
            BackendKind::Cpu | BackendKind::CandleCpu => Ok(None),
            BackendKind::CandleCuda(_) => cuda_total_memory(&self.candle_device()?).map(Some),
        }
    }

    /// The candle device a candle backend keeps its tensors on, opened (for
    /// `cuda:N` that checks the build and the device): the one place kinds
    /// map to devices, for tables, `featmux device-bench` and the tests.
    pub fn candle_device(self) -> Result<candle_core::Device, EngineError> {
        match self {
            BackendKind::CandleCpu => Ok(candle_core::Device::Cpu),
            BackendKind::CandleCuda(n) => cuda_device(n),
            BackendKind::Cpu => Err(EngineError::invalid(
                "backend",
                "`cpu` keeps tables in plain arrays, not on a candle device",
            )),
        }
    }
}

fn cuda_device(n: usize) -> Result<candle_core::Device, EngineError> {
    let unavailable = |reason: String| EngineError::Backend {
        backend: "candle",
        reason,
    };
    if !cfg!(feature = "cuda") {
        return Err(unavailable(format!(
            "backend `cuda:{n}` needs featmux built with CUDA (cargo feature `cuda`, \
             scripts/build-cuda.sh); this binary was built without it"
        )));
    }
    candle_core::Device::new_cuda(n)
        .map_err(|e| unavailable(format!("CUDA device {n} is not available: {e}")))
}

/// Total memory of a CUDA device, from the driver.
fn cuda_total_memory(device: &candle_core::Device) -> Result<u64, EngineError> {
    let failed = |reason: String| EngineError::Backend {
        backend: "candle",
        reason,
    };
    match device {
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(cuda) => cuda
            .cuda_stream()
            .context()
            .total_mem()
            .map(|bytes| bytes as u64)
            .map_err(|e| failed(format!("reading the memory of {device:?}: {e}"))),
        other => Err(failed(format!("{other:?} is not a CUDA device"))),
    }
}

/// Creates the storage of a table on the chosen backend.
pub fn create(kind: BackendKind, spec: StorageSpec) -> Result<Box<dyn Backend>, EngineError> {
    Ok(match kind {
        BackendKind::Cpu => Box::new(cpu::CpuBackend::new(spec)?),
        BackendKind::CandleCpu | BackendKind::CandleCuda(_) => {
            Box::new(candle::CandleBackend::new(spec, kind.candle_device()?)?)
        }
    })
}

/// A [`GatherPlan`]'s entries grouped by output slot, CSR-style: the
/// entries of slot `s` are `offsets[s]..offsets[s + 1]`, in plan order. What
/// a device pools with one thread per output float.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlotGroups {
    pub rows: Vec<u64>,
    pub weights: Vec<f32>,
    pub offsets: Vec<u32>,
}

impl GatherPlan {
    /// True when output slot `i` is exactly row `i` with weight 1, so the
    /// gathered rows are the output and no pooling is needed.
    pub fn is_one_row_per_slot(&self) -> bool {
        self.rows.len() == self.num_slots
            && self.slots.iter().enumerate().all(|(i, &s)| s as usize == i)
            && self.weights.iter().all(|&w| w == 1.0)
    }

    /// The entries grouped by slot (a stable counting sort: entries of one
    /// slot keep their plan order, so sums keep the CPU backend's order).
    pub fn grouped_by_slot(&self) -> SlotGroups {
        let mut offsets = vec![0u32; self.num_slots + 1];
        for &s in &self.slots {
            offsets[s as usize + 1] += 1;
        }
        for s in 0..self.num_slots {
            offsets[s + 1] += offsets[s];
        }
        let mut next: Vec<u32> = offsets[..self.num_slots].to_vec();
        let mut rows = vec![0u64; self.rows.len()];
        let mut weights = vec![0f32; self.rows.len()];
        for ((&row, &slot), &weight) in self.rows.iter().zip(&self.slots).zip(&self.weights) {
            let at = &mut next[slot as usize];
            rows[*at as usize] = row;
            weights[*at as usize] = weight;
            *at += 1;
        }
        SlotGroups {
            rows,
            weights,
            offsets,
        }
    }

    /// True when entries come in slot order (slots never decrease), so a
    /// backend can finish each slot before it starts the next.
    pub fn slots_ascend(&self) -> bool {
        // No early exit: a fold over pairs compiles to vector compares (an
        // `all` over `windows(2)` tested one pair per branch, and every
        // lookup runs this over all its entries).
        let next = self.slots.iter().skip(1);
        self.slots
            .iter()
            .zip(next)
            .fold(true, |ascend, (a, b)| ascend & (a <= b))
    }

    /// Checks block bounds for [`Backend::gather_blocks`]: from 0 to
    /// `num_slots`, never decreasing.
    pub(crate) fn check_bounds(&self, bounds: &[usize]) -> Result<(), EngineError> {
        let valid = bounds.first() == Some(&0)
            && bounds.last() == Some(&self.num_slots)
            && bounds.windows(2).all(|w| w[0] <= w[1]);
        if !valid {
            return Err(EngineError::invalid(
                "gather plan",
                format!(
                    "block bounds {bounds:?} do not run from 0 to the plan's {} slots",
                    self.num_slots
                ),
            ));
        }
        Ok(())
    }

    /// Checks that every entry addresses a row of the table and an output slot.
    pub(crate) fn check(&self, spec: &StorageSpec) -> Result<(), EngineError> {
        let n = self.rows.len();
        if self.slots.len() != n || self.weights.len() != n {
            return Err(EngineError::invalid(
                "gather plan",
                format!(
                    "{n} rows but {} slots and {} weights",
                    self.slots.len(),
                    self.weights.len()
                ),
            ));
        }
        // Slots are u32: with more slots than that, every slot is inside.
        let outside = u32::try_from(self.num_slots).is_ok_and(|n| any_at_or_above(&self.slots, n));
        if outside {
            let largest = self.slots.iter().copied().max().unwrap_or_default();
            return Err(EngineError::invalid(
                "gather plan",
                format!(
                    "slot {largest} is outside the plan's {} slots",
                    self.num_slots
                ),
            ));
        }
        check_rows(spec, &self.rows)
    }
}

impl RowGradients {
    /// Checks shape and that rows are sorted, unique and inside the table.
    pub(crate) fn check(&self, spec: &StorageSpec) -> Result<(), EngineError> {
        if self.grads.len() != self.rows.len() * spec.dim {
            return Err(EngineError::invalid(
                "row gradients",
                format!(
                    "{} rows need {} gradients, got {}",
                    self.rows.len(),
                    self.rows.len() * spec.dim,
                    self.grads.len()
                ),
            ));
        }
        if self.rows.windows(2).any(|w| w[0] >= w[1]) {
            return Err(EngineError::invalid(
                "row gradients",
                "rows must be sorted and unique",
            ));
        }
        check_rows(spec, &self.rows)
    }
}

impl RowData {
    /// Checks the shape for `n` rows of a table with `spec`.
    pub(crate) fn check(&self, spec: &StorageSpec, n: usize) -> Result<(), EngineError> {
        let state_width = spec.optimizer.state_width(spec.dim);
        if self.weights.len() != n * spec.dim || self.state.len() != n * state_width {
            return Err(EngineError::invalid(
                "row data",
                format!(
                    "{n} rows need {} weights and {} state values, got {} and {}",
                    n * spec.dim,
                    n * state_width,
                    self.weights.len(),
                    self.state.len()
                ),
            ));
        }
        Ok(())
    }
}

/// Cuts a `[num_slots, dim]` output into blocks of slots at `bounds`
/// (checked by [`GatherPlan::check_bounds`]), copying all but the first.
pub(crate) fn cut_at(mut pooled: Vec<f32>, bounds: &[usize], dim: usize) -> Vec<Vec<f32>> {
    if bounds.len() < 2 {
        return Vec::new(); // no blocks (a batch of no features)
    }
    let mut blocks: Vec<Vec<f32>> = bounds[1..bounds.len() - 1]
        .iter()
        .rev()
        .map(|&start| pooled.split_off(start * dim))
        .collect();
    blocks.push(pooled);
    blocks.reverse();
    blocks
}

/// `len` zeroed floats, or an error where the allocator refuses: a table's
/// size comes from a client, and a failed allocation must refuse the
/// request, not abort the process. Zeroed pages come from the kernel
/// lazily (calloc), so this costs no pass over the memory.
pub(crate) fn try_zeroed_floats(len: usize, what: &str) -> Result<Vec<f32>, EngineError> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let refused = || EngineError::Backend {
        backend: "memory",
        reason: format!(
            "cannot allocate {what}: {len} floats ({} bytes)",
            len as u128 * 4
        ),
    };
    let layout = std::alloc::Layout::array::<f32>(len).map_err(|_| refused())?;
    // SAFETY: the layout's size is non-zero (len > 0).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<f32>();
    if ptr.is_null() {
        return Err(refused());
    }
    // SAFETY: `ptr` was allocated by the global allocator with the layout of
    // `len` f32s, and all-zero bytes are a valid f32 (0.0).
    Ok(unsafe { Vec::from_raw_parts(ptr, len, len) })
}

/// Checks row indices against the table before any backend touches memory.
pub(crate) fn check_rows(spec: &StorageSpec, rows: &[u64]) -> Result<(), EngineError> {
    if !any_at_or_above(rows, spec.rows) {
        return Ok(());
    }
    let largest = rows.iter().copied().max().unwrap_or_default();
    Err(EngineError::invalid(
        "rows",
        format!("row {largest} is outside the table's {} rows", spec.rows),
    ))
}

/// Whether any of `values` is `limit` or more: what every gather and update
/// checks over all its entries. A compare and an OR per value with no early
/// exit, compiled for AVX2 where the CPU has it: a `max` over `u64`s, which
/// SSE2 can only emulate, took 4 % of a region lookup's server samples.
fn any_at_or_above<T: Copy + PartialOrd>(values: &[T], limit: T) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked above).
        return unsafe { any_at_or_above_avx2(values, limit) };
    }
    any_at_or_above_with(values, limit)
}

/// [`any_at_or_above`] for a CPU with AVX2.
///
/// # Safety
///
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn any_at_or_above_avx2<T: Copy + PartialOrd>(values: &[T], limit: T) -> bool {
    any_at_or_above_with(values, limit)
}

#[inline(always)]
fn any_at_or_above_with<T: Copy + PartialOrd>(values: &[T], limit: T) -> bool {
    values.iter().fold(false, |any, &v| any | (v >= limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One value at or above the limit is found wherever it sits: in the
    /// vector loop's body or its tail, by the AVX2 build and the plain one.
    #[test]
    fn a_value_past_the_limit_is_found_anywhere() {
        fn check<T: Copy + PartialOrd + std::fmt::Debug>(below: T, limit: T, above: T) {
            for len in [0, 1, 3, 4, 7, 8, 15, 16, 17, 33, 100] {
                let mut values = vec![below; len];
                assert!(!any_at_or_above(&values, limit), "{len} values below");
                for at in 0..len {
                    for bad in [limit, above] {
                        values[at] = bad;
                        assert!(any_at_or_above(&values, limit), "{bad:?} at {at} of {len}");
                        assert!(any_at_or_above_with(&values, limit));
                        values[at] = below;
                    }
                }
            }
        }
        check::<u64>(999, 1000, u64::MAX);
        check::<u64>(1 << 40, (1 << 40) + 1, 1 << 63);
        check::<u32>(6, 7, u32::MAX);
    }
}
