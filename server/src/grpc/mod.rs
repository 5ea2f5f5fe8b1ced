//! The gRPC transport: `EmbeddingService` for trainers and `AdminService`
//! for operators, both thin wrappers around [`Api`]; [`auth`] checks tokens
//! before a message is decoded, and [`EmbeddingRoutes`] serves every
//! `EmbeddingService` method below tonic's codec.

pub mod auth;
mod raw_train;
mod raw_unary;
mod routes;
mod shared_memory;

use shared_memory::StreamRegion;

pub use routes::EmbeddingRoutes;

use std::sync::Arc;
use std::time::Instant;

use featmux_engine::backend::{GatherPlan, RowGradients};
use featmux_proto::payload;
use featmux_proto::v1 as pb;
use featmux_proto::v1::admin_service_server::AdminService;
use featmux_proto::v1::Precision;
use tonic::{Request, Response, Status};

use crate::api::{Api, Encoding, PushTarget, Scope};
use crate::convert;
use crate::error::{ApiError, ErrorKind};
use crate::execution::Lane;
use crate::shared::Shared;

/// gRPC's name for a status code, as a metric label.
pub(crate) fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

impl Shared {
    /// Runs `op` on the blocking pool and records the request (the caller
    /// was authorized by [`auth::GrpcAuthLayer`] before its message was
    /// decoded).
    async fn grpc_unary<Req, Resp>(
        self: &Arc<Self>,
        endpoint: &'static str,
        lane: Lane,
        request: Request<Req>,
        op: impl FnOnce(&Api, Req) -> Result<Resp, ApiError> + Send + 'static,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        let started = Instant::now();
        let result = match self.api() {
            Ok(api) => {
                let message = request.into_inner();
                self.run(lane, api, move |api| op(api, message)).await
            }
            Err(e) => Err(e),
        };
        let code = result
            .as_ref()
            .map_or_else(ApiError::grpc_code, |_| tonic::Code::Ok);
        self.metrics
            .observe("grpc", endpoint, code_label(code), started.elapsed());
        if let Err(e) = &result {
            if e.kind == ErrorKind::Internal {
                tracing::error!(endpoint, error = %e, "request failed");
            }
        }
        result.map(Response::new).map_err(Status::from)
    }
}

/// Values in a batch (every feature's), which decide a lookup's lane
/// before anything is decoded.
fn batch_values(batch: Option<&pb::Batch>) -> usize {
    use pb::feature_values::Values;
    let values = |f: &pb::FeatureValues| match &f.values {
        Some(Values::Strings(v)) => v.values.len(),
        Some(Values::Int64s(v)) => v.values.len(),
        Some(Values::PackedStrings(v)) => v.lengths.len() / 4,
        Some(Values::PackedInt64s(v)) => v.data.len() / 8,
        None => 0,
    };
    batch.map_or(0, |b| b.features.iter().map(values).sum())
}

/// The lane a lookup runs in, decided before its batch is decoded.
fn lookup_lane(shared: &Shared, req: &pb::LookupRequest) -> Lane {
    shared.lookup_lane(req.want_ticket, batch_values(req.batch.as_ref()))
}

/// A lookup, answered in the precision it asks for. Runs in the lookup's
/// lane, conversion included: an f32 answer's payloads are the gathered
/// buffers themselves (no copy); a 16-bit one converts each block as the
/// gather finishes it.
fn lookup(api: &Api, req: pb::LookupRequest) -> Result<pb::LookupResponse, ApiError> {
    let precision = Precision::from_field(req.precision).map_err(ApiError::invalid)?;
    let batch = convert::batch_from_pb(req.batch)?;
    let (table, want_ticket, encoding) = (&req.table, req.want_ticket, Encoding::Binary(precision));
    let (embeddings, ticket) = if precision == Precision::F32 {
        let result = api.lookup(table, &batch, want_ticket, encoding)?;
        (convert::embeddings_to_pb(result.embeddings), result.ticket)
    } else {
        let mut payloads = convert::EncodedPayloads::new(precision);
        let (outputs, ticket) =
            api.lookup_to(table, &batch, want_ticket, encoding, &mut payloads)?;
        (payloads.into_pb(outputs), ticket)
    };
    Ok(pb::LookupResponse {
        embeddings,
        ticket: ticket.unwrap_or(0),
    })
}

