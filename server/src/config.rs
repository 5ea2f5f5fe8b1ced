//! Server configuration: one TOML file, overridden by `FEATMUX_*`
//! environment variables, overridden by `featmux serve` flags. Every field
//! has a default, so `featmux serve` with nothing works.
//!
//! Unknown keys are refused (a misspelt key must not silently do nothing).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use featmux_engine::backend::serving::RowFormat;
use featmux_engine::backend::BackendKind;
use featmux_storage::catalog::CatalogOptions;
use featmux_storage::store::StoreOptions;

/// The largest `limits.max_batch_values`: a batch's entries are counted in
/// `u32` when it is planned.
pub const MAX_BATCH_VALUES: u64 = u32::MAX as u64;

/// Why the configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("config file {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("environment variable {var}={value:?}: {reason}")]
    Env {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Storage and flushing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Longest time an acknowledged push stays only in memory.
    pub flush_interval_ms: u64,
    /// Dirty rows in one table that trigger an early flush.
    pub max_dirty_rows: usize,
    /// Flushes wait for the disk (fsync): flushed pushes survive power
    /// loss, not only a process crash.
    pub sync_flushes: bool,
    /// Most bytes of RocksDB write-ahead log kept (what a restart replays).
    pub max_wal_bytes: u64,
    /// Full 64 MiB memtables of rows that RocksDB merges into one file per
    /// flush: a row pushed in several flushes reaches the disk once, for
    /// memory (see `StoreOptions::memtables_per_flush`). 1: no merging.
    pub memtables_per_flush: usize,
    /// Write-ahead log kept for replicas after RocksDB is done with it, in
    /// MiB (checked every 10 minutes): a replica further behind than this
    /// copies the whole database again. 0 keeps none.
    pub retained_wal_mb: u64,
    /// Also drop retained log older than this many seconds (0: no limit).
    pub retained_wal_secs: u64,
    /// The last commits kept in memory for replicas that keep up, in MiB
    /// (answered without reading the log); 0 keeps none.
    pub replication_buffer_mb: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        let catalog = CatalogOptions::default();
        StorageConfig {
            flush_interval_ms: catalog.flush_interval.as_millis() as u64,
            max_dirty_rows: catalog.max_dirty_rows,
            sync_flushes: catalog.sync_flushes,
            max_wal_bytes: catalog.store.max_wal_bytes,
            memtables_per_flush: catalog.store.memtables_per_flush,
            retained_wal_mb: catalog.store.retained_wal_mb,
            retained_wal_secs: catalog.store.retained_wal_secs,
            replication_buffer_mb: (catalog.store.recent_log_bytes >> 20) as u64,
        }
    }
}

/// Bearer tokens; unset leaves that role open.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Required by every admin endpoint.
    pub admin_token: Option<String>,
    /// Required by lookup and push (the admin token works too).
    pub data_token: Option<String>,
    /// Serve `/metrics` without a token even when tokens are configured
    /// (it names every table and its size, so it is guarded by default).
    pub public_metrics: bool,
}

/// Request-size limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most values (and most example×feature bags) in one batch.
    pub max_batch_values: usize,
    /// Largest HTTP request body.
    pub max_request_bytes: usize,
    /// Largest gRPC message, in either direction.
    pub max_message_bytes: usize,
    /// Memory all tables together may hold (weights and optimizer state, on
    /// the host or the device); unset: 80 % of the machine's or the
    /// cgroup's memory, whichever is smaller.
    pub max_memory_bytes: Option<u64>,
    /// How long a push's answer is kept for a retry with its request id.
    pub push_dedup_window_secs: u64,
    /// Most push answers kept for retries (oldest dropped first).
    pub push_dedup_max_entries: usize,
    /// Memory the Train streams' shared-memory regions may hold together
    /// (files in `shared_region_dir`, counted while their streams last).
    pub max_shared_memory_bytes: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_batch_values: 4 << 20,
            max_request_bytes: 16 << 20,
            max_message_bytes: 256 << 20,
            max_memory_bytes: None,
            push_dedup_window_secs: 600,
            push_dedup_max_entries: 1 << 18,
            max_shared_memory_bytes: 4 << 30,
        }
    }
}

/// Lookup tickets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TicketsConfig {
    /// How long a lookup's ticket waits for its push.
    pub ttl_secs: u64,
    /// Memory all live tickets may hold.
    pub max_bytes: usize,
}

