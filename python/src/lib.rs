//! `featmux._native`: the Rust client ([`featmux_client`]) as a Python
//! extension module, so retries, deadlines, TLS, tokens and the wire format
//! exist once, in Rust. The friendly API (`featmux.Client` taking dicts of
//! feature values) is the Python package around it (`python/featmux/`).
//!
//! # Layout
//!
//! - [`errors`]: one Python exception class per gRPC status.
//! - [`batch`]: Python batches (examples or columns per feature) to wire
//!   batches, lookups to numpy.
//! - [`config`]: table and feature dicts to wire configs and back.
//! - [`client`]: the `NativeClient` class: every call releases the GIL while
//!   it waits on the network.
//! - [`cluster`]: the `NativeClusterClient` class: tables sharded over a
//!   cluster, routed by the Rust cluster client.

use pyo3::prelude::*;

mod batch;
mod client;
mod cluster;
mod config;
mod errors;

/// Every Rust allocation of the extension (wire buffers, decoded
/// embeddings that numpy arrays then own and free on another thread) comes
/// from mimalloc: with glibc's malloc the client spent 10.1 ms of CPU per
/// 4,096 × 26 lookup instead of 9.2 (`scripts/bench-python.sh`, 8 threads),
/// and on this benchmark's 2-core machine client CPU is server throughput.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The extension module `featmux._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<client::NativeClient>()?;
    m.add_class::<client::NativeTrainStream>()?;
    m.add_class::<cluster::NativeClusterClient>()?;
    m.add_class::<cluster::NativeClusterTicket>()?;
    errors::register(m)
}
