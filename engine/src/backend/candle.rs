//! The table as candle tensors: `weights [rows, dim]` and, for optimizers
//! with state, `state [rows, state_width]`, on `Device::Cpu` or
//! `Device::Cuda(n)`; the code is device-agnostic.
//!
//! Lookup uploads the plan's row ids (and, when slots pool several rows,
//! their weights and per-slot offsets), gathers the rows on the device,
//! pools them into `[num_slots, dim]` there and downloads once, through a
//! reused page-locked buffer ([`super::download`]). Push uploads
//! the unique rows' gradients, runs the fused optimizer step over their
//! rows and state and writes the rows back in place: never a whole-table
//! copy. Gather, pooling, the optimizer step and the in-place write are the
//! [`row_ops`] kernels.
//!
//! Concurrency: lookups share a read lock, updates take the write lock for
//! their read-modify-write, so rows are never torn and no update is lost (on
//! CUDA the device's one stream also orders the queued kernels).
//! On the CPU this backend is ~3× slower than [`super::cpu`] (candle's
//! per-op overhead); it exists for devices with their own memory.

use candle_core::{Device, DeviceLocation, Tensor};
use parking_lot::RwLock;

use super::download::Downloads;
use super::row_ops::{self, RowIds};
use super::{Backend, GatherPlan, RowData, RowGradients, StorageSpec};
use crate::error::EngineError;

struct Tensors {
    weights: Tensor,
    /// `None` for optimizers without state (SGD).
    state: Option<Tensor>,
}

/// candle-tensor storage on any candle device.
pub struct CandleBackend {
    spec: StorageSpec,
    device: Device,
    state_width: usize,
    tensors: RwLock<Tensors>,
    downloads: Downloads,
}

fn backend_error(e: candle_core::Error) -> EngineError {
    EngineError::Backend {
        backend: "candle",
        reason: e.to_string(),
    }
}

impl CandleBackend {
    /// Creates the tensors, filled on the host from the lazy initializer (so
    /// values are bit-identical to the CPU backend) and uploaded once.
    pub fn new(spec: StorageSpec, device: Device) -> Result<Self, EngineError> {
        let rows = usize::try_from(spec.rows)
            .ok()
            .filter(|_| {
                spec.memory_bytes()
                    .is_some_and(|b| usize::try_from(b).is_ok())
            })
            .ok_or_else(|| {
                EngineError::invalid("rows", format!("{} rows do not fit in memory", spec.rows))
            })?;
        let d = spec.dim;
        let mut host = super::try_zeroed_floats(rows * d, "the table")?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let rows_per_thread = rows.div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            for (i, part) in host.chunks_mut(rows_per_thread * d).enumerate() {
                let first = spec.first_row + (i * rows_per_thread) as u64;
                scope.spawn(move || spec.initializer.fill_rows(spec.seed, first, d, part));
            }
        });
        let weights = Tensor::from_vec(host, (rows, d), &device).map_err(backend_error)?;
        let state_width = spec.optimizer.state_width(d);
        let state = if state_width == 0 {
            None
        } else {
            let row = spec.optimizer.initial_state(d);
            let mut initial = super::try_zeroed_floats(rows * state_width, "the optimizer state")?;
            for chunk in initial.chunks_exact_mut(state_width) {
                chunk.copy_from_slice(&row);
            }
            Some(Tensor::from_vec(initial, (rows, state_width), &device).map_err(backend_error)?)
        };
        Ok(CandleBackend {
            spec,
            device,
            state_width,
            tensors: RwLock::new(Tensors { weights, state }),
            downloads: Downloads::default(),
        })
    }

    /// A device copy of the whole weight tensor: the memory-bandwidth
    /// ceiling `featmux device-bench` compares the row kernels with.
    pub fn copy_weights(&self) -> candle_core::Result<Tensor> {
        self.tensors.read().weights.copy()
    }

    /// Uploads row ids, checked against this table: the index every device
    /// operation takes.
    pub fn upload_rows(&self, rows: &[u64]) -> candle_core::Result<RowIds> {
        RowIds::new(rows, self.spec.rows, &self.device)
    }

    /// `tensor`'s values on the host, through this table's reused
    /// page-locked buffer on a GPU ([`Downloads`]).
    pub fn download(&self, tensor: &Tensor) -> candle_core::Result<Vec<f32>> {
        self.downloads.to_vec(tensor)
    }

    /// Gathers rows `ids` into a `[n, dim]` tensor on the device: the lookup
    /// kernel without upload or download.
    pub fn gather_on_device(&self, ids: &RowIds) -> candle_core::Result<Tensor> {
        row_ops::gather_rows(&self.tensors.read().weights, ids)
    }

    /// One optimizer step for unique rows `ids` with gradients `[n, dim]`,
    /// both already on the device: the fused [`row_ops::optimizer_step`]
    /// computes every new row and its state beside the table, and only when
    /// all are finite are they scattered back in place. A step that would
    /// overflow writes nothing ([`EngineError::NonFiniteUpdate`]).
    pub fn apply_on_device(&self, ids: &RowIds, grads: &Tensor) -> Result<(), EngineError> {
        let tensors = self.tensors.write();
        let step = row_ops::optimizer_step(
            &self.spec.optimizer,
            &tensors.weights,
            tensors.state.as_ref(),
            ids,
            grads,
        )
        .map_err(backend_error)?;
        if let Some(i) = step.first_non_finite {
            let rows = ids.to_host().map_err(backend_error)?;
            return Err(EngineError::NonFiniteUpdate { row: rows[i] });
        }
        let write = || -> candle_core::Result<()> {
            row_ops::scatter_rows(&tensors.weights, ids, &step.weights)?;
            if let (Some(state), Some(new_state)) = (&tensors.state, &step.state) {
                row_ops::scatter_rows(state, ids, new_state)?;
            }
            Ok(())
        };
        write().map_err(backend_error)
    }

    fn gather_impl(&self, plan: &GatherPlan) -> candle_core::Result<Vec<f32>> {
        if plan.rows.is_empty() {
            return Ok(vec![0.0; plan.num_slots * self.spec.dim]);
        }
        if plan.is_one_row_per_slot() {
            let gathered = self.gather_on_device(&self.upload_rows(&plan.rows)?)?;
            return self.download(&gathered);
        }
        let groups = plan.grouped_by_slot();
        let n = groups.rows.len();
        let gathered = self.gather_on_device(&self.upload_rows(&groups.rows)?)?;
        let weights = Tensor::from_vec(groups.weights, n, &self.device)?;
        let pooled = row_ops::segment_sum(&gathered, &weights, &groups.offsets)?;
        self.download(&pooled)
    }

    fn apply_impl(&self, update: &RowGradients) -> Result<(), EngineError> {
        if update.rows.is_empty() {
            return Ok(());
        }
        let upload = || -> candle_core::Result<_> {
            let ids = self.upload_rows(&update.rows)?;
            let grads = Tensor::from_slice(
                &update.grads,
                (update.rows.len(), self.spec.dim),
                &self.device,
            )?;
            Ok((ids, grads))
        };
        let (ids, grads) = upload().map_err(backend_error)?;
        self.apply_on_device(&ids, &grads)
    }

    fn read_impl(&self, rows: &[u64]) -> candle_core::Result<RowData> {
        if rows.is_empty() {
            return Ok(RowData::default());
        }
        let ids = self.upload_rows(rows)?;
        let tensors = self.tensors.read();
        let weights = row_ops::gather_rows(&tensors.weights, &ids)?;
        let state = match &tensors.state {
            Some(state) => self.download(&row_ops::gather_rows(state, &ids)?)?,
            None => Vec::new(),
        };
        Ok(RowData {
            weights: self.download(&weights)?,
            state,
        })
    }

    fn write_impl(&self, rows: &[u64], data: &RowData) -> candle_core::Result<()> {
        // Rows written twice keep the last write, as on the CPU backend; the
        // device scatter needs unique rows.
        let (rows, data) = last_write_wins(rows, data, self.spec.dim, self.state_width);
        if rows.is_empty() {
            return Ok(());
        }
        let (n, d) = (rows.len(), self.spec.dim);
        let ids = self.upload_rows(&rows)?;
        let weights = Tensor::from_vec(data.weights, (n, d), &self.device)?;
        let tensors = self.tensors.write();
        row_ops::scatter_rows(&tensors.weights, &ids, &weights)?;
        if let Some(state) = &tensors.state {
            let values = Tensor::from_vec(data.state, (n, self.state_width), &self.device)?;
            row_ops::scatter_rows(state, &ids, &values)?;
        }
        Ok(())
    }
}

