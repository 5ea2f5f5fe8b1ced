//! How the server serves `EmbeddingService`: every method below tonic's
//! codec, the unary ones by `raw_unary.rs` and `Train` by `raw_train.rs`.
//!
//! tonic's codec copies every message once more than the wire needs (its
//! encoder writes the whole message into one buffer, its decoder joins every
//! received HTTP/2 frame into one), and these methods carry megabytes of
//! embeddings and gradients. Everything else about a call is
//! what tonic's path gives: tokens are checked by
//! [`super::auth::GrpcAuthLayer`] outside this service, and the message
//! size limit, lanes, metrics and status codes are the same; these helpers
//! refuse what tonic's codec refuses, with the codes every other refusal of
//! the same kind gets ([`crate::codec`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use featmux_proto::grpc_frame::{
    FrameError, LOOKUP_PATH, LOOKUP_ROWS_PATH, PUSH_PATH, PUSH_ROWS_PATH, TRAIN_PATH,
};
use featmux_proto::v1 as pb;
use featmux_proto::v1::embedding_service_server::SERVICE_NAME;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::Status;
use tower::Service;

use super::raw_train::serve_train;
use super::raw_unary::{serve_unary, Unary};
use super::{lookup, lookup_lane, lookup_rows, lookup_rows_lane, push, push_rows};
use crate::execution::Lane;
use crate::shared::Shared;
use crate::shared_region::Regions;

/// `EmbeddingService` as the server routes it.
#[derive(Clone)]
pub struct EmbeddingRoutes {
    shared: Arc<Shared>,
    max_message_bytes: usize,
    /// Set on the Unix socket's routes: Train streams may open regions.
    regions: Option<Arc<Regions>>,
}

impl EmbeddingRoutes {
    /// `max_message_bytes` bounds a request message, as it bounds tonic's;
    /// `regions`, where the clients share the server's machine.
    pub fn new(
        shared: Arc<Shared>,
        max_message_bytes: usize,
        regions: Option<Arc<Regions>>,
    ) -> Self {
        EmbeddingRoutes {
            shared,
            max_message_bytes,
            regions,
        }
    }
}

impl NamedService for EmbeddingRoutes {
    const NAME: &'static str = SERVICE_NAME;
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl Service<http::Request<Body>> for EmbeddingRoutes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let (shared, max) = (self.shared.clone(), self.max_message_bytes);
        match request.uri().path() {
            LOOKUP_PATH => boxed(serve_unary(shared, max, LOOKUP, request)),
            PUSH_PATH => boxed(serve_unary(shared, max, PUSH, request)),
            LOOKUP_ROWS_PATH => boxed(serve_unary(shared, max, LOOKUP_ROWS, request)),
            PUSH_ROWS_PATH => boxed(serve_unary(shared, max, PUSH_ROWS, request)),
            TRAIN_PATH => {
                let regions = self.regions.clone();
                Box::pin(async move { Ok(serve_train(shared, max, regions, request).await) })
            }
            path => {
                let status =
                    Status::unimplemented(format!("{SERVICE_NAME} has no method at {path}"));
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

const LOOKUP: Unary<pb::LookupRequest, pb::LookupResponse> = Unary {
    endpoint: "Lookup",
    lane: lookup_lane,
    op: lookup,
};

const PUSH: Unary<pb::PushRequest, pb::PushResponse> = Unary {
    endpoint: "Push",
    lane: bulk,
    op: push,
};

const LOOKUP_ROWS: Unary<pb::LookupRowsRequest, pb::LookupRowsResponse> = Unary {
    endpoint: "LookupRows",
    lane: lookup_rows_lane,
    op: lookup_rows,
};

const PUSH_ROWS: Unary<pb::PushRowsRequest, pb::PushResponse> = Unary {
    endpoint: "PushRows",
    lane: bulk,
    op: push_rows,
};

/// Pushes run in the bulk lane whatever they carry.
fn bulk<Req>(_: &Shared, _: &Req) -> Lane {
    Lane::Bulk
}

fn boxed(answer: impl Future<Output = http::Response<Body>> + Send + 'static) -> ResponseFuture {
    Box::pin(async move { Ok(answer.await) })
}

/// A gRPC answer with `body` (its messages, then its trailers).
pub(super) fn grpc_response(body: Body) -> http::Response<Body> {
    let mut response = http::Response::new(body);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// A request message over `limits.max_message_bytes`, refused as every
/// other oversized request is.
pub(super) fn too_large(max_message_bytes: usize) -> Status {
    Status::resource_exhausted(format!(
        "limits.max_message_bytes exceeded: the request message is over {max_message_bytes} bytes"
    ))
}

/// A message the framing refused, with the status tonic's path gave it.
pub(super) fn refusal(error: FrameError, max_message_bytes: usize) -> Status {
    match error {
        FrameError::Compressed => Status::unimplemented(error.to_string()),
        FrameError::TooLarge { .. } => too_large(max_message_bytes),
    }
}

/// Bytes that are not the request message they should be.
pub(super) fn malformed(why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("malformed request message: {why}"))
}

pub(super) fn ok_trailers() -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    trailers
}

/// Refuses a request whose messages are compressed (`grpc-encoding`),
/// which this server does not accept, as tonic's codec would: UNIMPLEMENTED.
pub(super) fn refuse_compression(headers: &http::HeaderMap) -> Result<(), Status> {
    match headers.get("grpc-encoding") {
        Some(encoding) if encoding.as_bytes() != b"identity" => {
            Err(Status::unimplemented(format!(
                "messages compressed with {encoding:?} are not accepted: send them uncompressed"
            )))
        }
        _ => Ok(()),
    }
}
