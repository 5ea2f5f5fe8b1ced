//! The lab: featmux's tools for measuring and training, behind the
//! `featmux` binary's `bench`, `train`, `dataset`, `device-bench` and `demo`
//! commands. They sit on top of every other crate, so their dependencies
//! (csv, indicatif, hdrhistogram, reqwest, candle-nn, …) never reach the
//! service library.
//!
//! # Layout
//!
//! - [`loadgen`]: the load generator (gRPC, HTTP, the in-process engine and
//!   peers such as Redis and a TCP blast) with latency histograms.
//! - [`trainer`]: CSV/TSV data, table layouts and a candle-nn model trained
//!   through featmux.
//! - [`in_process`]: the catalog without the network, the baseline both of
//!   them compare the service with.
//! - [`device_bench`]: the candle backend's row kernels on one device.
//! - [`demo`]: an in-process training demo on synthetic clicks.

pub mod demo;
pub mod device_bench;
pub mod in_process;
pub mod loadgen;
pub mod trainer;
