//! A batch resolved to table rows, the step lookup and push share.
//!
//! Planning takes a batch validated against the registry
//! ([`crate::layout::BatchLayout`]: unknown feature, value type, lengths,
//! weights, batch size), hashes every value of every chunk once, and folds
//! pooling into one factor per (value, chunk) entry. Lookup
//! hands the plan's [`GatherPlan`] to the backend; push runs the same entries
//! backwards ([`BatchPlan::row_gradients`]): un-pool, split chunks and sum the
//! gradients of duplicate rows across the whole batch. Because a plan is
//! self-contained, a lookup can keep it as a "ticket" so the matching push
//! sends only gradients.
//!
//! Slot layout: output block `i` (one per batch feature) owns consecutive
//! slots, one per (output row, chunk); slot `s` is floats `[s*d, (s+1)*d)`,
//! so a block's floats are exactly its row-major `[rows, chunks*d]` output.

use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::backend::{cut_at, GatherPlan, RowGradients};
use crate::batch::{Batch, FeatureBatch, FeatureEmbeddings, Values};
use crate::error::EngineError;
use crate::fanout;
use crate::gradients::GradientSource;
use crate::hashing::{hash_key, push_int_hashes, Key};
use crate::layout::{block_bounds, embeddings, BatchLayout, FeatureLayout, OutputBlock};
use crate::optimizer::first_non_finite;
use crate::pooling::Pooling;
use crate::registry::FeatureRegistry;
use crate::schema::TableSpec;

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

    /// Validates `batch` against the table (see [`BatchLayout::new`] for
    /// `max_entries`) and resolves it to rows.
    pub fn build(
        table: &TableSpec,
        registry: &FeatureRegistry,
        batch: &Batch,
        max_entries: usize,
    ) -> Result<Self, EngineError> {
        Ok(Self::from_layout(
            &BatchLayout::new(table, registry, batch, max_entries)?,
            None,
        ))
    }

    /// Hashes every value of a validated batch. With `value_hashes`, also
    /// hands out each value's hash under its feature's first chunk seed
    /// (one per value, features in batch order): a uniform 64-bit identity
    /// of the value, which the occupancy statistics use instead of hashing
    /// every value a second time.
    pub fn from_layout(layout: &BatchLayout<'_>, value_hashes: Option<&mut Vec<u64>>) -> Self {
        BatchPlan {
            gather: gather_plan(layout, value_hashes),
            outputs: layout.outputs.clone(),
            chunk_dim: layout.chunk_dim,
        }
    }

    /// Where each feature's output begins among the gather's slots, and
    /// where the last ends: the bounds [`crate::backend::Backend::gather_blocks`] cuts at.
    pub fn block_bounds(&self) -> Vec<usize> {
        block_bounds(&self.outputs, self.gather.num_slots)
    }

    /// Names the blocks of [`crate::backend::Backend::gather_blocks`] (cut at
    /// [`Self::block_bounds`]): one embedding block per feature, in batch
    /// order.
    pub fn embeddings(&self, blocks: Vec<Vec<f32>>) -> Vec<FeatureEmbeddings> {
        embeddings(&self.outputs, blocks)
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
    ///
    /// Finiteness is checked on the sums, the values the optimizer will
    /// step with, not on the gradients first: a NaN or infinity sent stays
    /// one in every sum it enters, so one pass over the sums refuses all
    /// that a pass over the gradients would (and sums that overflow), at
    /// half the memory traffic. Only a gradient no row receives (an empty
    /// bag's) goes unchecked, and it changes nothing. The error still names
    /// the value sent when there is one.
    pub fn row_gradients<G: GradientSource>(
        &self,
        grads: &[G],
    ) -> Result<RowGradients, EngineError> {
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
            let expected = block.rows * block.width;
            if g.floats() != expected {
                return Err(EngineError::gradients(
                    &block.feature,
                    format!(
                        "expected {} × {} = {expected} values, got {}",
                        block.rows,
                        block.width,
                        g.floats()
                    ),
                ));
            }
        }
        let d = self.chunk_dim;

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
        // Summing is cut into runs of whole rows that threads the caller
        // has to spare sum at once (`fanout`): a row's sum is one piece's.
        let fanout = fanout::current();
        let pieces = fanout::pieces_for(&*fanout, entries.len(), MIN_ENTRIES_PER_PIECE);
        let (rows, cuts) = rows_and_cuts(&entries, pieces);
        let mut summed = Vec::with_capacity(rows.len() * d);
        let mut outs = Vec::with_capacity(cuts.len());
        let mut rest = &mut summed.spare_capacity_mut()[..rows.len() * d];
        for pair in cuts.windows(2) {
            let (out, tail) = rest.split_at_mut((pair[1].row - pair[0].row) * d);
            outs.push(Mutex::new(Some(out)));
            rest = tail;
        }
        let non_finite = AtomicBool::new(false);
        fanout.run(outs.len(), &|p| {
            let out = zeroed(outs[p].lock().take().expect("each piece runs once"));
            sum_rows(&entries[cuts[p].entry..cuts[p + 1].entry], grads, d, out);
            if first_non_finite(out).is_some() {
                non_finite.store(true, Ordering::Relaxed);
            }
        });
        // SAFETY: `run` returned, so every piece zeroed its part (together
        // all `rows.len() * d` floats) before summing into it.
        unsafe { summed.set_len(rows.len() * d) };
        if non_finite.into_inner() {
            return Err(self.non_finite_gradient(grads));
        }
        Ok(RowGradients {
            rows,
            grads: summed,
        })
    }

    /// The error for a push whose summed gradients are not all finite: the
    /// first NaN or infinity sent, or else the overflow of a sum.
    fn non_finite_gradient<G: GradientSource>(&self, grads: &[G]) -> EngineError {
        for (block, g) in self.outputs.iter().zip(grads) {
            if let Some((i, value)) = g.first_non_finite() {
                return EngineError::gradients(&block.feature, format!("value {i} is {value}"));
            }
        }
        EngineError::gradients(
            "<batch>",
            "summing the gradients of duplicate rows overflows f32",
        )
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

/// Entries a piece of a push's summing takes at least: fewer are summed
/// before another thread would have woken up to take them.
const MIN_ENTRIES_PER_PIECE: usize = 16_384;

/// Where a piece of the summing starts: its first entry, and the index of
/// its first row among the unique rows.
struct Cut {
    entry: usize,
    row: usize,
}

/// The unique rows of `entries` (sorted by row), and the entries cut into
/// at most `pieces` runs of whole rows of about equal length: each run
/// starts at a [`Cut`], the last ends at the closing one.
fn rows_and_cuts(entries: &[SummedEntry], pieces: usize) -> (Vec<u64>, Vec<Cut>) {
    let mut rows = Vec::with_capacity(entries.len());
    let mut cuts = Vec::with_capacity(pieces + 1);
    let mut next_cut = 0;
    for (k, x) in entries.iter().enumerate() {
        if rows.last() != Some(&x.row) {
            if k >= next_cut && cuts.len() < pieces {
                cuts.push(Cut {
                    entry: k,
                    row: rows.len(),
                });
                next_cut = cuts.len() * entries.len() / pieces;
            }
            rows.push(x.row);
        }
    }
    if cuts.is_empty() {
        cuts.push(Cut { entry: 0, row: 0 });
    }
    cuts.push(Cut {
        entry: entries.len(),
        row: rows.len(),
    });
    (rows, cuts)
}

/// `part` filled with zeros, as the floats it now holds: each piece of a
/// push's summing zeroes its own part of the sums.
fn zeroed(part: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    part.fill(MaybeUninit::new(0.0));
    // SAFETY: every element was just written.
    unsafe { &mut *(part as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// Sums `entries` (sorted by row) into `out`, one `d`-float sum per row in
/// order (zeroed before).
fn sum_rows<G: GradientSource>(entries: &[SummedEntry], grads: &[G], d: usize, out: &mut [f32]) {
    let mut acc = 0;
    for (k, x) in entries.iter().enumerate() {
        // In row order the gradients are read at random: ask for the one a
        // few entries on while summing this one.
        if let Some(ahead) = entries.get(k + PREFETCH_AHEAD) {
            grads[ahead.block as usize].prefetch(ahead.offset as usize * d, d);
        }
        if k > 0 && entries[k - 1].row != x.row {
            acc += d;
        }
        grads[x.block as usize].add_scaled_to(
            x.offset as usize * d,
            x.weight,
            &mut out[acc..acc + d],
        );
    }
}

/// The rows and slots of every (value, chunk) entry of a validated batch,
/// without the outputs' names a [`BatchPlan`] keeps: a lookup that keeps
/// no ticket gathers from this alone (cloning the names cost a
/// single-example HTTP lookup 26 allocations and their frees).
pub(crate) fn gather_plan(
    layout: &BatchLayout<'_>,
    value_hashes: Option<&mut Vec<u64>>,
) -> GatherPlan {
    gather_plan_of(layout, 0..layout.features.len(), value_hashes)
}

/// [`gather_plan`] for the layout's `features` only, at the layout's
/// slots: the plan of one piece of a gather cut by feature.
pub(crate) fn gather_plan_of(
    layout: &BatchLayout<'_>,
    features: Range<usize>,
    mut value_hashes: Option<&mut Vec<u64>>,
) -> GatherPlan {
    let features = &layout.features[features];
    let entries = features
        .iter()
        .map(|(feature, fb)| fb.values.len() * feature.seeds.len())
        .sum();
    let mut gather = GatherPlan {
        // Sized once for every feature's entries (growing per feature
        // copied the vectors over again).
        rows: Vec::with_capacity(entries),
        slots: Vec::with_capacity(entries),
        weights: Vec::with_capacity(entries),
        num_slots: layout.num_slots,
    };
    for (feature, fb) in features {
        let hashes = value_hashes.as_deref_mut();
        match &fb.values {
            Values::Strings(values) => {
                let keys = values.iter().map(|v| Key::Str(v.as_bytes()));
                add_entries(feature, &mut gather, fb, keys, hashes);
            }
            Values::PackedStrings(values) => {
                add_entries(
                    feature,
                    &mut gather,
                    fb,
                    values.iter().map(Key::Str),
                    hashes,
                );
            }
            Values::Int64(values) => {
                let keys = values.iter().map(|&v| Key::Int(v));
                add_entries(feature, &mut gather, fb, keys, hashes);
            }
        }
    }
    gather
}

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
    layout: &FeatureLayout,
    gather: &mut GatherPlan,
    fb: &FeatureBatch,
    keys: impl Iterator<Item = Key<'a>> + Clone,
    value_hashes: Option<&mut Vec<u64>>,
) {
    let chunks = layout.seeds.len();
    let start = gather.rows.len();
    let end = start + fb.values.len() * chunks;
    // The entries are appended, not zeroed and then overwritten, where
    // they come in order (the zeroing was 2.7 % of a single-valued lookup).
    if let [seed] = layout.seeds[..] {
        match &fb.values {
            Values::Int64(ints) => push_int_hashes(ints, seed, &mut gather.rows),
            _ => gather
                .rows
                .extend(keys.clone().map(|key| hash_key(key, seed))),
        }
    } else {
        gather.rows.resize(end, 0);
        for (j, &seed) in layout.seeds.iter().enumerate() {
            let rows = gather.rows[start..end].iter_mut().skip(j).step_by(chunks);
            for (row, key) in rows.zip(keys.clone()) {
                *row = hash_key(key, seed);
            }
        }
    }
    let rows = &mut gather.rows[start..end];
    if let Some(hashes) = value_hashes {
        hashes.extend(rows.iter().step_by(chunks));
    }
    for row in rows.iter_mut() {
        *row = layout.span.row(*row);
    }

    let unweighted_chunk = chunks == 1 && fb.weights.is_none();
    if unweighted_chunk && layout.single_valued {
        // Single-valued (the commonest feature): entry i is slot i of
        // the block, weighted by a bag of one's scale. Two plain fills
        // instead of the general loop below (a third of planning). The
        // layout keeps every slot below 2^32.
        let first = layout.first_slot as u32;
        gather.slots.extend(first..first + fb.values.len() as u32);
        let scale = layout.pooling.scale(1);
        gather
            .weights
            .extend(std::iter::repeat_n(scale, fb.values.len()));
        return;
    }
    gather.slots.resize(end, 0);
    gather.weights.resize(end, 0.0);
    let slots = &mut gather.slots[start..end];
    let weights = &mut gather.weights[start..end];
    let mut entry = 0;
    let mut value = 0;
    for (example, &len) in fb.lengths.iter().enumerate() {
        let scale = layout.pooling.scale(len as usize);
        if unweighted_chunk && layout.pooling != Pooling::None {
            // A pooled bag: its values share one slot and one weight.
            let bag = entry..entry + len as usize;
            slots[bag.clone()].fill((layout.first_slot + example) as u32);
            weights[bag].fill(scale);
            entry += len as usize;
            value += len as usize;
            continue;
        }
        for _ in 0..len {
            let weight = fb.weights.as_ref().map_or(scale, |w| scale * w[value]);
            let out_row = if layout.pooling == Pooling::None {
                value
            } else {
                example
            };
            let first = layout.first_slot + out_row * chunks;
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

/// How many entries ahead [`BatchPlan::row_gradients`] prefetches.
const PREFETCH_AHEAD: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;
    use crate::batch::Batch;
    use crate::fanout::test_pool::threads;
    use crate::schema::{FeatureSpec, TableSpec};
    use crate::table::Table;

    fn entry(row: u64) -> SummedEntry {
        SummedEntry {
            row,
            weight: 1.0,
            block: 0,
            offset: 0,
        }
    }

    /// A lookup large enough to be hashed and pooled in pieces answers
    /// on four threads what it answers on one: single values (a
    /// multi-chunk feature whose one bag of two puts its entries out of
    /// slot order included) and bags.
    #[test]
    fn lookups_planned_and_pooled_in_pieces_equal_serial_lookups() {
        let table = Table::create(TableSpec::new("t", 30_000, 16), BackendKind::Cpu).unwrap();
        let examples = 4096usize;
        let mut features = Vec::new();
        for f in 0..10 {
            let name = format!("f{f}");
            table
                .add_feature(FeatureSpec::new(&name).chunks(1 + f % 2))
                .unwrap();
            let values = (0..examples).map(|e| format!("v{}", (e * 7 + f as usize * 13) % 50_000));
            features.push(FeatureBatch::strings(&name, values, vec![1; examples]));
        }
        table.add_feature(FeatureSpec::new("m").chunks(2)).unwrap();
        let mut lengths = vec![0; examples];
        lengths[3] = 2;
        features.insert(4, FeatureBatch::strings("m", ["a", "b"], lengths));
        let batch = Batch::new(features);
        // Bags of three: entries outnumber slots, pooled feature by feature.
        let bags = Batch::new(
            (0..10)
                .map(|f| {
                    let values = (0..3 * examples).map(|v| format!("b{}", (v * 11 + f) % 50_000));
                    FeatureBatch::strings(format!("f{f}"), values, vec![3; examples])
                })
                .collect(),
        );
        let serial = (table.lookup(&batch).unwrap(), table.lookup(&bags).unwrap());
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    fanout::install(threads(3));
                    let layout = table.layout(&batch, usize::MAX).unwrap();
                    assert!(!layout.sums_entries());
                    assert!(layout.feature_cuts(4).len() > 2, "cut into pieces");
                    assert_eq!(table.lookup(&batch).unwrap(), serial.0);
                    assert!(table.layout(&bags, usize::MAX).unwrap().sums_entries());
                    assert_eq!(table.lookup(&bags).unwrap(), serial.1);
                })
                .join()
                .unwrap();
        });
    }

    #[test]
    fn cuts_fall_between_rows_and_cover_every_entry() {
        let rows = [1u64, 1, 1, 2, 3, 3, 3, 3, 3, 3, 4, 5, 5, 6];
        let entries: Vec<SummedEntry> = rows.iter().map(|&r| entry(r)).collect();
        for pieces in 1..=20 {
            let (unique, cuts) = rows_and_cuts(&entries, pieces);
            assert_eq!(unique, [1, 2, 3, 4, 5, 6]);
            assert!(cuts.len() >= 2 && cuts.len() <= pieces + 1, "{pieces}");
            assert_eq!((cuts[0].entry, cuts[0].row), (0, 0));
            let last = cuts.last().unwrap();
            assert_eq!((last.entry, last.row), (entries.len(), unique.len()));
            for pair in cuts.windows(2) {
                assert!(pair[0].entry < pair[1].entry, "{pieces}: an empty piece");
                let at = pair[1].entry;
                if at < entries.len() {
                    assert_ne!(rows[at - 1], rows[at], "{pieces}: a row cut in two");
                    assert_eq!(unique[pair[1].row], rows[at]);
                }
            }
        }
        // One row throughout: one piece, however many are asked for.
        let same: Vec<SummedEntry> = (0..100).map(|_| entry(7)).collect();
        assert_eq!(rows_and_cuts(&same, 4).1.len(), 2);
        assert_eq!(rows_and_cuts(&[], 4).1.len(), 2);
    }

    /// A push large enough to be cut into pieces sums to the same bits on
    /// four threads as on one (each row's sum is one piece's, in entry
    /// order), and a NaN in any piece is refused by name either way.
    #[test]
    fn row_gradients_summed_in_pieces_equal_the_serial_sums() {
        let table = Table::create(TableSpec::new("t", 3_000, 8), BackendKind::Cpu).unwrap();
        let examples = 4096;
        let mut features = Vec::new();
        for f in 0..12 {
            let name = format!("f{f}");
            table.add_feature(FeatureSpec::new(&name)).unwrap();
            let values = (0..examples).map(|e| format!("v{}", (e * 7 + f * 13) % 5_000));
            features.push(FeatureBatch::strings(&name, values, vec![1; examples]));
        }
        let plan = table.plan(&Batch::new(features)).unwrap();
        assert!(plan.gather.rows.len() >= 3 * MIN_ENTRIES_PER_PIECE);
        let grads: Vec<Vec<f32>> = plan
            .outputs
            .iter()
            .map(|o| {
                (0..o.rows * o.width)
                    .map(|i| ((i * 31 % 1009) as f32 - 504.0) * 1e-3)
                    .collect()
            })
            .collect();
        let mut nan = grads.clone();
        nan[5][77] = f32::NAN;
        let serial = plan.row_gradients(&grads).unwrap();
        let refused = plan.row_gradients(&nan).unwrap_err().to_string();
        assert!(refused.contains("`f5`"), "{refused}");
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    fanout::install(threads(3));
                    assert_eq!(plan.row_gradients(&grads).unwrap(), serial);
                    assert_eq!(plan.row_gradients(&nan).unwrap_err().to_string(), refused);
                })
                .join()
                .unwrap();
        });
    }
}
