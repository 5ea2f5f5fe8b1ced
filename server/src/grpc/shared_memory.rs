//! The Train stream's shared-memory messages: `OpenRegion`, and the lookups
//! and pushes whose embeddings and gradients go through the stream's region
//! instead of the socket ([`crate::shared_region`] says why, and how the
//! server keeps itself safe from what the client does to the memory).

use std::sync::Arc;

use bytes::Bytes;
use featmux_engine::gradients::SharedGradients;
use featmux_proto::v1 as pb;
use prost::Message;

use super::push_target;
use crate::api::{Api, GradientBlock, PushTarget};
use crate::convert;
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

    /// Creates the stream's region, off the async workers: populating its
    /// pages takes time in proportion to its size.
    pub(super) async fn open(&mut self, req: pb::OpenRegion) -> Result<pb::RegionOpened, ApiError> {
        let Some(regions) = self.regions.clone() else {
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
        let creating = regions.clone();
        let (region, token) = tokio::task::spawn_blocking(move || creating.open(req.bytes))
            .await
            .map_err(|e| ApiError::new(ErrorKind::Internal, format!("creating a region: {e}")))??;
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

    /// Looks up, the gather writing the blocks straight into the region,
    /// one after the other from `req.offset`.
    pub(super) async fn lookup(
        &self,
        shared: &Shared,
        api: &Arc<Api>,
        req: pb::RegionLookup,
    ) -> Result<pb::RegionLookupResponse, ApiError> {
        let mut lookup = req.lookup.unwrap_or_default();
        if lookup.precision != pb::Precision::F32 as i32 {
            return Err(ApiError::invalid(
                "a region lookup's blocks are f32 in shared memory: leave `lookup.precision` \
                 unset (16-bit answers are for lookups answered over the socket)",
            ));
        }
        let region = self.region()?;
        shared
            .run(Lane::Bulk, api.clone(), move |api| {
                if req.batch_bytes > 0 {
                    let inline = lookup.batch.is_some();
                    lookup.batch = Some(batch_in(
                        &region,
                        inline,
                        req.batch_offset,
                        req.batch_bytes,
                    )?);
                }
                let batch = convert::batch_from_pb(lookup.batch)?;
                let (blocks, ticket) =
                    api.lookup_into(&lookup.table, &batch, lookup.want_ticket, |floats| {
                        region.gather_target(req.offset, floats)
                    })?;
                let mut offset = req.offset;
                Ok(pb::RegionLookupResponse {
                    blocks: blocks
                        .into_iter()
                        .map(|block| {
                            let at = offset;
                            offset += (block.rows * block.width * 4) as u64;
                            pb::RegionBlock {
                                feature: block.feature,
                                rows: block.rows as u32,
                                width: block.width as u32,
                                offset: at,
                            }
                        })
                        .collect(),
                    ticket: ticket.unwrap_or(0),
                })
            })
            .await
    }

    /// Reads the gradients (and the batch, if it is there) from the
    /// region, then pushes them.
    pub(super) async fn push(
        &self,
        shared: &Shared,
        api: &Arc<Api>,
        req: pb::RegionPush,
    ) -> Result<pb::PushResponse, ApiError> {
        let push = req.push.unwrap_or_default();
        if push.precision != pb::Precision::F32 as i32 {
            return Err(ApiError::invalid(
                "a region push's gradients are f32 in shared memory: leave `push.precision` \
                 unset (16-bit gradients are for pushes sent over the socket)",
            ));
        }
        let region = self.region()?;
        if !push.gradients.is_empty() {
            return Err(ApiError::invalid(
                "a region push reads its gradients from the region: leave `push.gradients` empty",
            ));
        }
        shared
            .run(Lane::Bulk, api.clone(), move |api| {
                let target = if req.batch_bytes > 0 {
                    let inline = push.target.is_some();
                    let batch = batch_in(&region, inline, req.batch_offset, req.batch_bytes)?;
                    PushTarget::Batch(convert::batch_from_pb(Some(batch))?)
                } else {
                    push_target(push.target)?
                };
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

/// The encoded batch a region lookup or push left in the region, copied
/// out before it is decoded (the client may write the region meanwhile).
/// `inline`: the message carries a batch (or a push target) as well.
fn batch_in(region: &Region, inline: bool, offset: u64, bytes: u64) -> Result<pb::Batch, ApiError> {
    if inline {
        return Err(ApiError::invalid(
            "the batch is both in the message and in the region (`batch_bytes`): send one",
        ));
    }
    if bytes > region.bytes() {
        return Err(ApiError::invalid(format!(
            "a batch of {bytes} bytes in a region of {}",
            region.bytes()
        )));
    }
    let encoded = region.copy_out("the batch", offset, bytes as usize)?;
    pb::Batch::decode(Bytes::from(encoded)).map_err(|e| {
        ApiError::invalid(format!(
            "the {bytes} bytes at offset {offset} of the region are not a Batch message: {e}"
        ))
    })
}

/// Where a gradient block lies in the region, checked to fit: the push
/// reads it in place.
fn read_gradient(
    region: &Region,
    g: pb::RegionGradient,
) -> Result<GradientBlock<SharedGradients<'_>>, ApiError> {
    let what = format!("gradient `{}`", g.feature);
    if g.bytes % 4 != 0 || g.bytes > region.bytes() {
        return Err(ApiError::invalid(format!(
            "{what} has {} bytes: a whole number of f32 within the region's {}",
            g.bytes,
            region.bytes()
        )));
    }
    let data = region.gradients(&what, g.offset, g.bytes as usize / 4)?;
    Ok(GradientBlock {
        feature: g.feature,
        data,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use prometheus::IntGauge;

    use super::*;
    use crate::shared_region::Regions;

    fn region_with(offset: u64, bytes: &[u8]) -> Region {
        let regions = Regions::new(
            "/run/featmux/grpc.sock.regions".into(),
            1 << 20,
            IntGauge::new("shared_memory_bytes", "test").unwrap(),
        );
        let (region, token) = regions.open(4096).unwrap();
        let client = regions.offers().take(&token).unwrap();
        client.write_all_at(bytes, offset).unwrap();
        region
    }

    fn batch() -> pb::Batch {
        pb::Batch {
            features: vec![pb::FeatureValues {
                feature: "u".into(),
                values: Some(pb::feature_values::Values::Int64s(pb::Int64Values {
                    values: vec![7, 8, 9],
                })),
                lengths: vec![1, 2],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn a_batch_in_the_region_is_the_one_the_client_encoded() {
        let encoded = batch().encode_to_vec();
        let region = region_with(64, &encoded);
        let read = batch_in(&region, false, 64, encoded.len() as u64).unwrap();
        assert_eq!(read, batch());
    }

    #[test]
    fn a_batch_the_region_does_not_hold_is_refused() {
        let region = region_with(0, &[0xff; 32]);
        let err = batch_in(&region, false, 0, 32).unwrap_err();
        assert!(err.message.contains("are not a Batch message"), "{err:?}");
        let err = batch_in(&region, true, 0, 4).unwrap_err();
        assert!(err.message.contains("send one"), "{err:?}");
        for (offset, bytes) in [(0, 8192), (4092, 8), (2, 4)] {
            let err = batch_in(&region, false, offset, bytes).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidArgument, "{offset} {bytes}");
        }
    }
}
