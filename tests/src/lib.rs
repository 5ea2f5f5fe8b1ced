//! Workspace-level integration tests for featmux, and the helpers they share.
//!
//! # Layout
//!
//! - `tests/`: tests that drive featmux only through its public crates: the
//!   engine, and the durable catalog in a temp dir with real RocksDB.
//! - `src/bin/crash_worker.rs`: a process linking engine + store that the
//!   crash test kills with SIGKILL under load.
//! - [`crash`]: the workload both sides of the crash test share.
//! - [`etcd`]: a real etcd for the cluster tests.
//! - [`requests`]: configs and an HTTP helper for the service tests.
//! - [`refusals`]: the fixture of the bad-request tests.
//! - [`server`]: a real `featmux serve` process on ephemeral ports.
//! - [`ports`]: ports a stopped server can be started again on.

pub mod crash;
pub mod etcd;
pub mod ports;
pub mod refusals;
pub mod requests;
pub mod server;
