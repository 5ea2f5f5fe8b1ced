//! gRPC's message framing, for the methods the server and the client serve
//! and call below tonic's codec (`Lookup`, `Push`, `Train` and a cluster's
//! row-level `LookupRows` and `PushRows`).
//!
//! tonic's codec copies every message once more than the wire needs: its
//! encoder writes the whole message into one buffer (its `EncodeBuf` takes
//! only copies), and its decoder copies every received HTTP/2 frame into
//! one buffer before decoding. Embeddings and gradients are megabytes, so
//! these paths keep them in the buffers they already live in:
//! [`encode_chunks`] hands large `bytes` fields to HTTP/2 as chunks of
//! their own, and [`Frames`] reads received frames as one stream of bytes
//! without joining them.

use std::collections::VecDeque;

use bytes::buf::UninitSlice;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

/// The path of `EmbeddingService.Lookup`.
pub const LOOKUP_PATH: &str = "/featmux.v1.EmbeddingService/Lookup";

/// The path of `EmbeddingService.Push`.
pub const PUSH_PATH: &str = "/featmux.v1.EmbeddingService/Push";

/// The path of `EmbeddingService.Train`.
pub const TRAIN_PATH: &str = "/featmux.v1.EmbeddingService/Train";

/// The path of `EmbeddingService.LookupRows`.
pub const LOOKUP_ROWS_PATH: &str = "/featmux.v1.EmbeddingService/LookupRows";

/// The path of `EmbeddingService.PushRows`.
pub const PUSH_ROWS_PATH: &str = "/featmux.v1.EmbeddingService/PushRows";

/// A gRPC message's frame header: a compression flag (0: none) and the
/// message's length as a big-endian u32.
pub const HEADER_BYTES: usize = 5;

/// The header of an uncompressed message of `length` bytes.
pub fn header(length: u32) -> [u8; HEADER_BYTES] {
    let [a, b, c, d] = length.to_be_bytes();
    [0, a, b, c, d]
}

/// `bytes` fields at least this long go out as chunks of their own;
/// shorter ones are copied in with the framing around them (a chunk costs
/// an iovec entry and a `Bytes` handle).
const OWN_CHUNK_BYTES: usize = 1024;

/// `message` framed (header and protobuf encoding) as body chunks whose
/// concatenation is prost's encoding: each `Bytes` field of at least
/// [`OWN_CHUNK_BYTES`] is its own chunk, the field's buffer itself (no
/// copy); everything else is copied into the chunks between them.
pub fn encode_chunks(message: &impl Message) -> Vec<Bytes> {
    let length = message.encoded_len();
    let mut writer = ChunkWriter {
        chunks: Vec::new(),
        pending: BytesMut::with_capacity(256),
    };
    writer.pending.put_slice(&header(length as u32));
    message
        .encode(&mut writer)
        .expect("a ChunkWriter grows to fit the message");
    writer.seal();
    writer.chunks
}

/// A `BufMut` that keeps large `Bytes` it is given as chunks of their own.
/// prost writes a `Bytes` field with [`BufMut::put`], and a `Bytes`'s
/// [`Buf::copy_to_bytes`] is a reference-counted slice, not a copy.
struct ChunkWriter {
    chunks: Vec<Bytes>,
    /// Bytes written since the last chunk was sealed.
    pending: BytesMut,
}

impl ChunkWriter {
    /// Ends the pending chunk, if it holds anything.
    fn seal(&mut self) {
        if !self.pending.is_empty() {
            self.chunks.push(self.pending.split().freeze());
        }
    }
}

// SAFETY: every method forwards to `pending`, a `BytesMut`, whose own
// implementation upholds `BufMut`'s contract; `put` adds whole chunks
// beside it and never touches its uninitialized memory.
unsafe impl BufMut for ChunkWriter {
    fn remaining_mut(&self) -> usize {
        self.pending.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, count: usize) {
        // SAFETY: the caller initialized `count` bytes of `chunk_mut()`,
        // which is `pending`'s.
        unsafe { self.pending.advance_mut(count) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.pending.chunk_mut()
    }

    fn put<T: Buf>(&mut self, mut src: T)
    where
        Self: Sized,
    {
        let length = src.remaining();
        if length >= OWN_CHUNK_BYTES {
            self.seal();
            self.chunks.push(src.copy_to_bytes(length));
        } else {
            while src.has_remaining() {
                let chunk = src.chunk();
                let n = chunk.len();
                self.pending.extend_from_slice(chunk);
                src.advance(n);
            }
        }
    }

    fn put_slice(&mut self, src: &[u8]) {
        self.pending.extend_from_slice(src);
    }
}

/// Why received frames are not a message this side accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("compressed messages are not accepted: send them uncompressed")]
    Compressed,
    #[error("a message of {length} bytes is over the limit of {max} bytes")]
    TooLarge { length: usize, max: usize },
}

