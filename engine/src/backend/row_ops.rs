//! The row primitives the candle backend is built from, as candle
//! custom ops with a CPU and (feature `cuda`) a CUDA implementation:
//!
//! - [`gather_rows`]: `table[ids]` → `[n, width]`.
//! - [`segment_sum`]: pools gathered rows into output slots, CSR-style.
//! - [`scatter_rows`]: writes `[n, width]` rows into the table in place.
//! - [`optimizer_step`]: one fused optimizer step for a set of rows.
//!
//! candle's own `index_select` / `index_add` / `scatter_set` compute the
//! first three, but on CUDA the last two run one thread per column over all
//! rows serially and `index_select` indexes with 32 bits; `row_ops.cu`
//! explains. An optimizer written as candle tensor ops took two gathers,
//! about seven ops (a launch, an allocation and a pass over `[n, dim]`
//! each) and a separate finiteness check: 10× under the device's copy
//! bandwidth on an H100, and candle's `sum_keepdim` gave 0 for rows of 8
//! floats there.
//! Tensors handed to these ops must be contiguous f32 (rows, values).
//!
//! The CUDA kernels do no bounds checks (one per thread would cost
//! bandwidth), so every index is checked on the host before it reaches a
//! kernel: row ids travel as [`RowIds`], checked against a row count when
//! they are made, and pooling offsets are checked by [`segment_sum`]. A bad
//! index is an error, never an out-of-bounds access.

use candle_core::op::BackpropOp;
use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Device, InplaceOp3, Layout, Result, Shape, Storage,
    Tensor,
};

use crate::optimizer::{all_finite, Optimizer};

/// Row ids on a device, every one checked to be below `bound` when they
/// were made. The ops that index a table take these, never a raw id tensor,
/// and refuse a table with fewer than `bound` rows.
#[derive(Debug, Clone)]
pub struct RowIds {
    ids: Tensor,
    len: usize,
    bound: u64,
}

