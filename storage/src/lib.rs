//! featmux's durable tables: the engine's tables (`featmux-engine`) kept in
//! one RocksDB database per data directory. This crate knows the engine and
//! RocksDB but no transport: no protobuf, HTTP or OpenAPI.
//!
//! The storage layout and its migration rules are in `docs/DESIGN.md`
//! ("Storage"); the key layout is documented next to its code in
//! [`store::keys`], the records in [`store::records`].
//!
//! # Layout
//!
//! - [`store`]: the RocksDB database: opening (with migrations and the
//!   checks that keep foreign, newer or locked directories safe), column
//!   families, typed atomic writes.
//! - [`budget`]: the memory budget every table allocation reserves from.
//! - [`flusher`]: the background thread that persists dirty rows.
//! - [`catalog`]: the tables of a data directory: open and recovery,
//!   configuration changes, flushes, checkpoints.

pub mod budget;
pub mod catalog;
pub mod flusher;
pub mod store;
