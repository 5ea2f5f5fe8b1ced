//! A batch resolved to table rows, the step lookup and push share.
//!
//! Planning validates the batch against the registry (unknown feature, value
//! type, lengths, weights, batch size), hashes every value of every chunk
//! once, and folds pooling into one factor per (value, chunk) entry. Lookup
//! hands the plan's [`GatherPlan`] to the backend; push runs the same entries
//! backwards ([`BatchPlan::row_gradients`]): un-pool, split chunks and sum the
//! gradients of duplicate rows across the whole batch. Because a plan is
//! self-contained, a lookup can keep it as a "ticket" so the matching push
//! sends only gradients.
//!
//! Slot layout: output block `i` (one per batch feature) owns consecutive
//! slots, one per (output row, chunk); slot `s` is floats `[s*d, (s+1)*d)`,
//! so a block's floats are exactly its row-major `[rows, chunks*d]` output.

use crate::backend::{cut_at, GatherPlan, RowGradients};
use crate::batch::{Batch, FeatureBatch, FeatureEmbeddings, Values};
use crate::error::EngineError;
use crate::hashing::{chunk_seed, hash_key, Key, RowSpan};
use crate::optimizer::first_non_finite;
use crate::pooling::Pooling;
use crate::registry::{Feature, FeatureRegistry};
use crate::schema::{TableSpec, ValueType};

/// Where one feature's output sits in the plan's slots.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputBlock {
    pub feature: String,
    /// Batch size, or the number of values for `none` pooling.
    pub rows: usize,
    /// `chunks * chunk_dim`.
    pub width: usize,
    first_slot: usize,
}

/// A validated, hashed batch: the gather entries and the output layout.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchPlan {
    pub gather: GatherPlan,
    pub outputs: Vec<OutputBlock>,
    chunk_dim: usize,
}

impl BatchPlan {
    /// Heap bytes the plan holds (what keeping it as a ticket costs).
    pub fn memory_bytes(&self) -> usize {
        let g = &self.gather;
        g.rows.capacity() * 8
            + g.slots.capacity() * 4
            + g.weights.capacity() * 4
            + self
                .outputs
                .iter()
                .map(|o| std::mem::size_of::<OutputBlock>() + o.feature.capacity())
                .sum::<usize>()
    }

    /// The feature of the first entry that maps to `row` (to name it when
    /// an update of that row is refused).
    pub fn feature_of_row(&self, row: u64) -> Option<&str> {
        let entry = self.gather.rows.iter().position(|&r| r == row)?;
        let slot = self.gather.slots[entry] as usize;
        self.outputs
            .iter()
            .rev()
            .find(|o| o.first_slot <= slot)
            .map(|o| o.feature.as_str())
    }

    /// Validates `batch` against the table and resolves it to rows. A
    /// batch of more than `max_entries` (value, chunk) entries is refused
    /// before anything is allocated for it: what a batch costs is its
    /// values times their features' chunks, not its values. Entries are
    /// indexed with `u32`, so `max_entries` is capped at `u32::MAX`.
    pub fn build(
        table: &TableSpec,
        registry: &FeatureRegistry,
        batch: &Batch,
        max_entries: usize,
    ) -> Result<Self, EngineError> {
        Self::build_hashing(table, registry, batch, max_entries, None)
    }

    /// [`Self::build`], also handing out each value's hash under its
    /// feature's first chunk seed (one per value, features in batch order):
    /// a uniform 64-bit identity of the value, which the occupancy
    /// statistics use instead of hashing every value a second time.
    pub fn build_hashing(
        table: &TableSpec,
        registry: &FeatureRegistry,
        batch: &Batch,
        max_entries: usize,
        mut value_hashes: Option<&mut Vec<u64>>,
    ) -> Result<Self, EngineError> {
        let max_entries = max_entries.min(u32::MAX as usize);
        let mut entries = 0usize;
        for fb in &batch.features {
            let chunks = registry
                .get(&fb.feature)
                .ok_or_else(|| EngineError::UnknownFeature(fb.feature.clone()))?
                .chunks as usize;
            entries = entries.saturating_add(fb.values.len().saturating_mul(chunks));
        }
        if entries > max_entries {
            return Err(EngineError::BatchTooLarge {
                entries,
                max: max_entries,
            });
        }
        let mut plan = BatchPlan {
            // Sized once for every feature's entries (growing per feature
            // copied the vectors over again).
            gather: GatherPlan {
                rows: Vec::with_capacity(entries),
                slots: Vec::with_capacity(entries),
                weights: Vec::with_capacity(entries),
                num_slots: 0,
            },
            outputs: Vec::with_capacity(batch.features.len()),
            chunk_dim: table.chunk_dim,
        };
        let batch_size = batch.features.first().map(|f| f.lengths.len());
        for (i, fb) in batch.features.iter().enumerate() {
            let feature = registry
                .get(&fb.feature)
                .ok_or_else(|| EngineError::UnknownFeature(fb.feature.clone()))?;
            if batch.features[..i]
                .iter()
                .any(|other| other.feature == fb.feature)
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
            validate_feature_batch(feature, fb)?;
            plan.add_feature(table, feature, fb, value_hashes.as_deref_mut())?;
        }
        Ok(plan)
    }