impl RowIds {
    /// Uploads `rows` to `device` as i64, refusing any row `>= bound`.
    pub fn new(rows: &[u64], bound: u64, device: &Device) -> Result<Self> {
        if let Some(&bad) = rows.iter().find(|&&row| row >= bound) {
            candle_core::bail!("row id {bad} is outside a table of {bound} rows")
        }
        let ids: Vec<i64> = rows.iter().map(|&row| row as i64).collect();
        Ok(RowIds {
            ids: Tensor::from_vec(ids, rows.len(), device)?,
            len: rows.len(),
            bound,
        })
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no ids.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The ids, downloaded (to name a row in an error).
    pub fn to_host(&self) -> Result<Vec<u64>> {
        Ok(self
            .ids
            .to_vec1::<i64>()?
            .into_iter()
            .map(|id| id as u64)
            .collect())
    }

    /// Refuses `table` (`[rows, width]`) unless every id is one of its rows.
    fn check_table(&self, op: &str, table: &Tensor) -> Result<()> {
        let (rows, _) = table.dims2()?;
        if (rows as u64) < self.bound {
            candle_core::bail!(
                "{op}: ids were checked against {} rows, the table has {rows}",
                self.bound
            )
        }
        Ok(())
    }
}

/// Gathers rows: `out[i] = table[ids[i]]`; `table [rows, width]` f32.
pub fn gather_rows(table: &Tensor, ids: &RowIds) -> Result<Tensor> {
    ids.check_table("gather_rows", table)?;
    table.apply_op2_no_bwd(&ids.ids, &GatherRows)
}

/// Pools rows into segments: `out[s] = Σ weights[e] · rows[e]` for `e` in
/// `offsets[s]..offsets[s + 1]`, summed in entry order from zero (the CPU
/// backend's order, so results match bit for bit). `rows [n, width]` f32,
/// `weights [n]` f32, `offsets` (segments + 1 of them) non-decreasing, from
/// 0 to n: checked here, then uploaded.
pub fn segment_sum(rows: &Tensor, weights: &Tensor, offsets: &[u32]) -> Result<Tensor> {
    let (n, _) = rows.dims2()?;
    if weights.dims1()? != n {
        candle_core::bail!("segment_sum: {} weights for {n} rows", weights.dims1()?)
    }
    let ordered = offsets.windows(2).all(|w| w[0] <= w[1]);
    if offsets.first() != Some(&0) || offsets.last() != Some(&(n as u32)) || !ordered {
        candle_core::bail!("segment_sum: offsets must rise from 0 to {n}")
    }
    let offsets = Tensor::from_slice(offsets, offsets.len(), rows.device())?;
    rows.apply_op3_no_bwd(weights, &offsets, &SegmentSum)
}

/// Overwrites rows in place: `table[ids[i]] = src[i]`, `src [ids.len(),
/// width]`; `ids` must be unique (or the last write of a row is arbitrary).
pub fn scatter_rows(table: &Tensor, ids: &RowIds, src: &Tensor) -> Result<()> {
    ids.check_table("scatter_rows", table)?;
    let (_, width) = table.dims2()?;
    if src.dims2()? != (ids.len(), width) {
        candle_core::bail!(
            "scatter_rows: {:?} source rows for {} ids of width {width}",
            src.dims(),
            ids.len()
        )
    }
    table.inplace_op3(&ids.ids, src, &ScatterRows)
}

/// The rows one optimizer step would write, still beside the tables: the
/// caller writes them back with [`scatter_rows`] only when every value is
/// finite, so a refused step changes nothing.
#[derive(Debug)]
pub struct OptimizerStep {
    /// `[n, dim]` new weights, row `i` for `ids[i]`.
    pub weights: Tensor,
    /// `[n, state_width]` new state; `None` for optimizers without state.
    pub state: Option<Tensor>,
    /// The least `i` whose new weights or state hold a NaN or an infinity.
    pub first_non_finite: Option<usize>,
}

/// One optimizer step for unique rows `ids`, fused: reads each row and its
/// state from `weights [rows, dim]` / `state [rows, state_width]`, applies
/// `optimizer` with gradients `grads [n, dim]` and returns the new values.
/// On the CPU device it runs [`Optimizer::step`] itself (bit-identical to
/// the CPU backend); on CUDA one kernel does the gathers, the formulas and
/// the finiteness check (`row_ops.cu`, `featmux_optimizer_step`).
pub fn optimizer_step(
    optimizer: &Optimizer,
    weights: &Tensor,
    state: Option<&Tensor>,
    ids: &RowIds,
    grads: &Tensor,
) -> Result<OptimizerStep> {
    const OP: &str = "optimizer_step";
    ids.check_table(OP, weights)?;
    let (_, dim) = weights.dims2()?;
    if grads.dims2()? != (ids.len(), dim) {
        candle_core::bail!(
            "{OP}: {:?} gradients for {} ids of width {dim}",
            grads.dims(),
            ids.len()
        )
    }
    let state_width = optimizer.state_width(dim);
    match state {
        Some(state) => {
            ids.check_table(OP, state)?;
            if state.dims2()?.1 != state_width {
                candle_core::bail!(
                    "{OP}: state rows of {} floats, {} keeps {state_width}",
                    state.dims2()?.1,
                    optimizer.name()
                )
            }
        }
        None if state_width > 0 => {
            candle_core::bail!("{OP}: {} needs its state", optimizer.name())
        }
        None => {}
    }
    if ids.is_empty() {
        let empty = |width| Tensor::zeros((0, width), DType::F32, weights.device());
        return Ok(OptimizerStep {
            weights: empty(dim)?,
            state: state.map(|_| empty(state_width)).transpose()?,
            first_non_finite: None,
        });
    }
    let (w_storage, w_layout) = weights.storage_and_layout();
    let (g_storage, g_layout) = grads.storage_and_layout();
    let (i_storage, i_layout) = ids.ids.storage_and_layout();
    let s_guard = state.map(|s| s.storage_and_layout());
    let s_parts = s_guard
        .as_ref()
        .map(|(storage, layout)| (&**storage, *layout));
    let (new_weights, new_state, first_non_finite) =
        match (&*w_storage, &*g_storage, &*i_storage, s_parts) {
            (Storage::Cpu(w), Storage::Cpu(g), Storage::Cpu(i), None) => {
                let table = Rows::cpu(OP, w, w_layout, dim)?;
                cpu_step(optimizer, table, None, i, i_layout, g, g_layout)?
            }
            (Storage::Cpu(w), Storage::Cpu(g), Storage::Cpu(i), Some((Storage::Cpu(s), sl))) => {
                let table = Rows::cpu(OP, w, w_layout, dim)?;
                let state = Rows::cpu(OP, s, sl, state_width)?;
                cpu_step(optimizer, table, Some(state), i, i_layout, g, g_layout)?
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(w), Storage::Cuda(g), Storage::Cuda(i), s) => {
                let s = match s {
                    Some((Storage::Cuda(s), sl)) => Some((s, sl)),
                    None => None,
                    Some(_) => candle_core::bail!("{OP}: the state is on another device"),
                };
                cuda::optimizer_step(optimizer, (w, w_layout), s, (i, i_layout), (g, g_layout))?
            }
            _ => candle_core::bail!("{OP}: the tables, ids and gradients must share one device"),
        };
    let n = ids.len();
    let tensor =
        |storage, width| Tensor::from_storage(storage, (n, width), BackpropOp::none(), false);
    Ok(OptimizerStep {
        weights: tensor(new_weights, dim),
        state: new_state.map(|s| tensor(s, state_width)),
        first_non_finite,
    })
}

/// A table's rows on the CPU device: `width` floats each.
struct Rows<'a> {
    values: &'a [f32],
    width: usize,
}

