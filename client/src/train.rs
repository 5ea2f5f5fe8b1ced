//! The Train stream: lookups and pushes on one HTTP/2 stream, answered in
//! order, for trainers that issue many small requests.
//!
//! Called below tonic's codec, as `Lookup` and `Push` are (`raw_unary.rs`): a push's
//! gradients go to HTTP/2 as chunks of their own ([`encode_chunks`]), not
//! copied into one message buffer, and an answer's embeddings are copied
//! once, from the received frames straight into their floats. Headers
//! (the token), status codes and the message size limit are what tonic's
//! path gives; the server's side is `featmux-server`'s `grpc/raw_train.rs`.

use std::convert::Infallible;

use bytes::{Buf, Bytes};
use featmux_proto::grpc_frame::{encode_chunks, FrameError, Frames, TRAIN_PATH};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use prost::encoding::{check_wire_type, decode_key, decode_varint, skip_field};
use prost::encoding::{DecodeContext, WireType};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use crate::client::Transport;
use crate::raw_unary::{
    decode_message, delimited_length, start, status_of_http, too_large, transport_status, wire,
    Malformed,
};
use crate::region::SharedRegion;
use crate::{pb, ClientError, IntoGradients, Lookup};

/// Request chunks queued for HTTP/2 before `send` waits for it to take
/// them (a push is about two chunks per feature).
const CHUNKS_IN_FLIGHT: usize = 128;

/// An open Train stream. Requests may be pipelined: send several, then
/// read their answers in the same order.
pub struct TrainStream {
    requests: mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
    answers: tonic::service::interceptor::ResponseBody<Body>,
    /// Answer bytes received and not yet decoded.
    arrived: Frames,
    max_message_bytes: usize,
    /// What the stream's lookups ask their answers in.
    precision: pb::Precision,
    /// What the stream's pushes send their gradients in.
    push_precision: pb::Precision,
    next_id: u64,
    region: Option<SharedRegion>,
}

/// One answer on the stream; a failed request does not end the stream.
#[derive(Debug)]
pub enum TrainReply {
    Lookup(Lookup),
    Push(pb::PushResponse),
    RegionOpened(pb::RegionOpened),
    RegionLookup(pb::RegionLookupResponse),
}

impl TrainStream {
    /// Opens the stream on `transport`; messages over `max_message_bytes`
    /// are refused either way, as tonic refuses them. Its lookups ask for
    /// answers in `precision`, its pushes send `push_precision`.
    pub(crate) async fn open(
        transport: Transport,
        max_message_bytes: usize,
        precision: pb::Precision,
        push_precision: pb::Precision,
    ) -> Result<Self, ClientError> {
        let (requests, chunks) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let body = Body::new(StreamBody::new(ReceiverStream::new(chunks)));
        let response = start(transport, TRAIN_PATH, MetadataMap::new(), body).await?;
        let http_status = response.status();
        if http_status != http::StatusCode::OK {
            return Err(Status::new(
                status_of_http(http_status),
                format!("the train stream was answered with HTTP {http_status}"),
            )
            .into());
        }
        Ok(TrainStream {
            requests,
            answers: response.into_body(),
            arrived: Frames::default(),
            max_message_bytes,
            precision,
            push_precision,
            next_id: 1,
            region: None,
        })
    }

