//! featmux's engine: one shared embedding table for many categorical
//! features (feature multiplexing / Unified Embedding, Coleman et al. 2023).
//!
//! Every feature value is hashed with a per-feature salt into the shared
//! table; a feature with `c` chunks does `c` lookups and concatenates them.
//! The engine ([`table::Table`] and below) knows nothing about storage or
//! transports; [`catalog::Catalog`] makes tables durable on top of it.
//!
//! # Layout
//!
//! - [`hashing`]: the normative value → row mapping (xxh3, salts, fast range).
//! - [`init`]: lazy deterministic initialisation of never-trained rows.
//! - [`schema`]: table and feature configuration, with validation.
//! - [`registry`]: registered features, salts, partition slices.
//! - [`batch`]: KeyedJaggedTensor-style requests and per-feature outputs.
//! - [`pooling`]: sum / mean / sqrtn / none, and their un-pooling factors.
//! - [`plan`]: a batch resolved to rows; gradients reduced to unique rows.
//! - [`optimizer`]: sparse SGD, Adagrad, row-wise Adagrad, Adam, FTRL.
//! - [`backend`]: the storage trait, with [`backend::cpu`] and [`backend::candle`].
//! - [`table`]: the table object tying the above together.
//! - [`dirty`]: rows changed since they were last persisted.
//! - [`store`]: the RocksDB database (layout, options, atomic batches).
//! - [`flusher`]: the background thread that persists dirty rows.
//! - [`catalog`]: durable tables of a data directory: config, flush,
//!   recovery, checkpoints. What the service layer talks to.
//! - [`error`]: the engine's error type.
//! - [`service`]: the gRPC + HTTP server over a catalog.

pub mod backend;
pub mod batch;
pub mod catalog;
pub mod dirty;
pub mod error;
pub mod flusher;
pub mod hashing;
pub mod init;
pub mod optimizer;
pub mod plan;
pub mod pooling;
pub mod registry;
pub mod schema;
pub mod service;
pub mod store;
pub mod table;