impl<'a> Rows<'a> {
    fn cpu(op: &str, storage: &'a CpuStorage, layout: &Layout, width: usize) -> Result<Self> {
        Ok(Rows {
            values: contiguous::<f32>(op, storage, layout)?,
            width,
        })
    }

    fn row(&self, id: i64) -> &'a [f32] {
        let start = id as usize * self.width;
        &self.values[start..start + self.width]
    }
}

type StepOutput = (Storage, Option<Storage>, Option<usize>);

fn cpu_step(
    optimizer: &Optimizer,
    weights: Rows,
    state: Option<Rows>,
    ids: &CpuStorage,
    ids_layout: &Layout,
    grads: &CpuStorage,
    grads_layout: &Layout,
) -> Result<StepOutput> {
    const OP: &str = "optimizer_step";
    let ids = contiguous::<i64>(OP, ids, ids_layout)?;
    let grads = contiguous::<f32>(OP, grads, grads_layout)?;
    let (d, sw) = (weights.width, state.as_ref().map_or(0, |s| s.width));
    let mut new_weights = Vec::with_capacity(ids.len() * d);
    let mut new_state = Vec::with_capacity(ids.len() * sw);
    let mut first_non_finite = None;
    for (i, (&id, g)) in ids.iter().zip(grads.chunks_exact(d)).enumerate() {
        new_weights.extend_from_slice(weights.row(id));
        if let Some(state) = &state {
            new_state.extend_from_slice(state.row(id));
        }
        let w = &mut new_weights[i * d..];
        let s = &mut new_state[i * sw..];
        optimizer.step(w, s, g);
        if first_non_finite.is_none() && !(all_finite(w) && all_finite(s)) {
            first_non_finite = Some(i);
        }
    }
    let cpu = |values| Storage::Cpu(CpuStorage::F32(values));
    Ok((
        cpu(new_weights),
        state.map(|_| cpu(new_state)),
        first_non_finite,
    ))
}

struct GatherRows;
struct SegmentSum;
struct ScatterRows;

fn contiguous<'a, T: candle_core::WithDType>(
    op: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> Result<&'a [T]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: inputs must be contiguous")))?;
    Ok(&storage.as_slice::<T>()?[start..end])
}

/// `[rows, width]` of a 2-D layout.
fn rows_and_width(op: &str, layout: &Layout) -> Result<(usize, usize)> {
    layout
        .shape()
        .dims2()
        .map_err(|_| candle_core::Error::Msg(format!("{op}: expected a 2-D tensor")))
}

impl CustomOp2 for GatherRows {
    fn name(&self) -> &'static str {
        "featmux-gather-rows"
    }

    fn cpu_fwd(
        &self,
        table: &CpuStorage,
        table_layout: &Layout,
        ids: &CpuStorage,
        ids_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, width) = rows_and_width(self.name(), table_layout)?;
        let table = contiguous::<f32>(self.name(), table, table_layout)?;
        let ids = contiguous::<i64>(self.name(), ids, ids_layout)?;
        let mut out = Vec::with_capacity(ids.len() * width);
        for &id in ids {
            let start = id as usize * width;
            out.extend_from_slice(&table[start..start + width]);
        }
        Ok((CpuStorage::F32(out), Shape::from((ids.len(), width))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        table: &candle_core::CudaStorage,
        table_layout: &Layout,
        ids: &candle_core::CudaStorage,
        ids_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::gather_rows(table, table_layout, ids, ids_layout)
    }
}

