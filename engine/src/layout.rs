//! A validated batch before any value is hashed: where each feature's
//! output goes and what hashing its values needs.
//!
//! Two things are built from a layout. [`crate::plan::BatchPlan`] hashes
//! every value into arrays first, which a push and a ticket need. A lookup
//! that keeps no ticket needs no arrays: [`FeatureEntries`] hands the
//! backend each (value, chunk) entry as it is hashed, so the backend can
//! hash a value while the rows of the values before it are still on their
//! way from memory (planning first ran the hashing and the cache misses one
//! after the other).

use std::ops::Range;

use crate::batch::{Batch, FeatureBatch, FeatureEmbeddings, PackedStrings, Values};
use crate::error::EngineError;
use crate::hashing::{chunk_seed, hash_key, Key, RowSpan};
use crate::optimizer::first_non_finite;
use crate::pooling::Pooling;
use crate::registry::{Feature, FeatureRegistry};
use crate::schema::{TableSpec, ValueType};

/// Where one feature's output sits in a batch's slots.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputBlock {
    pub feature: String,
    /// Batch size, or the number of values for `none` pooling.
    pub rows: usize,
    /// `chunks * chunk_dim`.
    pub width: usize,
    pub(crate) first_slot: usize,
}

/// What hashing one feature's values needs beside the values: where its
/// rows lie, one hash seed per chunk, its pooling and its first slot.
pub(crate) struct FeatureLayout {
    pub(crate) span: RowSpan,
    pub(crate) seeds: Vec<u64>,
    pub(crate) pooling: Pooling,
    pub(crate) first_slot: usize,
    /// Every example has exactly one value: found while the lengths are
    /// summed, so planning need not read them again.
    pub(crate) single_valued: bool,
}

/// A batch checked against a table: every feature known, of the right
/// value type, lengths and weights consistent, within the entry limit.
pub struct BatchLayout<'a> {
    pub(crate) features: Vec<(FeatureLayout, &'a FeatureBatch)>,
    pub outputs: Vec<OutputBlock>,
    /// Output rows of `chunk_dim` floats over all blocks.
    pub num_slots: usize,
    /// (value, chunk) entries: what gathering the batch reads.
    pub entries: usize,
    pub chunk_dim: usize,
}

impl<'a> BatchLayout<'a> {
    /// Validates `batch` against the table. A batch of more than
    /// `max_entries` (value, chunk) entries is refused before anything is
    /// allocated for it: what a batch costs is its values times their
    /// features' chunks, not its values. Entries are indexed with `u32`, so
    /// `max_entries` is capped at `u32::MAX`.
    pub fn new(
        table: &TableSpec,
        registry: &FeatureRegistry,
        batch: &'a Batch,
        max_entries: usize,
    ) -> Result<Self, EngineError> {
        let max_entries = max_entries.min(u32::MAX as usize);
        // Each feature looked up once: a serving lookup of one example
        // spent more on these lookups and on comparing names than on
        // hashing its values.
        let registered = batch
            .features
            .iter()
            .map(|fb| {
                registry
                    .get(&fb.feature)
                    .ok_or_else(|| EngineError::UnknownFeature(fb.feature.clone()))
            })
            .collect::<Result<Vec<&Feature>, _>>()?;
        let entries = batch
            .features
            .iter()
            .zip(&registered)
            .map(|(fb, feature)| fb.values.len().saturating_mul(feature.chunks as usize))
            .fold(0usize, usize::saturating_add);
        if entries > max_entries {
            return Err(EngineError::BatchTooLarge {
                entries,
                max: max_entries,
            });
        }
        let mut layout = BatchLayout {
            features: Vec::with_capacity(batch.features.len()),
            outputs: Vec::with_capacity(batch.features.len()),
            num_slots: 0,
            entries,
            chunk_dim: table.chunk_dim,
        };
        let batch_size = batch.features.first().map(|f| f.lengths.len());
        for (i, (fb, &feature)) in batch.features.iter().zip(&registered).enumerate() {
            // One name, one registered feature: the same reference.
            if registered[..i]
                .iter()
                .any(|&other| std::ptr::eq(other, feature))
            {
                return Err(EngineError::batch(
                    &fb.feature,
                    "appears more than once in the batch",
                ));
            }
            if Some(fb.lengths.len()) != batch_size {
                return Err(EngineError::batch(
                    &fb.feature,
                    format!(
                        "has {} examples but feature `{}` has {}",
                        fb.lengths.len(),
                        batch.features[0].feature,
                        batch_size.unwrap_or(0)
                    ),
                ));
            }
            let single_valued = validate_feature_batch(feature, fb)?;
            layout.add_feature(table, feature, fb, single_valued)?;
        }
        Ok(layout)
    }

