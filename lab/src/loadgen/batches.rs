//! The batches each client sends, built before the clock starts: keys
//! drawn uniformly or Zipf-distributed, the same batch in every form a
//! workload needs (protobuf, engine, JSON, Redis keys) and its gradients.

use featmux_client::{pb, BatchBuilder, SharedGradients};
use featmux_engine::batch::Batch;
use featmux_server::convert;
use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::{Distribution, Zipf};
use serde_json::{json, Value};

use super::args::{BenchArgs, KeyType, Workload};
use super::redis;

/// Draws keys uniformly or Zipf-distributed.
pub(super) enum Keys {
    Uniform(u64),
    Zipf(Zipf<f64>),
}

impl Keys {
    pub(super) fn new(vocab: u64, exponent: f64) -> anyhow::Result<Self> {
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

    pub(super) fn draw(&self, rng: &mut StdRng) -> u64 {
        match self {
            Keys::Uniform(n) => rng.random_range(0..*n),
            Keys::Zipf(z) => z.sample(rng) as u64 - 1,
        }
    }
}

/// One request's inputs, prepared before the clock starts, in the form its
/// workload sends.
pub(super) struct Prepared {
    pub(super) batch: pb::Batch,
    /// The same examples as the HTTP JSON body (`http-lookup`).
    pub(super) json: Option<Value>,
    /// The same batch as the engine takes it (`engine-*`).
    pub(super) engine: Option<Batch>,
    /// The same batch as Redis keys (`redis-mget`).
    pub(super) redis: Option<redis::RedisBatch>,
    /// Size of the encoded gRPC LookupRequest (`tcp-blast` sends as much).
    pub(super) request_bytes: usize,
    /// Gradient blocks (push / train), one per feature: shared, so each
    /// push sends them as a trainer hands over its own (no copy).
    pub(super) grads: SharedGradients,
}

pub(super) fn prepare(args: &BenchArgs, keys: &Keys, rng: &mut StdRng) -> Prepared {
    let mut batch = BatchBuilder::new();
    let mut examples = Vec::with_capacity(args.examples);
    let mut redis_keys: Vec<Vec<String>> = vec![Vec::new(); args.features];
    for _ in 0..args.examples {
        batch.example();
        let mut example = serde_json::Map::new();
        for (f, feature_keys) in redis_keys.iter_mut().enumerate() {
            let name = format!("f{f}");
            let ids: Vec<u64> = (0..args.values).map(|_| keys.draw(rng)).collect();
            let values: Vec<String> = ids.iter().map(|id| format!("k{id}")).collect();
            if args.workload == Workload::RedisMget {
                feature_keys.extend(values.iter().map(|v| redis::key(f, v)));
            }
            match args.key_type {
                KeyType::String => {
                    if args.workload == Workload::HttpLookup {
                        example.insert(name.clone(), json!(values));
                    }
                    batch.add_strs(&name, values);
                }
                KeyType::Int64 => {
                    if args.workload == Workload::HttpLookup {
                        example.insert(name.clone(), json!(ids));
                    }
                    batch.add_i64s(&name, ids.iter().map(|&id| id as i64));
                }
            }
        }
        examples.push(Value::Object(example));
    }
    let width = (args.chunks * args.chunk_dim) as usize;
    let batch = batch.build().expect("a well-formed generated batch");
    let engine = matches!(
        args.workload,
        Workload::EngineLookup | Workload::EnginePush | Workload::EngineTrain
    )
    .then(|| convert::batch_from_pb(Some(batch.clone())).expect("a well-formed generated batch"));
    let redis = (args.workload == Workload::RedisMget).then(|| redis::RedisBatch {
        keys: redis_keys.concat(),
        values: args.values,
    });
    let request_bytes = prost::Message::encoded_len(&pb::LookupRequest {
        table: args.table.clone(),
        batch: Some(batch.clone()),
        want_ticket: false,
        precision: args.precision.into(),
    });
    Prepared {
        batch,
        json: (args.workload == Workload::HttpLookup).then(|| json!({ "examples": examples })),
        engine,
        redis,
        request_bytes,
        grads: (0..args.features)
            .map(|_| vec![0.001; args.examples * width])
            .collect::<Vec<_>>()
            .into(),
    }
}