impl CustomOp3 for SegmentSum {
    fn name(&self) -> &'static str {
        "featmux-segment-sum"
    }

    fn cpu_fwd(
        &self,
        rows: &CpuStorage,
        rows_layout: &Layout,
        weights: &CpuStorage,
        weights_layout: &Layout,
        offsets: &CpuStorage,
        offsets_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, width) = rows_and_width(self.name(), rows_layout)?;
        let rows = contiguous::<f32>(self.name(), rows, rows_layout)?;
        let weights = contiguous::<f32>(self.name(), weights, weights_layout)?;
        let offsets = contiguous::<u32>(self.name(), offsets, offsets_layout)?;
        let segments = offsets.len().saturating_sub(1);
        let mut out = vec![0.0f32; segments * width];
        for (s, bounds) in offsets.windows(2).enumerate() {
            let dst = &mut out[s * width..(s + 1) * width];
            for e in bounds[0] as usize..bounds[1] as usize {
                let src = &rows[e * width..(e + 1) * width];
                for (o, x) in dst.iter_mut().zip(src) {
                    *o += weights[e] * x;
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((segments, width))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        rows: &candle_core::CudaStorage,
        rows_layout: &Layout,
        weights: &candle_core::CudaStorage,
        weights_layout: &Layout,
        offsets: &candle_core::CudaStorage,
        offsets_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::segment_sum(
            rows,
            rows_layout,
            weights,
            weights_layout,
            offsets,
            offsets_layout,
        )
    }
}

impl InplaceOp3 for ScatterRows {
    fn name(&self) -> &'static str {
        "featmux-scatter-rows"
    }

    fn cpu_fwd(
        &self,
        table: &mut CpuStorage,
        table_layout: &Layout,
        ids: &CpuStorage,
        ids_layout: &Layout,
        src: &CpuStorage,
        src_layout: &Layout,
    ) -> Result<()> {
        let (_, width) = rows_and_width(self.name(), table_layout)?;
        let ids = contiguous::<i64>(self.name(), ids, ids_layout)?;
        let src = contiguous::<f32>(self.name(), src, src_layout)?;
        let (start, end) = table_layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg(format!("{}: the table must be contiguous", self.name()))
        })?;
        let CpuStorage::F32(table) = table else {
            candle_core::bail!("{}: the table must be f32", self.name())
        };
        let table = &mut table[start..end];
        for (&id, row) in ids.iter().zip(src.chunks_exact(width)) {
            let at = id as usize * width;
            table[at..at + width].copy_from_slice(row);
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        table: &mut candle_core::CudaStorage,
        table_layout: &Layout,
        ids: &candle_core::CudaStorage,
        ids_layout: &Layout,
        src: &candle_core::CudaStorage,
        src_layout: &Layout,
    ) -> Result<()> {
        cuda::scatter_rows(table, table_layout, ids, ids_layout, src, src_layout)
    }
}

/// Launches of `row_ops.cu`.
#[cfg(feature = "cuda")]
mod cuda {
    use std::sync::OnceLock;

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaFunction, CudaSlice, CudaView, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{cudarc, CudaDType, WrapErr};
    use candle_core::{CudaDevice, CudaStorage, Layout, Result, Shape, Storage};

    use crate::optimizer::Optimizer;

    const SOURCE: &str = include_str!("row_ops.cu");
    const MODULE: &str = "featmux_row_ops";