fn push_target(target: Option<pb::push_request::Target>) -> Result<PushTarget, ApiError> {
    match target {
        Some(pb::push_request::Target::Batch(batch)) => {
            Ok(PushTarget::Batch(convert::batch_from_pb(Some(batch))?))
        }
        Some(pb::push_request::Target::Ticket(id)) => Ok(PushTarget::Ticket(id)),
        None => Err(ApiError::invalid("set `batch` or `ticket`")),
    }
}

fn push(api: &Api, req: pb::PushRequest) -> Result<pb::PushResponse, ApiError> {
    let precision = Precision::from_field(req.precision).map_err(ApiError::invalid)?;
    let target = push_target(req.target)?;
    let gradients = convert::gradients_from_pb(req.gradients, precision)?;
    api.push(&req.table, &target, gradients, req.request_id)
        .map(convert::push_result_to_pb)
}

fn lookup_rows(api: &Api, req: pb::LookupRowsRequest) -> Result<pb::LookupRowsResponse, ApiError> {
    let plan = GatherPlan {
        rows: entries("rows", req.rows, &req.packed_rows)?,
        slots: entries("slots", req.slots, &req.packed_slots)?,
        weights: entries("weights", req.weights, &req.packed_weights)?,
        num_slots: req.num_slots as usize,
    };
    let pooled = api.lookup_rows(&req.table, plan, req.map_epoch)?;
    Ok(pb::LookupRowsResponse {
        data: payload::encode_owned(pooled),
    })
}

fn push_rows(api: &Api, req: pb::PushRowsRequest) -> Result<pb::PushResponse, ApiError> {
    let grads = payload::decode(&req.gradients).ok_or_else(|| {
        ApiError::invalid(format!(
            "`gradients` has {} bytes, not a whole number of f32",
            req.gradients.len()
        ))
    })?;
    let update = RowGradients {
        rows: entries("rows", req.rows, &req.packed_rows)?,
        grads,
    };
    api.push_rows(&req.table, update, req.request_id, req.map_epoch)
        .map(convert::push_result_to_pb)
}

/// The lane a row-level lookup runs in, decided before its entries are
/// decoded.
fn lookup_rows_lane(shared: &Shared, req: &pb::LookupRowsRequest) -> Lane {
    shared.lookup_lane(false, entries_sent(req))
}

/// The gather entries a row-level lookup carries, in either form.
fn entries_sent(req: &pb::LookupRowsRequest) -> usize {
    req.rows.len() + req.packed_rows.len() / 8
}

/// A row-level request's `field`, sent as its repeated field or packed
/// (`packed_<field>`), refused if sent both ways or ragged.
fn entries<T: payload::LittleEndianValue>(
    field: &str,
    repeated: Vec<T>,
    packed: &[u8],
) -> Result<Vec<T>, ApiError> {
    if packed.is_empty() {
        return Ok(repeated);
    }
    if !repeated.is_empty() {
        return Err(ApiError::invalid(format!(
            "`{field}` and `packed_{field}` are both set: send one"
        )));
    }
    payload::decode_values(packed).ok_or_else(|| {
        ApiError::invalid(format!(
            "`packed_{field}` has {} bytes, not a whole number of {}-byte values",
            packed.len(),
            std::mem::size_of::<T>()
        ))
    })
}

