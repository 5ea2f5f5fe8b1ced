//! featmux's wire contract: the gRPC services and messages generated from
//! `proto/featmux.proto`, shared by the server and the client, plus the
//! encoding of embedding payloads and the conversions between messages and
//! engine types ([`engine`]).

pub mod engine;

/// Version 1 of the API (`package featmux.v1`).
pub mod v1 {
    tonic::include_proto!("featmux.v1");
}

impl v1::PackedInt64s {
    /// `values` as the message carries them: on a little-endian machine
    /// the vector itself, with no copy.
    pub fn from_values(values: Vec<i64>) -> Self {
        v1::PackedInt64s {
            data: payload::encode_int64s(values),
        }
    }
}

pub mod grpc_frame;
pub mod payload_gradients;
pub mod precision;

/// Embeddings and gradients travel as raw little-endian `f32` bytes, and
/// int64 feature values as raw little-endian `i64`s: no per-value tags or
/// varints as with `repeated float` / `repeated int64`, and a straight copy
/// on little-endian machines.
pub mod payload {
    use bytes::Bytes;

    /// Encodes floats as little-endian bytes. On a little-endian machine
    /// that is one copy of their memory: the per-float loop it replaced
    /// ran 5–8× slower than `memcpy` (1.4–1.9 ms against 0.2–0.3 ms for a
    /// 6.8 MB gradient), 3.5 % of the CPU of the Train-stream bench.
    pub fn encode(values: &[f32]) -> Bytes {
        if cfg!(target_endian = "little") {
            return Bytes::copy_from_slice(bytemuck::cast_slice(values));
        }
        let mut out = Vec::with_capacity(values.len() * 4);
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
        Bytes::from(out)
    }

    /// Encodes floats the caller is done with: on a little-endian machine
    /// the vector itself becomes the payload, with no copy (a lookup's
    /// embeddings are megabytes).
    pub fn encode_owned(values: Vec<f32>) -> Bytes {
        if cfg!(target_endian = "little") {
            Bytes::from_owner(LittleEndian(values))
        } else {
            encode(&values)
        }
    }

    /// Values viewed as their in-memory bytes (the wire's little-endian
    /// encoding where the machine is little-endian).
    struct LittleEndian<T>(Vec<T>);

    impl<T: bytemuck::Pod> AsRef<[u8]> for LittleEndian<T> {
        fn as_ref(&self) -> &[u8] {
            bytemuck::cast_slice(&self.0)
        }
    }

    /// Int64 values as [`crate::v1::PackedInt64s`] carries them: on a
    /// little-endian machine the vector itself, with no copy.
    pub fn encode_int64s(values: Vec<i64>) -> Bytes {
        if cfg!(target_endian = "little") {
            Bytes::from_owner(LittleEndian(values))
        } else {
            values
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>()
                .into()
        }
    }

    /// Decodes little-endian 8-byte integers; `None` if the length is not
    /// a multiple of 8. (A vectorised copy, as [`decode`].)
    pub fn decode_int64s(bytes: &[u8]) -> Option<Vec<i64>> {
        (bytes.len() % 8 == 0).then(|| {
            bytes
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect()
        })
    }

    /// `floats` floats whose little-endian bytes `fill` writes straight
    /// into the vector's memory (a read from a file, with no byte buffer
    /// between).
    pub fn decode_from<E>(
        floats: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<Vec<f32>, E> {
        let mut values = vec![0f32; floats];
        fill(bytemuck::cast_slice_mut(&mut values))?;
        if cfg!(target_endian = "big") {
            for v in &mut values {
                *v = f32::from_le_bytes(v.to_ne_bytes());
            }
        }
        Ok(values)
    }

    /// Decodes little-endian `f32` bytes; `None` if the length is not a
    /// multiple of 4. (This compiles to a vectorised copy at memcpy speed;
    /// the bytes may sit at any alignment in the message buffer, so they
    /// cannot be viewed as floats in place.)
    pub fn decode(bytes: &[u8]) -> Option<Vec<f32>> {
        if bytes.len() % 4 != 0 {
            return None;
        }
        Some(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        )
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn round_trips_and_refuses_ragged_lengths() {
            let values = [0.0, -1.5, f32::MAX, f32::MIN_POSITIVE, 3.25];
            let bytes = super::encode(&values);
            assert_eq!(bytes.len(), 20);
            assert_eq!(&bytes[4..8], &(-1.5f32).to_le_bytes());
            assert_eq!(super::decode(&bytes).unwrap(), values);
            assert!(super::decode(&bytes[..7]).is_none());
            assert_eq!(super::encode_owned(values.to_vec()), bytes);
            // Payloads sit at any offset of a message buffer.
            let shifted = [&[0u8][..], &bytes].concat();
            assert_eq!(super::decode(&shifted[1..]).unwrap(), values);
            let filled = super::decode_from(values.len(), |into| {
                into.copy_from_slice(&bytes);
                Ok::<_, ()>(())
            });
            assert_eq!(filled.unwrap(), values);
        }

        #[test]
        fn int64s_round_trip_at_any_offset_and_refuse_ragged_lengths() {
            let values = vec![0, -1, i64::MAX, i64::MIN, 1 << 40, 7];
            let bytes = super::encode_int64s(values.clone());
            assert_eq!(bytes.len(), 48);
            assert_eq!(&bytes[8..16], &(-1i64).to_le_bytes());
            assert_eq!(super::decode_int64s(&bytes).unwrap(), values);
            let shifted = [&[0u8][..], &bytes].concat();
            assert_eq!(super::decode_int64s(&shifted[1..]).unwrap(), values);
            assert!(super::decode_int64s(&bytes[..47]).is_none());
        }
    }
}
