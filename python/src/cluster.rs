//! `NativeClusterClient`: the Rust [`ClusterClient`] for Python, so a
//! trainer reaches a table sharded over a cluster with the same routing
//! (planned with the engine's own hashing, stale maps retried, dead shards
//! named) as Rust callers. Calls run as tasks on the client runtime, like
//! [`crate::client::NativeClient`]'s.

use std::sync::Arc;

use featmux_client::{ClientOptions, ClusterClient, ClusterTicket, ReadFrom, ShardPush};
use numpy::PyReadonlyArray1;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::batch::{self, Blocks};
use crate::client::{deadline, run_task, runtime, NativeClient};
use crate::errors;

/// A client of every table of a cluster whose state is in etcd.
#[pyclass(module = "featmux._native", frozen)]
pub struct NativeClusterClient {
    cluster: Arc<ClusterClient>,
}

/// A lookup's plan, for the push of its gradients (opaque to Python).
#[pyclass(module = "featmux._native", frozen)]
pub struct NativeClusterTicket {
    ticket: Arc<ClusterTicket>,
}

impl NativeClusterClient {
    /// Runs `call` (given the cluster client) as a runtime task, waiting
    /// for it without the GIL.
    fn run<T, F>(&self, py: Python<'_>, call: impl FnOnce(Arc<ClusterClient>) -> F) -> PyResult<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, featmux_client::ClientError>> + Send + 'static,
    {
        run_task(py, call(self.cluster.clone()))
    }
}

#[pymethods]
impl NativeClusterClient {
    /// Connects to etcd at `etcd` (`host:port` endpoints); every table is
    /// routed by the state under `prefix`; lookups without a ticket read
    /// from `read_from`, `"shards"` or `"replicas"`.
    #[new]
    #[pyo3(signature = (etcd, prefix, token=None, timeout=30.0, connections=4, read_from="shards"))]
    fn new(
        py: Python<'_>,
        etcd: Vec<String>,
        prefix: String,
        token: Option<String>,
        timeout: f64,
        connections: usize,
        read_from: &str,
    ) -> PyResult<Self> {
        let read_from = match read_from {
            "shards" => ReadFrom::Shards,
            "replicas" => ReadFrom::Replicas,
            other => {
                return Err(PyValueError::new_err(format!(
                    "read_from is \"shards\" or \"replicas\", not {other:?}"
                )))
            }
        };
        let options = ClientOptions {
            token,
            timeout: deadline(timeout)?,
            connections,
            ..ClientOptions::new("")
        };
        let cluster = py
            .detach(|| runtime().block_on(ClusterClient::connect(&etcd, &prefix, options)))
            .map_err(errors::to_py)?;
        Ok(NativeClusterClient {
            cluster: Arc::new(cluster.read_from(read_from)),
        })
    }

    /// Looks up a batch across the shards: one `[examples, width]` array
    /// per feature, and a ticket when asked for.
    #[pyo3(signature = (table, batch, ticket=false))]
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        table: String,
        batch: &Bound<'py, PyAny>,
        ticket: bool,
    ) -> PyResult<(Blocks<'py>, Option<NativeClusterTicket>)> {
        let batch = batch::to_batch(batch)?;
        let (looked_up, planned) = self.run(py, move |c| async move {
            c.lookup(&table, &batch, ticket).await
        })?;
        Ok((
            batch::to_arrays(py, looked_up.embeddings)?,
            planned.map(|t| NativeClusterTicket {
                ticket: Arc::new(t),
            }),
        ))
    }

    /// Pushes gradients (one block per batch feature, in batch order) for
    /// a batch or a lookup's ticket; each shard's answer.
    #[pyo3(signature = (table, gradients, batch=None, ticket=None))]
    fn push<'py>(
        &self,
        py: Python<'py>,
        table: String,
        gradients: Vec<PyReadonlyArray1<'py, f32>>,
        batch: Option<&Bound<'py, PyAny>>,
        ticket: Option<&NativeClusterTicket>,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let grads = batch::to_gradients(gradients)?;
        let pushed = match (batch, ticket) {
            (Some(batch), None) => {
                let batch = batch::to_batch(batch)?;
                self.run(
                    py,
                    move |c| async move { c.push(&table, &batch, &grads).await },
                )?
            }
            (None, Some(ticket)) => {
                let ticket = ticket.ticket.clone();
                self.run(
                    py,
                    move |c| async move { c.push_ticket(&ticket, &grads).await },
                )?
            }
            _ => {
                return Err(PyValueError::new_err(
                    "push needs either a batch or a ticket, not both",
                ))
            }
        };
        pushed.iter().map(|p| shard_push_to_dict(py, p)).collect()
    }

    /// A client of one live shard, for admin calls (every shard applies
    /// them through etcd).
    fn admin(&self, py: Python<'_>) -> PyResult<NativeClient> {
        let client = self.run(py, |c| async move { c.any_shard().await })?;
        Ok(NativeClient::from_client(client))
    }
}

fn shard_push_to_dict<'py>(py: Python<'py>, p: &ShardPush) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("shard", &p.shard)?;
    d.set_item("version", p.response.version)?;
    d.set_item("entries", p.response.entries)?;
    d.set_item("unique_rows", p.response.unique_rows)?;
    Ok(d)
}
