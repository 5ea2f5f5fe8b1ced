//! One load-generating client: its transport (a gRPC client or stream, an
//! HTTP client, the in-process engine, a Redis or TCP connection), sending
//! one request, and the closed- or open-loop send loop that measures it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use featmux_client::Client;
use hdrhistogram::Histogram;

use super::args::{BenchArgs, Workload};
use super::batches::Prepared;
use super::{blast, redis};
use crate::in_process::InProcess;

/// What one client measured.
pub(super) struct Measured {
    pub(super) latency: Histogram<u64>,
    pub(super) requests: u64,
    pub(super) errors: u64,
    pub(super) payload_bytes: u64,
    pub(super) first_error: Option<String>,
}

// One per client, built once before the clock starts: its size is irrelevant.
#[allow(clippy::large_enum_variant)]
pub(super) enum Transport {
    Grpc(Client),
    Cluster(featmux_client::ClusterClient),
    Stream(featmux_client::TrainStream),
    /// A Train stream with a shared-memory region; gradients are written
    /// from this byte offset on, after the embeddings.
    Region(featmux_client::TrainStream, u64),
    Http(reqwest::Client),
    Engine(Arc<InProcess>),
    Redis(redis::RedisConnection, Vec<f32>),
    Blast(blast::BlastConnection),
}

/// Sends one request; returns the payload bytes it moved.
pub(super) async fn send(
    args: &BenchArgs,
    transport: &mut Transport,
    input: &Prepared,
) -> anyhow::Result<u64> {
    let floats = |e: &[featmux_client::Embedding]| e.iter().map(|b| b.data.len() as u64 * 4).sum();
    let grad_bytes: u64 = input
        .grads
        .blocks()
        .iter()
        .map(|g| g.len() as u64 * 4)
        .sum();
    match (args.workload, transport) {
        (Workload::Lookup, Transport::Grpc(c)) => c
            .lookup(&args.table, &input.batch, false)
            .await
            .map(|l| floats(&l.embeddings))
            .map_err(Into::into),
        (Workload::Lookup, Transport::Cluster(c)) => c
            .lookup(&args.table, &input.batch, false)
            .await
            .map(|(l, _)| floats(&l.embeddings))
            .map_err(Into::into),
        (Workload::Push, Transport::Cluster(c)) => c
            .push(&args.table, &input.batch, input.grads.blocks())
            .await
            .map(|_| grad_bytes)
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
        (Workload::Lookup, Transport::Region(stream, _)) => {
            let answer = stream
                .lookup_into_region(&args.table, input.batch.clone(), false, 0)
                .await?;
            Ok(region_bytes(&answer))
        }
        (Workload::Train, Transport::Region(stream, grads_at)) => {
            let answer = stream
                .lookup_into_region(&args.table, input.batch.clone(), true, 0)
                .await?;
            let features = answer.blocks.iter().map(|b| &b.feature);
            let (gradients, _) =
                gradients_into_region(stream, *grads_at, features, input.grads.blocks())?;
            stream
                .push_ticket_from_region(&args.table, answer.ticket, gradients)
                .await?;
            Ok(region_bytes(&answer) + grad_bytes)
        }
        (Workload::Push, Transport::Region(stream, _)) => {
            // The gradients from the region's start, the batch after them.
            let features = input.batch.features.iter().map(|f| &f.feature);
            let (gradients, end) =
                gradients_into_region(stream, 0, features, input.grads.blocks())?;
            stream
                .push_batch_from_region(&args.table, input.batch.clone(), gradients, end)
                .await?;
            Ok(grad_bytes)
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
        (Workload::EngineTrain, Transport::Engine(e)) => e.train_step(
            input.engine.as_ref().expect("prepared for the engine"),
            input.grads.blocks(),
        ),
        (Workload::EnginePush, Transport::Engine(e)) => e.push(
            input.engine.as_ref().expect("prepared for the engine"),
            input.grads.blocks(),
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

/// Copies `grads` (one block per feature) into the stream's region, back
/// to back from byte `at`: what a trainer does with its gradients before a
/// region push. Returns where each went, and where they end.
fn gradients_into_region<'a>(
    stream: &mut featmux_client::TrainStream,
    mut at: u64,
    features: impl Iterator<Item = &'a String>,
    grads: &[Vec<f32>],
) -> anyhow::Result<(Vec<featmux_client::pb::RegionGradient>, u64)> {
    let region = stream.region_mut().context("no region")?;
    let mut gradients = Vec::with_capacity(grads.len());
    for (feature, grad) in features.zip(grads) {
        region.floats_mut(at, grad.len())?.copy_from_slice(grad);
        let bytes = grad.len() as u64 * 4;
        gradients.push(featmux_client::pb::RegionGradient {
            feature: feature.clone(),
            offset: at,
            bytes,
        });
        at += bytes;
    }
    Ok((gradients, at))
}

/// The bytes of a lookup's blocks in the region.
fn region_bytes(answer: &featmux_client::pb::RegionLookupResponse) -> u64 {
    answer
        .blocks
        .iter()
        .map(|b| u64::from(b.rows) * u64::from(b.width) * 4)
        .sum()
}

/// Runs one client until the deadline or the shared request budget ends.
pub(super) async fn client_loop(
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
        if let Transport::Engine(_) = transport {
            // An in-process request never waits, so without this the
            // first clients would keep the runtime's workers for the whole
            // run and the others (and their batches) would never run: the
            // engine would be measured on a fraction of the rows that the
            // service runs, whose clients all take turns, touch.
            tokio::task::yield_now().await;
        }
    }
    measured
}
