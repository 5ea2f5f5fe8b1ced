//! Versioned, ordered migrations of featmux's RocksDB layout.
//!
//! # Layout
//!
//! - the migration list, each step applied in one WriteBatch with its
//!   schema-version bump, arrives with the persistence issue. Until then the
//!   crate is empty on purpose: nothing is persisted yet.
