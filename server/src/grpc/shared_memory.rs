//! The Train stream's shared-memory messages: `OpenRegion`, and the lookups
//! and pushes whose embeddings and gradients go through the stream's region
//! instead of the socket ([`crate::shared_region`] says why, and how the
//! server keeps itself safe from what the client does to the memory).

use std::sync::Arc;

use featmux_proto::payload;
use featmux_proto::v1 as pb;

use super::{lookup_result, push_target};
use crate::api::{Api, GradientBlock};
use crate::error::{ApiError, ErrorKind};
use crate::execution::Lane;
use crate::shared::Shared;
use crate::shared_region::{Region, Regions};

/// What one Train stream may do with shared memory: where regions come
/// from (none over TCP) and the region it opened.
pub(super) struct StreamRegion {
    regions: Option<Arc<Regions>>,
    region: Option<Arc<Region>>,
}

impl StreamRegion {
    pub(super) fn new(regions: Option<Arc<Regions>>) -> Self {
        StreamRegion {
            regions,
            region: None,
        }
    }

    /// Called for every message the stream reads: the client has taken
    /// its region's descriptor by now (the protocol says so), or never
    /// will, so the offer goes.
    pub(super) fn message_arrived(&self) {
        if let Some(region) = &self.region {
            region.withdraw_offer();
        }
    }

    pub(super) fn open(&mut self, req: pb::OpenRegion) -> Result<pb::RegionOpened, ApiError> {
        let Some(regions) = &self.regions else {
            return Err(ApiError::new(
                ErrorKind::FailedPrecondition,
                "shared-memory regions are offered on the server's Unix socket only \
                 (grpc_unix_socket): this stream did not come through it",
            ));
        };
        if self.region.is_some() {
            return Err(ApiError::new(
                ErrorKind::FailedPrecondition,
                "this stream has its region already (one per stream)",
            ));
        }
        let (region, token) = regions.open(req.bytes)?;
        let opened = pb::RegionOpened {
            socket: regions.socket().to_string_lossy().into_owned(),
            token: token.to_vec().into(),
            bytes: region.bytes(),
        };
        self.region = Some(Arc::new(region));
        Ok(opened)
    }

    fn region(&self) -> Result<Arc<Region>, ApiError> {
        self.region.clone().ok_or_else(|| {
            ApiError::new(
                ErrorKind::FailedPrecondition,
                "this stream has no region: send OpenRegion first",
            )
        })
    }

    /// Looks up, then writes the blocks into the region.
    pub(super) async fn lookup(
        &self,
        shared: &Shared,
        api: &Arc<Api>,
        req: pb::RegionLookup,
    ) -> Result<pb::RegionLookupResponse, ApiError> {
        let region = self.region()?;
        let lookup = req.lookup.unwrap_or_default();
        shared
            .run(Lane::Bulk, api.clone(), move |api| {
                let result = lookup_result(api, lookup)?;
                let (shapes, data): (Vec<_>, Vec<_>) = result
                    .embeddings
                    .into_iter()
                    .map(|e| ((e.feature, e.rows, e.width), payload::encode_owned(e.data)))
                    .unzip();
                let starts = region.write_blocks(req.offset, &data)?;
                Ok(pb::RegionLookupResponse {
                    blocks: shapes
                        .into_iter()
                        .zip(starts)
                        .map(|((feature, rows, width), offset)| pb::RegionBlock {
                            feature,
                            rows: rows as u32,
                            width: width as u32,
                            offset,
                        })
                        .collect(),
                    ticket: result.ticket.unwrap_or(0),
                })
            })
            .await
    }

    /// Reads the gradients from the region, then pushes them.
    pub(super) async fn push(
        &self,
        shared: &Shared,
        api: &Arc<Api>,
        req: pb::RegionPush,
    ) -> Result<pb::PushResponse, ApiError> {
        let region = self.region()?;
        let push = req.push.unwrap_or_default();
        if !push.gradients.is_empty() {
            return Err(ApiError::invalid(
                "a region push reads its gradients from the region: leave `push.gradients` empty",
            ));
        }
        shared
            .run(Lane::Bulk, api.clone(), move |api| {
                let target = push_target(push.target)?;
                let gradients = req
                    .gradients
                    .into_iter()
                    .map(|g| read_gradient(&region, g))
                    .collect::<Result<Vec<_>, _>>()?;
                api.push(&push.table, &target, gradients, push.request_id)
                    .map(crate::convert::push_result_to_pb)
            })
            .await
    }
}

fn read_gradient(region: &Region, g: pb::RegionGradient) -> Result<GradientBlock, ApiError> {
    let what = format!("gradient `{}`", g.feature);
    if g.bytes % 4 != 0 || g.bytes > region.bytes() {
        return Err(ApiError::invalid(format!(
            "{what} has {} bytes: a whole number of f32 within the region's {}",
            g.bytes,
            region.bytes()
        )));
    }
    let data = payload::decode_from(g.bytes as usize / 4, |into| {
        region.read(&what, g.offset, into)
    })?;
    Ok(GradientBlock {
        feature: g.feature,
        data,
    })
}
