//! `NativeClient`: one [`featmux_client::Client`] (one HTTP/2 connection,
//! safe to share between Python threads) driven by a process-wide tokio
//! runtime. Every call converts its arguments while holding the GIL, then
//! releases it while it waits on the network, so other Python threads (a
//! data loader, a second trainer thread) run meanwhile.
//!
//! A call runs as a task on the runtime's workers, which also drive the
//! connection; the calling thread sleeps until the task is done. Polling the
//! call on the calling thread instead (`block_on` of the call itself) woke
//! that thread for every frame of a multi-megabyte answer and decoded the
//! answer there: 30 % more client CPU per 4,096 × 26 lookup.

use std::future::Future;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use featmux_client::{pb, Client, ClientError, ClientOptions, TrainReply, TrainStream};
use numpy::PyReadonlyArray1;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::batch::{self, Blocks};
use crate::config;
use crate::errors;

/// The runtime every client's calls run on (created at first use).
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .thread_name("featmux-client")
            .enable_all()
            .build()
            .expect("a tokio runtime for the featmux client")
    })
}

/// A connection to a featmux server's gRPC port.
#[pyclass(module = "featmux._native", frozen)]
pub struct NativeClient {
    client: Client,
}

/// A call deadline given in seconds, refused if negative or not finite.
pub(crate) fn deadline(seconds: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds)
        .map_err(|e| PyValueError::new_err(format!("timeout {seconds}: {e}")))
}