/// Received DATA frames, read as one stream of bytes without joining them.
#[derive(Debug, Default)]
pub struct Frames {
    chunks: VecDeque<Bytes>,
    remaining: usize,
}

impl Frames {
    /// Appends a received chunk.
    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.remaining += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    /// Takes the first `length` bytes as frames of their own (slices of
    /// the same buffers, no copy).
    ///
    /// # Panics
    /// If fewer than `length` bytes remain.
    pub fn split_to(&mut self, length: usize) -> Frames {
        assert!(length <= self.remaining, "split past the end of the frames");
        let mut head = Frames::default();
        let mut left = length;
        while left > 0 {
            let front = self.chunks.front_mut().expect("counted");
            if front.len() <= left {
                left -= front.len();
                head.push(self.chunks.pop_front().expect("just seen"));
            } else {
                head.push(front.split_to(left));
                left = 0;
            }
        }
        self.remaining -= length;
        head
    }

    /// The next whole message, without its header, once all of it has
    /// arrived (`None` until then). A header announcing more than
    /// `max_message_bytes`, or compression, is refused as soon as it
    /// arrives, so a stream never buffers more than one message's limit.
    pub fn next_message(&mut self, max_message_bytes: usize) -> Result<Option<Frames>, FrameError> {
        if self.remaining < HEADER_BYTES {
            return Ok(None);
        }
        let mut head = [0u8; HEADER_BYTES];
        let mut filled = 0;
        for chunk in &self.chunks {
            let n = chunk.len().min(HEADER_BYTES - filled);
            head[filled..filled + n].copy_from_slice(&chunk[..n]);
            filled += n;
            if filled == HEADER_BYTES {
                break;
            }
        }
        if head[0] != 0 {
            return Err(FrameError::Compressed);
        }
        let length = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if length > max_message_bytes {
            return Err(FrameError::TooLarge {
                length,
                max: max_message_bytes,
            });
        }
        if self.remaining < HEADER_BYTES + length {
            return Ok(None);
        }
        self.advance(HEADER_BYTES);
        Ok(Some(self.split_to(length)))
    }
}

