//! featmux's network service: gRPC for trainers, HTTP for serving and admin,
//! both over one operations layer ([`api`]) on a durable catalog
//! (`featmux-storage`). Handlers hold no logic: they authenticate, convert
//! the wire format and call [`api::Api`]; every refusal maps to one status
//! per kind on both transports ([`error`]).
//!
//! # Layout
//!
//! - [`config`]: the TOML file, environment and flags, validated at start-up;
//!   [`machine`]: the memory the default memory budget comes from.
//! - [`startup`]: binding the listeners and spawning the transports;
//!   [`local_socket`]: gRPC on a Unix socket for same-machine trainers;
//!   [`lifecycle`]: recovery, serving, draining and the final flush.
//! - [`shared`]: what both transports share (operations, tokens, metrics);
//!   [`execution`]: where request work runs (training on low-priority bulk
//!   threads, serving ahead of it).
//! - [`api`]: the operations, shared by both transports, and their
//!   request/response types.
//! - [`grpc`], [`http`]: the transports; [`convert`] (protobuf) and
//!   [`examples`] (JSON examples) their message formats; [`codec`] maps
//!   tonic's own refusals to ours.
//! - [`auth`]: bearer tokens, compared in constant time (gRPC calls are
//!   checked before their message is decoded: [`grpc::auth`]).
//! - [`cluster`]: a server as a shard of a cluster whose state is in etcd.
//! - [`tickets`]: planned lookups kept for the matching push; [`dedup`]:
//!   answers of recent pushes by request id, so retries apply once.
//! - [`metrics`]: the Prometheus registry behind `/metrics`.
//! - [`error`]: the service's error type and its gRPC/HTTP mapping.
//! - [`logging`]: text or JSON logs.

pub mod api;
pub mod auth;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod convert;
pub mod dedup;
pub mod error;
pub mod examples;
pub mod execution;
pub mod grpc;
pub mod http;
pub mod lifecycle;
pub mod local_socket;
pub mod logging;
pub mod machine;
pub mod metrics;
pub mod region_handoff;
pub mod replication;
pub mod shared;
pub mod shared_region;
pub mod startup;
pub mod tickets;

pub use lifecycle::{serve, shutdown_signal};
pub use startup::{start, RunningServer, ServeError};