    fn add_feature(
        &mut self,
        table: &TableSpec,
        feature: &Feature,
        fb: &'a FeatureBatch,
        single_valued: bool,
    ) -> Result<(), EngineError> {
        let rows = match feature.pooling {
            Pooling::None => fb.values.len(),
            _ => fb.lengths.len(),
        };
        let first_slot = self.num_slots;
        self.num_slots = rows
            .checked_mul(feature.chunks as usize)
            .and_then(|n| n.checked_add(first_slot))
            .filter(|&n| n <= u32::MAX as usize)
            .ok_or_else(|| {
                EngineError::batch(&fb.feature, "the batch's output exceeds 2^32 rows")
            })?;
        self.outputs.push(OutputBlock {
            feature: fb.feature.clone(),
            rows,
            width: feature.width(table.chunk_dim),
            first_slot,
        });
        let layout = FeatureLayout {
            span: feature.span(table.rows),
            seeds: (0..feature.chunks)
                .map(|j| chunk_seed(table.seed, feature.salt, j))
                .collect(),
            pooling: feature.pooling,
            first_slot,
            single_valued,
        };
        self.features.push((layout, fb));
        Ok(())
    }

    /// One past the last table row any of the batch's features hashes
    /// into: a backend holding fewer rows cannot gather it.
    pub fn rows_end(&self) -> u64 {
        self.features
            .iter()
            .map(|(layout, _)| layout.span.offset + layout.span.rows)
            .max()
            .unwrap_or(0)
    }

    /// True when some output row sums several entries (bags of more than
    /// one value, or of several chunks): more entries than slots.
    pub fn sums_entries(&self) -> bool {
        self.entries > self.num_slots
    }

    /// Hands `sink` each feature's entries in batch order, each value type
    /// through its own monomorphic loop.
    pub fn for_each_feature(&self, sink: &mut impl EntrySink) {
        self.for_each_feature_in(0..self.features.len(), sink);
    }

    /// [`Self::for_each_feature`] for `features` only (a piece of a
    /// gather cut by feature).
    pub(crate) fn for_each_feature_in(&self, features: Range<usize>, sink: &mut impl EntrySink) {
        for (block, (layout, fb)) in self
            .features
            .iter()
            .enumerate()
            .take(features.end)
            .skip(features.start)
        {
            let slots = self.outputs[block].rows * layout.seeds.len();
            match &fb.values {
                Values::Strings(values) => {
                    let key = values.as_slice();
                    sink.feature(block, slots, FeatureEntries { layout, fb, key });
                }
                Values::PackedStrings(key) => {
                    sink.feature(block, slots, FeatureEntries { layout, fb, key });
                }
                Values::Int64(values) => {
                    let key = values.as_slice();
                    sink.feature(block, slots, FeatureEntries { layout, fb, key });
                }
            }
        }
    }

    /// The features cut into at most `pieces` runs of about equal entries:
    /// run `p` is features `cuts[p]..cuts[p + 1]`, none empty.
    pub(crate) fn feature_cuts(&self, pieces: usize) -> Vec<usize> {
        let mut cuts = vec![0];
        let mut entries = 0;
        for (i, (feature, fb)) in self.features.iter().enumerate() {
            let target = cuts.len() * self.entries / pieces.max(1);
            if entries >= target && i > *cuts.last().unwrap() {
                cuts.push(i);
            }
            entries += fb.values.len() * feature.seeds.len();
        }
        cuts.push(self.features.len());
        cuts.dedup();
        cuts
    }

    /// Where each feature's output begins among the slots, and where the
    /// last ends.
    pub fn block_bounds(&self) -> Vec<usize> {
        block_bounds(&self.outputs, self.num_slots)
    }

    /// Names gathered blocks (one per feature, in batch order).
    pub fn embeddings(&self, blocks: Vec<Vec<f32>>) -> Vec<FeatureEmbeddings> {
        embeddings(&self.outputs, blocks)
    }
}

/// Where each block begins among the slots, and where the last ends
/// (`num_slots`): the bounds [`crate::backend::Backend::gather_blocks`]
/// cuts at.
pub(crate) fn block_bounds(outputs: &[OutputBlock], num_slots: usize) -> Vec<usize> {
    outputs
        .iter()
        .map(|block| block.first_slot)
        .chain([num_slots])
        .collect()
}

/// Gathered blocks named after their features.
pub(crate) fn embeddings(outputs: &[OutputBlock], blocks: Vec<Vec<f32>>) -> Vec<FeatureEmbeddings> {
    outputs
        .iter()
        .zip(blocks)
        .map(|(block, data)| FeatureEmbeddings {
            feature: block.feature.clone(),
            rows: block.rows,
            width: block.width,
            data,
        })
        .collect()
}

