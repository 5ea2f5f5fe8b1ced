//! Workspace-level integration tests for featmux.
//!
//! # Layout
//!
//! - `tests/`: tests that drive featmux only through its public crates
//!   (today the engine; later a real server on ephemeral ports with a temp
//!   RocksDB directory). Engine unit and property tests live beside the
//!   engine in `server/`.
