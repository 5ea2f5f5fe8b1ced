//! The unary methods that carry embeddings and gradients (`Lookup`,
//! `Push`, and a cluster's row-level `LookupRows` and `PushRows`) served
//! below tonic's codec.
//!
//! A lookup's answer is its embeddings, already gathered into buffers of
//! their own: the response body is the message's few bytes of protobuf
//! framing between those buffers themselves, which h2 hands to the socket
//! without copying (tonic copied them into its encode buffer first: ≈ 7 %
//! of the CPU of the 8-client lookup bench, perf). A push's gradients are
//! decoded from the HTTP/2 frames they arrived in: a gradient within one
//! frame is a slice of it, where tonic joined every frame into one buffer.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use featmux_proto::grpc_frame::{encode_chunks, Frames, HEADER_BYTES};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use prost::Message;
use tonic::body::Body;
use tonic::Status;

use super::routes::{
    grpc_response, malformed, ok_trailers, refusal, refuse_compression, too_large,
};
use crate::api::Api;
use crate::error::ApiError;
use crate::execution::Lane;
use crate::shared::Shared;

/// One unary method as served here: its name (for metrics), the lane a
/// request runs in (decided before anything in it is decoded further) and
/// what answers it.
pub(super) struct Unary<Req, Resp> {
    pub endpoint: &'static str,
    pub lane: fn(&Shared, &Req) -> Lane,
    pub op: fn(&Api, Req) -> Result<Resp, ApiError>,
}

/// Serves one call of `method`: the request read from its frames, the
/// answer's large `bytes` fields written as the buffers they are
/// ([`encode_chunks`]).
pub(super) async fn serve_unary<Req, Resp>(
    shared: Arc<Shared>,
    max_message_bytes: usize,
    method: Unary<Req, Resp>,
    request: http::Request<Body>,
) -> http::Response<Body>
where
    Req: Message + Default + Send + 'static,
    Resp: Message + Send + 'static,
{
    let (parts, body) = request.into_parts();
    let message: Req = match read_message(&parts.headers, body, max_message_bytes).await {
        Ok(message) => message,
        Err(status) => return status.into_http(),
    };
    let lane = (method.lane)(&shared, &message);
    let request = tonic::Request::from_http(http::Request::from_parts(parts, message));
    match shared
        .grpc_unary(method.endpoint, lane, request, method.op)
        .await
    {
        Ok(answer) => respond(encode_chunks(answer.get_ref())),
        Err(status) => status.into_http(),
    }
}

/// A successful unary answer: the framed message's chunks, then an OK
/// status.
fn respond(chunks: Vec<Bytes>) -> http::Response<Body> {
    let frames = chunks
        .into_iter()
        .map(Frame::data)
        .chain(std::iter::once(Frame::trailers(ok_trailers())))
        .map(Ok::<_, Infallible>);
    grpc_response(Body::new(StreamBody::new(tokio_stream::iter(frames))))
}

/// Reads the one message of a unary request, refusing it the way tonic's
/// codec does (and [`crate::codec`] translates): over the limit is
/// RESOURCE_EXHAUSTED, bytes that are not one protobuf message are
/// INVALID_ARGUMENT, compression (which this server does not accept) is
/// UNIMPLEMENTED. The body is read no further than the limit.
async fn read_message<M: Message + Default>(
    headers: &http::HeaderMap,
    mut body: Body,
    max_message_bytes: usize,
) -> Result<M, Status> {
    refuse_compression(headers)?;
    let mut arrived = Frames::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Status::cancelled(format!("reading the request: {e}")))?;
        if let Ok(data) = frame.into_data() {
            arrived.push(data);
            if arrived.remaining() > HEADER_BYTES + max_message_bytes {
                return Err(too_large(max_message_bytes));
            }
        }
    }
    let received = arrived.remaining();
    let Some(message) = arrived
        .next_message(max_message_bytes)
        .map_err(|e| refusal(e, max_message_bytes))?
    else {
        return Err(malformed(if received < HEADER_BYTES {
            format!(
                "the body has {received} bytes, fewer than a message's {HEADER_BYTES}-byte header"
            )
        } else {
            format!("the body ends inside its message ({received} bytes with the header)")
        }));
    };
    if arrived.has_remaining() {
        return Err(malformed(format!(
            "{} bytes follow the message (a unary call carries one message)",
            arrived.remaining()
        )));
    }
    M::decode(message).map_err(malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert;
    use featmux_engine::batch::FeatureEmbeddings;
    use featmux_proto::grpc_frame::header;
    use featmux_proto::v1 as pb;
    use featmux_proto::v1::Precision;

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
        let chunks = encode_chunks(&pb::LookupResponse {
            embeddings: convert::embeddings_to_pb(embeddings),
            ticket: 0,
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
            precision: Precision::Bf16.into(),
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

    /// A push whose gradients arrive over many HTTP/2 frames decodes to
    /// the message sent, wherever the frames cut it.
    #[tokio::test]
    async fn a_message_cut_into_frames_anywhere_reads_whole() {
        let push = pb::PushRequest {
            table: "t".into(),
            target: Some(pb::push_request::Target::Ticket(7)),
            gradients: (0..3)
                .map(|g| pb::Gradient {
                    feature: String::new(),
                    data: featmux_proto::payload::encode(
                        &(0..700).map(|i| (g * 700 + i) as f32).collect::<Vec<_>>(),
                    ),
                })
                .collect(),
            request_id: 99,
            precision: Precision::F32.into(),
        };
        let bytes = framed_bytes(&push.encode_to_vec());
        for size in [1, 7, 1000, 4096, bytes.len()] {
            let frames: Vec<Result<Frame<Bytes>, Infallible>> = bytes
                .chunks(size)
                .map(|chunk| Ok(Frame::data(Bytes::copy_from_slice(chunk))))
                .collect();
            let body = Body::new(StreamBody::new(tokio_stream::iter(frames)));
            let read: pb::PushRequest = read_message(&http::HeaderMap::new(), body, 1 << 20)
                .await
                .unwrap();
            assert_eq!(read, push, "frames of {size} bytes");
        }
    }

    fn framed_bytes(message: &[u8]) -> Vec<u8> {
        [&header(message.len() as u32)[..], message].concat()
    }
}