/// One (value, chunk) entry of a gather: `out[slot] += weight *
/// table[row]`, `slot` counted from the first of its feature's block.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Entry {
    pub row: u64,
    pub slot: u32,
    pub weight: f32,
}

/// What consumes a batch's entries feature by feature
/// ([`BatchLayout::for_each_feature`]).
pub trait EntrySink {
    /// Feature `block` of the batch, whose output takes `slots` slots.
    fn feature<'v, K: KeyColumn<'v>>(
        &mut self,
        block: usize,
        slots: usize,
        entries: FeatureEntries<'_, K>,
    );
}

/// A feature's values as the loops that hash them while they gather read
/// them: one type per value type, so that each gets its own loop.
pub trait KeyColumn<'v> {
    /// The `i`-th value as a hashing key.
    fn key(&self, i: usize) -> Key<'v>;

    /// Asks the CPU to start loading the `i`-th value, if there is one. A
    /// batch's values arrive from memory no one has read since the request
    /// did, one allocation per feature, and the hardware's prefetcher
    /// restarts at every page. Only int64 values ask: a string's bytes are
    /// found through a load (its header, its end offset), and asking for a
    /// packed value's end offset and, from an earlier one, its bytes made
    /// bags of 20 packed strings 17 % slower in-process.
    #[inline(always)]
    fn prefetch(&self, _i: usize) {}
}

impl<'v> KeyColumn<'v> for &'v [i64] {
    #[inline(always)]
    fn key(&self, i: usize) -> Key<'v> {
        Key::Int(self[i])
    }

    #[inline(always)]
    fn prefetch(&self, i: usize) {
        crate::prefetch::prefetch(self.get(i..=i).unwrap_or_default());
    }
}

impl<'v> KeyColumn<'v> for &'v [String] {
    #[inline(always)]
    fn key(&self, i: usize) -> Key<'v> {
        Key::Str(self[i].as_bytes())
    }
}

impl<'v> KeyColumn<'v> for &'v PackedStrings {
    #[inline(always)]
    fn key(&self, i: usize) -> Key<'v> {
        Key::Str(self.get(i))
    }
}

/// One feature's entries, hashed as they are handed out: `key.key(i)` is its
/// `i`-th value.
pub struct FeatureEntries<'l, K> {
    layout: &'l FeatureLayout,
    fb: &'l FeatureBatch,
    key: K,
}

impl<'v, K: KeyColumn<'v>> FeatureEntries<'_, K> {
    /// This feature as plain [`Bags`], if it is one: one chunk, pooled,
    /// no per-value weights.
    pub fn bags(&self) -> Option<Bags<'_, K>> {
        let FeatureLayout {
            span,
            seeds,
            pooling,
            ..
        } = self.layout;
        match seeds[..] {
            [seed] if *pooling != Pooling::None && self.fb.weights.is_none() => Some(Bags {
                lengths: &self.fb.lengths,
                values: self.fb.values.len(),
                pooling: *pooling,
                span: *span,
                seed,
                key: &self.key,
            }),
            _ => None,
        }
    }

    /// Calls `emit` with every entry, slots never decreasing: an output
    /// row's chunks in order, and within a slot its values in batch order
    /// (the order a plan sums them in, so both give the same floats).
    #[inline(always)]
    pub fn for_each(&self, mut emit: impl FnMut(Entry)) {
        let FeatureLayout {
            span,
            seeds,
            pooling,
            ..
        } = self.layout;
        let chunks = seeds.len();
        let weights = self.fb.weights.as_deref();
        let weight = |scale: f32, value: usize| weights.map_or(scale, |w| scale * w[value]);
        let mut value = 0;
        for (example, &len) in self.fb.lengths.iter().enumerate() {
            let scale = pooling.scale(len as usize);
            // Pooled, the bag is one output row; unpooled, each of its
            // values is one. (One loop for both, so `emit`, which the
            // backend inlines, is inlined once.)
            let (out_rows, values_per_row) = match pooling {
                Pooling::None => (len as usize, 1),
                _ => (1, len as usize),
            };
            for _ in 0..out_rows {
                let out_row = if *pooling == Pooling::None {
                    value
                } else {
                    example
                };
                let values = value..value + values_per_row;
                for (j, &seed) in seeds.iter().enumerate() {
                    let slot = (out_row * chunks + j) as u32;
                    for v in values.clone() {
                        emit(Entry {
                            row: span.row(hash_key(self.key.key(v), seed)),
                            slot,
                            weight: weight(scale, v),
                        });
                    }
                }
                value = values.end;
            }
        }
    }
}

