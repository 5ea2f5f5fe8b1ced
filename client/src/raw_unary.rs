//! The unary methods that carry embeddings and gradients (`Lookup`,
//! `Push`, and a cluster's row-level `LookupRows` and `PushRows`) called
//! below tonic's codec.
//!
//! tonic's client copies every received HTTP/2 frame into one buffer
//! before decoding the message from it, and the embeddings were then
//! copied once more into their float blocks; it also copies every request
//! into one encode buffer, a push's gradients included. Here a request
//! goes out as chunks that hold its large payloads themselves
//! ([`encode_chunks`]), and an answer's frames are kept as they arrived:
//! each block's payload is copied once, straight into its `Vec<f32>` (≈ 7 %
//! of the CPU of the 8-client lookup bench, perf; tonic's copies were 18 %
//! of a cluster lookup's profile). The request, its headers
//! (token, deadline), the status codes and the message size limit are what
//! tonic's path gives; the server's side is `featmux-server`'s
//! `grpc/raw_unary.rs`.

use bytes::Buf;
use featmux_proto::grpc_frame::{encode_chunks, Frames, HEADER_BYTES};
use featmux_proto::grpc_frame::{LOOKUP_PATH, LOOKUP_ROWS_PATH, PUSH_PATH, PUSH_ROWS_PATH};
use featmux_proto::precision;
use featmux_proto::v1 as pb;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use prost::encoding::{check_wire_type, decode_key, decode_varint, skip_field};
use prost::encoding::{DecodeContext, WireType};
use prost::Message;
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::service::interceptor::ResponseBody;
use tonic::{Code, Request, Response, Status};
use tower::{Service, ServiceExt};

use crate::client::Transport;
use crate::embeddings::{Embedding, Lookup};

/// Calls `Lookup` on `transport`, which asked for its answer in
/// `precision`.
pub(crate) async fn lookup(
    transport: Transport,
    request: Request<pb::LookupRequest>,
    max_message_bytes: usize,
    precision: pb::Precision,
) -> Result<Response<Lookup>, Status> {
    let frames = call(transport, LOOKUP_PATH, request, max_message_bytes).await?;
    decode_response(frames, max_message_bytes, precision).map(Response::new)
}

/// Calls `Push` on `transport`.
pub(crate) async fn push(
    transport: Transport,
    request: Request<pb::PushRequest>,
    max_message_bytes: usize,
) -> Result<Response<pb::PushResponse>, Status> {
    let frames = call(transport, PUSH_PATH, request, max_message_bytes).await?;
    decode_push_response(frames, max_message_bytes, "push")
}

/// Calls `LookupRows` on `transport`: the pooled partial sums, copied from
/// the frames straight into floats.
pub(crate) async fn lookup_rows(
    transport: Transport,
    request: Request<pb::LookupRowsRequest>,
    max_message_bytes: usize,
) -> Result<Response<Vec<f32>>, Status> {
    let what = "row-level lookup";
    let frames = call(transport, LOOKUP_ROWS_PATH, request, max_message_bytes).await?;
    let mut message = unframe(frames, max_message_bytes, what)?;
    decode_pooled(&mut message)
        .map(Response::new)
        .map_err(|why| Status::internal(format!("malformed {what} response: {why}")))
}

/// Calls `PushRows` on `transport`.
pub(crate) async fn push_rows(
    transport: Transport,
    request: Request<pb::PushRowsRequest>,
    max_message_bytes: usize,
) -> Result<Response<pb::PushResponse>, Status> {
    let frames = call(transport, PUSH_ROWS_PATH, request, max_message_bytes).await?;
    decode_push_response(frames, max_message_bytes, "row-level push")
}

/// The framed `PushResponse` a push (`what`) was answered with.
fn decode_push_response(
    frames: Frames,
    max_message_bytes: usize,
    what: &str,
) -> Result<Response<pb::PushResponse>, Status> {
    let mut message = unframe(frames, max_message_bytes, what)?;
    pb::PushResponse::decode(&mut message)
        .map(Response::new)
        .map_err(|e| Status::internal(format!("malformed {what} response: {e}")))
}

