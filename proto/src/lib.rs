//! featmux's wire contract.
//!
//! # Layout
//!
//! - `featmux.proto` (to come with the service issue): `EmbeddingService`
//!   (Lookup, Push, Train stream) and `AdminService`, compiled here with
//!   protox + tonic-prost-build so no system `protoc` is needed.
//!
//! Today this crate is empty on purpose: the engine (server crate) comes
//! first, and the contract is designed with the transports that use it.
