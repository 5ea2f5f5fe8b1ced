//! Request and response shapes of the engine, in TorchRec's KeyedJaggedTensor
//! form: per feature, the flat list of values of the whole batch and the
//! number of values each example has.
//!
//! The transports (gRPC, HTTP) convert their wire types into these at the
//! boundary; the engine never sees protobuf or JSON.

use bytes::Bytes;

use crate::hashing::Key;
use crate::running_sums::running_sums;

/// The values of one feature over a batch: strings (owned one by one, or
/// packed in one buffer) or int64s.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Strings(Vec<String>),
    PackedStrings(PackedStrings),
    Int64(Vec<i64>),
}

/// String values back to back in one buffer with their end offsets: the
/// form featmux's gRPC client sends, kept as a slice of the request, so a
/// batch of 10^5 strings costs no allocation or copy per value. Checked on
/// construction: valid UTF-8, every value on a character boundary.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedStrings {
    data: Bytes,
    ends: Vec<u32>,
}

impl PackedStrings {
    /// Values from their bytes and each one's byte length as u32
    /// little-endian; the error says what is wrong.
    pub fn new(data: Bytes, lengths: &[u8]) -> Result<Self, String> {
        if lengths.len() % 4 != 0 {
            return Err(format!(
                "`lengths` has {} bytes; it needs 4 (a little-endian u32) per value",
                lengths.len()
            ));
        }
        // ASCII (featmux's own keys, most ids) is UTF-8 with a character
        // at every byte, so one pass that decodes nothing settles both
        // checks where `from_utf8` and the boundary check below take two.
        let text = if data.is_ascii() {
            None
        } else {
            Some(std::str::from_utf8(&data).map_err(|e| format!("values are not UTF-8: {e}"))?)
        };
        if u32::try_from(data.len()).is_err() {
            return Err(format!("{} bytes of values; at most 2^32 - 1", data.len()));
        }
        // The ends first, in a loop that does nothing else, then the
        // checks (with the checks inside the loop this function took 6.4 %
        // of a region lookup's server samples, 3.6 % without): the ends
        // never decrease, so they fit `data` (and u32) if the total does.
        // Written into the vector's spare capacity: a zeroed vector cost a
        // memset as long as the loop.
        let n = lengths.len() / 4;
        let mut ends = Vec::with_capacity(n);
        let end = running_sums(lengths, &mut ends.spare_capacity_mut()[..n]);
        // SAFETY: `running_sums` wrote all `n`.
        unsafe { ends.set_len(n) };
        if end > data.len() as u64 {
            return Err(format!(
                "the lengths add up to more than the {} bytes of `data`",
                data.len()
            ));
        }
        if end != data.len() as u64 {
            return Err(format!(
                "the lengths add up to {end} bytes but `data` has {}",
                data.len()
            ));
        }
        if let Some(text) = text {
            if let Some(i) = ends
                .iter()
                .position(|&e| !text.is_char_boundary(e as usize))
            {
                return Err(format!("value {i} ends inside a UTF-8 character"));
            }
        }
        Ok(PackedStrings { data, ends })
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The `i`-th value's UTF-8 bytes.
    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.data[start..self.ends[i] as usize]
    }

    /// The values' UTF-8 bytes in order: what planning hashes, without
    /// the index arithmetic of [`Self::get`] per value.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + Clone + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let value = &self.data[start as usize..end as usize];
            start = end;
            value
        })
    }

    /// The buffer of all values, for re-encoding without a copy.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Each value's byte length as u32 little-endian (the wire form).
    pub fn lengths_le(&self) -> Vec<u8> {
        let mut start = 0;
        self.ends
            .iter()
            .flat_map(|&end| {
                let length = end - start;
                start = end;
                length.to_le_bytes()
            })
            .collect()
    }
}

