//! `featmux bench`: the load generator. Drives a running server with gRPC
//! Lookup, Push or Train-stream traffic, or HTTP serving lookups, from
//! `concurrency` clients (one connection each) and reports throughput and
//! HDR-histogram latency.
//!
//! The same harness (same batches, same concurrency, same clock) also drives
//! the peers featmux is measured against: Redis MGET ([`redis`]), a plain
//! TCP exchange of the same sizes ([`blast`]) and the engine in-process
//! ([`crate::in_process`]), so every ratio in the performance report comes from one
//! instrument.
//!
//! Closed loop by default (each client sends its next request when the last
//! one is answered: peak throughput). With `--rate`, open loop: requests are
//! due on a fixed schedule and a request that could not be sent on time
//! because the previous answer was late has its latency measured from the
//! moment it was *due*, so a stalled server is charged for the requests it
//! delayed (no coordinated omission).
//!
//! # Layout
//!
//! - this file: a run (prepare, start the clients, merge, report);
//! - `args`: the command line; `batches`: the prepared batches;
//! - `setup`: the table, connections and Redis keys a run needs;
//! - `client`: one client's transport, request and send loop;
//! - `redis`, `blast`: the Redis and TCP peers' wire protocols.

mod args;
mod batches;
mod blast;
mod client;
mod redis;
mod setup;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use featmux_client::pb::Precision;
use featmux_client::ClientOptions;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;

use crate::in_process::InProcess;
pub use args::{BenchArgs, Workload};
use batches::{prepare, Keys, Prepared};
use client::{client_loop, Transport};
use setup::{cluster_transport, ensure_tables, load_redis, server_transport, table_config};