/// Answers one message of a Train stream: runs it in the bulk lane and
/// records it; a failed message is answered with a `StreamError`, and the
/// stream goes on.
async fn train_message(
    shared: &Arc<Shared>,
    api: &Arc<Api>,
    region: &mut StreamRegion,
    message: pb::TrainRequest,
) -> pb::TrainResponse {
    use pb::train_request::Op;
    use pb::train_response::Result as Answer;
    let started = Instant::now();
    region.message_arrived();
    let (endpoint, result) = match message.op {
        Some(Op::Lookup(req)) => (
            "Train/Lookup",
            shared
                .run(Lane::Bulk, api.clone(), move |api| lookup(api, req))
                .await
                .map(Answer::Lookup),
        ),
        Some(Op::Push(req)) => (
            "Train/Push",
            shared
                .run(Lane::Bulk, api.clone(), move |api| push(api, req))
                .await
                .map(Answer::Push),
        ),
        Some(Op::OpenRegion(req)) => (
            "Train/OpenRegion",
            region.open(req).await.map(Answer::RegionOpened),
        ),
        Some(Op::RegionLookup(req)) => (
            "Train/RegionLookup",
            region
                .lookup(shared, api, req)
                .await
                .map(Answer::RegionLookup),
        ),
        Some(Op::RegionPush(req)) => (
            "Train/RegionPush",
            region.push(shared, api, req).await.map(Answer::Push),
        ),
        None => (
            "Train",
            Err(ApiError::invalid("set one of the message's operations")),
        ),
    };
    let code = result
        .as_ref()
        .map_or_else(ApiError::grpc_code, |_| tonic::Code::Ok);
    shared
        .metrics
        .observe("grpc", endpoint, code_label(code), started.elapsed());
    let result = result.unwrap_or_else(|e| {
        Answer::Error(pb::StreamError {
            code: e.grpc_code() as i32,
            message: e.message,
        })
    });
    pb::TrainResponse {
        id: message.id,
        result: Some(result),
    }
}

/// A request's `this_shard_only` as the operations' scope.
fn scope(this_shard_only: bool) -> Scope {
    if this_shard_only {
        Scope::ThisShard
    } else {
        Scope::Everywhere
    }
}

/// `AdminService`: tables, features, checkpoints, stats, explain.
pub struct AdminGrpc {
    pub(super) shared: Arc<Shared>,
}

#[tonic::async_trait]
impl AdminService for AdminGrpc {
    async fn create_table(
        &self,
        request: Request<pb::CreateTableRequest>,
    ) -> Result<Response<pb::TableInfo>, Status> {
        self.shared
            .grpc_unary("CreateTable", Lane::Serving, request, |api, req| {
                let spec = convert::table_spec_from_pb(req.table)?;
                let features = convert::feature_specs_from_pb(req.features)?;
                Ok(convert::table_info_to_pb(
                    &api.create_table(spec, features)?,
                ))
            })
            .await
    }

    async fn get_table(
        &self,
        request: Request<pb::TableName>,
    ) -> Result<Response<pb::TableInfo>, Status> {
        self.shared
            .grpc_unary("GetTable", Lane::Serving, request, |api, req| {
                Ok(convert::table_info_to_pb(&api.table_info(&req.table)?))
            })
            .await
    }

    async fn list_tables(
        &self,
        request: Request<pb::ListTablesRequest>,
    ) -> Result<Response<pb::ListTablesResponse>, Status> {
        self.shared
            .grpc_unary("ListTables", Lane::Serving, request, |api, _| {
                Ok(pb::ListTablesResponse {
                    tables: api
                        .list_tables()
                        .iter()
                        .map(convert::table_info_to_pb)
                        .collect(),
                })
            })
            .await
    }

    async fn drop_table(
        &self,
        request: Request<pb::TableName>,
    ) -> Result<Response<pb::DropTableResponse>, Status> {
        self.shared
            .grpc_unary("DropTable", Lane::Serving, request, |api, req| {
                api.drop_table(&req.table)?;
                Ok(pb::DropTableResponse {})
            })
            .await
    }

    async fn add_features(
        &self,
        request: Request<pb::AddFeaturesRequest>,
    ) -> Result<Response<pb::TableInfo>, Status> {
        self.shared
            .grpc_unary("AddFeatures", Lane::Serving, request, |api, req| {
                let features = convert::feature_specs_from_pb(req.features)?;
                Ok(convert::table_info_to_pb(
                    &api.add_features(&req.table, features)?,
                ))
            })
            .await
    }

