//! Which partition map each table is routed by here: a row-level request
//! carries the map epoch its client routed with, and a shard serves it
//! only at the epoch it follows itself. Anything else is a stale route
//! (ABORTED): the client reads the map again and retries, so a map change
//! can never make a shard apply a row it does not own.
//!
//! A replica of a shard serves the epochs its shard recorded in the data
//! it copies (`Catalog::shard_routing`), so it moves to a new epoch only
//! once it holds the rows that epoch describes.

use std::collections::HashMap;

use featmux_storage::catalog::ShardRouting;
use tokio::sync::watch;

use crate::error::{ApiError, ErrorKind};

/// What this server serves: which shard's rows (none on a standalone
/// server) at which map epoch per table.
#[derive(Debug, Default)]
struct Following {
    shard: Option<String>,
    /// Whether the rows are a replica's copy of that shard's.
    replica: bool,
    epochs: HashMap<String, u64>,
}

/// The map epoch of every table this server follows.
pub struct MapEpochs {
    following: watch::Sender<Following>,
}

impl MapEpochs {
    /// A standalone server: only epoch 0 (no map) is served.
    pub fn standalone() -> Self {
        Self::with(Following::default())
    }

    /// Shard `shard` of a cluster, following no table yet.
    pub fn shard(shard: &str) -> Self {
        Self::with(Following {
            shard: Some(shard.to_owned()),
            ..Following::default()
        })
    }

    /// A replica, serving what the copied data says (`None`: the copy of a
    /// standalone server, or no copy yet).
    pub fn replica(routing: Option<ShardRouting>) -> Self {
        let epochs = Self::standalone();
        epochs.follow_copy(routing);
        epochs
    }

    fn with(following: Following) -> Self {
        MapEpochs {
            following: watch::Sender::new(following),
        }
    }

    /// Replaces every table's epoch (after reconciling with the cluster).
    pub fn set_all(&self, epochs: HashMap<String, u64>) {
        self.following.send_modify(|f| f.epochs = epochs);
    }

    /// On a replica: serves what the copied shard recorded.
    pub fn follow_copy(&self, routing: Option<ShardRouting>) {
        self.following.send_modify(|f| {
            *f = match routing {
                None => Following::default(),
                Some(routing) => Following {
                    shard: Some(routing.shard),
                    replica: true,
                    epochs: routing.epochs.into_iter().collect(),
                },
            }
        });
    }

    /// Resolves with the shard id once it is known (immediately on a
    /// shard; on a replica of a shard, once its copy says which).
    pub async fn shard_known(&self) -> String {
        let mut changes = self.following.subscribe();
        let known = changes.wait_for(|f| f.shard.is_some()).await;
        let shard = known.expect("the sender lives in self").shard.clone();
        shard.expect("waited for it")
    }

    /// Refuses a request for `table` routed with map `epoch` unless this
    /// server follows that epoch; the error says which side is behind.
    pub fn check(&self, table: &str, epoch: u64) -> Result<(), ApiError> {
        let stale = |message: String| Err(ApiError::new(ErrorKind::StaleRoute, message));
        let following = self.following.borrow();
        let Some(shard) = &following.shard else {
            return match epoch {
                0 => Ok(()),
                _ => stale(format!(
                    "this server is not a cluster shard, but the request was routed with \
                     partition map epoch {epoch}"
                )),
            };
        };
        let here = match following.replica {
            true => format!("this replica of shard `{shard}`"),
            false => format!("shard `{shard}`"),
        };
        match following.epochs.get(table).copied() {
            Some(served) if served == epoch => Ok(()),
            Some(served) => stale(format!(
                "table `{table}`: routed with partition map epoch {epoch}, but {here} follows \
                 epoch {served}; read the map again"
            )),
            None => stale(format!(
                "table `{table}`: {here} follows no partition map for it (epoch {epoch} not \
                 applied here yet, or the table was dropped)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_followed_epoch_is_served() {
        let standalone = MapEpochs::standalone();
        assert!(standalone.check("t", 0).is_ok());
        assert_eq!(
            standalone.check("t", 3).unwrap_err().kind,
            ErrorKind::StaleRoute
        );
        let shard = MapEpochs::shard("s1");
        shard.set_all(HashMap::from([("t".to_owned(), 7)]));
        assert!(shard.check("t", 7).is_ok());
        let behind = shard.check("t", 9).unwrap_err();
        assert_eq!(behind.kind, ErrorKind::StaleRoute);
        assert!(behind.message.contains("epoch 9") && behind.message.contains("epoch 7"));
        assert!(shard.check("u", 7).unwrap_err().message.contains("`s1`"));
    }

    #[tokio::test]
    async fn a_replica_serves_the_epochs_its_copy_recorded() {
        let replica = std::sync::Arc::new(MapEpochs::replica(None));
        assert!(replica.check("t", 0).is_ok(), "a standalone copy");
        let known = tokio::spawn({
            let replica = replica.clone();
            async move { replica.shard_known().await }
        });
        tokio::task::yield_now().await;
        assert!(!known.is_finished(), "no shard before the copy names one");
        replica.follow_copy(Some(ShardRouting {
            shard: "s2".into(),
            epochs: [("t".to_owned(), 11)].into(),
        }));
        assert_eq!(known.await.unwrap(), "s2");
        assert!(replica.check("t", 11).is_ok());
        let behind = replica.check("t", 12).unwrap_err();
        assert_eq!(behind.kind, ErrorKind::StaleRoute);
        assert!(
            behind.message.contains("replica of shard `s2`") && behind.message.contains("11"),
            "{}",
            behind.message
        );
        assert_eq!(
            replica.check("t", 0).unwrap_err().kind,
            ErrorKind::StaleRoute
        );
    }
}