    /// PTX of `row_ops.cu`, compiled once per process by NVRTC (for its
    /// default virtual architecture; the driver JIT-compiles it for the GPU).
    fn ptx() -> Result<&'static str> {
        static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
        PTX.get_or_init(|| {
            cudarc::nvrtc::compile_ptx(SOURCE)
                .map(|ptx| ptx.to_src())
                .map_err(|e| format!("compiling row_ops.cu with NVRTC: {e}"))
        })
        .as_deref()
        .map_err(|e| candle_core::Error::Msg(e.clone()))
    }

    /// Grid-stride launch over `elements` threads' worth of work.
    fn config(elements: usize) -> LaunchConfig {
        const THREADS: usize = 256;
        let blocks = elements.div_ceil(THREADS).clamp(1, 1 << 20);
        LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Queues `func` on `device`'s stream over `elements` work items, `args`
    /// in the kernel's parameter order. It expands to the unsafe launch, so
    /// it only compiles inside `unsafe { }`, next to the caller's SAFETY note.
    macro_rules! launch {
        ($device:expr, $func:expr, $elements:expr; $($arg:expr),+ $(,)?) => {{
            let stream = $device.cuda_stream();
            let mut builder = stream.launch_builder(&$func);
            $(builder.arg($arg);)+
            builder.launch(config($elements)).w().map(drop)
        }};
    }

    fn view<'a, T: CudaDType>(
        storage: &'a CudaStorage,
        layout: &Layout,
    ) -> Result<CudaView<'a, T>> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("row ops: inputs must be contiguous".into()))?;
        Ok(storage.as_cuda_slice::<T>()?.slice(start..end))
    }

    fn function(device: &CudaDevice, name: &str) -> Result<CudaFunction> {
        Ok(device
            .get_or_load_custom_func(name, MODULE, ptx()?)?
            .into_cuda_function())
    }

    /// The kernel `name`, or its float4 variant when the width and every
    /// start offset are multiples of 4 (16-byte accesses), and the row width
    /// in the kernel's units.
    fn row_kernel(
        device: &CudaDevice,
        name: &str,
        width: usize,
        layouts: &[&Layout],
    ) -> Result<(CudaFunction, u64)> {
        let vectorized = width % 4 == 0 && layouts.iter().all(|l| l.start_offset() % 4 == 0);
        Ok(if vectorized {
            (function(device, &format!("{name}_x4"))?, (width / 4) as u64)
        } else {
            (function(device, name)?, width as u64)
        })
    }

    pub fn gather_rows(
        table: &CudaStorage,
        table_layout: &Layout,
        ids: &CudaStorage,
        ids_layout: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (_, width) = super::rows_and_width("featmux-gather-rows", table_layout)?;
        let device = table.device().clone();
        let table_view = view::<f32>(table, table_layout)?;
        let ids_view = view::<i64>(ids, ids_layout)?;
        let n = ids_view.len();
        // SAFETY: the kernel writes every element before anyone reads it.
        let out: CudaSlice<f32> = unsafe { device.alloc::<f32>(n * width)? };
        if n > 0 {
            let (func, units) = row_kernel(&device, "featmux_gather_rows", width, &[table_layout])?;
            let n64 = n as u64;
            // SAFETY: argument types match the kernel; `gather_rows` checked every
            // id against the table (`RowIds`).
            unsafe {
                launch!(device, func, n * units as usize;
                    &table_view, &ids_view, &out, &n64, &units)
            }?;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, device),
            Shape::from((n, width)),
        ))
    }

    pub fn segment_sum(
        rows: &CudaStorage,
        rows_layout: &Layout,
        weights: &CudaStorage,
        weights_layout: &Layout,
        offsets: &CudaStorage,
        offsets_layout: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (_, width) = super::rows_and_width("featmux-segment-sum", rows_layout)?;
        let device = rows.device().clone();
        let rows_view = view::<f32>(rows, rows_layout)?;
        let weights_view = view::<f32>(weights, weights_layout)?;
        let offsets_view = view::<u32>(offsets, offsets_layout)?;
        let segments = offsets_view.len().saturating_sub(1);
        // SAFETY: the kernel writes every element before anyone reads it.
        let out: CudaSlice<f32> = unsafe { device.alloc::<f32>(segments * width)? };
        if segments > 0 {
            let func = function(&device, "featmux_segment_sum")?;
            let (segments64, width64) = (segments as u64, width as u64);
            // SAFETY: argument types match the kernel; `segment_sum` checked that
            // the offsets rise from 0 to the number of rows.
            unsafe {
                launch!(device, func, segments * width;
                    &rows_view, &weights_view, &offsets_view, &out, &segments64, &width64)
            }?;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, device),
            Shape::from((segments, width)),
        ))
    }

    pub fn scatter_rows(
        table: &mut CudaStorage,
        table_layout: &Layout,
        ids: &CudaStorage,
        ids_layout: &Layout,
        src: &CudaStorage,
        src_layout: &Layout,
    ) -> Result<()> {
        let (_, width) = super::rows_and_width("featmux-scatter-rows", table_layout)?;
        let device = table.device().clone();
        let (start, end) = table_layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("row ops: the table must be contiguous".into())
        })?;
        let ids_view = view::<i64>(ids, ids_layout)?;
        let src_view = view::<f32>(src, src_layout)?;
        let n = ids_view.len();
        if n == 0 {
            return Ok(());
        }
        let (func, units) = row_kernel(
            &device,
            "featmux_scatter_rows",
            width,
            &[table_layout, src_layout],
        )?;
        let mut table_view = table.as_cuda_slice_mut::<f32>()?.slice_mut(start..end);
        let n64 = n as u64;
        // SAFETY: argument types match the kernel; `scatter_rows` checked
        // every id against the table (`RowIds`) and `src` has one row per id.
        unsafe {
            launch!(device, func, n * units as usize;
                &mut table_view, &ids_view, &src_view, &n64, &units)
        }
    }

    /// The kernel's `kind` and four hyper-parameters for `optimizer`, in
    /// the order `featmux_optimizer_step` reads them.
    fn kernel_parameters(optimizer: &Optimizer) -> (i32, [f32; 4]) {
        match *optimizer {
            Optimizer::Sgd { lr } => (0, [lr, 0.0, 0.0, 0.0]),
            Optimizer::Adagrad { lr, eps, .. } => (1, [lr, eps, 0.0, 0.0]),
            Optimizer::RowWiseAdagrad { lr, eps, .. } => (2, [lr, eps, 0.0, 0.0]),
            Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => (3, [lr, beta1, beta2, eps]),
            Optimizer::Ftrl {
                alpha,
                beta,
                l1,
                l2,
                ..
            } => (4, [alpha, beta, l1, l2]),
        }
    }

    /// Threads per row: a power of two near a quarter of the row, at most
    /// a warp, so small rows do not leave most of a warp idle.
    fn lanes_per_row(dim: usize) -> u32 {
        dim.div_ceil(4).next_power_of_two().min(32) as u32
    }

    pub fn optimizer_step(
        optimizer: &Optimizer,
        (weights, weights_layout): (&CudaStorage, &Layout),
        state: Option<(&CudaStorage, &Layout)>,
        (ids, ids_layout): (&CudaStorage, &Layout),
        (grads, grads_layout): (&CudaStorage, &Layout),
    ) -> Result<super::StepOutput> {
        let (_, d) = super::rows_and_width("featmux-optimizer-step", weights_layout)?;
        let sw = optimizer.state_width(d);
        let device = weights.device().clone();
        let stream = device.cuda_stream();
        let w_view = view::<f32>(weights, weights_layout)?;
        let ids_view = view::<i64>(ids, ids_layout)?;
        let g_view = view::<f32>(grads, grads_layout)?;
        let n = ids_view.len();
        // `optimizer_step` sends no empty batch here (no zero-size
        // allocation), and without state there is no state buffer.
        // SAFETY: the kernel writes every element before anyone reads it.
        let out_w = unsafe { device.alloc::<f32>(n * d)? };
        let out_s = match sw {
            0 => None,
            // SAFETY: as for `out_w`.
            _ => Some(unsafe { device.alloc::<f32>(n * sw)? }),
        };
        let mut bad = stream.clone_htod(&[u64::MAX]).w()?;
        let func = function(&device, "featmux_optimizer_step")?;
        let (kind, [p0, p1, p2, p3]) = kernel_parameters(optimizer);
        let lanes = lanes_per_row(d);
        let (n64, d64, sw64) = (n as u64, d as u64, sw as u64);
        // Without state the kernel never touches a state pointer: the
        // weights stand in for both.
        let s_view = match state {
            Some((s, layout)) => view::<f32>(s, layout)?,
            None => view::<f32>(weights, weights_layout)?,
        };
        // SAFETY: argument types match the kernel; `optimizer_step`
        // checked every id against both tables (`RowIds`), the gradients'
        // shape and the state's width.
        unsafe {
            launch!(device, func, n * lanes as usize;
                &kind, &p0, &p1, &p2, &p3,
                &w_view, &s_view, &ids_view, &g_view,
                &out_w, out_s.as_ref().unwrap_or(&out_w), &mut bad,
                &n64, &d64, &sw64, &lanes)
        }?;
        let first_bad = stream.clone_dtoh(&bad).w()?[0];
        let storage = |slice| Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, device.clone()));
        Ok((
            storage(out_w),
            out_s.map(storage),
            usize::try_from(first_bad).ok().filter(|&i| i < n),
        ))
    }
}
