//! Which partition map each table is routed by here: a row-level request
//! carries the map epoch its client routed with, and a shard serves it
//! only at the epoch it follows itself. Anything else is a stale route
//! (ABORTED): the client reads the map again and retries, so a map change
//! can never make a shard apply a row it does not own.

use std::collections::HashMap;

use parking_lot::RwLock;

use crate::error::{ApiError, ErrorKind};

/// The map epoch of every table this server follows.
#[derive(Default)]
pub struct MapEpochs {
    /// This shard's id; `None` on a standalone server.
    shard: Option<String>,
    epochs: RwLock<HashMap<String, u64>>,
}

impl MapEpochs {
    /// A standalone server: only epoch 0 (no map) is served.
    pub fn standalone() -> Self {
        Self::default()
    }

    /// Shard `shard` of a cluster, following no table yet.
    pub fn shard(shard: &str) -> Self {
        MapEpochs {
            shard: Some(shard.to_owned()),
            epochs: RwLock::default(),
        }
    }

    /// Replaces every table's epoch (after reconciling with the cluster).
    pub fn set_all(&self, epochs: HashMap<String, u64>) {
        *self.epochs.write() = epochs;
    }

    /// The epoch `table` is served at here.
    pub fn get(&self, table: &str) -> Option<u64> {
        self.epochs.read().get(table).copied()
    }

    /// Refuses a request for `table` routed with map `epoch` unless this
    /// server follows that epoch; the error says which side is behind.
    pub fn check(&self, table: &str, epoch: u64) -> Result<(), ApiError> {
        let stale = |message: String| Err(ApiError::new(ErrorKind::StaleRoute, message));
        let Some(shard) = &self.shard else {
            return match epoch {
                0 => Ok(()),
                _ => stale(format!(
                    "this server is not a cluster shard, but the request was routed with \
                     partition map epoch {epoch}"
                )),
            };
        };
        match self.get(table) {
            Some(here) if here == epoch => Ok(()),
            Some(here) => stale(format!(
                "table `{table}`: routed with partition map epoch {epoch}, but shard `{shard}` \
                 follows epoch {here}; read the map again"
            )),
            None => stale(format!(
                "table `{table}`: shard `{shard}` follows no partition map for it (epoch \
                 {epoch} not applied here yet, or the table was dropped)"
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
}
