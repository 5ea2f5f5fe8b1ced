//! `featmux._native`: the Rust client ([`featmux_client`]) as a Python
//! extension module, so retries, deadlines, TLS, tokens and the wire format
//! exist once, in Rust. The friendly API (`featmux.Client` taking dicts of
//! feature values) is the Python package around it (`python/featmux/`).
//!
//! # Layout
//!
//! - [`errors`]: one Python exception class per gRPC status.
//! - [`batch`]: Python feature columns to wire batches, lookups to numpy.
//! - [`config`]: table and feature dicts to wire configs and back.
//! - [`client`]: the `NativeClient` class: every call releases the GIL while
//!   it waits on the network.

use pyo3::prelude::*;

mod batch;
mod client;
mod config;
mod errors;

/// The extension module `featmux._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<client::NativeClient>()?;
    m.add_class::<client::NativeTrainStream>()?;
    errors::register(m)
}