/// Runs the benchmark and prints its report.
pub async fn run(options: ClientOptions, json: bool, args: BenchArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.examples == 0 || args.features == 0 || args.values == 0 {
        return Err(anyhow::anyhow!(
            "--concurrency, --examples, --features and --values must be at least 1"
        ));
    }
    if args.shared_region
        && !matches!(
            args.workload,
            Workload::Lookup | Workload::Push | Workload::Train
        )
    {
        return Err(anyhow::anyhow!(
            "--shared-region is for the lookup, push and train workloads"
        ));
    }
    // A region and a cluster's row-level calls carry f32 only.
    let f32_only = args.shared_region || !args.etcd.is_empty();
    if args.precision != Precision::F32
        && (f32_only || !matches!(args.workload, Workload::Lookup | Workload::Train))
    {
        return Err(anyhow::anyhow!(
            "--precision is for the lookup and train workloads on one server's socket \
             (region and cluster lookups carry f32)"
        ));
    }
    if args.push_precision != Precision::F32
        && (f32_only || !matches!(args.workload, Workload::Push | Workload::Train))
    {
        return Err(anyhow::anyhow!(
            "--push-precision is for the push and train workloads on one server's socket \
             (region and cluster pushes carry f32)"
        ));
    }
    let options = ClientOptions {
        lookup_precision: args.precision,
        push_precision: args.push_precision,
        ..options
    };
    if !args.etcd.is_empty() && !matches!(args.workload, Workload::Lookup | Workload::Push) {
        return Err(anyhow::anyhow!(
            "--etcd routes the lookup and push workloads only"
        ));
    }
    if args.workload.uses_server() {
        ensure_tables(&args, &options).await?;
    }
    let keys = Keys::new(args.vocab, args.zipf)?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let inputs: Vec<Vec<Prepared>> = (0..args.concurrency)
        .map(|_| {
            (0..args.batches.max(1))
                .map(|_| prepare(&args, &keys, &mut rng))
                .collect()
        })
        .collect();
    let in_process = match args.workload {
        Workload::EngineLookup | Workload::EnginePush | Workload::EngineTrain => {
            let (table, features) = table_config(&args)?;
            Some(Arc::new(InProcess::create(table, features)?))
        }
        _ => None,
    };
    let blast_addr = match args.workload {
        Workload::TcpBlast => Some(blast::start_responder()?),
        _ => None,
    };
    if args.workload == Workload::RedisMget {
        load_redis(&args, &inputs).await?;
    }
    let mut clients = Vec::with_capacity(args.concurrency);
    for inputs in inputs {
        let transport = match args.workload {
            Workload::EngineLookup | Workload::EnginePush | Workload::EngineTrain => {
                Transport::Engine(in_process.clone().expect("opened above"))
            }
            Workload::RedisMget => Transport::Redis(
                redis::RedisConnection::connect(&args.redis).await?,
                Vec::new(),
            ),
            Workload::TcpBlast => Transport::Blast(
                blast::BlastConnection::connect(blast_addr.expect("started above")).await?,
            ),
            _ if !args.etcd.is_empty() => cluster_transport(&args, &options).await?,
            _ => server_transport(&args, &options).await?,
        };
        clients.push((transport, inputs));
    }
    let interval = args
        .rate
        .map(|rate| Duration::from_secs_f64(args.concurrency as f64 / rate));
    let budget = Arc::new(AtomicU64::new(args.requests.unwrap_or(u64::MAX)));
    let args = Arc::new(args);
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, (transport, inputs))| {
            // Stagger open-loop clients across one interval.
            let start = started
                + interval.map_or(Duration::ZERO, |d| d * i as u32 / args.concurrency as u32);
            tokio::spawn(client_loop(
                args.clone(),
                transport,
                inputs,
                budget.clone(),
                start,
                interval,
            ))
        })
        .collect();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
    let (mut requests, mut errors, mut payload) = (0u64, 0u64, 0u64);
    let mut first_error = None;
    let mut requests_per_client = Vec::with_capacity(tasks.len());
    for task in tasks {
        let m = task.await?;
        latency.add(&m.latency)?;
        requests += m.requests;
        requests_per_client.push(m.requests);
        errors += m.errors;
        payload += m.payload_bytes;
        first_error = first_error.or(m.first_error);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let values_per_request = (args.examples * args.features * args.values) as u64;
    let rows_per_request = values_per_request * args.chunks as u64;
    // Floats the caller receives (lookups) or sends (gradients): one pooled
    // vector per example and feature.
    let floats_per_request =
        (args.examples * args.features) as u64 * (args.chunks * args.chunk_dim) as u64;
    let workload = args
        .workload
        .to_possible_value()
        .expect("no skipped variants");
    let report = json!({
        "workload": workload.get_name(),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "table": args.table,
        "examples": args.examples,
        "features": args.features,
        "values": args.values,
        "chunks": args.chunks,
        "chunk_dim": args.chunk_dim,
        "rows": args.rows,
        "optimizer": args.optimizer,
        "precision": args.precision.name(),
        "push_precision": args.push_precision.name(),
        "mget_keys": args.mget_keys,
        "concurrency": args.concurrency,
        "etcd": args.etcd,
        "shared_region": args.shared_region,
        "zipf": args.zipf,
        "rate": args.rate,
        "elapsed_s": elapsed,
        "requests": requests,
        // Each client's share: a client that never got to run means the
        // run measured fewer distinct batches than it claims.
        "requests_per_client": requests_per_client,
        "errors": errors,
        "first_error": first_error,
        "requests_per_s": requests as f64 / elapsed,
        "examples_per_s": (requests * args.examples as u64) as f64 / elapsed,
        "rows_per_s": (requests * rows_per_request) as f64 / elapsed,
        "values_per_s": (requests * values_per_request) as f64 / elapsed,
        "floats_per_s": (requests * floats_per_request) as f64 / elapsed,
        "payload_mb_per_s": payload as f64 / elapsed / 1e6,
        "latency_us": {
            "p50": latency.value_at_quantile(0.50),
            "p90": latency.value_at_quantile(0.90),
            "p99": latency.value_at_quantile(0.99),
            "max": latency.max(),
            "mean": latency.mean(),
        },
    });
    if json {
        println!("{report}");
    } else {
        println!(
            "{}: {requests} requests ({errors} errors) in {elapsed:.2} s: {:.0} req/s, {:.0} examples/s, {:.3e} rows/s, {:.1} MB/s; latency µs p50 {} p90 {} p99 {} max {}",
            report["workload"].as_str().unwrap_or_default(),
            report["requests_per_s"].as_f64().unwrap_or_default(),
            report["examples_per_s"].as_f64().unwrap_or_default(),
            report["rows_per_s"].as_f64().unwrap_or_default(),
            report["payload_mb_per_s"].as_f64().unwrap_or_default(),
            latency.value_at_quantile(0.50),
            latency.value_at_quantile(0.90),
            latency.value_at_quantile(0.99),
            latency.max(),
        );
        if let Some(e) = &first_error {
            println!("first error: {e}");
        }
    }
    if errors > 0 {
        return Err(anyhow::anyhow!("{errors} requests failed"));
    }
    Ok(())
}