    async fn send(&mut self, op: pb::train_request::Op) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let message = pb::TrainRequest { id, op: Some(op) };
        let length = message.encoded_len();
        if length > self.max_message_bytes {
            return Err(too_large("encoded", length, self.max_message_bytes).into());
        }
        for chunk in encode_chunks(&message) {
            self.requests
                .send(Ok(Frame::data(chunk)))
                .await
                .map_err(|_| ClientError::Response("the train stream is closed".into()))?;
        }
        Ok(id)
    }

    /// Sends a lookup; returns its request id.
    pub async fn send_lookup(
        &mut self,
        table: &str,
        batch: pb::Batch,
        want_ticket: bool,
    ) -> Result<u64, ClientError> {
        self.send(pb::train_request::Op::Lookup(pb::LookupRequest {
            table: table.to_owned(),
            batch: Some(batch),
            want_ticket,
            precision: self.precision.into(),
        }))
        .await
    }

    /// Sends a push for a ticket; returns its request id. Owned or shared
    /// gradients are sent without a copy (see [`IntoGradients`]).
    pub async fn send_push_ticket(
        &mut self,
        table: &str,
        ticket: u64,
        grads: impl IntoGradients,
    ) -> Result<u64, ClientError> {
        self.send(pb::train_request::Op::Push(pb::PushRequest {
            table: table.to_owned(),
            target: Some(pb::push_request::Target::Ticket(ticket)),
            gradients: grads.into_gradients(self.push_precision),
            // A stream is not retried: its messages need no request id.
            request_id: 0,
            precision: self.push_precision.into(),
        }))
        .await
    }

    /// The next answer: its request id and result.
    pub async fn recv(&mut self) -> Result<(u64, Result<TrainReply, ClientError>), ClientError> {
        loop {
            let next = self
                .arrived
                .next_message(self.max_message_bytes)
                .map_err(|e| match e {
                    FrameError::TooLarge { length, max } => too_large("decoded", length, max),
                    FrameError::Compressed => {
                        malformed("compressed, which was not asked for".into())
                    }
                })?;
            if let Some(message) = next {
                return decode_answer(message, self.precision).map_err(|why| malformed(why).into());
            }
            match self.answers.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.arrived.push(data),
                    Err(frame) => {
                        let status = frame.into_trailers().ok();
                        match status.as_ref().and_then(Status::from_header_map) {
                            Some(status) if status.code() != Code::Ok => return Err(status.into()),
                            _ => {}
                        }
                    }
                },
                Some(Err(e)) => return Err(transport_status(e).into()),
                None => {
                    return Err(ClientError::Response(
                        "the server ended the train stream".into(),
                    ))
                }
            }
        }
    }

    /// Looks up and waits for the answer.
    pub async fn lookup(
        &mut self,
        table: &str,
        batch: pb::Batch,
        want_ticket: bool,
    ) -> Result<Lookup, ClientError> {
        self.send_lookup(table, batch, want_ticket).await?;
        match self.recv().await?.1? {
            TrainReply::Lookup(l) => Ok(l),
            other => Err(unexpected("Lookup", &other)),
        }
    }

    /// Asks for a shared-memory region of `bytes` bytes and maps it: on the
    /// server's machine (a stream over its Unix socket), lookups and pushes
    /// can then move their payload through it ([`Self::lookup_into_region`],
    /// [`Self::push_ticket_from_region`]) instead of through the socket.
    pub async fn open_region(&mut self, bytes: u64) -> Result<&mut SharedRegion, ClientError> {
        self.send(pb::train_request::Op::OpenRegion(pb::OpenRegion { bytes }))
            .await?;
        let opened = match self.recv().await?.1? {
            TrainReply::RegionOpened(opened) => opened,
            other => return Err(unexpected("OpenRegion", &other)),
        };
        let region = tokio::task::spawn_blocking(move || SharedRegion::take(&opened))
            .await
            .map_err(|e| ClientError::Response(format!("taking the region: {e}")))??;
        Ok(self.region.insert(region))
    }

    /// The stream's region, once [`Self::open_region`] has mapped it: read
    /// a lookup's blocks from it, write a push's gradients into it.
    pub fn region(&self) -> Option<&SharedRegion> {
        self.region.as_ref()
    }

    /// The same, to write.
    pub fn region_mut(&mut self) -> Option<&mut SharedRegion> {
        self.region.as_mut()
    }

    /// Looks up; the server writes the blocks into the region, back to
    /// back in batch order from `offset` (read them with
    /// [`SharedRegion::block`]). The batch goes through the region too,
    /// encoded from `offset` where it fits (the server reads it before it
    /// writes a block), else through the socket: the call changes bytes
    /// from `offset` on, the blocks' and the batch's, which may reach
    /// further (bags of many values). As every call here, it sends and then
    /// waits for its answer: a call abandoned in between (its future
    /// dropped) leaves the stream out of step, and the server may still
    /// write the region; open a new stream after one.
    pub async fn lookup_into_region(
        &mut self,
        table: &str,
        batch: pb::Batch,
        want_ticket: bool,
        offset: u64,
    ) -> Result<pb::RegionLookupResponse, ClientError> {
        let in_region = self
            .region
            .as_mut()
            .and_then(|region| region.encode_at(offset, &batch))
            .filter(|&len| len > 0);
        let lookup = pb::LookupRequest {
            table: table.to_owned(),
            batch: in_region.is_none().then_some(batch),
            want_ticket,
            // The blocks land in the region as f32.
            precision: pb::Precision::F32.into(),
        };
        self.send(pb::train_request::Op::RegionLookup(pb::RegionLookup {
            lookup: Some(lookup),
            offset,
            batch_offset: offset,
            batch_bytes: in_region.unwrap_or(0) as u64,
        }))
        .await?;
        match self.recv().await?.1? {
            TrainReply::RegionLookup(answer) => Ok(answer),
            other => Err(unexpected("RegionLookup", &other)),
        }
    }

    /// Pushes a ticket's gradients, which the caller wrote into the region
    /// where `gradients` say (one per batch feature, in batch order).
    pub async fn push_ticket_from_region(
        &mut self,
        table: &str,
        ticket: u64,
        gradients: Vec<pb::RegionGradient>,
    ) -> Result<pb::PushResponse, ClientError> {
        let target = pb::push_request::Target::Ticket(ticket);
        self.region_push(table, Some(target), gradients, 0, 0).await
    }

    /// Pushes the gradients of `batch` (a batch looked up elsewhere, so
    /// with no ticket), which the caller wrote into the region where
    /// `gradients` say. The batch goes through the region too, encoded
    /// from `batch_offset` where it fits (else through the socket): keep
    /// that range clear of the gradients.
    pub async fn push_batch_from_region(
        &mut self,
        table: &str,
        batch: pb::Batch,
        gradients: Vec<pb::RegionGradient>,
        batch_offset: u64,
    ) -> Result<pb::PushResponse, ClientError> {
        let in_region = self
            .region
            .as_mut()
            .and_then(|region| region.encode_at(batch_offset, &batch))
            .filter(|&len| len > 0);
        match in_region {
            Some(len) => {
                self.region_push(table, None, gradients, batch_offset, len as u64)
                    .await
            }
            None => {
                let target = pb::push_request::Target::Batch(batch);
                self.region_push(table, Some(target), gradients, 0, 0).await
            }
        }
    }

    /// Sends one `RegionPush` and waits for its answer.
    async fn region_push(
        &mut self,
        table: &str,
        target: Option<pb::push_request::Target>,
        gradients: Vec<pb::RegionGradient>,
        batch_offset: u64,
        batch_bytes: u64,
    ) -> Result<pb::PushResponse, ClientError> {
        let push = pb::PushRequest {
            table: table.to_owned(),
            target,
            gradients: Vec::new(),
            request_id: 0,
            // The gradients are in the region as f32.
            precision: pb::Precision::F32.into(),
        };
        self.send(pb::train_request::Op::RegionPush(pb::RegionPush {
            push: Some(push),
            gradients,
            batch_offset,
            batch_bytes,
        }))
        .await?;
        match self.recv().await?.1? {
            TrainReply::Push(p) => Ok(p),
            other => Err(unexpected("RegionPush", &other)),
        }
    }

    /// Pushes a ticket's gradients and waits for the answer.
    pub async fn push_ticket(
        &mut self,
        table: &str,
        ticket: u64,
        grads: impl IntoGradients,
    ) -> Result<pb::PushResponse, ClientError> {
        self.send_push_ticket(table, ticket, grads).await?;
        match self.recv().await?.1? {
            TrainReply::Push(p) => Ok(p),
            other => Err(unexpected("Push", &other)),
        }
    }
}