impl Default for TicketsConfig {
    fn default() -> Self {
        TicketsConfig {
            ttl_secs: 60,
            max_bytes: 1 << 30,
        }
    }
}

/// TLS for both listeners (PEM files); absent means plaintext.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Membership of a cluster (docs/DESIGN.md, "Scale-out"): the table
/// configs, partition maps and members live in etcd. Absent: a standalone
/// server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// etcd endpoints, `host:port`.
    pub etcd: Vec<String>,
    /// Where this cluster's keys live in etcd (one prefix per cluster).
    pub prefix: String,
    /// This shard's id: unique in the cluster and the same across restarts
    /// (its data directory holds its partitions). Kubernetes: the pod name.
    /// On a replica (`[replica]` too): the replica's own id, listed under
    /// the shard it copies for clients that read from replicas.
    pub shard_id: String,
    /// The gRPC address clients dial; default `http://` + `grpc_addr`.
    pub advertise_grpc: Option<String>,
    /// The HTTP address; default `http://` + `http_addr`.
    pub advertise_http: Option<String>,
    /// A shard that stops renewing its lease leaves the members after this.
    pub lease_ttl_secs: u64,
    /// Partitions of a new table whose create call does not say.
    pub partitions: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            etcd: vec!["127.0.0.1:2379".into()],
            prefix: "/featmux".into(),
            shard_id: String::new(),
            advertise_grpc: None,
            advertise_http: None,
            lease_ttl_secs: 10,
            partitions: 256,
        }
    }
}

/// A read-only replica (docs/DESIGN.md, "Replicas"): it copies its
/// primary's database, follows the primary's write-ahead log and serves
/// lookups; pushes and admin changes are refused. Absent: not a replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicaConfig {
    /// The primary's gRPC address, `http://host:port`.
    pub primary: String,
    /// How rows are held in memory: `f32`, `f16` or `int8` (row-wise scale
    /// and bias).
    pub row_format: String,
    /// The primary's admin token, if it requires one (replication copies
    /// the whole database).
    pub primary_token: Option<String>,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            primary: String::new(),
            row_format: "f32".into(),
            primary_token: None,
        }
    }
}

/// Occupancy and collision statistics (docs/DESIGN.md, "Occupancy").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OccupancyConfig {
    /// Observe one planned batch in this many (0: keep no statistics;
    /// default 16). Observing a batch costs about as much as gathering it;
    /// sampling batches keeps traffic shares unbiased, but distinct counts
    /// then cover the observed batches only (1: exact, every batch).
    pub sample_every: u32,
}

impl Default for OccupancyConfig {
    fn default() -> Self {
        OccupancyConfig {
            sample_every: featmux_engine::occupancy::DEFAULT_SAMPLE_EVERY,
        }
    }
}

/// Where request work runs (docs/DESIGN.md, "Serving beside training").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutionConfig {
    /// Threads running training work (batch lookups, pushes, Train
    /// streams, row calls); 0: one per core.
    pub bulk_threads: usize,
    /// How much lower their CPU priority is (nice 0..=19; 0: the same as
    /// serving's), so serving gets a core first.
    pub bulk_nice: i32,
    /// A training request that waited longer than this for a bulk thread
    /// is refused with RESOURCE_EXHAUSTED instead of run.
    pub bulk_max_wait_ms: u64,
    /// Lookups without a ticket of at most this many values are serving
    /// work (normal priority, never queued behind training).
    pub serving_max_values: usize,
    /// Async threads of the HTTP listener (inference lookups, admin,
    /// metrics), apart from gRPC's so HTTP requests never queue behind
    /// training messages; 0: one per core.
    pub http_threads: usize,
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        ExecutionConfig {
            bulk_threads: 0,
            bulk_nice: 10,
            bulk_max_wait_ms: 30_000,
            serving_max_values: 4096,
            http_threads: 0,
        }
    }
}

impl ExecutionConfig {
    /// Bulk threads to start: the configured count, else one per core.
    pub fn bulk_threads(&self) -> usize {
        or_cores(self.bulk_threads)
    }

    /// HTTP threads to start: the configured count, else one per core.
    pub fn http_threads(&self) -> usize {
        or_cores(self.http_threads)
    }
}

