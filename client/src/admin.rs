//! The admin calls: tables, features, checkpoints, stats, explain and
//! occupancy.

use crate::{pb, Client, ClientError};

impl Client {
    /// Creates a table with its first features.
    pub async fn create_table(
        &self,
        table: pb::TableConfig,
        features: Vec<pb::FeatureConfig>,
    ) -> Result<pb::TableInfo, ClientError> {
        let request = pb::CreateTableRequest {
            table: Some(table),
            features,
        };
        self.call(&self.admin, request, |mut c, r| async move {
            c.create_table(r).await
        })
        .await
    }

    /// A table's configuration, features and footprint.
    pub async fn get_table(&self, table: &str) -> Result<pb::TableInfo, ClientError> {
        let request = pb::TableName {
            table: table.to_owned(),
        };
        self.call(&self.admin, request, |mut c, r| async move {
            c.get_table(r).await
        })
        .await
    }

    /// Every table.
    pub async fn list_tables(&self) -> Result<Vec<pb::TableInfo>, ClientError> {
        let response = self
            .call(
                &self.admin,
                pb::ListTablesRequest {},
                |mut c, r| async move { c.list_tables(r).await },
            )
            .await?;
        Ok(response.tables)
    }

    /// Drops a table and its stored rows.
    pub async fn drop_table(&self, table: &str) -> Result<(), ClientError> {
        let request = pb::TableName {
            table: table.to_owned(),
        };
        self.call(&self.admin, request, |mut c, r| async move {
            c.drop_table(r).await
        })
        .await?;
        Ok(())
    }

    /// Adds features to a table (all or nothing).
    pub async fn add_features(
        &self,
        table: &str,
        features: Vec<pb::FeatureConfig>,
    ) -> Result<pb::TableInfo, ClientError> {
        let request = pb::AddFeaturesRequest {
            table: table.to_owned(),
            features,
        };
        self.call(&self.admin, request, |mut c, r| async move {
            c.add_features(r).await
        })
        .await
    }

    /// Flushes and checkpoints the database.
    pub async fn create_checkpoint(&self) -> Result<pb::Checkpoint, ClientError> {
        self.checkpoint_where(false).await
    }

    /// On a cluster shard: checkpoints this shard alone (what a cluster
    /// checkpoint asks of each shard).
    pub async fn create_shard_checkpoint(&self) -> Result<pb::Checkpoint, ClientError> {
        self.checkpoint_where(true).await
    }

    async fn checkpoint_where(&self, this_shard_only: bool) -> Result<pb::Checkpoint, ClientError> {
        self.call(
            &self.admin,
            pb::CreateCheckpointRequest { this_shard_only },
            |mut c, r| async move { c.create_checkpoint(r).await },
        )
        .await
    }

    /// Every checkpoint, oldest first.
    pub async fn list_checkpoints(&self) -> Result<Vec<pb::Checkpoint>, ClientError> {
        let response = self
            .call(
                &self.admin,
                pb::ListCheckpointsRequest {},
                |mut c, r| async move { c.list_checkpoints(r).await },
            )
            .await?;
        Ok(response.checkpoints)
    }

    /// Deletes a checkpoint.
    pub async fn delete_checkpoint(&self, id: u64) -> Result<(), ClientError> {
        self.delete_checkpoint_where(id, false).await
    }

    /// On a cluster shard: deletes this shard's own checkpoint `id`.
    pub async fn delete_shard_checkpoint(&self, id: u64) -> Result<(), ClientError> {
        self.delete_checkpoint_where(id, true).await
    }

    async fn delete_checkpoint_where(
        &self,
        id: u64,
        this_shard_only: bool,
    ) -> Result<(), ClientError> {
        self.call(
            &self.admin,
            pb::CheckpointId {
                id,
                this_shard_only,
            },
            |mut c, r| async move { c.delete_checkpoint(r).await },
        )
        .await?;
        Ok(())
    }

    /// Restores `table` from checkpoint `id` (into another name if given).
    pub async fn restore_checkpoint(
        &self,
        id: u64,
        table: &str,
        into: Option<&str>,
    ) -> Result<pb::TableInfo, ClientError> {
        let request = pb::RestoreCheckpointRequest {
            id,
            table: table.to_owned(),
            into: into.unwrap_or_default().to_owned(),
            this_shard_only: false,
        };
        self.restore(request).await
    }

    /// On a cluster shard: restores this shard's part of `table`, in place,
    /// from its own checkpoint `id`.
    pub async fn restore_shard_checkpoint(
        &self,
        id: u64,
        table: &str,
    ) -> Result<pb::TableInfo, ClientError> {
        let request = pb::RestoreCheckpointRequest {
            id,
            table: table.to_owned(),
            into: String::new(),
            this_shard_only: true,
        };
        self.restore(request).await
    }

    async fn restore(
        &self,
        request: pb::RestoreCheckpointRequest,
    ) -> Result<pb::TableInfo, ClientError> {
        self.call(&self.admin, request, |mut c, r| async move {
            c.restore_checkpoint(r).await
        })
        .await
    }

    /// Server-wide counters and every table.
    pub async fn stats(&self) -> Result<pb::StatsResponse, ClientError> {
        self.call(&self.admin, pb::StatsRequest {}, |mut c, r| async move {
            c.stats(r).await
        })
        .await
    }

    /// The rows each chunk of each value maps to.
    pub async fn explain(
        &self,
        table: &str,
        features: Vec<pb::FeatureValues>,
    ) -> Result<pb::ExplainResponse, ClientError> {
        let request = pb::ExplainRequest {
            table: table.to_owned(),
            features,
        };
        self.call(&self.admin, request, |mut c, r| async move {
            c.explain(r).await
        })
        .await
    }

    /// How crowded `table` is: distinct values, occupied rows, collisions
    /// and cross-feature sharing, per table and per feature.
    pub async fn occupancy(&self, table: &str) -> Result<pb::OccupancyResponse, ClientError> {
        let request = pb::OccupancyRequest {
            table: table.to_owned(),
        };
        self.call(&self.admin, request, |mut c, r| async move {
            c.occupancy(r).await
        })
        .await
    }
}