/// Calls the unary method at `path`; the answer as the frames it arrived
/// in, framing included. Messages over `max_message_bytes` are refused
/// either way, as tonic refuses them.
async fn call<M: Message>(
    transport: Transport,
    path: &'static str,
    request: Request<M>,
    max_message_bytes: usize,
) -> Result<Frames, Status> {
    let (metadata, _, message) = request.into_parts();
    let length = message.encoded_len();
    if length > max_message_bytes {
        return Err(too_large("encoded", length, max_message_bytes));
    }
    let chunks = encode_chunks(&message)
        .into_iter()
        .map(|chunk| Ok::<_, std::convert::Infallible>(Frame::data(chunk)));
    let body = Body::new(StreamBody::new(tokio_stream::iter(chunks)));
    let response = start(transport, path, metadata, body).await?;
    let http_status = response.status();
    let mut body = response.into_body();
    let mut frames = Frames::default();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(transport_status)?;
        match frame.into_data() {
            Ok(data) => {
                frames.push(data);
                if frames.remaining() > HEADER_BYTES + max_message_bytes {
                    return Err(too_large("decoded", frames.remaining(), max_message_bytes));
                }
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    match trailers.as_ref().and_then(Status::from_header_map) {
        Some(status) if status.code() == Code::Ok => Ok(frames),
        Some(status) => Err(status),
        None => Err(Status::new(
            status_of_http(http_status),
            format!("the answer (HTTP {http_status}) ended without a gRPC status"),
        )),
    }
}

/// Starts a call of the method at `path` with `body` (the framed request
/// messages) and `metadata`: the answer once its headers have arrived. A
/// refusal, which comes as headers only ("trailers-only"), is the error.
pub(crate) async fn start(
    mut transport: Transport,
    path: &'static str,
    metadata: MetadataMap,
    body: Body,
) -> Result<http::Response<ResponseBody<Body>>, Status> {
    let mut http = http::Request::post(path)
        .body(body)
        .expect("a valid request");
    let headers = http.headers_mut();
    headers.extend(metadata.into_headers());
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    let transport = transport.ready().await.map_err(transport_status)?;
    let response = transport.call(http).await.map_err(transport_status)?;
    if let Some(status) = Status::from_header_map(response.headers()) {
        if status.code() != Code::Ok {
            return Err(status);
        }
    }
    Ok(response)
}

/// A transport failure as tonic's client reports it (the connection
/// broke: the caller may retry).
pub(crate) fn transport_status(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Status {
    Status::from_error(e.into())
}

pub(crate) fn too_large(what: &str, length: usize, max: usize) -> Status {
    Status::out_of_range(format!(
        "Error, {what} message length too large: found {length} bytes, the limit is: {max} bytes"
    ))
}

/// gRPC's mapping of an HTTP status without a gRPC one (its
/// http-grpc-status-mapping document, as tonic applies it).
pub(crate) fn status_of_http(status: http::StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// The one message of a unary answer, its header checked.
fn unframe(mut frames: Frames, max_message_bytes: usize, what: &str) -> Result<Frames, Status> {
    let malformed = |why: String| Status::internal(format!("malformed {what} response: {why}"));
    if frames.remaining() < HEADER_BYTES {
        return Err(malformed("no message".into()));
    }
    if frames.get_u8() != 0 {
        return Err(malformed("compressed, which was not asked for".into()));
    }
    let length = frames.get_u32() as usize;
    if length > max_message_bytes {
        return Err(too_large("decoded", length, max_message_bytes));
    }
    if length != frames.remaining() {
        return Err(malformed(format!(
            "the header announces {length} bytes but {} follow",
            frames.remaining()
        )));
    }
    Ok(frames)
}

/// Decodes the framed `LookupResponse`: each block's payload is copied
/// from the frames into its floats, the rest is protobuf as prost reads it
/// (unknown fields are skipped).
fn decode_response(
    frames: Frames,
    max_message_bytes: usize,
    precision: pb::Precision,
) -> Result<Lookup, Status> {
    let mut message = unframe(frames, max_message_bytes, "lookup")?;
    decode_message(&mut message, precision)
        .map_err(|why| Status::internal(format!("malformed lookup response: {why}")))
}

/// A decoding failure, in words.
pub(crate) type Malformed = String;

pub(crate) fn wire(e: prost::DecodeError) -> Malformed {
    e.to_string()
}

/// A `LookupResponse` whose request asked for `precision`.
pub(crate) fn decode_message(
    frames: &mut Frames,
    precision: pb::Precision,
) -> Result<Lookup, Malformed> {
    let mut lookup = Lookup {
        embeddings: Vec::new(),
        ticket: None,
    };
    while frames.has_remaining() {
        let (tag, wire_type) = decode_key(frames).map_err(wire)?;
        match tag {
            1 => {
                check_wire_type(WireType::LengthDelimited, wire_type).map_err(wire)?;
                let length = delimited_length(frames)?;
                lookup
                    .embeddings
                    .push(decode_embedding(frames, length, precision)?);
            }
            2 => {
                check_wire_type(WireType::Varint, wire_type).map_err(wire)?;
                let ticket = decode_varint(frames).map_err(wire)?;
                lookup.ticket = (ticket != 0).then_some(ticket);
            }
            _ => skip_field(wire_type, tag, frames, DecodeContext::default()).map_err(wire)?,
        }
    }
    Ok(lookup)
}

/// A `LookupRowsResponse`'s `data` (field 1) as floats; other fields are
/// skipped, as prost skips unknown ones.
fn decode_pooled(frames: &mut Frames) -> Result<Vec<f32>, Malformed> {
    let mut pooled = Vec::new();
    while frames.has_remaining() {
        let (tag, wire_type) = decode_key(frames).map_err(wire)?;
        if tag != 1 {
            skip_field(wire_type, tag, frames, DecodeContext::default()).map_err(wire)?;
            continue;
        }
        check_wire_type(WireType::LengthDelimited, wire_type).map_err(wire)?;
        let length = delimited_length(frames)?;
        if length % 4 != 0 {
            return Err(format!(
                "ragged payload: {length} bytes, not a whole number of f32"
            ));
        }
        pooled = read_floats(frames, length);
    }
    Ok(pooled)
}

/// A length-delimited field's length, checked against what is left.
pub(crate) fn delimited_length(frames: &mut Frames) -> Result<usize, Malformed> {
    let length = decode_varint(frames).map_err(wire)?;
    if length > frames.remaining() as u64 {
        return Err(format!(
            "a field of {length} bytes where {} are left",
            frames.remaining()
        ));
    }
    Ok(length as usize)
}

/// One `Embeddings` message of `length` bytes, whose payload is in
/// `asked` (refused if the block says it is not).
fn decode_embedding(
    frames: &mut Frames,
    length: usize,
    asked: pb::Precision,
) -> Result<Embedding, Malformed> {
    let end = frames.remaining() - length;
    let (mut feature, mut rows, mut width, mut data) = (String::new(), 0u32, 0u32, Vec::new());
    let mut precision = pb::Precision::F32 as i32;
    while frames.remaining() > end {
        let (tag, wire_type) = decode_key(frames).map_err(wire)?;
        match tag {
            1 => {
                check_wire_type(WireType::LengthDelimited, wire_type).map_err(wire)?;
                let length = delimited_length(frames)?;
                let mut bytes = vec![0; length];
                frames.copy_to_slice(&mut bytes);
                feature = String::from_utf8(bytes)
                    .map_err(|_| "a feature name is not UTF-8".to_owned())?;
            }
            2 | 3 => {
                check_wire_type(WireType::Varint, wire_type).map_err(wire)?;
                let value = decode_varint(frames).map_err(wire)? as u32;
                *if tag == 2 { &mut rows } else { &mut width } = value;
            }
            4 => {
                check_wire_type(WireType::LengthDelimited, wire_type).map_err(wire)?;
                let length = delimited_length(frames)?;
                if length % asked.bytes_per_float() != 0 {
                    return Err(format!("`{feature}`: ragged payload"));
                }
                data = match asked {
                    pb::Precision::F32 => read_floats(frames, length),
                    sixteen => read_halves(frames, length, sixteen),
                };
            }
            5 => {
                check_wire_type(WireType::Varint, wire_type).map_err(wire)?;
                precision = decode_varint(frames).map_err(wire)? as i32;
            }
            _ => skip_field(wire_type, tag, frames, DecodeContext::default()).map_err(wire)?,
        }
    }
    if frames.remaining() != end {
        return Err("a field runs past its block".into());
    }
    check_precision(&feature, asked, precision)?;
    Embedding::checked(feature, rows, width, data).map_err(|e| e.to_string())
}

/// Refuses a block answered in another precision than the lookup asked
/// for (`said`: its `precision` field).
fn check_precision(feature: &str, asked: pb::Precision, said: i32) -> Result<(), Malformed> {
    if said == asked as i32 {
        return Ok(());
    }
    let said = pb::Precision::try_from(said).map_or_else(|_| said.to_string(), |p| p.name().into());
    Err(format!(
        "`{feature}` is answered in {said} where {} was asked (a server that predates \
         16-bit answers sends f32)",
        asked.name()
    ))
}

/// `length` bytes (a multiple of 4) of little-endian floats, read from
/// however many frames hold them. The vector is filled as it is read, never
/// zeroed first: zeroing cost a pass over each block, and an allocator that
/// answers a large zeroed allocation with fresh pages (mimalloc, which the
/// Python extension uses) made every 4 KiB of it a page fault (perf: 20.6 %
/// of a bench client's samples clearing pages).
fn read_floats(frames: &mut Frames, length: usize) -> Vec<f32> {
    read_values::<4>(frames, length, |bytes, data| {
        data.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        )
    })
}

/// [`read_floats`] for a payload of 16-bit floats in `precision`, widened
/// to f32 as they are read.
fn read_halves(frames: &mut Frames, length: usize, precision: pb::Precision) -> Vec<f32> {
    read_values::<2>(frames, length, |bytes, data| {
        precision::widen_into(bytes, precision, data)
    })
}

/// `length` bytes (a multiple of `UNIT`) of `UNIT`-byte values from however
/// many frames hold them, `append` turning each run of whole values into
/// floats at the end of the vector.
fn read_values<const UNIT: usize>(
    frames: &mut Frames,
    length: usize,
    append: impl Fn(&[u8], &mut Vec<f32>),
) -> Vec<f32> {
    debug_assert!(length % UNIT == 0 && length <= frames.remaining());
    let mut data = Vec::with_capacity(length / UNIT);
    let mut left = length;
    while left > 0 {
        let chunk = frames.chunk();
        let whole = chunk.len().min(left) / UNIT * UNIT;
        if whole == 0 {
            // A value split between two frames.
            let mut bytes = [0; UNIT];
            frames.copy_to_slice(&mut bytes);
            append(&bytes, &mut data);
            left -= UNIT;
            continue;
        }
        append(&chunk[..whole], &mut data);
        frames.advance(whole);
        left -= whole;
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embeddings::decode_lookup;
    use bytes::Bytes;
    use featmux_proto::grpc_frame::header;

    fn response(blocks: &[(&str, u32, u32)], ticket: u64) -> pb::LookupResponse {
        response_in(blocks, ticket, pb::Precision::F32)
    }

    /// Blocks of values that 16 bits round (i/4 - 1/3), in `precision`.
    fn response_in(
        blocks: &[(&str, u32, u32)],
        ticket: u64,
        precision: pb::Precision,
    ) -> pb::LookupResponse {
        pb::LookupResponse {
            embeddings: blocks
                .iter()
                .map(|&(feature, rows, width)| pb::Embeddings {
                    feature: feature.into(),
                    rows,
                    width,
                    data: precision::encode(
                        (0..rows * width)
                            .map(|i| i as f32 * 0.25 - 1.0 / 3.0)
                            .collect(),
                        precision,
                    ),
                    precision: precision.into(),
                })
                .collect(),
            ticket,
        }
    }

    /// The message framed and cut into chunks of `size` bytes, as frames
    /// may arrive.
    fn frames(message: &[u8], size: usize) -> Frames {
        let framed = [&header(message.len() as u32)[..], message].concat();
        let mut frames = Frames::default();
        for chunk in framed.chunks(size) {
            frames.push(Bytes::copy_from_slice(chunk));
        }
        frames
    }

    /// Whatever the frame boundaries, the blocks are prost's decoding of
    /// the same bytes, in each precision.
    #[test]
    fn decodes_as_prost_does_across_any_frame_boundaries() {
        let blocks = [("u", 3, 2), ("", 0, 8), ("wide", 130, 40)];
        for precision in [pb::Precision::F32, pb::Precision::F16, pb::Precision::Bf16] {
            let cases = [
                response_in(&[], 0, precision),
                response_in(&[], 9, precision),
                response_in(&blocks, u64::MAX, precision),
            ];
            for case in cases {
                let bytes = case.encode_to_vec();
                let expected = decode_lookup(case.clone()).unwrap();
                for size in [1, 2, 3, 7, 64, 16384, bytes.len() + 5] {
                    let decoded = decode_response(frames(&bytes, size), 1 << 30, precision);
                    assert_eq!(
                        decoded.unwrap(),
                        expected,
                        "{precision:?} in {size}-byte frames"
                    );
                }
            }
        }
        // Widened, each bf16 value is its f32 rounded to 8 significant
        // bits: near it, not it (no i/4 - 1/3 is a bf16).
        let exact = decode_lookup(response(&blocks, 0)).unwrap();
        let bf16 = decode_lookup(response_in(&blocks, 0, pb::Precision::Bf16)).unwrap();
        let (exact, bf16) = (&exact.embeddings[2].data, &bf16.embeddings[2].data);
        assert_ne!(bf16[0], exact[0]);
        assert!((bf16[0] - exact[0]).abs() <= exact[0].abs() / 256.0);
        assert_eq!(bf16.len(), exact.len());
    }

    /// A block in another precision than asked (a server that ignores the
    /// field answers f32) is refused by name, not misread.
    #[test]
    fn answers_in_another_precision_are_refused() {
        let f32_answer = response(&[("u", 2, 4)], 0).encode_to_vec();
        let status = decode_response(frames(&f32_answer, 64), 1 << 20, pb::Precision::Bf16);
        let message = status.unwrap_err().message().to_owned();
        assert!(
            message.contains("`u` is answered in f32 where bf16 was asked"),
            "{message}"
        );
        let f16_answer = response_in(&[("u", 2, 4)], 0, pb::Precision::F16).encode_to_vec();
        let status = decode_response(frames(&f16_answer, 64), 1 << 20, pb::Precision::Bf16);
        assert!(status.unwrap_err().message().contains("in f16 where bf16"));
    }

    /// A row-level lookup's pooled sums, cut into frames anywhere, read
    /// as prost reads them; unknown fields skipped, a ragged payload
    /// refused.
    #[test]
    fn pooled_sums_decode_across_any_frame_boundaries() {
        let pooled: Vec<f32> = (0..1000).map(|i| i as f32 * 0.75 - 9.0).collect();
        let answer = pb::LookupRowsResponse {
            data: featmux_proto::payload::encode(&pooled),
        };
        let mut bytes = vec![9 << 3, 0xac, 0x02];
        bytes.extend(answer.encode_to_vec());
        for size in [1, 3, 7, 4096, bytes.len() + 5] {
            let mut message = unframe(frames(&bytes, size), 1 << 20, "row-level lookup").unwrap();
            assert_eq!(
                decode_pooled(&mut message).unwrap(),
                pooled,
                "{size}-byte frames"
            );
        }
        let mut empty = unframe(frames(&[], 4), 1 << 20, "row-level lookup").unwrap();
        assert_eq!(decode_pooled(&mut empty).unwrap(), Vec::<f32>::new());
        let ragged = pb::LookupRowsResponse {
            data: Bytes::from_static(&[0; 6]),
        };
        let mut message = unframe(
            frames(&ragged.encode_to_vec(), 4),
            1 << 20,
            "row-level lookup",
        )
        .unwrap();
        let why = decode_pooled(&mut message).unwrap_err();
        assert!(why.contains("6 bytes, not a whole number of f32"), "{why}");
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let mut bytes = response(&[("u", 1, 4)], 5).encode_to_vec();
        // Field 9, varint 300; then the known fields again.
        let mut with_unknown = vec![9 << 3, 0xac, 0x02];
        with_unknown.append(&mut bytes);
        let decoded =
            decode_response(frames(&with_unknown, 3), 1 << 20, pb::Precision::F32).unwrap();
        assert_eq!(decoded, decode_lookup(response(&[("u", 1, 4)], 5)).unwrap());
    }

    #[test]
    fn malformed_and_oversized_answers_are_refused() {
        let good = response(&[("u", 2, 4)], 0).encode_to_vec();
        let refused = |frames: Frames, max: usize| {
            decode_response(frames, max, pb::Precision::F32).unwrap_err()
        };

        let status = refused(frames(&good, 5), good.len() - 1);
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        let mut framed = frames(&good, 5);
        let mut truncated = Frames::default();
        truncated.push(framed.copy_to_bytes(framed.remaining() - 1));
        for (frames, why) in [
            (Frames::default(), "no message"),
            (truncated, "announces"),
            (
                frames(&[0x0a, 0x05, 0x08], 4),
                "a field of 5 bytes where 1 are left",
            ),
        ] {
            let status = refused(frames, 1 << 20);
            assert_eq!(status.code(), Code::Internal, "{status:?}");
            assert!(status.message().contains(why), "{why}: {status:?}");
        }
        // Rows × width that do not match the payload.
        let mut wrong = response(&[("u", 2, 4)], 0);
        wrong.embeddings[0].rows = 3;
        let status = refused(frames(&wrong.encode_to_vec(), 16), 1 << 20);
        assert!(status.message().contains("8 floats for 3×4"), "{status:?}");
        let mut ragged = response(&[("u", 1, 1)], 0);
        ragged.embeddings[0].data = Bytes::from_static(&[0, 0, 0]);
        let status = refused(frames(&ragged.encode_to_vec(), 16), 1 << 20);
        assert!(status.message().contains("ragged"), "{status:?}");
    }
}
