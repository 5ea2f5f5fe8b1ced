//! `Lookup` served below tonic's codec, and the routing that sends
//! `Lookup` and `Train` (`raw_train.rs`) past tonic's generated service.
//!
//! tonic encodes every response message into one buffer (its `EncodeBuf`
//! takes only copies), so a lookup's megabytes of embeddings, already
//! gathered into buffers of their own, were copied once more before HTTP/2
//! wrote them. Here the response body is the message's few bytes of
//! protobuf framing interleaved with those buffers themselves, which h2
//! hands to the socket without copying: the same bytes on the wire, one
//! copy less (≈ 7 % of the CPU of the 8-client lookup bench, perf).
//!
//! Everything else about the call is what tonic's path gives: tokens are
//! checked by [`super::auth::GrpcAuthLayer`] outside this service, the
//! message size limit, lanes, metrics and status codes are the same, and
//! every other method still goes through tonic.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use featmux_proto::grpc_frame::{encode_chunks, HEADER_BYTES, LOOKUP_PATH, TRAIN_PATH};
use featmux_proto::v1 as pb;
use featmux_proto::v1::embedding_service_server::EmbeddingServiceServer;
use http_body::Frame;
use http_body_util::{BodyExt, Limited, StreamBody};
use prost::Message;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::Status;
use tower::Service;

use super::raw_train::serve_train;
use super::{lookup_lane, lookup_result, EmbeddingGrpc};
use crate::api::LookupResult;
use crate::convert;
use crate::shared::Shared;

/// `EmbeddingService` as the server routes it: `Lookup` here, `Train` in
/// `raw_train.rs`, every other method through tonic's generated service.
#[derive(Clone)]
pub struct EmbeddingRoutes {
    shared: Arc<Shared>,
    max_message_bytes: usize,
    tonic: EmbeddingServiceServer<EmbeddingGrpc>,
}

impl EmbeddingRoutes {
    /// `max_message_bytes` bounds a request message, as it bounds tonic's.
    pub fn new(shared: Arc<Shared>, max_message_bytes: usize) -> Self {
        let tonic = EmbeddingServiceServer::new(EmbeddingGrpc {
            shared: shared.clone(),
        })
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
        EmbeddingRoutes {
            shared,
            max_message_bytes,
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
            TRAIN_PATH => Box::pin(async move { Ok(serve_train(shared, max, request).await) }),
            _ => Box::pin(self.tonic.call(request)),
        }
    }
}

async fn serve_lookup(
    shared: Arc<Shared>,
    max_message_bytes: usize,
    request: http::Request<Body>,
) -> http::Response<Body> {
    let (parts, body) = request.into_parts();
    let message = match read_message(&parts.headers, body, max_message_bytes).await {
        Ok(message) => message,
        Err(status) => return status.into_http(),
    };
    let lane = lookup_lane(&shared, &message);
    let request = tonic::Request::from_http(http::Request::from_parts(parts, message));
    let looked_up = shared
        .grpc_unary("Lookup", lane, request, lookup_result)
        .await;
    match looked_up {
        Ok(result) => {
            let chunks = encode_response(result.into_inner());
            let frames = chunks
                .into_iter()
                .map(Frame::data)
                .chain(std::iter::once(Frame::trailers(ok_trailers())))
                .map(Ok::<_, Infallible>);
            grpc_response(Body::new(StreamBody::new(tokio_stream::iter(frames))))
        }
        Err(status) => status.into_http(),
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

/// Reads the one message of a unary request, refusing it the way tonic's
/// codec does (and [`crate::codec`] translates): over the limit is
/// RESOURCE_EXHAUSTED, bytes that are not one protobuf message are
/// INVALID_ARGUMENT, compression (which this server does not accept) is
/// UNIMPLEMENTED.
async fn read_message(
    headers: &http::HeaderMap,
    body: Body,
    max_message_bytes: usize,
) -> Result<pb::LookupRequest, Status> {
    refuse_compression(headers)?;
    let too_large = || too_large(max_message_bytes);
    let body = Limited::new(body, max_message_bytes + HEADER_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                Status::cancelled(format!("reading the request: {e}"))
            }
        })?
        .to_bytes();
    let malformed =
        |why: String| Status::invalid_argument(format!("malformed request message: {why}"));
    let Some((head, message)) = body.split_first_chunk::<HEADER_BYTES>() else {
        return Err(malformed(format!(
            "the body has {} bytes, fewer than a message's {HEADER_BYTES}-byte header",
            body.len()
        )));
    };
    if head[0] != 0 {
        return Err(Status::unimplemented(
            "compressed messages are not accepted: send them uncompressed",
        ));
    }
    let length = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if length > max_message_bytes {
        return Err(too_large());
    }
    if length != message.len() {
        return Err(malformed(format!(
            "the header announces {length} bytes but {} follow (a unary call carries one message)",
            message.len()
        )));
    }
    pb::LookupRequest::decode(body.slice(HEADER_BYTES..)).map_err(|e| malformed(e.to_string()))
}