/// `rows` and `data` without earlier writes of a row written again later.
fn last_write_wins(
    rows: &[u64],
    data: &RowData,
    dim: usize,
    state_width: usize,
) -> (Vec<u64>, RowData) {
    let mut last = std::collections::HashMap::with_capacity(rows.len());
    for (i, &row) in rows.iter().enumerate() {
        last.insert(row, i);
    }
    if last.len() == rows.len() {
        return (rows.to_vec(), data.clone());
    }
    let keep: Vec<usize> = (0..rows.len()).filter(|&i| last[&rows[i]] == i).collect();
    let pick = |values: &[f32], width: usize| -> Vec<f32> {
        keep.iter()
            .flat_map(|&i| &values[i * width..(i + 1) * width])
            .copied()
            .collect()
    };
    (
        keep.iter().map(|&i| rows[i]).collect(),
        RowData {
            weights: pick(&data.weights, dim),
            state: pick(&data.state, state_width),
        },
    )
}

impl Backend for CandleBackend {
    fn name(&self) -> String {
        match self.device.location() {
            DeviceLocation::Cpu => "candle-cpu".to_owned(),
            DeviceLocation::Cuda { gpu_id } => format!("candle-cuda:{gpu_id}"),
            DeviceLocation::Metal { gpu_id } => format!("candle-metal:{gpu_id}"),
        }
    }

    fn spec(&self) -> &StorageSpec {
        &self.spec
    }

    fn gather(&self, plan: &GatherPlan) -> Result<Vec<f32>, EngineError> {
        plan.check(&self.spec)?;
        self.gather_impl(plan).map_err(backend_error)
    }

    fn apply(&self, update: &RowGradients) -> Result<(), EngineError> {
        update.check(&self.spec)?;
        self.apply_impl(update)
    }

    fn read_rows(&self, rows: &[u64]) -> Result<RowData, EngineError> {
        super::check_rows(&self.spec, rows)?;
        self.read_impl(rows).map_err(backend_error)
    }

    fn write_rows(&self, rows: &[u64], data: &RowData) -> Result<(), EngineError> {
        super::check_rows(&self.spec, rows)?;
        data.check(&self.spec, rows.len())?;
        self.write_impl(rows, data).map_err(backend_error)
    }
}