/// Runs `call` as a task on the client runtime and waits for it without
/// the GIL (every native client's calls go through here).
pub(crate) fn run_task<T, F>(py: Python<'_>, call: F) -> PyResult<T>
where
    T: Send + 'static,
    F: Future<Output = Result<T, ClientError>> + Send + 'static,
{
    let task = runtime().spawn(call);
    match py.detach(|| runtime().block_on(task)) {
        Ok(answer) => answer.map_err(errors::to_py),
        Err(join) => Err(PyRuntimeError::new_err(format!(
            "the featmux client task failed: {join}"
        ))),
    }
}

impl NativeClient {
    /// Wraps a connected client (a cluster client's shard, for admin calls).
    pub(crate) fn from_client(client: Client) -> Self {
        NativeClient { client }
    }

    /// Runs `call` (given its own handle on the client) as a runtime task,
    /// waiting for it without the GIL.
    fn run<T, F>(&self, py: Python<'_>, call: impl FnOnce(Client) -> F) -> PyResult<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, ClientError>> + Send + 'static,
    {
        run_task(py, call(self.client.clone()))
    }
}

#[pymethods]
impl NativeClient {
    /// Connects to `addr` (`http://host:port`, `https://…` or
    /// `unix:///path`), retrying while the server is not up yet; lookups
    /// ask for answers in `lookup_precision`, pushes send gradients in
    /// `push_precision` (`f32`, `f16` or `bf16`).
    #[new]
    #[pyo3(signature = (addr, token=None, ca_cert=None, timeout=30.0, retries=5, connections=4, lookup_precision="f32", push_precision="f32"))]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    fn new(
        py: Python<'_>,
        addr: String,
        token: Option<String>,
        ca_cert: Option<Vec<u8>>,
        timeout: f64,
        retries: u32,
        connections: usize,
        lookup_precision: &str,
        push_precision: &str,
    ) -> PyResult<Self> {
        let precision = |name| pb::Precision::from_name(name).map_err(PyValueError::new_err);
        let options = ClientOptions {
            token,
            ca_cert,
            timeout: deadline(timeout)?,
            retries,
            connections,
            lookup_precision: precision(lookup_precision)?,
            push_precision: precision(push_precision)?,
            ..ClientOptions::new(addr)
        };
        let client = py
            .detach(|| runtime().block_on(Client::connect(options)))
            .map_err(errors::to_py)?;
        Ok(NativeClient { client })
    }

    /// Looks up a batch: one `[examples, width]` array per feature, in batch
    /// order, and the ticket when one was asked for.
    #[pyo3(signature = (table, batch, ticket=false))]
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        table: String,
        batch: &Bound<'py, PyAny>,
        ticket: bool,
    ) -> PyResult<(Blocks<'py>, Option<u64>)> {
        let batch = batch::to_batch(batch)?;
        let looked_up = self.run(py, move |c| async move {
            c.lookup(&table, &batch, ticket).await
        })?;
        Ok((
            batch::to_arrays(py, looked_up.embeddings)?,
            looked_up.ticket,
        ))
    }

    /// Pushes gradients (one block per batch feature, in batch order) for a
    /// batch or for the batch of an earlier lookup's ticket.
    #[pyo3(signature = (table, gradients, batch=None, ticket=None))]
    fn push<'py>(
        &self,
        py: Python<'py>,
        table: String,
        gradients: Vec<PyReadonlyArray1<'py, f32>>,
        batch: Option<&Bound<'py, PyAny>>,
        ticket: Option<u64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let grads = batch::to_gradients(gradients)?;
        let pushed = match (batch, ticket) {
            (Some(batch), None) => {
                let batch = batch::to_batch(batch)?;
                self.run(
                    py,
                    move |c| async move { c.push(&table, &batch, grads).await },
                )?
            }
            (None, Some(ticket)) => self.run(py, move |c| async move {
                c.push_ticket(&table, ticket, grads).await
            })?,
            _ => {
                return Err(PyValueError::new_err(
                    "push needs either a batch or a ticket, not both",
                ))
            }
        };
        push_to_dict(py, &pushed)
    }

    /// Creates a table with its first features (one atomic change).
    fn create_table<'py>(
        &self,
        py: Python<'py>,
        table: &Bound<'py, PyDict>,
        features: &Bound<'py, PyList>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let table = config::table_from_dict(table)?;
        let features = config::features_from_list(features)?;
        let info = self.run(
            py,
            move |c| async move { c.create_table(table, features).await },
        )?;
        config::table_info_to_dict(py, &info)
    }

    /// Registers features (all or none).
    fn add_features<'py>(
        &self,
        py: Python<'py>,
        table: String,
        features: &Bound<'py, PyList>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let features = config::features_from_list(features)?;
        let info = self.run(py, move |c| async move {
            c.add_features(&table, features).await
        })?;
        config::table_info_to_dict(py, &info)
    }

    /// One table's configuration, features and sizes.
    fn table<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyDict>> {
        let info = self.run(py, move |c| async move { c.get_table(&name).await })?;
        config::table_info_to_dict(py, &info)
    }

    /// Every table.
    fn tables<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let tables = self.run(py, move |c| async move { c.list_tables().await })?;
        tables
            .iter()
            .map(|t| config::table_info_to_dict(py, t))
            .collect()
    }

    /// Drops a table and its stored rows.
    fn drop_table(&self, py: Python<'_>, name: String) -> PyResult<()> {
        self.run(py, move |c| async move { c.drop_table(&name).await })
    }

    /// Flushes, then takes a checkpoint of every table.
    fn create_checkpoint<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let checkpoint = self.run(py, |c| async move { c.create_checkpoint().await })?;
        checkpoint_to_dict(py, &checkpoint)
    }

    /// Checkpoints, oldest first.
    fn checkpoints<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let checkpoints = self.run(py, move |c| async move { c.list_checkpoints().await })?;
        checkpoints
            .iter()
            .map(|c| checkpoint_to_dict(py, c))
            .collect()
    }

    /// Deletes a checkpoint.
    fn delete_checkpoint(&self, py: Python<'_>, id: u64) -> PyResult<()> {
        self.run(py, move |c| async move { c.delete_checkpoint(id).await })
    }

    /// Restores `table` from checkpoint `id`, in place or into `into`.
    #[pyo3(signature = (id, table, into=None))]
    fn restore_checkpoint<'py>(
        &self,
        py: Python<'py>,
        id: u64,
        table: String,
        into: Option<String>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let info = self.run(py, move |c| async move {
            c.restore_checkpoint(id, &table, into.as_deref()).await
        })?;
        config::table_info_to_dict(py, &info)
    }

    /// Opens a Train stream: lookups and pushes pipelined on one HTTP/2
    /// stream, answered in order.
    fn train(&self, py: Python<'_>) -> PyResult<NativeTrainStream> {
        let stream = self.run(py, move |c| async move { c.train().await })?;
        Ok(NativeTrainStream {
            stream: Mutex::new(stream),
        })
    }

    /// Server-wide counters (training and flushed versions, flushes, bytes).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = self.run(py, move |c| async move { c.stats().await })?;
        let out = PyDict::new(py);
        out.set_item("version", stats.version)?;
        out.set_item("flushed_version", stats.flushed_version)?;
        out.set_item("flushes", stats.flushes)?;
        out.set_item("flush_failures", stats.flush_failures)?;
        out.set_item("rows_flushed", stats.rows_flushed)?;
        out.set_item("database_bytes", stats.database_bytes)?;
        out.set_item("live_tickets", stats.live_tickets)?;
        let tables = stats
            .tables
            .iter()
            .map(|t| config::table_info_to_dict(py, t))
            .collect::<PyResult<Vec<_>>>()?;
        out.set_item("tables", tables)?;
        Ok(out)
    }
}