    fn add_feature(
        &mut self,
        table: &TableSpec,
        feature: &Feature,
        fb: &FeatureBatch,
        value_hashes: Option<&mut Vec<u64>>,
    ) -> Result<(), EngineError> {
        let chunks = feature.chunks as usize;
        let rows = match feature.pooling {
            Pooling::None => fb.values.len(),
            _ => fb.lengths.len(),
        };
        let first_slot = self.gather.num_slots;
        self.gather.num_slots = rows
            .checked_mul(chunks)
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
        };
        let gather = &mut self.gather;
        match &fb.values {
            Values::Strings(values) => {
                let keys = values.iter().map(|v| Key::Str(v.as_bytes()));
                layout.add_entries(gather, fb, keys, value_hashes);
            }
            Values::PackedStrings(values) => {
                layout.add_entries(gather, fb, values.iter().map(Key::Str), value_hashes);
            }
            Values::Int64(values) => {
                let keys = values.iter().map(|&v| Key::Int(v));
                layout.add_entries(gather, fb, keys, value_hashes);
            }
        }
        Ok(())
    }

    /// Where each feature's output begins among the gather's slots, and
    /// where the last ends: the bounds [`crate::backend::Backend::gather_blocks`] cuts at.
    pub fn block_bounds(&self) -> Vec<usize> {
        self.outputs
            .iter()
            .map(|block| block.first_slot)
            .chain([self.gather.num_slots])
            .collect()
    }

    /// Names the blocks of [`crate::backend::Backend::gather_blocks`] (cut at
    /// [`Self::block_bounds`]): one embedding block per feature, in batch
    /// order.
    pub fn embeddings(&self, blocks: Vec<Vec<f32>>) -> Vec<FeatureEmbeddings> {
        self.outputs
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

    /// [`Self::embeddings`] of one pooled `[num_slots, chunk_dim]` output
    /// (the sum of shards' partial gathers), cut per feature.
    pub fn embeddings_of_pooled(&self, pooled: Vec<f32>) -> Vec<FeatureEmbeddings> {
        self.embeddings(cut_at(pooled, &self.block_bounds(), self.chunk_dim))
    }

    /// Whether slot `slot` belongs to output block `block` (an empty
    /// block holds none).
    fn block_holds(&self, block: usize, slot: usize) -> bool {
        let end = self
            .outputs
            .get(block + 1)
            .map_or(self.gather.num_slots, |next| next.first_slot);
        self.outputs
            .get(block)
            .is_some_and(|b| b.first_slot <= slot && slot < end)
    }

    /// Validates per-feature output gradients (one `[rows, width]` block per
    /// output, in plan order), then un-pools them onto rows and sums
    /// duplicates: the push's [`RowGradients`].
    pub fn row_gradients<G: AsRef<[f32]>>(&self, grads: &[G]) -> Result<RowGradients, EngineError> {
        if grads.len() != self.outputs.len() {
            let feature = self
                .outputs
                .get(grads.len())
                .map_or("<batch>", |b| &b.feature);
            return Err(EngineError::gradients(
                feature,
                format!(
                    "the batch has {} features but {} gradient blocks were sent",
                    self.outputs.len(),
                    grads.len()
                ),
            ));
        }
        for (block, g) in self.outputs.iter().zip(grads) {
            let g = g.as_ref();
            let expected = block.rows * block.width;
            if g.len() != expected {
                return Err(EngineError::gradients(
                    &block.feature,
                    format!(
                        "expected {} × {} = {expected} values, got {}",
                        block.rows,
                        block.width,
                        g.len()
                    ),
                ));
            }
            if let Some(i) = first_non_finite(g) {
                return Err(EngineError::gradients(
                    &block.feature,
                    format!("value {i} is {}", g[i]),
                ));
            }
        }
        let d = self.chunk_dim;
        let entry_grad = |x: &SummedEntry| -> &[f32] {
            let start = x.offset as usize * d;
            &grads[x.block as usize].as_ref()[start..start + d]
        };

        // Entries sorted by row, ties in entry order (so sums are
        // deterministic). Each carries its weight and where its gradient
        // is: read in row order from the plan's arrays they would be cache
        // misses, as many as the gradient reads themselves. Entries come
        // feature by feature, so an entry's output block is almost always
        // the previous entry's; a binary search over the blocks for every
        // entry was a quarter of this function's samples.
        let gather = &self.gather;
        let mut block = 0;
        let entries: Vec<SummedEntry> = (0..gather.rows.len())
            .map(|e| {
                let slot = gather.slots[e] as usize;
                if !self.block_holds(block, slot) {
                    block = self.outputs.partition_point(|b| b.first_slot <= slot) - 1;
                }
                SummedEntry {
                    row: gather.rows[e],
                    weight: gather.weights[e],
                    block: block as u32,
                    offset: (slot - self.outputs[block].first_slot) as u32,
                }
            })
            .collect();
        let entries = crate::radix::sort_stable_by_key(entries, |x| x.row);
        // At most one row per entry: room for that up front, or the
        // gradients (6.8 MB for 4,096 × 26 rows of 16 floats) are copied
        // each time they outgrow their buffer.
        let mut update = RowGradients {
            rows: Vec::with_capacity(entries.len()),
            grads: Vec::with_capacity(entries.len() * d),
        };
        for (k, x) in entries.iter().enumerate() {
            // In row order the gradients are read at random: ask for the
            // one a few entries on while summing this one.
            if let Some(ahead) = entries.get(k + PREFETCH_AHEAD) {
                crate::prefetch::prefetch(entry_grad(ahead));
            }
            if update.rows.last() != Some(&x.row) {
                update.rows.push(x.row);
                update.grads.resize(update.grads.len() + d, 0.0);
            }
            let acc = update.grads.len() - d;
            for (a, g) in update.grads[acc..].iter_mut().zip(entry_grad(x)) {
                *a += x.weight * g;
            }
        }
        if first_non_finite(&update.grads).is_some() {
            return Err(EngineError::gradients(
                "<batch>",
                "summing the gradients of duplicate rows overflows f32",
            ));
        }
        Ok(update)
    }
}

