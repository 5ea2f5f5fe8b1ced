//! `featmux lookup` and `featmux explain`: the data plane from a shell.

use anyhow::anyhow;
use featmux_client::{pb, BatchBuilder, Client};
use featmux_engine::schema::ValueType;
use featmux_server::api::{FeatureInfo, TableInfo};
use featmux_server::examples::ExampleReader;
use serde::de::DeserializeSeed;
use serde_json::{json, Value};

use crate::wire::{batch_to_pb, table_info_from_pb};

/// Builds a batch from JSON examples with the server's own serving-format
/// reader, typed by the table's features.
fn examples_batch(info: &TableInfo, examples: &[String]) -> anyhow::Result<pb::Batch> {
    let features: Vec<_> = info.features.iter().map(FeatureInfo::feature).collect();
    // The server enforces its own limit; the CLI builds what it was given.
    let mut reader = ExampleReader::new(&features, usize::MAX);
    for (i, text) in examples.iter().enumerate() {
        let mut json = serde_json::Deserializer::from_str(text);
        let read = reader
            .one()
            .deserialize(&mut json)
            .and_then(|()| json.end());
        if let Err(e) = read {
            return Err(match reader.take_refusal() {
                Some(refusal) => refusal.into(),
                None => anyhow!("example {i} is not a JSON object of features: {e}"),
            });
        }
    }
    Ok(batch_to_pb(reader.finish(false)?.batch))
}

pub async fn lookup(
    client: &Client,
    table: &str,
    examples: &[String],
    json: bool,
) -> anyhow::Result<()> {
    let info = table_info_from_pb(client.get_table(table).await?)?;
    let batch = examples_batch(&info, examples)?;
    let looked_up = client.lookup(table, &batch, false).await?;
    let out: serde_json::Map<String, Value> = looked_up
        .embeddings
        .iter()
        .map(|e| {
            let rows: Vec<Value> = e
                .data
                .chunks_exact(e.width.max(1))
                .map(|r| json!(r))
                .collect();
            (e.feature.clone(), Value::Array(rows))
        })
        .collect();
    if json {
        println!("{}", json!({ "embeddings": out }));
    } else {
        for (feature, rows) in &out {
            for (i, row) in rows.as_array().into_iter().flatten().enumerate() {
                println!("{feature}[{i}] = {row}");
            }
        }
    }
    Ok(())
}

/// One `feature=value` pair as a one-value column of the feature's type.
fn explain_column(info: &TableInfo, table: &str, pair: &str) -> anyhow::Result<pb::FeatureValues> {
    let (name, value) = pair
        .split_once('=')
        .ok_or_else(|| anyhow!("`{pair}` is not feature=value"))?;
    let feature = info
        .features
        .iter()
        .find(|f| f.spec.name == name)
        .ok_or_else(|| anyhow!("table `{table}` has no feature `{name}`"))?;
    Ok(match feature.spec.value_type {
        ValueType::String => BatchBuilder::strings_column(name, vec![value.to_owned()], vec![1]),
        ValueType::Int64 => {
            let value = value
                .parse()
                .map_err(|_| anyhow!("`{pair}`: `{name}` takes integers"))?;
            BatchBuilder::int64_column(name, vec![value], vec![1])
        }
    })
}

pub async fn explain(
    client: &Client,
    table: &str,
    values: &[String],
    json: bool,
) -> anyhow::Result<()> {
    let info = table_info_from_pb(client.get_table(table).await?)?;
    let columns = values
        .iter()
        .map(|pair| explain_column(&info, table, pair))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let explained = client.explain(table, columns).await?;
    if json {
        let out: Vec<Value> = explained
            .features
            .iter()
            .flat_map(|f| {
                f.values
                    .iter()
                    .map(|v| json!({ "feature": f.feature, "value": v.value, "rows": v.rows }))
            })
            .collect();
        println!("{}", json!({ "explained": out }));
    } else {
        for f in &explained.features {
            for v in &f.values {
                println!("{}={} -> rows {:?}", f.feature, v.value, v.rows);
            }
        }
    }
    Ok(())
}
