//! Bringing this shard's tables to what the cluster state in etcd says,
//! level-triggered: every change in etcd (or a reconnect) makes the shard
//! read a whole [`Snapshot`] and compare it with its catalog, so a missed
//! or repeated event, a restart or a long etcd outage all end the same
//! way. Tables are few and change rarely; rows are never touched here
//! except when a table is created or dropped.

use std::collections::HashMap;

use featmux_cluster::Snapshot;
use featmux_engine::partition::PartitionMap;
use featmux_engine::registry::FeatureRegistry;
use featmux_engine::schema::TableSpec;
use featmux_proto::engine::table_from_pb;
use featmux_storage::catalog::{Catalog, ShardPart};
use tracing::{info, warn};

/// What one reconciliation did.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// The map epoch of every table in the cluster.
    pub epochs: HashMap<String, u64>,
    /// Tables this shard could not bring in line, with the reason.
    pub failures: HashMap<String, String>,
}

/// One table as the cluster defines it, seen from shard `shard`.
struct Desired {
    spec: TableSpec,
    registry: FeatureRegistry,
    /// `None`: this shard owns none of its partitions.
    part: Option<ShardPart>,
    epoch: u64,
}

fn desired(snapshot: &Snapshot, shard: &str) -> (Vec<(String, Desired)>, HashMap<String, String>) {
    let maps: HashMap<&str, _> = snapshot.maps.iter().map(|(n, m)| (n.as_str(), m)).collect();
    let mut tables = Vec::new();
    let mut failures = HashMap::new();
    for info in &snapshot.tables {
        let incarnation = info.created as u64;
        let name = info
            .value
            .config
            .as_ref()
            .map_or("", |c| c.name.as_str())
            .to_owned();
        let table = (|| {
            let map = maps
                .get(name.as_str())
                .ok_or_else(|| "no partition map".to_owned())?;
            let (spec, registry) = table_from_pb(info.value.clone()).map_err(|e| e.to_string())?;
            let partitions = PartitionMap {
                owners: map.value.owners.iter().map(|&o| o as usize).collect(),
            };
            partitions
                .validate(spec.rows, map.value.shards.len())
                .map_err(|e| e.to_string())?;
            let part = match map.value.shards.iter().position(|s| s == shard) {
                None => None,
                Some(index) => partitions
                    .held_by(index, spec.rows)
                    .map_err(|e| e.to_string())?
                    .map(|held| ShardPart { held, incarnation }),
            };
            Ok::<_, String>(Desired {
                spec,
                registry,
                part,
                epoch: map.revision as u64,
            })
        })();
        match table {
            Ok(table) => tables.push((name, table)),
            Err(reason) => {
                failures.insert(name, reason);
            }
        }
    }
    (tables, failures)
}

/// Creates, extends and drops tables of `catalog` until they are shard
/// `shard`'s part of the cluster in `snapshot`.
pub fn reconcile(catalog: &Catalog, shard: &str, snapshot: &Snapshot) -> Reconciled {
    let (tables, mut failures) = desired(snapshot, shard);
    let mut epochs = HashMap::new();
    for (name, want) in &tables {
        if let Err(reason) = apply(catalog, name, want) {
            warn!(table = %name, %reason, "cannot apply the cluster's table here");
            failures.insert(name.clone(), reason);
        }
        epochs.insert(name.clone(), want.epoch);
    }
    for name in catalog.table_names() {
        let in_cluster = tables.iter().any(|(n, _)| *n == name) || failures.contains_key(&name);
        if !in_cluster {
            info!(table = %name, "dropped from the cluster: dropping it here");
            if let Err(e) = catalog.drop_table(&name) {
                failures.insert(name, e.to_string());
            }
        }
    }
    Reconciled { epochs, failures }
}

/// Brings one table in line: create it, register the features it lacks,
/// or replace it when it is another incarnation or another row range.
fn apply(catalog: &Catalog, name: &str, want: &Desired) -> Result<(), String> {
    let here = catalog.table(name).ok();
    let Some(part) = &want.part else {
        if here.is_some() {
            info!(table = %name, "this shard owns none of its partitions now: dropping it");
            catalog.drop_table(name).map_err(|e| e.to_string())?;
        }
        return Ok(());
    };
    let create = || {
        info!(table = %name, rows = ?part.held, epoch = want.epoch, "creating this shard's part");
        catalog
            .create_table_with(want.spec.clone(), want.registry.clone(), Some(part.clone()))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let Some(table) = here else {
        return create();
    };
    let same_table = catalog
        .shard_part(name)
        .map_err(|e| e.to_string())?
        .as_ref()
        == Some(part)
        && table.spec() == &want.spec;
    let have = table.features();
    let wanted = want.registry.features();
    let extends = have.len() <= wanted.len() && have[..] == wanted[..have.len()];
    if !same_table || !extends {
        info!(table = %name, "the cluster's table is another one now: replacing it here");
        catalog.drop_table(name).map_err(|e| e.to_string())?;
        return create();
    }
    if have.len() < wanted.len() {
        let added = catalog
            .add_features(
                name,
                wanted[have.len()..].iter().map(|f| f.spec()).collect(),
            )
            .map_err(|e| e.to_string())?;
        if added[..] != wanted[have.len()..] {
            return Err(format!(
                "features registered here got other salts or slices than the cluster's: \
                 {added:?} vs {:?}",
                &wanted[have.len()..]
            ));
        }
    }
    Ok(())
}