/// A gather entry as [`BatchPlan::row_gradients`] sums it: its gradient is
/// slot `offset` of output block `block`.
#[derive(Clone, Copy)]
struct SummedEntry {
    row: u64,
    weight: f32,
    block: u32,
    offset: u32,
}

/// What planning one feature's values needs beside the values: where
/// its rows lie, one hash seed per chunk, its pooling and its first slot.
struct FeatureLayout {
    span: RowSpan,
    seeds: Vec<u64>,
    pooling: Pooling,
    first_slot: usize,
}

impl FeatureLayout {
    /// Appends the gather entries of a validated feature batch whose
    /// values `keys` yields in order: one per (value, chunk).
    ///
    /// Generic over the keys so each value type gets its own loop (no
    /// match per value), and the entries are written into slices sized
    /// once: this and the hash are all a lookup does per value besides
    /// copying its row, so every instruction here is paid 10^5 times per
    /// batch. Rows are hashed in a loop that does nothing else: a hash is
    /// a chain of dependent multiplies, and only a short loop lets the CPU
    /// run several values' chains at once.
    fn add_entries<'a>(
        &self,
        gather: &mut GatherPlan,
        fb: &FeatureBatch,
        keys: impl Iterator<Item = Key<'a>> + Clone,
        value_hashes: Option<&mut Vec<u64>>,
    ) {
        let chunks = self.seeds.len();
        let start = gather.rows.len();
        let end = start + fb.values.len() * chunks;
        gather.rows.resize(end, 0);
        gather.slots.resize(end, 0);
        gather.weights.resize(end, 0.0);
        let rows = &mut gather.rows[start..end];
        for (j, &seed) in self.seeds.iter().enumerate() {
            for (row, key) in rows.iter_mut().skip(j).step_by(chunks).zip(keys.clone()) {
                *row = hash_key(key, seed);
            }
        }
        if let Some(hashes) = value_hashes {
            hashes.extend(rows.iter().step_by(chunks));
        }
        for row in rows.iter_mut() {
            *row = self.span.row(*row);
        }

        let slots = &mut gather.slots[start..end];
        let weights = &mut gather.weights[start..end];
        let unweighted_chunk = chunks == 1 && fb.weights.is_none();
        if unweighted_chunk && fb.lengths.iter().all(|&len| len == 1) {
            // Single-valued (the commonest feature): entry i is slot i of
            // the block, weighted by a bag of one's scale. Two plain fills
            // instead of the general loop below (a third of planning).
            for (i, slot) in slots.iter_mut().enumerate() {
                *slot = (self.first_slot + i) as u32;
            }
            weights.fill(self.pooling.scale(1));
            return;
        }
        let mut entry = 0;
        let mut value = 0;
        for (example, &len) in fb.lengths.iter().enumerate() {
            let scale = self.pooling.scale(len as usize);
            if unweighted_chunk && self.pooling != Pooling::None {
                // A pooled bag: its values share one slot and one weight.
                let bag = entry..entry + len as usize;
                slots[bag.clone()].fill((self.first_slot + example) as u32);
                weights[bag].fill(scale);
                entry += len as usize;
                value += len as usize;
                continue;
            }
            for _ in 0..len {
                let weight = fb.weights.as_ref().map_or(scale, |w| scale * w[value]);
                let out_row = if self.pooling == Pooling::None {
                    value
                } else {
                    example
                };
                let first = self.first_slot + out_row * chunks;
                for j in 0..chunks {
                    slots[entry] = (first + j) as u32;
                    weights[entry] = weight;
                    entry += 1;
                }
                value += 1;
            }
        }
        debug_assert_eq!(entry, slots.len(), "validated lengths sum to the values");
    }
}

/// How many entries ahead [`BatchPlan::row_gradients`] prefetches.
const PREFETCH_AHEAD: usize = 8;

fn validate_feature_batch(feature: &Feature, fb: &FeatureBatch) -> Result<(), EngineError> {
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
    let total: u64 = fb.lengths.iter().map(|&l| l as u64).sum();
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
    Ok(())
}