impl Buf for Frames {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map_or(&[], |c| c)
    }

    fn advance(&mut self, mut count: usize) {
        assert!(
            count <= self.remaining,
            "advance past the end of the frames"
        );
        self.remaining -= count;
        while count > 0 {
            let front = self.chunks.front_mut().expect("counted");
            if count < front.len() {
                front.advance(count);
                return;
            }
            count -= front.len();
            self.chunks.pop_front();
        }
    }

    /// A slice of the front chunk when the bytes lie within it (prost
    /// decodes `Bytes` fields this way: no copy); a copy otherwise.
    fn copy_to_bytes(&mut self, length: usize) -> Bytes {
        assert!(length <= self.remaining, "`len` greater than remaining");
        match self.chunks.front_mut() {
            Some(front) if front.len() >= length => {
                let out = front.split_to(length);
                if front.is_empty() {
                    self.chunks.pop_front();
                }
                self.remaining -= length;
                out
            }
            _ => {
                let mut out = BytesMut::with_capacity(length);
                out.put(self.take(length));
                out.freeze()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1 as pb;

    fn lookup_response(blocks: &[(&str, u32, u32)], ticket: u64) -> pb::LookupResponse {
        pb::LookupResponse {
            embeddings: blocks
                .iter()
                .map(|&(feature, rows, width)| pb::Embeddings {
                    feature: feature.into(),
                    rows,
                    width,
                    data: crate::payload::encode(
                        &(0..rows * width)
                            .map(|i| i as f32 - 7.5)
                            .collect::<Vec<_>>(),
                    ),
                    precision: pb::Precision::F32.into(),
                })
                .collect(),
            ticket,
        }
    }

    fn framed(message: &impl Message) -> Vec<u8> {
        let bytes = message.encode_to_vec();
        [&header(bytes.len() as u32)[..], &bytes].concat()
    }

    /// The chunks concatenate to prost's framed encoding, whatever the
    /// blocks (payloads below and above the own-chunk size, varint lengths
    /// of one to three bytes) and the other fields.
    #[test]
    fn chunks_concatenate_to_prosts_encoding() {
        let responses = [
            lookup_response(&[], 0),
            lookup_response(&[], 7),
            lookup_response(&[("u", 0, 16)], 0),
            lookup_response(&[("u", 1, 1), ("", 3, 2)], u64::MAX),
            lookup_response(&[("user_id", 4096, 16), ("x", 2, 40)], 300),
        ];
        for response in responses {
            assert_eq!(encode_chunks(&response).concat(), framed(&response));
            let train = pb::TrainResponse {
                id: 12,
                result: Some(pb::train_response::Result::Lookup(response)),
            };
            assert_eq!(encode_chunks(&train).concat(), framed(&train));
        }
    }

    /// A large payload is its own chunk, the field's buffer itself.
    #[test]
    fn large_payloads_are_not_copied() {
        let response = lookup_response(&[("a", 64, 16), ("small", 2, 2), ("b", 32, 8)], 0);
        let pointers: Vec<*const u8> = response
            .embeddings
            .iter()
            .map(|e| e.data.as_ptr())
            .collect();
        let chunks = encode_chunks(&response);
        // framing, a's payload, framing with small's payload and b's
        // framing, b's payload.
        assert_eq!(chunks.len(), 4);
        assert_eq!(chunks[1].as_ptr(), pointers[0]);
        assert_eq!(chunks[3].as_ptr(), pointers[2]);
    }

    /// `bytes` cut into chunks of `size` bytes, as frames may arrive.
    fn frames(bytes: &[u8], size: usize) -> Frames {
        let mut frames = Frames::default();
        for chunk in bytes.chunks(size) {
            frames.push(Bytes::copy_from_slice(chunk));
        }
        frames
    }

    /// Messages come out whole and in order, however the frames cut them,
    /// and only once all their bytes have arrived.
    #[test]
    fn messages_are_split_at_any_frame_boundaries() {
        let first = lookup_response(&[("u", 3, 2)], 9);
        let second = lookup_response(&[("wide", 130, 40)], 0);
        let stream = [framed(&first), framed(&second), framed(&first)].concat();
        for size in [1, 2, 3, 7, 64, 1000, stream.len()] {
            let mut arrived = Frames::default();
            let mut decoded = Vec::new();
            for chunk in stream.chunks(size) {
                arrived.push(Bytes::copy_from_slice(chunk));
                while let Some(message) = arrived.next_message(1 << 20).unwrap() {
                    decoded.push(pb::LookupResponse::decode(message).unwrap());
                }
            }
            assert_eq!(
                decoded,
                [first.clone(), second.clone(), first.clone()],
                "{size}"
            );
            assert_eq!(arrived.remaining(), 0);
        }
    }

    #[test]
    fn compressed_and_oversized_messages_are_refused_from_their_header() {
        let mut compressed = frames(&[1, 0, 0, 0, 1, 0], 2);
        assert_eq!(
            compressed.next_message(100).err(),
            Some(FrameError::Compressed)
        );
        // Only the header has arrived: refused before the body is buffered.
        let mut oversized = frames(&header(101), 1);
        assert_eq!(
            oversized.next_message(100).err(),
            Some(FrameError::TooLarge {
                length: 101,
                max: 100
            })
        );
        let mut partial = frames(&[0, 0, 0], 1);
        assert!(matches!(partial.next_message(100), Ok(None)));
    }

    /// Bytes within one chunk are sliced from it; across chunks, copied.
    #[test]
    fn copy_to_bytes_slices_within_a_chunk() {
        let first = Bytes::from(vec![1u8; 100]);
        let mut frames = Frames::default();
        frames.push(first.clone());
        frames.push(Bytes::from(vec![2u8; 100]));
        let head = frames.copy_to_bytes(60);
        assert_eq!(head.as_ptr(), first.as_ptr());
        let across = frames.copy_to_bytes(80);
        assert_eq!(&across[..], &[[1u8; 40], [2u8; 40]].concat()[..]);
        assert_eq!(frames.remaining(), 60);
        assert_eq!(frames.split_to(60).copy_to_bytes(60), vec![2u8; 60]);
        assert_eq!(frames.remaining(), 0);
    }
}
