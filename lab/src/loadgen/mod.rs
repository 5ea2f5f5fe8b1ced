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

mod blast;
mod redis;

use anyhow::Context;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use featmux_client::{pb, BatchBuilder, Client, ClientOptions, Code};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde_json::{json, Value};

use crate::in_process::InProcess;
use featmux_client::spec::{feature, optimizer};
use featmux_engine::batch::Batch;
use featmux_server::convert;

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
    /// Peer: the same embeddings fetched from Redis with MGET (`--redis`),
    /// bags pooled by the client.
    RedisMget,
    /// Peer: a plain TCP exchange of a lookup's request and response sizes.
    TcpBlast,
}

impl Workload {
    /// Whether it talks to a featmux server.
    fn uses_server(self) -> bool {
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
}

/// Draws keys uniformly or Zipf-distributed.
enum Keys {
    Uniform(u64),
    Zipf(Zipf<f64>),
}

impl Keys {
    fn new(vocab: u64, exponent: f64) -> anyhow::Result<Self> {
        if vocab == 0 {
            return Err(anyhow::anyhow!("--vocab must be at least 1"));
        }
        if exponent == 0.0 {
            return Ok(Keys::Uniform(vocab));
        }
        Zipf::new(vocab as f64, exponent)
            .map(Keys::Zipf)
            .map_err(|e| anyhow::anyhow!("--zipf {exponent}: {e}"))
    }

