//! Prometheus metrics: request counts and latency per transport, endpoint
//! and status, rows looked up and updated, and gauges read from the catalog
//! at scrape time (dirty rows, flush lag, table bytes, database and WAL
//! size, the memory budget).

use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::api::{Api, OpCounters};
use featmux_storage::flusher::unix_ms;

/// Every metric of one server, registered in its own registry (so tests
/// can run several servers in one process).
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    rows_looked_up: IntCounter,
    rows_updated: IntCounter,
    version: IntGauge,
    flushed_version: IntGauge,
    flush_lag_versions: IntGauge,
    flush_age_ms: IntGauge,
    flushes: IntGauge,
    flush_failures: IntGauge,
    database_bytes: IntGauge,
    live_tickets: IntGauge,
    remembered_pushes: IntGauge,
    dirty_rows: IntGaugeVec,
    table_bytes: IntGaugeVec,
    table_bytes_per_row: IntGaugeVec,
    occupied_rows: IntGaugeVec,
    distinct_values: GaugeVec,
    collision_rate: GaugeVec,
    expected_collision_rate: GaugeVec,
    feature_collision_rate: GaugeVec,
    feature_shared_traffic: GaugeVec,
    replica_connected: IntGauge,
    replica_lag_versions: IntGauge,
    replica_staleness_ms: IntGauge,
    replica_applied_sequence: IntGauge,
    replica_bootstraps: IntGauge,
    replica_apply_lag: Histogram,
    memory_budget_bytes: IntGauge,
    memory_reserved_bytes: IntGauge,
    wal_bytes: IntGauge,
    flush_consecutive_failures: IntGauge,
    flush_pushes_held_us: IntGauge,
    bulk_queued: IntGauge,
    shared_memory_bytes: IntGauge,
    bulk_wait: Histogram,
}

fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let gauge =
            |name: &str, help: &str| register(r, IntGauge::new(name, help).expect("valid metric"));
        let table_gauge = |name: &str, help: &str| {
            register(
                r,
                IntGaugeVec::new(Opts::new(name, help), &["table"]).expect("valid metric"),
            )
        };
        let ratio = |name: &str, help: &str, labels: &[&str]| {
            register(
                r,
                GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        // 50 µs .. ~13 s: lookups of one example up to full training batches.
        let buckets = prometheus::exponential_buckets(50e-6, 2.0, 19).expect("valid buckets");
        Metrics {
            requests: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "featmux_requests_total",
                        "Requests by transport, endpoint and status",
                    ),
                    &["transport", "endpoint", "code"],
                )
                .expect("valid metric"),
            ),
            latency: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "featmux_request_duration_seconds",
                        "Request latency by transport, endpoint and status",
                    )
                    .buckets(buckets.clone()),
                    &["transport", "endpoint", "code"],
                )
                .expect("valid metric"),
            ),
            rows_looked_up: register(
                r,
                IntCounter::new(
                    "featmux_rows_looked_up_total",
                    "(value, chunk) rows gathered by lookups",
                )
                .expect("valid metric"),
            ),
            rows_updated: register(
                r,
                IntCounter::new(
                    "featmux_rows_updated_total",
                    "Unique rows updated by pushes",
                )
                .expect("valid metric"),
            ),
            version: gauge(
                "featmux_training_version",
                "Pushes applied (training version)",
            ),
            flushed_version: gauge("featmux_flushed_version", "Highest version durable on disk"),
            flush_lag_versions: gauge(
                "featmux_flush_lag_versions",
                "Pushes applied but not yet durable",
            ),
            flush_age_ms: gauge(
                "featmux_flush_age_milliseconds",
                "Time since the last successful flush",
            ),
            flushes: gauge("featmux_flushes", "Flushes written"),
            flush_failures: gauge("featmux_flush_failures", "Flushes that failed"),
            database_bytes: gauge("featmux_database_bytes", "Bytes of the RocksDB database"),
            live_tickets: gauge("featmux_live_tickets", "Lookup tickets held for pushes"),
            remembered_pushes: gauge(
                "featmux_remembered_pushes",
                "Push request ids remembered so a retry is not applied twice",
            ),
            dirty_rows: table_gauge("featmux_dirty_rows", "Rows changed since the last flush"),
            table_bytes: table_gauge(
                "featmux_table_bytes",
                "Bytes of weights and optimizer state in memory",
            ),
            table_bytes_per_row: table_gauge(
                "featmux_table_bytes_per_row",
                "Memory per held row (weights in the table's row format, plus optimizer state)",
            ),
            occupied_rows: table_gauge(
                "featmux_table_occupied_rows",
                "Rows any (feature, value, chunk) item hashed to",
            ),
            distinct_values: ratio(
                "featmux_table_distinct_values",
                "Distinct (feature, value) pairs seen (HyperLogLog, ±0.81 %)",
                &["table"],
            ),
            collision_rate: ratio(
                "featmux_table_collision_rate",
                "Share of items without a row of their own: 1 - occupied rows / items",
                &["table"],
            ),
            expected_collision_rate: ratio(
                "featmux_table_expected_collision_rate",
                "The collision rate uniform hashing predicts for these items",
                &["table"],
            ),
            feature_collision_rate: ratio(
                "featmux_feature_collision_rate",
                "Per feature: 1 - its distinct rows / its items",
                &["table", "feature"],
            ),
            feature_shared_traffic: ratio(
                "featmux_feature_shared_traffic",
                "Per feature: share of its entries that landed on a row another feature uses",
                &["table", "feature"],
            ),
            replica_connected: gauge(
                "featmux_replica_connected",
                "On a replica: 1 while its primary's log stream is open",
            ),
            replica_lag_versions: gauge(
                "featmux_replica_lag_versions",
                "On a replica: the primary's flushed version minus the one served here",
            ),
            replica_staleness_ms: gauge(
                "featmux_replica_staleness_milliseconds",
                "On a replica: time since it last held everything its primary had committed",
            ),
            replica_applied_sequence: gauge(
                "featmux_replica_applied_sequence",
                "On a replica: the last primary log sequence applied",
            ),
            replica_bootstraps: gauge(
                "featmux_replica_bootstraps",
                "On a replica: copies of the whole primary database so far",
            ),
            replica_apply_lag: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "featmux_replica_apply_lag_seconds",
                        "On a replica: from a flush committed on the primary to applied here",
                    )
                    // 100 µs .. ~35 s in steps of 20 %: fine enough to read
                    // p50 and p99 from.
                    .buckets(
                        prometheus::exponential_buckets(1e-4, 1.2, 70).expect("valid buckets"),
                    ),
                )
                .expect("valid metric"),
            ),
            memory_budget_bytes: gauge(
                "featmux_memory_budget_bytes",
                "Memory all tables may hold (limits.max_memory_bytes)",
            ),
            memory_reserved_bytes: gauge(
                "featmux_memory_reserved_bytes",
                "Memory the tables hold against the budget",
            ),
            wal_bytes: gauge(
                "featmux_wal_bytes",
                "Bytes of RocksDB write-ahead log (what a restart replays; storage.max_wal_bytes)",
            ),
            flush_pushes_held_us: gauge(
                "featmux_flush_pushes_held_microseconds",
                "Time pushes waited while flushes copied their rows (total)",
            ),
            flush_consecutive_failures: gauge(
                "featmux_flush_consecutive_failures",
                "Flushes failed since the last one that worked (non-zero: pushes are not becoming durable)",
            ),
            bulk_queued: gauge(
                "featmux_bulk_queued",
                "Training requests waiting for a bulk thread (execution.bulk_threads)",
            ),
            shared_memory_bytes: gauge(
                "featmux_shared_memory_bytes",
                "Bytes the Train streams' shared-memory regions hold (limits.max_shared_memory_bytes)",
            ),
            bulk_wait: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "featmux_bulk_wait_seconds",
                        "How long training requests waited for a bulk thread",
                    )
                    .buckets(buckets),
                )
                .expect("valid metric"),
            ),
            registry,
        }
    }

    /// Counters the operations increment.
    pub fn op_counters(&self) -> OpCounters {
        OpCounters {
            rows_looked_up: self.rows_looked_up.clone(),
            rows_updated: self.rows_updated.clone(),
        }
    }

    /// Where the bulk pool reports its queue.
    pub fn bulk(&self) -> crate::execution::BulkMetrics {
        crate::execution::BulkMetrics {
            queued: self.bulk_queued.clone(),
            waited: self.bulk_wait.clone(),
        }
    }

    /// Where the shared-memory regions report what they hold.
    pub fn shared_memory(&self) -> IntGauge {
        self.shared_memory_bytes.clone()
    }

    /// The histogram a replica records its apply lag in.
    pub fn replica_apply_lag(&self) -> Histogram {
        self.replica_apply_lag.clone()
    }

    /// Records one finished request.
    pub fn observe(&self, transport: &str, endpoint: &str, code: &str, elapsed: Duration) {
        let labels = [transport, endpoint, code];
        self.requests.with_label_values(&labels).inc();
        self.latency
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition, with gauges refreshed from `api`
    /// (absent while the server is still recovering).
    pub fn render(&self, api: Option<&Api>) -> String {
        if let Some(api) = api {
            self.refresh(api);
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of valid metrics");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    fn refresh(&self, api: &Api) {
        let catalog = api.catalog();
        let flush = catalog.flush_stats();
        let version = catalog.version();
        let flushed = flush.flushed_version.load(Ordering::Relaxed);
        let gauge = |g: &IntGauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        gauge(&self.version, version);
        gauge(&self.flushed_version, flushed);
        gauge(&self.flush_lag_versions, version.saturating_sub(flushed));
        let last = flush.last_flush_unix_ms.load(Ordering::Relaxed);
        gauge(&self.flush_age_ms, unix_ms().saturating_sub(last));
        gauge(&self.flushes, flush.flushes.load(Ordering::Relaxed));
        gauge(
            &self.flush_pushes_held_us,
            flush.pushes_held_nanos.load(Ordering::Relaxed) / 1000,
        );
        gauge(&self.flush_failures, flush.failures.load(Ordering::Relaxed));
        gauge(
            &self.flush_consecutive_failures,
            flush.consecutive_failures.load(Ordering::Relaxed),
        );
        gauge(&self.database_bytes, catalog.database_bytes());
        gauge(&self.wal_bytes, catalog.wal_bytes());
        gauge(&self.live_tickets, api.live_tickets() as u64);
        gauge(&self.remembered_pushes, api.remembered_pushes() as u64);
        let (limit, reserved) = catalog.memory();
        gauge(&self.memory_budget_bytes, limit.unwrap_or(u64::MAX));
        gauge(&self.memory_reserved_bytes, reserved);
        self.dirty_rows.reset();
        self.table_bytes.reset();
        self.table_bytes_per_row.reset();
        for table in api.list_tables() {
            let name = [table.config.name.as_str()];
            gauge(&self.dirty_rows.with_label_values(&name), table.dirty_rows);
            gauge(
                &self.table_bytes.with_label_values(&name),
                table.bytes_in_memory,
            );
            gauge(
                &self.table_bytes_per_row.with_label_values(&name),
                table.bytes_per_row,
            );
        }
        for vec in [
            &self.distinct_values,
            &self.collision_rate,
            &self.expected_collision_rate,
            &self.feature_collision_rate,
            &self.feature_shared_traffic,
        ] {
            vec.reset();
        }
        self.occupied_rows.reset();
        for (table, o) in api.occupancy_summaries() {
            let name = [table.as_str()];
            gauge(
                &self.occupied_rows.with_label_values(&name),
                o.occupied_rows,
            );
            self.distinct_values
                .with_label_values(&name)
                .set(o.distinct_values);
            self.collision_rate
                .with_label_values(&name)
                .set(o.collision_rate);
            self.expected_collision_rate
                .with_label_values(&name)
                .set(o.expected_collision_rate);
            for f in &o.features {
                let labels = [table.as_str(), f.feature.as_str()];
                self.feature_collision_rate
                    .with_label_values(&labels)
                    .set(f.collision_rate);
                self.feature_shared_traffic
                    .with_label_values(&labels)
                    .set(f.shared_traffic);
            }
        }
        if let Some(replica) = api.replica() {
            let state = replica.state();
            gauge(&self.replica_connected, state.connected as u64);
            gauge(
                &self.replica_lag_versions,
                state.primary_version.saturating_sub(state.version),
            );
            let staleness = replica
                .staleness()
                .map_or(u64::MAX, |s| s.as_millis() as u64);
            gauge(&self.replica_staleness_ms, staleness);
            gauge(
                &self.replica_applied_sequence,
                state.applied_sequence.unwrap_or(0),
            );
            gauge(&self.replica_bootstraps, state.bootstraps);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
