//! The load generator's command line: the workload and the shape of its
//! batches, concurrency, duration or request count, and open-loop rate.

use clap::{Args, ValueEnum};
use featmux_client::pb::Precision;

/// What each request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// gRPC Lookup of a batch.
    Lookup,
    /// gRPC Push of a batch with gradients (no ticket).
    Push,
    /// One training step on a Train stream: lookup with ticket, push.
    Train,
    /// HTTP JSON lookup (`POST /v1/tables/{t}/lookup`).
    HttpLookup,
    /// Peer: the same lookups in-process (no server, no network).
    EngineLookup,
    /// Peer: the same pushes in-process.
    EnginePush,
    /// Peer: the same training steps in-process (lookup keeping its plan,
    /// then the push of that plan): what the Train stream costs without
    /// the service.
    EngineTrain,
    /// Peer: the same embeddings fetched from Redis with MGET (`--redis`),
    /// bags pooled by the client.
    RedisMget,
    /// Peer: a plain TCP exchange of a lookup's request and response sizes.
    TcpBlast,
}

/// How the benchmark's keys are sent (`--key-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyType {
    String,
    Int64,
}

impl KeyType {
    /// The name the feature spec (`type=`) takes.
    pub(super) fn spec(self) -> &'static str {
        match self {
            KeyType::String => "string",
            KeyType::Int64 => "int64",
        }
    }
}

impl Workload {
    /// Whether it talks to a featmux server.
    pub(super) fn uses_server(self) -> bool {
        matches!(
            self,
            Workload::Lookup | Workload::Push | Workload::Train | Workload::HttpLookup
        )
    }
}

/// Load generator settings.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "lookup")]
    pub workload: Workload,
    /// Table to use; created (with features f0..) if it does not exist.
    #[arg(long, default_value = "bench")]
    pub table: String,
    /// Rows of a created table.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    #[arg(long, default_value_t = 16)]
    pub chunk_dim: u32,
    /// Chunks per feature.
    #[arg(long, default_value_t = 1)]
    pub chunks: u32,
    /// Features per example (f0, f1, …).
    #[arg(long, default_value_t = 26)]
    pub features: usize,
    /// Values per feature per example (bag size).
    #[arg(long, default_value_t = 1)]
    pub values: usize,
    /// Pooling of a created table's features: sum, mean, sqrtn.
    #[arg(long, default_value = "sum")]
    pub pooling: String,
    /// Optimizer of a created table: sgd, adagrad, row-wise-adagrad, adam,
    /// ftrl.
    #[arg(long, default_value = "sgd")]
    pub optimizer: String,
    /// Its learning rate.
    #[arg(long, default_value_t = 0.05)]
    pub lr: f32,
    /// Examples per request.
    #[arg(long, default_value_t = 4096)]
    pub examples: usize,
    /// Distinct keys per feature.
    #[arg(long, default_value_t = 1_000_000)]
    pub vocab: u64,
    /// Zipf exponent of key popularity; 0 = uniform.
    #[arg(long, default_value_t = 0.0)]
    pub zipf: f64,
    /// Type of the features' values: `string` (`k<id>`) or `int64` (the
    /// ids themselves, as a TorchRec trainer's KeyedJaggedTensor carries
    /// them). Redis keys are strings either way.
    #[arg(long, value_enum, default_value = "string")]
    pub key_type: KeyType,
    /// What lookups ask their answers in (the lookup and train workloads
    /// over a socket): `f32`, or `f16` / `bf16`, half the bytes (rounded
    /// on the server, widened by the client).
    #[arg(long, default_value = "f32", value_parser = Precision::from_name)]
    pub precision: Precision,
    /// What pushes send their gradients in (the push and train workloads
    /// over a socket): `f32`, or `f16` / `bf16`, half the bytes (rounded
    /// by the client, widened by the server).
    #[arg(long, default_value = "f32", value_parser = Precision::from_name)]
    pub push_precision: Precision,
    /// Concurrent clients (one connection each).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many requests instead.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Open loop: total requests per second over all clients.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Distinct pre-built batches per client (cycled).
    #[arg(long, default_value_t = 8)]
    pub batches: usize,
    /// HTTP base URL for `http-lookup`.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub http: String,
    /// Redis address for `redis-mget` (the keys the batches use are loaded
    /// first).
    #[arg(long, default_value = "127.0.0.1:6379")]
    pub redis: String,
    /// Keys per MGET command for `redis-mget`; a batch's commands are
    /// pipelined. 0: one MGET per batch.
    #[arg(long, default_value_t = 0)]
    pub mget_keys: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// etcd endpoints of a cluster (comma-separated `host:port`): `lookup`
    /// and `push` go through a `ClusterClient` routing each batch's rows
    /// over its shards (the table created through one of them) instead of
    /// to the one server of `--addr`.
    #[arg(long, value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// The cluster's key prefix in etcd.
    #[arg(long, default_value = "/featmux")]
    pub cluster_prefix: String,
    /// `lookup`, `push` and `train` on a Train stream whose embeddings,
    /// gradients and batches go through a shared-memory region: a trainer
    /// on the server's machine, on its Unix socket (`--addr unix://PATH`).
    #[arg(long)]
    pub shared_region: bool,
}
