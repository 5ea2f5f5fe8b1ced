//! Rust client for featmux.
//!
//! One [`Client`] holds one HTTP/2 connection (tonic `Channel`, cheap to
//! clone and share between tasks) to a server's gRPC port. Unary calls get
//! a deadline and are retried with exponential backoff while the server
//! answers UNAVAILABLE (not started yet, still recovering, restarting):
//! the server refuses those before touching any table, so a retried push is
//! never applied twice.
//!
//! ```no_run
//! # async fn demo() -> Result<(), featmux_client::ClientError> {
//! use featmux_client::{BatchBuilder, Client, ClientOptions};
//! let client = Client::connect(ClientOptions::new("http://127.0.0.1:50051")).await?;
//! let mut batch = BatchBuilder::new();
//! batch.example().add_str("user_id", "u1").add_strs("genres", ["comedy", "drama"]);
//! let batch = batch.build()?;
//! let looked_up = client.lookup("ads", &batch, true).await?;
//! let grads: Vec<Vec<f32>> = looked_up.embeddings.iter().map(|e| vec![0.1; e.data.len()]).collect();
//! // Handed over, not borrowed: the message carries the vectors' own memory.
//! client.push_ticket("ads", looked_up.ticket.unwrap(), grads).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`ClientOptions`] (`options`): endpoint, token, deadlines, retries, TLS.
//! - [`Client`] (`client`): connecting, the retry loop, lookups, pushes and
//!   the Train stream ([`TrainStream`], `train`); the admin calls (`admin`).
//! - [`SharedRegion`] (`region`): a Train stream's shared memory, for a
//!   trainer on the server's machine.
//! - [`BatchBuilder`] (`batch`): typed KeyedJaggedTensor batches.
//! - [`Lookup`], [`Embedding`] (`embeddings`): decoded payloads.
//! - [`IntoGradients`], [`SharedGradients`] (`gradients`): a push's
//!   gradients, sent from the caller's memory where they can be.
//! - [`ClientError`] (`error`).
//! - [`spec`]: text specs of tables and features for command lines.
//! - [`ClusterClient`] (`cluster`): a table sharded by row range over
//!   several servers, routed here with the engine's own planning.

mod admin;
mod batch;
mod client;
mod cluster;
mod embeddings;
mod error;
mod gradients;
mod options;
mod raw_unary;
mod region;
pub mod spec;
mod train;

pub use batch::{BatchBuilder, BatchError, PackedStringsBuilder};
pub use client::Client;
pub use cluster::{ClusterClient, ClusterTicket, PartitionMap, ReadFrom, ShardPush};
pub use embeddings::{decode_lookup, Embedding, Lookup};
pub use error::ClientError;
pub use featmux_proto::engine::lengths_to_pb;
pub use featmux_proto::v1 as pb;
pub use gradients::{IntoGradients, SharedGradients};
pub use options::{Auth, ClientOptions};
pub use region::SharedRegion;
pub use tonic::Code;
pub use train::{TrainReply, TrainStream};
