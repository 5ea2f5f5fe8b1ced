//! How the server routes `EmbeddingService`: `Lookup` and `Push` are served
//! below tonic's codec (`raw_unary.rs`), and so is `Train`
//! (`raw_train.rs`); every other method goes through tonic's generated
//! service.
//!
//! tonic's codec copies every message once more than the wire needs (its
//! encoder writes the whole message into one buffer, its decoder joins every
//! received HTTP/2 frame into one), and these three methods carry
//! megabytes of embeddings and gradients. Everything else about a call is
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

use featmux_proto::grpc_frame::{FrameError, LOOKUP_PATH, PUSH_PATH, TRAIN_PATH};
use featmux_proto::v1::embedding_service_server::EmbeddingServiceServer;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::Status;
use tower::Service;

use super::raw_train::serve_train;
use super::raw_unary::{serve_lookup, serve_push};
use super::EmbeddingGrpc;
use crate::shared::Shared;
use crate::shared_region::Regions;

/// `EmbeddingService` as the server routes it.
#[derive(Clone)]
pub struct EmbeddingRoutes {
    shared: Arc<Shared>,
    max_message_bytes: usize,
    /// Set on the Unix socket's routes: Train streams may open regions.
    regions: Option<Arc<Regions>>,
    tonic: EmbeddingServiceServer<EmbeddingGrpc>,
}

impl EmbeddingRoutes {
    /// `max_message_bytes` bounds a request message, as it bounds tonic's;
    /// `regions`, where the clients share the server's machine.
    pub fn new(
        shared: Arc<Shared>,
        max_message_bytes: usize,
        regions: Option<Arc<Regions>>,
    ) -> Self {
        let tonic = EmbeddingServiceServer::new(EmbeddingGrpc {
            shared: shared.clone(),
        })
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
        EmbeddingRoutes {
            shared,
            max_message_bytes,
            regions,
            tonic,
        }
    }
}

impl NamedService for EmbeddingRoutes {
    const NAME: &'static str = <EmbeddingServiceServer<EmbeddingGrpc> as NamedService>::NAME;
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl Service<http::Request<Body>> for EmbeddingRoutes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        <EmbeddingServiceServer<EmbeddingGrpc> as Service<http::Request<Body>>>::poll_ready(
            &mut self.tonic,
            cx,
        )
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let (shared, max) = (self.shared.clone(), self.max_message_bytes);
        match request.uri().path() {
            LOOKUP_PATH => Box::pin(async move { Ok(serve_lookup(shared, max, request).await) }),
            PUSH_PATH => Box::pin(async move { Ok(serve_push(shared, max, request).await) }),
            TRAIN_PATH => {
                let regions = self.regions.clone();
                Box::pin(async move { Ok(serve_train(shared, max, regions, request).await) })
            }
            _ => Box::pin(self.tonic.call(request)),
        }
    }
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