/// `n`, or the number of cores for 0.
fn or_cores(n: usize) -> usize {
    match n {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// The whole server configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub grpc_addr: SocketAddr,
    /// gRPC on a Unix domain socket as well, for trainers on this machine
    /// (`unix://PATH` in a client's address); no TLS on it.
    pub grpc_unix_socket: Option<PathBuf>,
    pub http_addr: SocketAddr,
    /// `cpu`, `candle-cpu` or `cuda:N`.
    pub backend: String,
    pub log_format: LogFormat,
    /// A tracing filter (`info`, `featmux=debug,tower=warn`, …).
    pub log_level: String,
    /// How long a graceful shutdown waits for in-flight requests.
    pub shutdown_grace_secs: u64,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub tickets: TicketsConfig,
    pub tls: Option<TlsConfig>,
    pub cluster: Option<ClusterConfig>,
    pub replica: Option<ReplicaConfig>,
    pub occupancy: OccupancyConfig,
    pub execution: ExecutionConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("./featmux-data"),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            grpc_unix_socket: None,
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            backend: "cpu".into(),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            shutdown_grace_secs: 30,
            storage: StorageConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            tickets: TicketsConfig::default(),
            tls: None,
            cluster: None,
            replica: None,
            occupancy: OccupancyConfig::default(),
            execution: ExecutionConfig::default(),
        }
    }
}

impl ClusterConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.etcd.is_empty() || self.etcd.iter().any(|e| e.is_empty()) {
            return invalid("cluster.etcd", "give at least one etcd endpoint, host:port");
        }
        let id_ok = |id: &str| {
            !id.is_empty()
                && id.len() <= 128
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !id_ok(&self.shard_id) {
            return invalid(
                "cluster.shard_id",
                "set this shard's id: 1 to 128 of A-Z a-z 0-9 - _ . (stable across restarts)",
            );
        }
        if !self.prefix.starts_with('/') || self.prefix.len() < 2 {
            return invalid("cluster.prefix", "a key prefix such as /featmux/prod");
        }
        if !(2..=3600).contains(&self.lease_ttl_secs) {
            return invalid("cluster.lease_ttl_secs", "must be within 2..=3600");
        }
        if !(1..=1 << 16).contains(&self.partitions) {
            return invalid("cluster.partitions", "must be within 1..=65536");
        }
        Ok(())
    }
}

/// `featmux serve` flags: the last layer of overrides.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML config file (all keys optional).
    #[arg(long, short = 'c', env = "FEATMUX_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./featmux-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long)]
    pub grpc_addr: Option<SocketAddr>,
    /// Also serve gRPC on this Unix domain socket (clients on this machine
    /// dial `unix://PATH`).
    #[arg(long)]
    pub grpc_unix_socket: Option<PathBuf>,
    /// HTTP listen address [default: 127.0.0.1:8080].
    #[arg(long)]
    pub http_addr: Option<SocketAddr>,
    /// Table backend: cpu, candle-cpu or cuda:N [default: cpu].
    #[arg(long)]
    pub backend: Option<String>,
    /// Log format [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Join the cluster whose state is in this etcd (comma-separated
    /// `host:port` endpoints).
    #[arg(long, value_delimiter = ',')]
    pub etcd: Option<Vec<String>>,
    /// This shard's id in the cluster (stable across restarts).
    #[arg(long)]
    pub shard_id: Option<String>,
    /// Serve as a read-only replica of this primary (`http://host:port`,
    /// its gRPC address).
    #[arg(long)]
    pub replica_of: Option<String>,
    /// A replica's in-memory row format: f32, f16 or int8 [default: f32].
    #[arg(long)]
    pub row_format: Option<String>,
}

fn env_parse<T: std::str::FromStr>(var: &'static str, value: String) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e: T::Err| ConfigError::Env {
        var,
        reason: e.to_string(),
        value,
    })
}

