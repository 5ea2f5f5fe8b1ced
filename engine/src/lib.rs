//! featmux's engine: one shared embedding table for many categorical
//! features (feature multiplexing / Unified Embedding, Coleman et al. 2023).
//!
//! Every feature value is hashed with a per-feature salt into the shared
//! table; a feature with `c` chunks does `c` lookups and concatenates them.
//! This crate is the whole in-memory model and knows nothing about storage
//! or transports (no RocksDB, protobuf, HTTP or OpenAPI in its dependency
//! graph; `featmux-storage` makes its tables durable, `featmux-server` puts
//! them on the network). The normative rules it implements are in
//! `docs/DESIGN.md`.
//!
//! # Layout
//!
//! - [`hashing`]: the normative value → row mapping (xxh3, salts, fast range).
//! - [`init`]: lazy deterministic initialisation of never-trained rows.
//! - [`schema`]: table and feature configuration, with validation.
//! - [`registry`]: registered features, salts, partition slices.
//! - [`batch`]: KeyedJaggedTensor-style requests and per-feature outputs.
//! - [`pooling`]: sum / mean / sqrtn / none, and their un-pooling factors.
//! - [`layout`]: a batch validated against a table, before hashing.
//! - [`plan`]: a batch resolved to rows; gradients reduced to unique rows.
//! - [`partition`]: a table's rows cut into partitions owned by shards.
//! - [`optimizer`]: sparse SGD, Adagrad, row-wise Adagrad, Adam, FTRL.
//! - [`backend`]: the storage trait, with [`backend::cpu`], [`backend::candle`]
//!   and [`backend::serving`] (a replica's quantized rows).
//! - [`table`]: the table object tying the above together.
//! - [`fanout`]: one request's work split over threads that would
//!   otherwise wait.
//! - [`dirty`]: rows changed by pushes since persistence last drained them.
//! - [`occupancy`]: how crowded a table is: distinct values, occupied rows,
//!   collisions, cross-feature sharing.
//! - [`error`]: the engine's error type.

pub mod backend;
pub mod batch;
pub mod dirty;
pub mod error;
pub mod fanout;
pub mod gradients;
pub mod hashing;
pub mod init;
pub mod layout;
pub mod occupancy;
pub mod optimizer;
pub mod partition;
pub mod plan;
pub mod pooling;
pub mod prefetch;
mod radix;
pub mod registry;
mod running_sums;
pub mod schema;
pub mod table;