/// An open Train stream. Sends return the request's id at once; `recv`
/// waits for the next answer (in request order).
#[pyclass(module = "featmux._native", frozen)]
pub struct NativeTrainStream {
    stream: Mutex<TrainStream>,
}

impl NativeTrainStream {
    /// Runs `op` on the stream without the GIL.
    fn with_stream<T: Send>(
        &self,
        py: Python<'_>,
        op: impl AsyncFnOnce(&mut TrainStream) -> Result<T, ClientError> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            let mut stream = self.stream.lock().unwrap_or_else(|e| e.into_inner());
            runtime().block_on(op(&mut stream))
        })
        .map_err(errors::to_py)
    }
}

#[pymethods]
impl NativeTrainStream {
    /// Sends a lookup; returns its request id.
    #[pyo3(signature = (table, batch, ticket=true))]
    fn send_lookup<'py>(
        &self,
        py: Python<'py>,
        table: String,
        batch: &Bound<'py, PyAny>,
        ticket: bool,
    ) -> PyResult<u64> {
        let batch = batch::to_batch(batch)?;
        self.with_stream(py, async |s| s.send_lookup(&table, batch, ticket).await)
    }

    /// Sends a push of a ticket's gradients; returns its request id.
    fn send_push<'py>(
        &self,
        py: Python<'py>,
        table: String,
        ticket: u64,
        gradients: Vec<PyReadonlyArray1<'py, f32>>,
    ) -> PyResult<u64> {
        let grads = batch::to_gradients(gradients)?;
        self.with_stream(py, async |s| {
            s.send_push_ticket(&table, ticket, grads).await
        })
    }

    /// Asks for the stream's shared-memory region (a stream on the server's
    /// Unix socket) and maps it; returns a new descriptor of it, which the
    /// caller owns (and closes once it has mapped it too), and its size.
    fn open_region(&self, py: Python<'_>, bytes: u64) -> PyResult<(i32, u64)> {
        let (file, len) = self.with_stream(py, async |s| {
            let region = s.open_region(bytes).await?;
            let file = region
                .try_clone_file()
                .map_err(|e| ClientError::Response(format!("cannot pass the region on: {e}")))?;
            Ok((file, region.len() as u64))
        })?;
        Ok((std::os::fd::IntoRawFd::into_raw_fd(file), len))
    }

    /// A lookup whose blocks the server writes into the region from
    /// `offset`: `([(feature, rows, width, offset)], ticket)`.
    fn lookup_into_region<'py>(
        &self,
        py: Python<'py>,
        table: String,
        batch: &Bound<'py, PyAny>,
        ticket: bool,
        offset: u64,
    ) -> PyResult<RegionAnswer> {
        let batch = batch::to_batch(batch)?;
        let answer = self.with_stream(py, async |s| {
            s.lookup_into_region(&table, batch, ticket, offset).await
        })?;
        let blocks = answer
            .blocks
            .into_iter()
            .map(|b| (b.feature, b.rows, b.width, b.offset))
            .collect();
        Ok((blocks, (answer.ticket != 0).then_some(answer.ticket)))
    }

    /// Pushes a ticket's gradients, read by the server from the region:
    /// `gradients` are `(feature, offset, bytes)` in batch order.
    fn push_from_region<'py>(
        &self,
        py: Python<'py>,
        table: String,
        ticket: u64,
        gradients: Vec<(String, u64, u64)>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let gradients = region_gradients(gradients);
        let pushed = self.with_stream(py, async |s| {
            s.push_ticket_from_region(&table, ticket, gradients).await
        })?;
        push_to_dict(py, &pushed)
    }

    /// Pushes the gradients of `batch` (no ticket), read by the server from
    /// the region as in `push_from_region`; the batch goes through the
    /// region too, encoded from `batch_offset` where it fits.
    fn push_batch_from_region<'py>(
        &self,
        py: Python<'py>,
        table: String,
        batch: &Bound<'py, PyAny>,
        gradients: Vec<(String, u64, u64)>,
        batch_offset: u64,
    ) -> PyResult<Bound<'py, PyDict>> {
        let batch = batch::to_batch(batch)?;
        let gradients = region_gradients(gradients);
        let pushed = self.with_stream(py, async |s| {
            s.push_batch_from_region(&table, batch, gradients, batch_offset)
                .await
        })?;
        push_to_dict(py, &pushed)
    }

    /// The next answer: `(id, "lookup", [(feature, array)], ticket)`,
    /// `(id, "push", {version, entries, unique_rows}, None)`, or
    /// `(id, "error", exception, None)` for a request the server refused
    /// (the stream stays open).
    fn recv<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let (id, reply) = self.with_stream(py, async |s| s.recv().await)?;
        match reply {
            Ok(TrainReply::Lookup(looked_up)) => {
                let blocks = batch::to_arrays(py, looked_up.embeddings)?;
                (id, "lookup", blocks, looked_up.ticket).into_pyobject(py)
            }
            Ok(TrainReply::Push(pushed)) => {
                (id, "push", push_to_dict(py, &pushed)?, None::<u64>).into_pyobject(py)
            }
            // This stream sends no region messages, so it gets no such answers.
            Ok(other @ (TrainReply::RegionOpened(_) | TrainReply::RegionLookup(_))) => {
                Err(PyRuntimeError::new_err(format!(
                    "an answer this stream did not ask for: {other:?}"
                )))
            }
            Err(e) => (id, "error", errors::to_py(e).into_value(py), None::<u64>).into_pyobject(py),
        }
    }
}

/// A region lookup's blocks `(feature, rows, width, offset)` and ticket.
type RegionAnswer = (Vec<(String, u32, u32, u64)>, Option<u64>);

fn push_to_dict<'py>(py: Python<'py>, p: &pb::PushResponse) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("version", p.version)?;
    out.set_item("entries", p.entries)?;
    out.set_item("unique_rows", p.unique_rows)?;
    Ok(out)
}

fn checkpoint_to_dict<'py>(py: Python<'py>, c: &pb::Checkpoint) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("id", c.id)?;
    out.set_item("version", c.version)?;
    out.set_item("created_unix_ms", c.created_unix_ms)?;
    out.set_item("tables", &c.tables)?;
    Ok(out)
}

/// Gradient blocks in the region as Python gives them: `(feature, offset,
/// bytes)`.
fn region_gradients(gradients: Vec<(String, u64, u64)>) -> Vec<pb::RegionGradient> {
    gradients
        .into_iter()
        .map(|(feature, offset, bytes)| pb::RegionGradient {
            feature,
            offset,
            bytes,
        })
        .collect()
}
