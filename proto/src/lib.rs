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
            data: payload::encode_values(values),
        }
    }
}

pub mod grpc_frame;
pub mod payload_gradients;
pub mod precision;

/// Embeddings and gradients travel as raw little-endian `f32` bytes, and
/// int64 feature values and a cluster's rows and slots as raw little-endian
/// integers: no per-value tags or varints as with `repeated float` /
/// `repeated int64`, and a straight copy on little-endian machines.
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
        encode_values(values)
    }

    /// A number a payload carries as its little-endian bytes.
    pub trait LittleEndianValue: bytemuck::Pod + Send {
        /// The value of its `size_of::<Self>()` little-endian bytes.
        fn from_le(bytes: &[u8]) -> Self;
        /// Its little-endian bytes, appended to `out`.
        fn put_le(self, out: &mut Vec<u8>);
    }

    macro_rules! little_endian_value {
        ($($t:ty),*) => {$(
            impl LittleEndianValue for $t {
                #[inline(always)]
                fn from_le(bytes: &[u8]) -> Self {
                    <$t>::from_le_bytes(bytes.try_into().expect("one value's bytes"))
                }
                fn put_le(self, out: &mut Vec<u8>) {
                    out.extend_from_slice(&self.to_le_bytes());
                }
            }
        )*};
    }
    little_endian_value!(f32, i64, u64, u32);

    /// Values the caller is done with as a payload: on a little-endian
    /// machine the vector itself, with no copy (int64 feature values,
    /// a cluster's rows and slots).
    pub fn encode_values<T: LittleEndianValue>(values: Vec<T>) -> Bytes {
        if cfg!(target_endian = "little") {
            Bytes::from_owner(LittleEndian(values))
        } else {
            let mut out = Vec::with_capacity(std::mem::size_of_val(values.as_slice()));
            for v in values {
                v.put_le(&mut out);
            }
            out.into()
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

    /// Decodes little-endian values back to back; `None` if the length is
    /// not a whole number of them. (This compiles to a vectorised copy at
    /// memcpy speed; the bytes may sit at any alignment in the message
    /// buffer, so they cannot be viewed as values in place.)
    pub fn decode_values<T: LittleEndianValue>(bytes: &[u8]) -> Option<Vec<T>> {
        let size = std::mem::size_of::<T>();
        (bytes.len() % size == 0).then(|| bytes.chunks_exact(size).map(T::from_le).collect())
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
    /// multiple of 4.
    pub fn decode(bytes: &[u8]) -> Option<Vec<f32>> {
        decode_values(bytes)
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
        fn int64s_u64s_and_u32s_round_trip_at_any_offset_and_refuse_ragged_lengths() {
            let values = vec![0, -1, i64::MAX, i64::MIN, 1 << 40, 7];
            let bytes = super::encode_values(values.clone());
            assert_eq!(bytes.len(), 48);
            assert_eq!(&bytes[8..16], &(-1i64).to_le_bytes());
            assert_eq!(super::decode_values::<i64>(&bytes).unwrap(), values);
            let shifted = [&[0u8][..], &bytes].concat();
            assert_eq!(super::decode_values::<i64>(&shifted[1..]).unwrap(), values);
            assert!(super::decode_values::<i64>(&bytes[..47]).is_none());
            let rows = vec![u64::MAX, 0, 1 << 33];
            let bytes = super::encode_values(rows.clone());
            assert_eq!(&bytes[..8], &u64::MAX.to_le_bytes());
            assert_eq!(super::decode_values::<u64>(&bytes).unwrap(), rows);
            let slots = vec![u32::MAX, 5, 0];
            let bytes = super::encode_values(slots.clone());
            assert_eq!(bytes.len(), 12);
            assert_eq!(super::decode_values::<u32>(&bytes).unwrap(), slots);
            assert!(super::decode_values::<u32>(&bytes[..11]).is_none());
        }
    }
}
