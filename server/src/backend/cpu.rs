//! The default backend: the table in plain Rust memory, split into blocks of
//! [`BLOCK_ROWS`] consecutive rows, each behind its own reader-writer lock.
//!
//! Why blocks: a lock per block ("lock striping by row block") lets any
//! number of lookups and pushes run in parallel on different rows while a row
//! is still never torn (an update holds its block's write lock for the whole
//! row). A block is also the unit the persistence flusher will copy, so it
//! never holds a lock for longer than one block copy. Pushes arrive sorted by
//! row, so an update locks each block once, not once per row.
//!
//! Memory (dense, materialised on create): `rows * (dim + state_width) * 4`
//! bytes, i.e. `4·d` bytes per row plus the optimizer's state (0, `4`, `4·d`,
//! `8·d + 4` or `8·d` bytes for sgd, row-wise adagrad, adagrad, adam, ftrl),
//! plus ~1 byte per row of lock and vector headers. Creation fills rows from
//! the lazy initializer on every core; a 10^8 × 16 table takes seconds.

use parking_lot::RwLock;

use super::{Backend, GatherPlan, RowData, RowGradients, StorageSpec};
use crate::error::EngineError;

/// Rows per lock stripe: small enough that writers rarely collide, large
/// enough that lock and vector headers stay under 1 byte per row.
pub const BLOCK_ROWS: u64 = 64;

struct RowBlock {
    weights: Vec<f32>,
    state: Vec<f32>,
}

/// Plain-Rust, lock-striped storage.
pub struct CpuBackend {
    spec: StorageSpec,
    state_width: usize,
    blocks: Vec<RwLock<RowBlock>>,
}

impl CpuBackend {
    /// Allocates and initialises the table on all cores.
    pub fn new(spec: StorageSpec) -> Result<Self, EngineError> {
        let bytes = spec.memory_bytes().filter(|&b| usize::try_from(b).is_ok());
        if bytes.is_none() {
            return Err(EngineError::invalid(
                "rows",
                format!("{} rows of {} floats do not fit in this machine's address space", spec.rows, spec.dim),
            ));
        }
        let state_width = spec.optimizer.state_width(spec.dim);
        let initial_state = spec.optimizer.initial_state(spec.dim);
        let num_blocks = spec.rows.div_ceil(BLOCK_ROWS) as usize;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_thread = num_blocks.div_ceil(threads).max(1);
        let make_block = |b: usize| {
            let first = b as u64 * BLOCK_ROWS;
            let n = (spec.rows - first).min(BLOCK_ROWS) as usize;
            let mut weights = vec![0.0; n * spec.dim];
            spec.initializer.fill_rows(spec.seed, first, spec.dim, &mut weights);
            RwLock::new(RowBlock {
                weights,
                state: initial_state.repeat(n),
            })
        };
        let blocks = std::thread::scope(|scope| {
            let parts: Vec<_> = (0..num_blocks)
                .step_by(per_thread)
                .map(|start| {
                    let end = (start + per_thread).min(num_blocks);
                    scope.spawn(move || (start..end).map(make_block).collect::<Vec<_>>())
                })
                .collect();
            let mut blocks = Vec::with_capacity(num_blocks);
            for part in parts {
                blocks.extend(part.join().expect("initialiser thread panicked"));
            }
            blocks
        });
        Ok(CpuBackend {
            spec,
            state_width,
            blocks,
        })
    }

    fn locate(&self, row: u64) -> (&RwLock<RowBlock>, usize) {
        (&self.blocks[(row / BLOCK_ROWS) as usize], (row % BLOCK_ROWS) as usize)
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
        for ((&row, &slot), &weight) in plan.rows.iter().zip(&plan.slots).zip(&plan.weights) {
            let (block, r) = self.locate(row);
            let block = block.read();
            let src = &block.weights[r * d..(r + 1) * d];
            let dst = &mut out[slot as usize * d..(slot as usize + 1) * d];
            for (o, s) in dst.iter_mut().zip(src) {
                *o += weight * s;
            }
        }
        Ok(out)
    }

    fn apply(&self, update: &RowGradients) -> Result<(), EngineError> {
        update.check(&self.spec)?;
        let (d, sw) = (self.spec.dim, self.state_width);
        let rows = &update.rows;
        let mut i = 0;
        while i < rows.len() {
            let block_index = rows[i] / BLOCK_ROWS;
            let mut guard = self.blocks[block_index as usize].write();
            let RowBlock { weights, state } = &mut *guard;
            while i < rows.len() && rows[i] / BLOCK_ROWS == block_index {
                let r = (rows[i] % BLOCK_ROWS) as usize;
                self.spec.optimizer.step(
                    &mut weights[r * d..(r + 1) * d],
                    &mut state[r * sw..(r + 1) * sw],
                    &update.grads[i * d..(i + 1) * d],
                );
                i += 1;
            }
        }
        Ok(())
    }

    fn read_rows(&self, rows: &[u64]) -> Result<RowData, EngineError> {
        super::check_rows(&self.spec, rows)?;
        let (d, sw) = (self.spec.dim, self.state_width);
        let mut data = RowData {
            weights: Vec::with_capacity(rows.len() * d),
            state: Vec::with_capacity(rows.len() * sw),
        };
        for &row in rows {
            let (block, r) = self.locate(row);
            let block = block.read();
            data.weights.extend_from_slice(&block.weights[r * d..(r + 1) * d]);
            data.state.extend_from_slice(&block.state[r * sw..(r + 1) * sw]);
        }
        Ok(data)
    }

    fn write_rows(&self, rows: &[u64], data: &RowData) -> Result<(), EngineError> {
        super::check_rows(&self.spec, rows)?;
        data.check(&self.spec, rows.len())?;
        let (d, sw) = (self.spec.dim, self.state_width);
        for (i, &row) in rows.iter().enumerate() {
            let (block, r) = self.locate(row);
            let mut block = block.write();
            block.weights[r * d..(r + 1) * d].copy_from_slice(&data.weights[i * d..(i + 1) * d]);
            block.state[r * sw..(r + 1) * sw].copy_from_slice(&data.state[i * sw..(i + 1) * sw]);
        }
        Ok(())
    }
}
