//! featmux's Rust client library.
//!
//! # Layout
//!
//! - typed batch builders, lookup/push/train-stream/admin calls, retries and
//!   sharded routing arrive with the service issue, which also defines the
//!   gRPC contract this crate speaks. Until then the crate is empty on
//!   purpose; in-process users call `featmux::table::Table` directly.