    fn draw(&self, rng: &mut StdRng) -> u64 {
        match self {
            Keys::Uniform(n) => rng.random_range(0..*n),
            Keys::Zipf(z) => z.sample(rng) as u64 - 1,
        }
    }
}

/// One request's inputs, prepared before the clock starts, in the form its
/// workload sends.
struct Prepared {
    batch: pb::Batch,
    /// The same examples as the HTTP JSON body (`http-lookup`).
    json: Option<Value>,
    /// The same batch as the engine takes it (`engine-*`).
    engine: Option<Batch>,
    /// The same batch as Redis keys (`redis-mget`).
    redis: Option<redis::RedisBatch>,
    /// Size of the encoded gRPC LookupRequest (`tcp-blast` sends as much).
    request_bytes: usize,
    /// Gradient blocks (push / train), one per feature.
    grads: Vec<Vec<f32>>,
}

fn prepare(args: &BenchArgs, keys: &Keys, rng: &mut StdRng) -> Prepared {
    let mut batch = BatchBuilder::new();
    let mut examples = Vec::with_capacity(args.examples);
    let mut redis_keys: Vec<Vec<String>> = vec![Vec::new(); args.features];
    for _ in 0..args.examples {
        batch.example();
        let mut example = serde_json::Map::new();
        for (f, feature_keys) in redis_keys.iter_mut().enumerate() {
            let name = format!("f{f}");
            let values: Vec<String> = (0..args.values)
                .map(|_| format!("k{}", keys.draw(rng)))
                .collect();
            if args.workload == Workload::RedisMget {
                feature_keys.extend(values.iter().map(|v| redis::key(f, v)));
            }
            if args.workload == Workload::HttpLookup {
                example.insert(name.clone(), json!(values));
            }
            batch.add_strs(&name, values);
        }
        examples.push(Value::Object(example));
    }
    let width = (args.chunks * args.chunk_dim) as usize;
    let batch = batch.build().expect("a well-formed generated batch");
    let engine =
        matches!(args.workload, Workload::EngineLookup | Workload::EnginePush).then(|| {
            convert::batch_from_pb(Some(batch.clone())).expect("a well-formed generated batch")
        });
    let redis = (args.workload == Workload::RedisMget).then(|| redis::RedisBatch {
        keys: redis_keys.concat(),
        values: args.values,
    });
    let request_bytes = prost::Message::encoded_len(&pb::LookupRequest {
        table: args.table.clone(),
        batch: Some(batch.clone()),
        want_ticket: false,
    });
    Prepared {
        batch,
        json: (args.workload == Workload::HttpLookup).then(|| json!({ "examples": examples })),
        engine,
        redis,
        request_bytes,
        grads: (0..args.features)
            .map(|_| vec![0.001; args.examples * width])
            .collect(),
    }
}

/// What one client measured.
struct Measured {
    latency: Histogram<u64>,
    requests: u64,
    errors: u64,
    payload_bytes: u64,
    first_error: Option<String>,
}

// One per client, built once before the clock starts: its size is irrelevant.
#[allow(clippy::large_enum_variant)]
enum Transport {
    Grpc(Client),
    Stream(featmux_client::TrainStream),
    Http(reqwest::Client),
    Engine(Arc<InProcess>),
    Redis(redis::RedisConnection, Vec<f32>),
    Blast(blast::BlastConnection),
}

/// Sends one request; returns the payload bytes it moved.
async fn send(
    args: &BenchArgs,
    transport: &mut Transport,
    input: &Prepared,
) -> anyhow::Result<u64> {
    let floats = |e: &[featmux_client::Embedding]| e.iter().map(|b| b.data.len() as u64 * 4).sum();
    let grad_bytes: u64 = input.grads.iter().map(|g| g.len() as u64 * 4).sum();
    match (args.workload, transport) {
        (Workload::Lookup, Transport::Grpc(c)) => c
            .lookup(&args.table, &input.batch, false)
            .await
            .map(|l| floats(&l.embeddings))
            .map_err(Into::into),
        (Workload::Push, Transport::Grpc(c)) => c
            .push(&args.table, &input.batch, &input.grads)
            .await
            .map(|_| grad_bytes)
            .map_err(Into::into),
        (Workload::Train, Transport::Stream(stream)) => {
            let looked_up = stream
                .lookup(&args.table, input.batch.clone(), true)
                .await?;
            let ticket = looked_up.ticket.context("no ticket")?;
            stream
                .push_ticket(&args.table, ticket, &input.grads)
                .await
                .map(|_| floats(&looked_up.embeddings) + grad_bytes)
                .map_err(Into::into)
        }
        (Workload::HttpLookup, Transport::Http(h)) => {
            let url = format!("{}/v1/tables/{}/lookup", args.http, args.table);
            let response = h
                .post(url)
                .json(input.json.as_ref().expect("prepared for HTTP"))
                .send()
                .await?;
            let status = response.status();
            let body = response.bytes().await?;
            if !status.is_success() {
                return Err(anyhow::anyhow!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            Ok(body.len() as u64)
        }
        (Workload::EngineLookup, Transport::Engine(e)) => {
            e.lookup(input.engine.as_ref().expect("prepared for the engine"))
        }
        (Workload::EnginePush, Transport::Engine(e)) => e.push(
            input.engine.as_ref().expect("prepared for the engine"),
            &input.grads,
        ),
        (Workload::RedisMget, Transport::Redis(conn, pooled)) => {
            let width = (args.chunks * args.chunk_dim) as usize;
            let batch = input.redis.as_ref().expect("prepared for redis");
            conn.fetch_pooled(batch, args.mget_keys, width, pooled)
                .await
        }
        (Workload::TcpBlast, Transport::Blast(conn)) => {
            let width = (args.chunks * args.chunk_dim) as usize;
            let response = args.examples * args.features * width * 4;
            conn.exchange(input.request_bytes, response).await
        }
        _ => unreachable!("transport chosen by workload"),
    }
}

/// Runs one client until the deadline or the shared request budget ends.
async fn client_loop(
    args: Arc<BenchArgs>,
    mut transport: Transport,
    inputs: Vec<Prepared>,
    budget: Arc<AtomicU64>,
    started: Instant,
    interval: Option<Duration>,
) -> Measured {
    let mut measured = Measured {
        latency: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
        requests: 0,
        errors: 0,
        payload_bytes: 0,
        first_error: None,
    };
    let deadline = started + Duration::from_secs_f64(args.duration);
    let mut due = started;
    for input in inputs.iter().cycle() {
        let granted = budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        if Instant::now() >= deadline || !granted {
            break;
        }
        // Open loop: wait for this request's slot. If the previous answer
        // came after the slot, the server held this request back and its
        // latency counts from the slot (no coordinated omission); otherwise
        // it counts from when the timer woke us (tokio's timer wheel has
        // 1 ms ticks, a delay of the generator's own, not the server's).
        let sent = match interval {
            Some(interval) => {
                let slot = due;
                due += interval;
                if Instant::now() >= slot {
                    slot
                } else {
                    tokio::time::sleep_until(slot.into()).await;
                    Instant::now()
                }
            }
            None => Instant::now(),
        };
        match send(&args, &mut transport, input).await {
            Ok(bytes) => {
                measured.requests += 1;
                measured.payload_bytes += bytes;
                let micros = sent.elapsed().as_micros().max(1) as u64;
                measured.latency.saturating_record(micros);
            }
            Err(e) => {
                measured.errors += 1;
                measured.first_error.get_or_insert(format!("{e:#}"));
            }
        }
    }
    measured
}

/// The benchmark table: `rows` × `chunk_dim`, features f0.. with `chunks`
/// and `pooling`, the chosen optimizer.
fn table_config(args: &BenchArgs) -> anyhow::Result<(pb::TableConfig, Vec<pb::FeatureConfig>)> {
    let features = (0..args.features)
        .map(|f| {
            feature(&format!(
                "f{f}:chunks={},pooling={}",
                args.chunks, args.pooling
            ))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let table = pb::TableConfig {
        name: args.table.clone(),
        rows: args.rows,
        chunk_dim: args.chunk_dim,
        seed: args.seed,
        initializer: None,
        optimizer: Some(optimizer(&args.optimizer, args.lr).map_err(anyhow::Error::msg)?),
    };
    Ok((table, features))
}

async fn grpc_client(options: &ClientOptions) -> anyhow::Result<Client> {
    Ok(Client::connect(options.clone()).await?)
}

/// Connects one client of a server workload.
async fn server_transport(
    workload: Workload,
    options: &ClientOptions,
) -> anyhow::Result<Transport> {
    Ok(match workload {
        Workload::HttpLookup => {
            let mut headers = reqwest::header::HeaderMap::new();
            if let Some(token) = &options.token {
                let value = format!("Bearer {token}")
                    .parse()
                    .map_err(|_| anyhow::anyhow!("the token is not a valid header value"))?;
                headers.insert(reqwest::header::AUTHORIZATION, value);
            }
            Transport::Http(
                reqwest::Client::builder()
                    .default_headers(headers)
                    .tcp_nodelay(true)
                    .build()?,
            )
        }
        Workload::Train => Transport::Stream(grpc_client(options).await?.train().await?),
        _ => Transport::Grpc(grpc_client(options).await?),
    })
}

/// Loads into Redis every key the prepared batches use (same vector width
/// as featmux returns per feature).
async fn load_redis(args: &BenchArgs, inputs: &[Vec<Prepared>]) -> anyhow::Result<()> {
    let keys: HashSet<String> = inputs
        .iter()
        .flatten()
        .filter_map(|p| p.redis.as_ref())
        .flat_map(|b| b.keys.iter().cloned())
        .collect();
    let width = (args.chunks * args.chunk_dim) as usize;
    let mut conn = redis::RedisConnection::connect(&args.redis).await?;
    conn.load(&keys, |key| {
        let seed = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
        (0..width)
            .flat_map(|i| (((seed >> (i % 64)) & 0xff) as f32 / 2048.0).to_le_bytes())
            .collect()
    })
    .await
}

async fn ensure_table(args: &BenchArgs, admin: &Client) -> anyhow::Result<()> {
    match admin.get_table(&args.table).await {
        Ok(info) => {
            let missing = (0..args.features).map(|f| format!("f{f}")).find(|name| {
                !info
                    .features
                    .iter()
                    .any(|x| x.config.as_ref().is_some_and(|c| &c.name == name))
            });
            match missing {
                Some(name) => Err(anyhow::anyhow!(
                    "table `{}` exists without feature `{name}`",
                    args.table
                )),
                None => Ok(()),
            }
        }
        Err(e) if e.code() == Some(Code::NotFound) => {
            let (table, features) = table_config(args)?;
            admin.create_table(table, features).await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs the benchmark and prints its report.
pub async fn run(options: ClientOptions, json: bool, args: BenchArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.examples == 0 || args.features == 0 || args.values == 0 {
        return Err(anyhow::anyhow!(
            "--concurrency, --examples, --features and --values must be at least 1"
        ));
    }
    if args.workload.uses_server() {
        ensure_table(&args, &grpc_client(&options).await?).await?;
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
        Workload::EngineLookup | Workload::EnginePush => {
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
            Workload::EngineLookup | Workload::EnginePush => {
                Transport::Engine(in_process.clone().expect("opened above"))
            }
            Workload::RedisMget => Transport::Redis(
                redis::RedisConnection::connect(&args.redis).await?,
                Vec::new(),
            ),
            Workload::TcpBlast => Transport::Blast(
                blast::BlastConnection::connect(blast_addr.expect("started above")).await?,
            ),
            _ => server_transport(args.workload, &options).await?,
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
    for task in tasks {
        let m = task.await?;
        latency.add(&m.latency)?;
        requests += m.requests;
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
        "mget_keys": args.mget_keys,
        "concurrency": args.concurrency,
        "zipf": args.zipf,
        "rate": args.rate,
        "elapsed_s": elapsed,
        "requests": requests,
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
