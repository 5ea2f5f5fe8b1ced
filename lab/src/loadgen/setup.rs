//! What a run prepares before measuring: the benchmark table on the server
//! (created if missing), the clients' connections, and the keys the Redis
//! peer serves.

use std::collections::HashSet;

use featmux_client::spec::{feature, optimizer};
use featmux_client::{pb, Client, ClientOptions, ClusterClient, Code};

use super::args::{BenchArgs, Workload};
use super::batches::Prepared;
use super::client::Transport;
use super::redis;

/// The benchmark table: `rows` × `chunk_dim`, features f0.. with `chunks`
/// and `pooling`, the chosen optimizer.
pub(super) fn table_config(
    args: &BenchArgs,
) -> anyhow::Result<(pb::TableConfig, Vec<pb::FeatureConfig>)> {
    let features = (0..args.features)
        .map(|f| {
            feature(&format!(
                "f{f}:chunks={},pooling={},type={}",
                args.chunks,
                args.pooling,
                args.key_type.spec()
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
        max_abs_gradient: None,
    };
    Ok((table, features))
}

pub(super) async fn grpc_client(options: &ClientOptions) -> anyhow::Result<Client> {
    Ok(Client::connect(options.clone()).await?)
}

async fn cluster_client(
    args: &BenchArgs,
    options: &ClientOptions,
) -> anyhow::Result<ClusterClient> {
    Ok(ClusterClient::connect(&args.etcd, &args.cluster_prefix, options.clone()).await?)
}

/// The benchmark table on the server, or in the cluster (created through
/// one shard; every shard applies it).
pub(super) async fn ensure_tables(args: &BenchArgs, options: &ClientOptions) -> anyhow::Result<()> {
    if args.etcd.is_empty() {
        return ensure_table(args, &grpc_client(options).await?).await;
    }
    let shard = cluster_client(args, options).await?.any_shard().await?;
    ensure_table(args, &shard).await
}

/// Connects one client of a server workload.
pub(super) async fn server_transport(
    args: &BenchArgs,
    options: &ClientOptions,
) -> anyhow::Result<Transport> {
    Ok(match args.workload {
        Workload::Lookup | Workload::Push | Workload::Train if args.shared_region => {
            let mut stream = grpc_client(options).await?.train().await?;
            // A batch's embeddings, then room for its gradients (a push:
            // its gradients, then its batch).
            let block_bytes = (args.examples * args.features) as u64
                * u64::from(args.chunks * args.chunk_dim)
                * 4;
            stream.open_region(2 * block_bytes).await?;
            Transport::Region(stream, block_bytes)
        }
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

/// Connects one client of a sharded workload: its own connection to
/// every shard.
pub(super) async fn cluster_transport(
    args: &BenchArgs,
    options: &ClientOptions,
) -> anyhow::Result<Transport> {
    Ok(Transport::Cluster(cluster_client(args, options).await?))
}

/// Loads into Redis every key the prepared batches use (same vector width
/// as featmux returns per feature).
pub(super) async fn load_redis(args: &BenchArgs, inputs: &[Vec<Prepared>]) -> anyhow::Result<()> {
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
        Ok(info) => check_existing(args, &info),
        Err(e) if e.code() == Some(Code::NotFound) => {
            let (table, features) = table_config(args)?;
            match admin.create_table(table, features).await {
                Ok(_) => Ok(()),
                // Several benches started together: one created it; use it
                // if it is the table this one would have created.
                Err(e) if e.code() == Some(Code::AlreadyExists) => {
                    check_existing(args, &admin.get_table(&args.table).await?)
                }
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Accepts an existing benchmark table with the shape and features this
/// run would create. A feature of another value type, chunk count or
/// pooling is refused here: the run's requests would otherwise all fail,
/// or measure another shape than the one asked for.
fn check_existing(args: &BenchArgs, info: &pb::TableInfo) -> anyhow::Result<()> {
    let config = info.config.as_ref();
    let shape = config.map(|c| (c.rows, c.chunk_dim));
    if shape != Some((args.rows, args.chunk_dim)) {
        anyhow::bail!(
            "table `{}` exists as {shape:?} (rows, chunk_dim), not ({}, {})",
            args.table,
            args.rows,
            args.chunk_dim
        );
    }
    let (_, wanted) = table_config(args)?;
    for want in &wanted {
        let Some(have) = info
            .features
            .iter()
            .filter_map(|f| f.config.as_ref())
            .find(|c| c.name == want.name)
        else {
            anyhow::bail!(
                "table `{}` exists without feature `{}`",
                args.table,
                want.name
            );
        };
        let (have, want_spec) = (feature_spec(have), feature_spec(want));
        if have != want_spec {
            anyhow::bail!(
                "table `{}` has feature `{}` as {have}, but this run sends {want_spec} (use \
                 another --table, or the options that created it)",
                args.table,
                want.name,
            );
        }
    }
    Ok(())
}

/// What a feature holds, as the feature spec spells it
/// (`type=int64,chunks=1,pooling=sum`).
fn feature_spec(c: &pb::FeatureConfig) -> String {
    let type_name = pb::ValueType::try_from(c.value_type).map_or_else(
        |_| c.value_type.to_string(),
        |t| t.as_str_name()["VALUE_TYPE_".len()..].to_lowercase(),
    );
    let pooling = pb::Pooling::try_from(c.pooling).map_or_else(
        |_| c.pooling.to_string(),
        |p| p.as_str_name()["POOLING_".len()..].to_lowercase(),
    );
    format!(
        "type={type_name},chunks={},pooling={pooling}",
        c.chunks.max(1)
    )
}
