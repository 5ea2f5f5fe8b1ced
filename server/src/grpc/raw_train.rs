//! `Train` served below tonic's codec.
//!
//! A training step moves megabytes each way: the lookup's embeddings out,
//! the push's gradients in. tonic's codec copied both once more than the
//! wire needs (its decoder joins every received frame into one buffer,
//! its encoder writes every answer into one), about 3 % of the CPU of the
//! Train-stream bench (perf). Here received frames are decoded where they
//! arrived (a gradient that lies within one HTTP/2 frame is a slice of
//! it) and answers go out as chunks that hold the gathered buffers
//! themselves ([`encode_chunks`]).
//!
//! What the stream means is unchanged: messages are answered one at a
//! time, in order; a failed message gets a `StreamError` and the stream
//! goes on; a message that cannot be read (over the size limit,
//! compressed, not protobuf) ends the stream with the status tonic's path
//! gave it; the stream ends when the client closes its side or the server
//! shuts down. Tokens are checked outside, by
//! [`super::auth::GrpcAuthLayer`]. A stream on the Unix socket may open a
//! shared-memory region ([`super::shared_memory`]); it is closed, and the
//! offer of its descriptor withdrawn, when the stream ends.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use featmux_proto::grpc_frame::{encode_chunks, Frames};
use featmux_proto::v1 as pb;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::Status;

use super::routes::{grpc_response, malformed, ok_trailers, refusal, refuse_compression};
use super::shared_memory::StreamRegion;
use super::{code_label, train_message};
use crate::api::Api;
use crate::shared::Shared;
use crate::shared_region::Regions;

/// Answer chunks queued for HTTP/2 before the stream waits for it to take
/// them (a lookup's answer is about two chunks per feature).
const CHUNKS_IN_FLIGHT: usize = 128;

type Chunks = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

/// Opens the stream: its answers come from a task that reads the request
/// body as it arrives.
pub(super) async fn serve_train(
    shared: Arc<Shared>,
    max_message_bytes: usize,
    regions: Option<Arc<Regions>>,
    request: http::Request<Body>,
) -> http::Response<Body> {
    if let Err(status) = refuse_compression(request.headers()) {
        return status.into_http();
    }
    let api = match shared.api() {
        Ok(api) => api,
        Err(e) => {
            let code = code_label(e.grpc_code());
            shared
                .metrics
                .observe("grpc", "Train", code, Default::default());
            return Status::from(e).into_http();
        }
    };
    let (chunks, answers) = mpsc::channel(CHUNKS_IN_FLIGHT);
    tokio::spawn(async move {
        let mut region = StreamRegion::new(regions);
        let ended = answer(
            &shared,
            &api,
            &mut region,
            max_message_bytes,
            request.into_body(),
            &chunks,
        )
        .await;
        let trailers = match ended {
            Ok(()) => ok_trailers(),
            Err(status) => {
                let mut trailers = http::HeaderMap::new();
                if status.add_header(&mut trailers).is_err() {
                    return;
                }
                trailers
            }
        };
        let _ = chunks.send(Ok(Frame::trailers(trailers))).await;
    });
    grpc_response(Body::new(StreamBody::new(ReceiverStream::new(answers))))
}

/// Answers each message as it arrives. `Ok` when the client closed its
/// side, went away, or the server is shutting down; the status that ends
/// the stream when a message cannot be read.
async fn answer(
    shared: &Arc<Shared>,
    api: &Arc<Api>,
    region: &mut StreamRegion,
    max_message_bytes: usize,
    mut body: Body,
    chunks: &Chunks,
) -> Result<(), Status> {
    let mut arrived = Frames::default();
    let mut shutdown = shared.shutdown.clone();
    loop {
        while let Some(message) = arrived
            .next_message(max_message_bytes)
            .map_err(|e| refusal(e, max_message_bytes))?
        {
            let request = pb::TrainRequest::decode(message).map_err(malformed)?;
            let response = train_message(shared, api, region, request).await;
            for chunk in encode_chunks(&response) {
                if chunks.send(Ok(Frame::data(chunk))).await.is_err() {
                    return Ok(());
                }
            }
        }
        let next = tokio::select! {
            next = body.frame() => next,
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        };
        match next {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    arrived.push(data);
                }
            }
            Some(Err(e)) => return Err(Status::cancelled(format!("reading the request: {e}"))),
            None if arrived.has_remaining() => {
                return Err(malformed(format!(
                    "the stream ended {} bytes into a message",
                    arrived.remaining()
                )))
            }
            None => return Ok(()),
        }
    }
}