    async fn create_checkpoint(
        &self,
        request: Request<pb::CreateCheckpointRequest>,
    ) -> Result<Response<pb::Checkpoint>, Status> {
        self.shared
            .grpc_unary("CreateCheckpoint", Lane::Serving, request, |api, req| {
                Ok(convert::checkpoint_to_pb(
                    api.create_checkpoint(scope(req.this_shard_only))?,
                ))
            })
            .await
    }

    async fn list_checkpoints(
        &self,
        request: Request<pb::ListCheckpointsRequest>,
    ) -> Result<Response<pb::ListCheckpointsResponse>, Status> {
        self.shared
            .grpc_unary("ListCheckpoints", Lane::Serving, request, |api, _| {
                Ok(pb::ListCheckpointsResponse {
                    checkpoints: api
                        .list_checkpoints()?
                        .into_iter()
                        .map(convert::checkpoint_to_pb)
                        .collect(),
                })
            })
            .await
    }

    async fn delete_checkpoint(
        &self,
        request: Request<pb::CheckpointId>,
    ) -> Result<Response<pb::DeleteCheckpointResponse>, Status> {
        self.shared
            .grpc_unary("DeleteCheckpoint", Lane::Serving, request, |api, req| {
                api.delete_checkpoint(req.id, scope(req.this_shard_only))?;
                Ok(pb::DeleteCheckpointResponse {})
            })
            .await
    }

    async fn restore_checkpoint(
        &self,
        request: Request<pb::RestoreCheckpointRequest>,
    ) -> Result<Response<pb::TableInfo>, Status> {
        self.shared
            .grpc_unary("RestoreCheckpoint", Lane::Serving, request, |api, req| {
                let into = (!req.into.is_empty()).then_some(req.into.as_str());
                Ok(convert::table_info_to_pb(&api.restore_checkpoint(
                    req.id,
                    &req.table,
                    into,
                    scope(req.this_shard_only),
                )?))
            })
            .await
    }

    async fn stats(
        &self,
        request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        self.shared
            .grpc_unary("Stats", Lane::Serving, request, |api, _| {
                Ok(convert::stats_to_pb(&api.stats()))
            })
            .await
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        self.shared
            .grpc_unary("Explain", Lane::Serving, request, |api, req| {
                let features = req
                    .features
                    .into_iter()
                    .map(|mut fv| Ok((fv.feature.clone(), convert::values_from_pb(&mut fv)?)))
                    .collect::<Result<Vec<_>, ApiError>>()?;
                Ok(convert::explanation_to_pb(
                    api.explain(&req.table, &features)?,
                ))
            })
            .await
    }

    async fn occupancy(
        &self,
        request: Request<pb::OccupancyRequest>,
    ) -> Result<Response<pb::OccupancyResponse>, Status> {
        self.shared
            .grpc_unary("Occupancy", Lane::Serving, request, |api, req| {
                Ok(convert::occupancy_to_pb(api.occupancy(&req.table)?))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_level_entries_come_packed_or_repeated_but_not_both() {
        let rows = vec![7u64, 1 << 40, 3];
        let packed = payload::encode_values(rows.clone());
        assert_eq!(entries("rows", rows.clone(), &[]).unwrap(), rows);
        assert_eq!(entries("rows", Vec::<u64>::new(), &packed).unwrap(), rows);
        let both = entries("rows", rows.clone(), &packed).unwrap_err();
        assert!(
            both.to_string()
                .contains("`rows` and `packed_rows` are both set"),
            "{both}"
        );
        let ragged = entries("slots", Vec::<u32>::new(), &packed[..10]).unwrap_err();
        assert!(
            ragged
                .to_string()
                .contains("`packed_slots` has 10 bytes, not a whole number of 4-byte values"),
            "{ragged}"
        );
    }

    #[test]
    fn a_row_level_lookups_entries_count_in_either_form() {
        let request = |rows: Vec<u64>, packed: Vec<u64>| pb::LookupRowsRequest {
            rows,
            packed_rows: payload::encode_values(packed),
            ..Default::default()
        };
        assert_eq!(entries_sent(&request(vec![1; 5], vec![])), 5);
        assert_eq!(entries_sent(&request(vec![], vec![1; 9000])), 9000);
    }
}