impl ServerConfig {
    /// Defaults, then the file, then the environment, then the flags.
    pub fn load(args: &ServeArgs) -> Result<Self, ConfigError> {
        let mut config = match &args.config {
            Some(path) => Self::from_file(path)?,
            None => ServerConfig::default(),
        };
        config.apply_env(|var| std::env::var(var).ok())?;
        config.apply_flags(args);
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML file (missing keys take their defaults).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Applies `FEATMUX_*` variables (documented in the README).
    pub fn apply_env(
        &mut self,
        get: impl Fn(&'static str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        if let Some(v) = get("FEATMUX_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = get("FEATMUX_GRPC_ADDR") {
            self.grpc_addr = env_parse("FEATMUX_GRPC_ADDR", v)?;
        }
        if let Some(v) = get("FEATMUX_GRPC_UNIX_SOCKET") {
            self.grpc_unix_socket = Some(v.into());
        }
        if let Some(v) = get("FEATMUX_HTTP_ADDR") {
            self.http_addr = env_parse("FEATMUX_HTTP_ADDR", v)?;
        }
        if let Some(v) = get("FEATMUX_BACKEND") {
            self.backend = v;
        }
        if let Some(v) = get("FEATMUX_LOG_LEVEL") {
            self.log_level = v;
        }
        if let Some(v) = get("FEATMUX_ADMIN_TOKEN") {
            self.auth.admin_token = Some(v);
        }
        if let Some(v) = get("FEATMUX_DATA_TOKEN") {
            self.auth.data_token = Some(v);
        }
        if let Some(v) = get("FEATMUX_MAX_BATCH_VALUES") {
            self.limits.max_batch_values = env_parse("FEATMUX_MAX_BATCH_VALUES", v)?;
        }
        if let Some(v) = get("FEATMUX_MAX_MEMORY_BYTES") {
            self.limits.max_memory_bytes = Some(env_parse("FEATMUX_MAX_MEMORY_BYTES", v)?);
        }
        if let Some(v) = get("FEATMUX_FLUSH_INTERVAL_MS") {
            self.storage.flush_interval_ms = env_parse("FEATMUX_FLUSH_INTERVAL_MS", v)?;
        }
        if let Some(v) = get("FEATMUX_ETCD") {
            self.cluster_mut().etcd = v.split(',').map(|e| e.trim().to_owned()).collect();
        }
        if let Some(v) = get("FEATMUX_SHARD_ID") {
            self.cluster_mut().shard_id = v;
        }
        if let Some(v) = get("FEATMUX_CLUSTER_PREFIX") {
            self.cluster_mut().prefix = v;
        }
        if let Some(v) = get("FEATMUX_ADVERTISE_GRPC") {
            self.cluster_mut().advertise_grpc = Some(v);
        }
        if let Some(v) = get("FEATMUX_ADVERTISE_HTTP") {
            self.cluster_mut().advertise_http = Some(v);
        }
        if let Some(v) = get("FEATMUX_REPLICA_OF") {
            self.replica_mut().primary = v;
        }
        if let Some(v) = get("FEATMUX_ROW_FORMAT") {
            self.replica_mut().row_format = v;
        }
        if let Some(v) = get("FEATMUX_PRIMARY_TOKEN") {
            self.replica_mut().primary_token = Some(v);
        }
        if let (Some(cert), Some(key)) = (get("FEATMUX_TLS_CERT"), get("FEATMUX_TLS_KEY")) {
            self.tls = Some(TlsConfig {
                cert: cert.into(),
                key: key.into(),
            });
        }
        Ok(())
    }

    /// Applies the `serve` flags that were given.
    pub fn apply_flags(&mut self, args: &ServeArgs) {
        if let Some(v) = &args.data_dir {
            self.data_dir = v.clone();
        }
        if let Some(v) = args.grpc_addr {
            self.grpc_addr = v;
        }
        if let Some(v) = &args.grpc_unix_socket {
            self.grpc_unix_socket = Some(v.clone());
        }
        if let Some(v) = args.http_addr {
            self.http_addr = v;
        }
        if let Some(v) = &args.backend {
            self.backend = v.clone();
        }
        if let Some(v) = args.log_format {
            self.log_format = v;
        }
        if let Some(v) = &args.etcd {
            self.cluster_mut().etcd = v.clone();
        }
        if let Some(v) = &args.shard_id {
            self.cluster_mut().shard_id = v.clone();
        }
        if let Some(v) = &args.replica_of {
            self.replica_mut().primary = v.clone();
        }
        if let Some(v) = &args.row_format {
            self.replica_mut().row_format = v.clone();
        }
    }

    /// The replica section, created with defaults when absent.
    fn replica_mut(&mut self) -> &mut ReplicaConfig {
        self.replica.get_or_insert_with(ReplicaConfig::default)
    }

    /// A replica's row format, parsed.
    pub fn row_format(&self, replica: &ReplicaConfig) -> Result<RowFormat, ConfigError> {
        replica
            .row_format
            .parse()
            .map_err(
                |e: featmux_engine::error::EngineError| ConfigError::Invalid {
                    field: "replica.row_format",
                    reason: e.to_string(),
                },
            )
    }

    /// The cluster section, created with defaults when absent (a cluster
    /// key in the environment or the flags turns cluster mode on).
    fn cluster_mut(&mut self) -> &mut ClusterConfig {
        self.cluster.get_or_insert_with(ClusterConfig::default)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.backend_kind()?
            .check_available()
            .map_err(|e| ConfigError::Invalid {
                field: "backend",
                reason: e.to_string(),
            })?;
        // (key, value, least, most): every numeric key's accepted range. The
        // upper bounds keep arithmetic on them (`now + ttl`, timers, prost's
        // 2 GiB message limit, u32 entry counts) from overflowing.
        const DAY_SECS: u64 = 24 * 3600;
        let ranges: [(&'static str, u64, u64, u64); 19] = [
            (
                "limits.max_batch_values",
                self.limits.max_batch_values as u64,
                1,
                MAX_BATCH_VALUES,
            ),
            (
                "limits.max_request_bytes",
                self.limits.max_request_bytes as u64,
                1,
                1 << 30,
            ),
            (
                "limits.max_message_bytes",
                self.limits.max_message_bytes as u64,
                1,
                (2 << 30) - 1,
            ),
            (
                "storage.max_dirty_rows",
                self.storage.max_dirty_rows as u64,
                1,
                u32::MAX as u64,
            ),
            (
                "storage.flush_interval_ms",
                self.storage.flush_interval_ms,
                1,
                3600 * 1000,
            ),
            (
                "storage.memtables_per_flush",
                self.storage.memtables_per_flush as u64,
                1,
                16,
            ),
            ("tickets.ttl_secs", self.tickets.ttl_secs, 1, DAY_SECS),
            (
                "tickets.max_bytes",
                self.tickets.max_bytes as u64,
                0,
                1 << 40,
            ),
            ("shutdown_grace_secs", self.shutdown_grace_secs, 0, DAY_SECS),
            (
                "limits.max_memory_bytes",
                self.limits.max_memory_bytes.unwrap_or(1),
                1,
                1 << 50,
            ),
            (
                "limits.max_shared_memory_bytes",
                self.limits.max_shared_memory_bytes,
                0,
                1 << 50,
            ),
            (
                "limits.push_dedup_window_secs",
                self.limits.push_dedup_window_secs,
                0,
                DAY_SECS,
            ),
            (
                "limits.push_dedup_max_entries",
                self.limits.push_dedup_max_entries as u64,
                0,
                1 << 24,
            ),
            (
                "storage.max_wal_bytes",
                self.storage.max_wal_bytes,
                1 << 20,
                1 << 40,
            ),
            (
                "storage.replication_buffer_mb",
                self.storage.replication_buffer_mb,
                0,
                1 << 16,
            ),
            (
                "execution.bulk_threads",
                self.execution.bulk_threads as u64,
                0,
                1024,
            ),
            (
                "execution.bulk_max_wait_ms",
                self.execution.bulk_max_wait_ms,
                1,
                DAY_SECS * 1000,
            ),
            (
                "execution.serving_max_values",
                self.execution.serving_max_values as u64,
                0,
                1 << 24,
            ),
            (
                "execution.http_threads",
                self.execution.http_threads as u64,
                0,
                1024,
            ),
        ];
        for (field, value, least, most) in ranges {
            if !(least..=most).contains(&value) {
                return Err(ConfigError::Invalid {
                    field,
                    reason: format!("{value} is outside {least}..={most}"),
                });
            }
        }
        if !(0..=19).contains(&self.execution.bulk_nice) {
            return Err(ConfigError::Invalid {
                field: "execution.bulk_nice",
                reason: format!(
                    "{} is outside 0..=19 (a lower priority than serving's, or the same)",
                    self.execution.bulk_nice
                ),
            });
        }
        if let Some(path) = &self.grpc_unix_socket {
            // sun_path holds 108 bytes with the terminating NUL, and the
            // region socket beside it (`PATH.regions`) needs 8 more.
            let len = path.as_os_str().len();
            if !(1..=99).contains(&len) {
                return Err(ConfigError::Invalid {
                    field: "grpc_unix_socket",
                    reason: format!(
                        "{:?} is {len} bytes; a Unix socket path has 1 to 107, and this one \
                         1 to 99, to leave room for the region socket PATH.regions",
                        path.display().to_string()
                    ),
                });
            }
        }
        if let Some(replica) = &self.replica {
            if !(replica.primary.starts_with("http://") || replica.primary.starts_with("https://"))
            {
                return Err(ConfigError::Invalid {
                    field: "replica.primary",
                    reason: format!(
                        "{:?} is not the primary's gRPC address, http://host:port",
                        replica.primary
                    ),
                });
            }
            self.row_format(replica)?;
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        for (field, token) in [
            ("auth.admin_token", &self.auth.admin_token),
            ("auth.data_token", &self.auth.data_token),
        ] {
            if token.as_deref().is_some_and(|t| t.trim().is_empty()) {
                return Err(ConfigError::Invalid {
                    field,
                    reason: "an empty token would accept `Bearer ` alone; remove it or set one"
                        .into(),
                });
            }
        }
        Ok(())
    }

    /// The addresses clients reach this shard at (gRPC, HTTP).
    pub fn advertised(&self, cluster: &ClusterConfig) -> (String, String) {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        (
            cluster
                .advertise_grpc
                .clone()
                .unwrap_or_else(|| format!("{scheme}://{}", self.grpc_addr)),
            cluster
                .advertise_http
                .clone()
                .unwrap_or_else(|| format!("{scheme}://{}", self.http_addr)),
        )
    }

    /// The parsed backend.
    pub fn backend_kind(&self) -> Result<BackendKind, ConfigError> {
        self.backend.parse().map_err(|e| ConfigError::Invalid {
            field: "backend",
            reason: format!("{e}"),
        })
    }

    /// The memory budget: `limits.max_memory_bytes`, or 80 % of the memory
    /// tables live in: the GPU's for `cuda:N`, else the machine's (or the
    /// cgroup's); `None` where it is not known.
    pub fn memory_budget(&self) -> Option<u64> {
        if let Some(bytes) = self.limits.max_memory_bytes {
            return Some(bytes);
        }
        let device = self
            .backend_kind()
            .ok()
            .and_then(|kind| kind.device_memory().ok().flatten());
        device
            .or_else(crate::machine::available_memory)
            .map(crate::machine::default_budget)
    }

    /// Catalog options from this configuration.
    pub fn catalog_options(&self) -> Result<CatalogOptions, ConfigError> {
        Ok(CatalogOptions {
            backend: self.backend_kind()?,
            flush_interval: Duration::from_millis(self.storage.flush_interval_ms),
            max_dirty_rows: self.storage.max_dirty_rows,
            max_memory_bytes: self.memory_budget(),
            sync_flushes: self.storage.sync_flushes,
            store: StoreOptions {
                max_wal_bytes: self.storage.max_wal_bytes,
                memtables_per_flush: self.storage.memtables_per_flush,
                retained_wal_mb: self.storage.retained_wal_mb,
                retained_wal_secs: self.storage.retained_wal_secs,
                recent_log_bytes: (self.storage.replication_buffer_mb as usize) << 20,
                ..StoreOptions::default()
            },
            serving: None,
            occupancy_sample_every: self.occupancy.sample_every,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_override_in_order_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("featmux.toml");
        std::fs::write(
            &path,
            "data_dir = \"/from/file\"\nbackend = \"candle-cpu\"\n[auth]\nadmin_token = \"file\"\n",
        )
        .unwrap();
        let mut config = ServerConfig::from_file(&path).unwrap();
        assert_eq!(config.grpc_addr.port(), 50051, "defaults fill the rest");
        config
            .apply_env(|var| match var {
                "FEATMUX_DATA_DIR" => Some("/from/env".into()),
                "FEATMUX_ADMIN_TOKEN" => Some("env".into()),
                _ => None,
            })
            .unwrap();
        config.apply_flags(&ServeArgs {
            data_dir: Some("/from/flag".into()),
            ..ServeArgs::default()
        });
        assert_eq!(config.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(config.auth.admin_token.as_deref(), Some("env"));
        assert_eq!(config.backend, "candle-cpu");
        config.validate().unwrap();
    }

    #[test]
    fn a_replica_needs_a_primary_address_a_known_row_format_and_an_id_to_be_listed() {
        let mut config = ServerConfig::default();
        config.apply_flags(&ServeArgs {
            replica_of: Some("http://10.0.0.1:50051".into()),
            row_format: Some("int8".into()),
            ..ServeArgs::default()
        });
        config.validate().unwrap();
        let replica = config.replica.clone().unwrap();
        assert_eq!(config.row_format(&replica).unwrap(), RowFormat::Int8);
        let refused = |change: fn(&mut ServerConfig)| {
            let mut bad = config.clone();
            change(&mut bad);
            bad.validate().unwrap_err().to_string()
        };
        let err = refused(|c| c.replica.as_mut().unwrap().primary = "10.0.0.1:50051".into());
        assert!(err.starts_with("replica.primary"), "{err}");
        let err = refused(|c| c.replica.as_mut().unwrap().row_format = "int4".into());
        assert!(
            err.starts_with("replica.row_format") && err.contains("int4"),
            "{err}"
        );
        // With `[cluster]`, a replica of a shard lists itself in etcd under
        // its own id.
        let err = refused(|c| c.cluster = Some(ClusterConfig::default()));
        assert!(err.starts_with("cluster.shard_id"), "{err}");
        let mut listed = config.clone();
        listed.cluster = Some(ClusterConfig {
            shard_id: "shard-a-replica-0".into(),
            ..ClusterConfig::default()
        });
        listed.validate().unwrap();
    }

    #[test]
    fn the_documented_sample_config_is_the_defaults() {
        let sample: ServerConfig =
            toml::from_str(include_str!("../../deploy/featmux.toml")).unwrap();
        assert_eq!(
            serde_json::to_value(sample).unwrap(),
            serde_json::to_value(ServerConfig::default()).unwrap()
        );
    }

    /// The Kubernetes ConfigMap's featmux.toml, with the environment its
    /// StatefulSet sets, is a valid cluster shard's configuration.
    #[test]
    fn the_kubernetes_config_is_a_valid_shard_config() {
        let manifest = include_str!("../../deploy/kubernetes/configmap.yaml");
        let start = manifest
            .find("featmux.toml: |")
            .expect("the featmux.toml key");
        let toml_text: String = manifest[start..]
            .lines()
            .skip(1)
            .map(|line| line.strip_prefix("    ").unwrap_or(line.trim()))
            .map(|line| format!("{line}\n"))
            .collect();
        let mut config: ServerConfig = toml::from_str(&toml_text).unwrap();
        config
            .apply_env(|var| match var {
                "FEATMUX_SHARD_ID" => Some("featmux-0".into()),
                "FEATMUX_ADVERTISE_GRPC" => {
                    Some("http://featmux-0.featmux-shards.featmux.svc:50051".into())
                }
                _ => None,
            })
            .unwrap();
        config.validate().unwrap();
        let cluster = config.cluster.as_ref().unwrap();
        assert_eq!(cluster.etcd.len(), 3);
        assert_eq!(
            config.advertised(cluster).0,
            "http://featmux-0.featmux-shards.featmux.svc:50051"
        );
        // Without a shard id (the StatefulSet's env) it is refused.
        let mut no_id: ServerConfig = toml::from_str(&toml_text).unwrap();
        no_id.cluster.as_mut().unwrap().shard_id.clear();
        let err = no_id.validate().unwrap_err().to_string();
        assert!(err.starts_with("cluster.shard_id"), "{err}");
        // With replicas.yaml's env, the same file makes a replica of shard
        // featmux-1, listed in etcd as itself.
        let replicas = include_str!("../../deploy/kubernetes/replicas.yaml");
        for var in [
            "FEATMUX_REPLICA_OF",
            "FEATMUX_ROW_FORMAT",
            "FEATMUX_PRIMARY_TOKEN",
        ] {
            assert!(replicas.contains(var), "replicas.yaml sets {var}");
        }
        let mut replica: ServerConfig = toml::from_str(&toml_text).unwrap();
        replica
            .apply_env(|var| match var {
                "FEATMUX_REPLICA_OF" => {
                    Some("http://featmux-1.featmux-shards.featmux.svc:50051".into())
                }
                "FEATMUX_ROW_FORMAT" => Some("f16".into()),
                "FEATMUX_SHARD_ID" => Some("featmux-replica-1".into()),
                _ => None,
            })
            .unwrap();
        replica.validate().unwrap();
        let section = replica.replica.as_ref().unwrap();
        assert_eq!(replica.row_format(section).unwrap(), RowFormat::F16);
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("featmux.toml");
        std::fs::write(&path, "[limits]\nmax_batch_value = 3\n").unwrap();
        let err = ServerConfig::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("max_batch_value"), "{err}");

        let mut config = ServerConfig::default();
        let err = config
            .apply_env(|var| (var == "FEATMUX_GRPC_ADDR").then(|| "nope".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("FEATMUX_GRPC_ADDR"), "{err}");

        config.backend = "tpu".into();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("backend:"), "{err}");

        let mut config = ServerConfig {
            grpc_unix_socket: Some(format!("/run/{}.sock", "x".repeat(120)).into()),
            ..ServerConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("grpc_unix_socket") && err.contains("130 bytes"),
            "{err}"
        );
        config.grpc_unix_socket = Some("/run/featmux/grpc.sock".into());
        config.validate().unwrap();
    }

    /// Every numeric key has a range; a value outside it (e.g. a ticket TTL
    /// that overflows `now + ttl` on every lookup) is refused at start-up
    /// with the key's name.
    #[test]
    fn numeric_keys_outside_their_range_are_refused() {
        type Set = fn(&mut ServerConfig);
        let cases: [(&str, Set); 15] = [
            ("tickets.ttl_secs", |c| c.tickets.ttl_secs = u64::MAX),
            ("tickets.ttl_secs", |c| c.tickets.ttl_secs = 0),
            ("shutdown_grace_secs", |c| c.shutdown_grace_secs = u64::MAX),
            ("storage.flush_interval_ms", |c| {
                c.storage.flush_interval_ms = u64::MAX
            }),
            ("limits.max_message_bytes", |c| {
                c.limits.max_message_bytes = usize::MAX
            }),
            ("limits.max_request_bytes", |c| {
                c.limits.max_request_bytes = usize::MAX
            }),
            ("limits.max_batch_values", |c| {
                c.limits.max_batch_values = usize::MAX
            }),
            ("storage.max_dirty_rows", |c| c.storage.max_dirty_rows = 0),
            ("storage.memtables_per_flush", |c| {
                c.storage.memtables_per_flush = 0
            }),
            ("storage.memtables_per_flush", |c| {
                c.storage.memtables_per_flush = 17
            }),
            ("tickets.max_bytes", |c| c.tickets.max_bytes = usize::MAX),
            ("execution.bulk_nice", |c| c.execution.bulk_nice = 20),
            ("execution.bulk_nice", |c| c.execution.bulk_nice = -5),
            ("execution.bulk_max_wait_ms", |c| {
                c.execution.bulk_max_wait_ms = 0
            }),
            ("execution.bulk_threads", |c| {
                c.execution.bulk_threads = 100_000
            }),
        ];
        for (key, set) in cases {
            let mut config = ServerConfig::default();
            set(&mut config);
            let err = config
                .validate()
                .expect_err(&format!("{key} out of range was accepted"))
                .to_string();
            assert!(err.starts_with(key), "{key}: {err}");
        }
    }

    #[test]
    fn the_budget_is_the_configured_one_or_80_percent_of_the_machine() {
        let config = ServerConfig::default();
        assert_eq!(
            config.memory_budget(),
            crate::machine::available_memory().map(crate::machine::default_budget)
        );
        let mut config = ServerConfig {
            backend: "cuda:0".into(),
            ..ServerConfig::default()
        };
        config.limits.max_memory_bytes = Some(123 << 20);
        assert_eq!(config.memory_budget(), Some(123 << 20));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cuda_backend_without_cuda_is_refused_at_start_up() {
        let config = ServerConfig {
            backend: "cuda:0".into(),
            ..ServerConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("backend:"), "{err}");
        assert!(err.contains("built without it"), "{err}");
        assert!(err.contains("scripts/build-cuda.sh"), "{err}");
    }
}