/// The framed `LookupResponse` as body chunks: the blocks' payloads are
/// the gathered buffers themselves ([`encode_chunks`]).
fn encode_response(result: LookupResult) -> Vec<Bytes> {
    encode_chunks(&pb::LookupResponse {
        embeddings: convert::embeddings_to_pb(result.embeddings),
        ticket: result.ticket.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use featmux_engine::batch::FeatureEmbeddings;
    use featmux_proto::grpc_frame::header;

    fn block(feature: &str, rows: usize, width: usize) -> FeatureEmbeddings {
        FeatureEmbeddings {
            feature: feature.to_owned(),
            rows,
            width,
            data: (0..rows * width).map(|i| i as f32 * 0.5 - 3.0).collect(),
        }
    }

    /// Each payload is its own chunk, the gathered buffer itself.
    #[test]
    #[cfg(target_endian = "little")]
    fn payloads_are_not_copied() {
        let embeddings = vec![block("a", 64, 16), block("b", 32, 8)];
        let pointers: Vec<*const u8> = embeddings.iter().map(|e| e.data.as_ptr().cast()).collect();
        let chunks = encode_response(LookupResult {
            embeddings,
            ticket: None,
        });
        assert_eq!(chunks.len(), 4);
        assert_eq!(chunks[1].as_ptr(), pointers[0]);
        assert_eq!(chunks[3].as_ptr(), pointers[1]);
    }

    fn framed(flag: u8, message: &[u8]) -> Body {
        let mut body = framed_bytes(message);
        body[0] = flag;
        Body::new(http_body_util::Full::new(Bytes::from(body)))
    }

    async fn read(
        headers: &[(&'static str, &'static str)],
        body: Body,
    ) -> Result<pb::LookupRequest, Status> {
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, http::HeaderValue::from_static(value));
        }
        read_message(&map, body, 1000).await
    }

    #[tokio::test]
    async fn requests_are_read_or_refused_as_tonic_would() {
        let request = pb::LookupRequest {
            table: "t".into(),
            batch: None,
            want_ticket: true,
        };
        let bytes = request.encode_to_vec();
        let identity = [("grpc-encoding", "identity")];
        assert_eq!(read(&identity, framed(0, &bytes)).await.unwrap(), request);

        let refused = |result: Result<pb::LookupRequest, Status>| result.expect_err("refused");
        let status = refused(read(&[("grpc-encoding", "gzip")], framed(0, &bytes)).await);
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
        let status = refused(read(&[], framed(1, &bytes)).await);
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
        for body in [framed(0, &[0u8; 1001]), framed(0, &[0u8; 5000])] {
            let status = refused(read(&[], body).await);
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
            assert!(status.message().contains("max_message_bytes"), "{status:?}");
        }
        let malformed = [
            Body::empty(),
            Body::new(http_body_util::Full::new(Bytes::from_static(&[0, 0, 0]))),
            framed(0, &[0xff, 0xff, 0xff]),
            // Two messages: a unary call carries one.
            Body::new(http_body_util::Full::new(Bytes::from(
                [framed_bytes(&bytes), framed_bytes(&bytes)].concat(),
            ))),
        ];
        for body in malformed {
            let status = refused(read(&[], body).await);
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(
                status.message().contains("malformed request message"),
                "{status:?}"
            );
        }
    }

    fn framed_bytes(message: &[u8]) -> Vec<u8> {
        [&header(message.len() as u32)[..], message].concat()
    }
}