impl Values {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Values::Strings(v) => v.len(),
            Values::PackedStrings(p) => p.len(),
            Values::Int64(v) => v.len(),
        }
    }

    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th value as a hashing key.
    pub fn key(&self, i: usize) -> Key<'_> {
        match self {
            Values::Strings(v) => Key::Str(v[i].as_bytes()),
            Values::PackedStrings(p) => Key::Str(p.get(i)),
            Values::Int64(v) => Key::Int(v[i]),
        }
    }
}

/// One feature's part of a batch (a KeyedJaggedTensor key).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureBatch {
    pub feature: String,
    /// All values of the batch, example after example.
    pub values: Values,
    /// Values per example; sums to `values.len()`. Its length is the batch size.
    pub lengths: Vec<u32>,
    /// Optional per-value weights (weighted pooling); one per value.
    pub weights: Option<Vec<f32>>,
}

impl FeatureBatch {
    /// A batch of string values.
    pub fn strings<S: Into<String>>(
        feature: impl Into<String>,
        values: impl IntoIterator<Item = S>,
        lengths: Vec<u32>,
    ) -> Self {
        FeatureBatch {
            feature: feature.into(),
            values: Values::Strings(values.into_iter().map(Into::into).collect()),
            lengths,
            weights: None,
        }
    }

    /// A batch of int64 values.
    pub fn int64(feature: impl Into<String>, values: Vec<i64>, lengths: Vec<u32>) -> Self {
        FeatureBatch {
            feature: feature.into(),
            values: Values::Int64(values),
            lengths,
            weights: None,
        }
    }

    /// Adds per-value weights.
    pub fn with_weights(mut self, weights: Vec<f32>) -> Self {
        self.weights = Some(weights);
        self
    }
}

/// A lookup or push batch: any subset of a table's features, each once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub features: Vec<FeatureBatch>,
}

impl Batch {
    /// A batch of the given features.
    pub fn new(features: Vec<FeatureBatch>) -> Self {
        Batch { features }
    }
}

/// The result of a lookup for one feature: a dense row-major
/// `[rows, width]` block (`rows` = batch size, or the number of values for
/// `none` pooling; `width = chunks * chunk_dim`).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureEmbeddings {
    pub feature: String,
    pub rows: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lengths(l: &[u32]) -> Vec<u8> {
        l.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn packed_strings_hash_like_owned_strings() {
        let words = ["", "u1", "é", "genre:sci-fi"];
        let packed = PackedStrings::new(
            Bytes::from(words.concat()),
            &lengths(&words.map(|w| w.len() as u32)),
        )
        .unwrap();
        let packed = Values::PackedStrings(packed);
        let owned = Values::Strings(words.map(String::from).to_vec());
        assert_eq!(packed.len(), 4);
        for i in 0..4 {
            assert_eq!(packed.key(i), owned.key(i));
        }
        let Values::PackedStrings(p) = &packed else {
            unreachable!()
        };
        assert!(p.iter().eq(words.map(str::as_bytes)));
        assert_eq!(p.lengths_le(), lengths(&[0, 2, 2, 12]));
    }

    #[test]
    fn malformed_packed_strings_are_refused() {
        let new =
            |data: &[u8], l: &[u32]| PackedStrings::new(Bytes::from(data.to_vec()), &lengths(l));
        assert!(new(b"ab", &[1, 1]).is_ok());
        assert!(new(b"ab", &[1]).unwrap_err().contains("add up to 1 bytes"));
        assert!(new(b"ab", &[3])
            .unwrap_err()
            .contains("more than the 2 bytes"));
        // Ends that wrap past 2^32 back to the buffer's length.
        assert!(new(b"ab", &[u32::MAX, 3])
            .unwrap_err()
            .contains("more than the 2 bytes"));
        assert!(new(b"\xff", &[1]).unwrap_err().contains("not UTF-8"));
        assert!(new("é".as_bytes(), &[1, 1])
            .unwrap_err()
            .contains("value 0 ends inside"));
        let ragged = PackedStrings::new(Bytes::from_static(b"ab"), &[2, 0, 0]);
        assert!(ragged.unwrap_err().contains("`lengths` has 3 bytes"));
    }
}