/// A feature whose output rows are its bags, one row each: one chunk,
/// pooled, no per-value weights (the usual multi-valued feature). Its
/// entries need no slot or weight of their own, so a backend can pool it
/// in a loop that carries only rows ([`FeatureEntries::bags`]).
pub struct Bags<'l, K> {
    /// Values per bag, one bag per output row.
    pub lengths: &'l [u32],
    /// Values in all bags: the sum of `lengths`.
    pub values: usize,
    pooling: Pooling,
    span: RowSpan,
    seed: u64,
    key: &'l K,
}

impl<'v, K: KeyColumn<'v>> Bags<'_, K> {
    /// The row of value `i`, as [`FeatureEntries::for_each`] hashes it.
    #[inline(always)]
    pub fn row(&self, i: usize) -> u64 {
        self.span.row(hash_key(self.key.key(i), self.seed))
    }

    /// The weight of every value of a bag of `len` values (as
    /// [`FeatureEntries::for_each`] gives it).
    #[inline(always)]
    pub fn weight(&self, len: usize) -> f32 {
        self.pooling.scale(len)
    }

    /// Asks the CPU to start loading value `i` (see [`KeyColumn::prefetch`]).
    #[inline(always)]
    pub fn prefetch_value(&self, i: usize) {
        self.key.prefetch(i);
    }
}

/// Checks `fb` against its feature; returns whether every example has
/// exactly one value.
fn validate_feature_batch(feature: &Feature, fb: &FeatureBatch) -> Result<bool, EngineError> {
    let name = &fb.feature;
    match (&fb.values, feature.value_type) {
        // A column of empty bags has no type to check (a client that saw
        // no value cannot tell which type the feature has).
        (values, _) if values.is_empty() => {}
        (Values::Strings(_) | Values::PackedStrings(_), ValueType::String)
        | (Values::Int64(_), ValueType::Int64) => {}
        (Values::Strings(_) | Values::PackedStrings(_), ValueType::Int64) => {
            return Err(EngineError::batch(
                name,
                "expects int64 values, got strings",
            ));
        }
        (Values::Int64(_), ValueType::String) => {
            return Err(EngineError::batch(name, "expects string values, got int64"));
        }
    }
    let (total, single_valued) = lengths_total(&fb.lengths);
    if total != fb.values.len() as u64 {
        return Err(EngineError::batch(
            name,
            format!(
                "lengths sum to {total} but {} values were sent",
                fb.values.len()
            ),
        ));
    }
    if let Some(weights) = &fb.weights {
        if weights.len() != fb.values.len() {
            return Err(EngineError::batch(
                name,
                format!("{} weights for {} values", weights.len(), fb.values.len()),
            ));
        }
        if let Some(i) = first_non_finite(weights) {
            return Err(EngineError::batch(
                name,
                format!("weight {i} is {}", weights[i]),
            ));
        }
    }
    Ok(single_valued)
}

/// The sum of `lengths`, and whether each is 1, in one pass: a batch's
/// lengths arrive from memory the CPU has not read yet, and reading them
/// was most of what validating and planning a single-valued feature took
/// besides hashing. Each 256-byte chunk is summed by a loop the compiler
/// vectorises (two independent accumulators, no early exit), with the
/// chunk 1 KiB on asked for meanwhile (the hardware's prefetcher restarts
/// at every page).
fn lengths_total(lengths: &[u32]) -> (u64, bool) {
    const CHUNK: usize = 64;
    let (mut total, mut not_one) = (0u64, 0u32);
    for (i, chunk) in lengths.chunks(CHUNK).enumerate() {
        let ahead = (i + 4) * CHUNK;
        crate::prefetch::prefetch(lengths.get(ahead..ahead + CHUNK).unwrap_or_default());
        (total, not_one) = chunk
            .iter()
            .fold((total, not_one), |(total, not_one), &len| {
                (total + u64::from(len), not_one | (len ^ 1))
            });
    }
    (total, not_one == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_summed_and_single_values_told_apart() {
        assert_eq!(lengths_total(&[]), (0, true));
        assert_eq!(lengths_total(&[1; 37]), (37, true));
        // As many values as examples, but not one each.
        assert_eq!(lengths_total(&[0, 2]), (2, false));
        assert_eq!(lengths_total(&[1, 1, 3, 1]), (6, false));
        let mut lengths = vec![1; 1000];
        lengths[999] = 0;
        assert_eq!(lengths_total(&lengths), (999, false));
        assert_eq!(
            lengths_total(&[u32::MAX, u32::MAX]),
            (2 * u64::from(u32::MAX), false)
        );
    }
}