/// An answer of another kind than the request waited for.
fn unexpected(request: &str, answer: &TrainReply) -> ClientError {
    let kind = match answer {
        TrainReply::Lookup(_) => "Lookup",
        TrainReply::Push(_) => "Push",
        TrainReply::RegionOpened(_) => "RegionOpened",
        TrainReply::RegionLookup(_) => "RegionLookup",
    };
    ClientError::Response(format!("a {kind} answer to a {request} request"))
}

fn malformed(why: Malformed) -> Status {
    Status::internal(format!("malformed train response: {why}"))
}

/// Decodes one `TrainResponse`: a lookup's blocks straight from the frames
/// into their floats (as `Lookup`'s answers are), the rest as prost reads
/// it (unknown fields are skipped).
fn decode_answer(
    mut frames: Frames,
    precision: pb::Precision,
) -> Result<(u64, Result<TrainReply, ClientError>), Malformed> {
    let mut id = 0;
    let mut reply = Err(ClientError::Response("empty train response".into()));
    while frames.has_remaining() {
        let (tag, wire_type) = decode_key(&mut frames).map_err(wire)?;
        match tag {
            1 => {
                check_wire_type(WireType::Varint, wire_type).map_err(wire)?;
                id = decode_varint(&mut frames).map_err(wire)?;
            }
            2..=6 => {
                check_wire_type(WireType::LengthDelimited, wire_type).map_err(wire)?;
                let length = delimited_length(&mut frames)?;
                let mut field = frames.split_to(length);
                reply = match tag {
                    2 => Ok(TrainReply::Lookup(decode_message(&mut field, precision)?)),
                    3 => Ok(TrainReply::Push(
                        pb::PushResponse::decode(field).map_err(wire)?,
                    )),
                    5 => Ok(TrainReply::RegionOpened(
                        pb::RegionOpened::decode(field).map_err(wire)?,
                    )),
                    6 => Ok(TrainReply::RegionLookup(
                        pb::RegionLookupResponse::decode(field).map_err(wire)?,
                    )),
                    _ => {
                        let error = pb::StreamError::decode(field).map_err(wire)?;
                        Err(ClientError::Status(Status::new(
                            Code::from_i32(error.code),
                            error.message,
                        )))
                    }
                };
            }
            _ => skip_field(wire_type, tag, &mut frames, DecodeContext::default()).map_err(wire)?,
        }
    }
    Ok((id, reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup_answer(id: u64) -> pb::TrainResponse {
        pb::TrainResponse {
            id,
            result: Some(pb::train_response::Result::Lookup(pb::LookupResponse {
                embeddings: vec![pb::Embeddings {
                    feature: "u".into(),
                    rows: 3,
                    width: 700,
                    data: featmux_proto::payload::encode(
                        &(0..2100).map(|i| i as f32 / 8.0).collect::<Vec<_>>(),
                    ),
                    precision: pb::Precision::F32.into(),
                }],
                ticket: 41,
            })),
        }
    }

    /// Every kind of answer decodes as prost decodes it, whatever the
    /// frame boundaries; unknown fields are skipped.
    #[test]
    fn answers_decode_as_prost_does_across_frame_boundaries() {
        let answers = [
            lookup_answer(1),
            pb::TrainResponse {
                id: 2,
                result: Some(pb::train_response::Result::Push(pb::PushResponse {
                    version: 9,
                    ..Default::default()
                })),
            },
            pb::TrainResponse {
                id: 3,
                result: Some(pb::train_response::Result::Error(pb::StreamError {
                    code: Code::NotFound as i32,
                    message: "no table `x`".into(),
                })),
            },
            pb::TrainResponse {
                id: 4,
                result: Some(pb::train_response::Result::RegionOpened(pb::RegionOpened {
                    socket: "/run/featmux/grpc.sock.regions".into(),
                    token: vec![7; 16].into(),
                    bytes: 4096,
                })),
            },
            pb::TrainResponse {
                id: 5,
                result: Some(pb::train_response::Result::RegionLookup(
                    pb::RegionLookupResponse {
                        blocks: vec![pb::RegionBlock {
                            feature: "u".into(),
                            rows: 3,
                            width: 4,
                            offset: 64,
                        }],
                        ticket: 7,
                    },
                )),
            },
        ];
        for answer in answers {
            let mut bytes = answer.encode_to_vec();
            bytes.extend_from_slice(&[9 << 3, 0xac, 0x02]); // field 9: unknown
            for size in [1, 3, 64, 4096, bytes.len()] {
                let mut frames = Frames::default();
                for chunk in bytes.chunks(size) {
                    frames.push(Bytes::copy_from_slice(chunk));
                }
                let (id, reply) = decode_answer(frames, pb::Precision::F32).unwrap();
                assert_eq!(id, answer.id);
                match (reply, answer.result.clone().unwrap()) {
                    (Ok(TrainReply::Lookup(got)), pb::train_response::Result::Lookup(sent)) => {
                        assert_eq!(got, crate::decode_lookup(sent).unwrap(), "{size}")
                    }
                    (Ok(TrainReply::Push(got)), pb::train_response::Result::Push(sent)) => {
                        assert_eq!(got, sent)
                    }
                    (
                        Ok(TrainReply::RegionOpened(got)),
                        pb::train_response::Result::RegionOpened(sent),
                    ) => assert_eq!(got, sent),
                    (
                        Ok(TrainReply::RegionLookup(got)),
                        pb::train_response::Result::RegionLookup(sent),
                    ) => assert_eq!(got, sent),
                    (Err(ClientError::Status(got)), pb::train_response::Result::Error(sent)) => {
                        assert_eq!(got.code() as i32, sent.code);
                        assert_eq!(got.message(), sent.message);
                    }
                    (got, sent) => panic!("{got:?} for {sent:?}"),
                }
            }
        }
    }

    #[test]
    fn malformed_answers_are_refused() {
        let mut bytes = lookup_answer(1).encode_to_vec();
        bytes.truncate(bytes.len() - 1);
        let mut frames = Frames::default();
        frames.push(Bytes::from(bytes));
        let why = decode_answer(frames, pb::Precision::F32).unwrap_err();
        assert!(why.contains("where"), "{why}");
    }
}
