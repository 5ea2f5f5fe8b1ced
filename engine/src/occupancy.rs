//! How crowded a shared table is: distinct values seen, rows they occupy,
//! collisions against what uniform hashing predicts, and how much of each
//! feature's traffic lands on rows another feature also uses.
//!
//! Why: with feature multiplexing every feature hashes into the same rows,
//! and the table's size (rows) is the knob that trades memory for quality
//! (Coleman et al., 2023). These numbers say where a table sits on that
//! curve while it trains, which no other embedding store reports.
//!
//! What is kept, per table (updated with relaxed atomics by every planned
//! batch; never locked):
//!
//! - per row, in one 32-bit word (one memory access per entry):
//!   - the feature that uses it (or "several"); the count of occupied rows
//!     and each feature's traffic on shared rows are exact (traffic is
//!     counted when it happens, so early traffic saw an emptier table);
//!   - a 16-bit linear-counting bitmap of the (value, chunk) items hashed
//!     to it; a row's item count is exact for one item and biased low when
//!     two items pick the same bit (1 in 16 for two);
//! - per feature, two HyperLogLog sketches of 2^14 registers (16 KiB
//!   each): distinct values and distinct rows, each with a relative
//!   standard error of 1.04/√2^14 ≈ 0.81 %.
//!
//! Collision rate here means the share of items that did not get a row of
//! their own: `1 − rows / items`; uniform hashing of `n` items into `m`
//! rows predicts `1 − m(1 − (1 − 1/m)^n) / n`.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};

use parking_lot::RwLock;
use serde::Serialize;

use crate::batch::Batch;
use crate::plan::BatchPlan;
use crate::registry::{Feature, FeatureRegistry};
use crate::schema::TableSpec;

/// HyperLogLog precision: 2^14 registers.
const HLL_BITS: u32 = 14;
/// The sketches' relative standard error, 1.04 / √(2^14).
pub const SKETCH_RELATIVE_ERROR: f64 = 0.008125;
/// How many entries ahead observation prefetches a row's word.
const PREFETCH_AHEAD: usize = 16;
/// Batches observed by default: one in 16. Observing a batch costs about
/// as much as gathering it (two sketch updates and a row word per entry);
/// one in 16 keeps that to 5–6 % of an in-process lookup's samples
/// (docs/results/profile.md, section 13), and traffic shares stay
/// unbiased. Exact checks (tests, `featmux train --check-occupancy`) set 1.
pub const DEFAULT_SAMPLE_EVERY: u32 = 16;
/// The owner of a row no feature has used.
const EMPTY: u16 = 0;
/// The owner of a row two or more features use.
const SHARED: u16 = u16::MAX;

/// Finalizer of splitmix64: spreads a row number (or re-spreads a value
/// hash) over 64 bits for the sketches.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

/// A HyperLogLog sketch of distinct 64-bit hashes.
struct Sketch {
    registers: Box<[AtomicU8]>,
}

impl Sketch {
    fn new() -> Self {
        Sketch {
            registers: (0..1usize << HLL_BITS).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    fn add(&self, hash: u64) {
        let index = (hash >> (64 - HLL_BITS)) as usize;
        let rest = (hash << HLL_BITS) | (1 << (HLL_BITS - 1));
        let rank = rest.leading_zeros() as u8 + 1;
        // Reads first: once warm, almost no hash raises its register, and a
        // plain load costs a fraction of an atomic read-modify-write.
        let register = &self.registers[index];
        if register.load(Relaxed) < rank {
            register.fetch_max(rank, Relaxed);
        }
    }

    /// The estimate over the register-wise maximum of `sketches` (their
    /// union).
    fn estimate_union<'a>(sketches: impl Iterator<Item = &'a Sketch> + Clone) -> f64 {
        let m = (1usize << HLL_BITS) as f64;
        let (mut sum, mut zeros) = (0.0f64, 0usize);
        for i in 0..1usize << HLL_BITS {
            let r = sketches
                .clone()
                .map(|s| s.registers[i].load(Relaxed))
                .max()
                .unwrap_or(0);
            sum += (-(r as f64)).exp2();
            zeros += (r == 0) as usize;
        }
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let raw = alpha * m * m / sum;
        if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln() // linear counting: exact-er when sparse
        } else {
            raw
        }
    }

    fn estimate(&self) -> f64 {
        Self::estimate_union(std::iter::once(self))
    }
}

/// What one feature's traffic has shown.
struct FeatureCounts {
    values: Sketch,
    rows: Sketch,
    entries: AtomicU64,
    shared_entries: AtomicU64,
}

impl FeatureCounts {
    fn new() -> Self {
        FeatureCounts {
            values: Sketch::new(),
            rows: Sketch::new(),
            entries: AtomicU64::new(0),
            shared_entries: AtomicU64::new(0),
        }
    }
}

/// One table's occupancy statistics (see the module doc).
pub struct Occupancy {
    /// Per row: owner in the low 16 bits, item bitmap in the high 16.
    rows: Box<[AtomicU32]>,
    occupied: AtomicU64,
    shared: AtomicU64,
    /// Indexed like the registry's features (registration order).
    features: RwLock<Vec<FeatureCounts>>,
    /// Batches observed.
    batches: AtomicU64,
    /// Batches planned, observed or not.
    planned: AtomicU64,
    /// Observe one batch in this many (0: none).
    sample_every: AtomicU32,
}

/// One feature's statistics.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FeatureOccupancy {
    pub feature: String,
    /// Rows its values hash into (the table, or its private slice).
    pub span_rows: u64,
    /// Distinct values seen (sketch).
    pub distinct_values: f64,
    /// Distinct (value, chunk) items: values × chunks.
    pub items: f64,
    /// Distinct rows its items occupy (sketch).
    pub rows: f64,
    /// `1 − rows / items`, and what uniform hashing into its span predicts.
    pub collision_rate: f64,
    pub expected_collision_rate: f64,
    /// (value, chunk) entries looked up or pushed.
    pub entries: u64,
    /// Of those, entries whose row another feature had used before them.
    pub entries_on_shared_rows: u64,
    /// `entries_on_shared_rows / entries`: how much of this feature's
    /// traffic shares its rows with other features.
    pub shared_traffic: f64,
}

/// A table's statistics.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OccupancyReport {
    pub rows: u64,
    /// Rows any item hashed to (exact).
    pub occupied_rows: u64,
    /// Rows two or more features use (exact).
    pub shared_rows: u64,
    /// Distinct (feature, value) pairs seen (sketch).
    pub distinct_values: f64,
    /// Distinct (feature, value, chunk) items.
    pub items: f64,
    /// Occupied rows uniform hashing predicts for these items.
    pub expected_occupied_rows: f64,
    pub collision_rate: f64,
    pub expected_collision_rate: f64,
    /// `items_per_row[k]`: rows holding `k` items (estimated per row; the
    /// last bucket counts 8 or more).
    pub items_per_row: Vec<u64>,
    /// The sketches' relative standard error.
    pub relative_error: f64,
    pub batches: u64,
    /// One planned batch in this many is observed (0: none).
    pub sample_every: u32,
    /// Memory these statistics take.
    pub bytes: u64,
    pub features: Vec<FeatureOccupancy>,
}

/// `1 − rows / items` (0 with no items).
fn collision_rate(rows: f64, items: f64) -> f64 {
    if items <= 0.0 {
        0.0
    } else {
        (1.0 - rows / items).max(0.0)
    }
}

/// Rows of `m` that `n` uniformly hashed items leave empty, as a fraction.
fn empty_fraction(m: u64, n: f64) -> f64 {
    // No items leave every row empty (and 0 × ln 0 would be NaN for m = 1).
    if m == 0 || n <= 0.0 {
        return 1.0;
    }
    (n * (-1.0 / m as f64).ln_1p()).exp()
}

/// Items a row's 16-bit bitmap with `bits` set stands for (linear
/// counting), rounded.
fn items_of_bits(bits: u32) -> usize {
    match bits {
        0 => 0,
        16 => usize::MAX,
        b => ((1.0 - b as f64 / 16.0).ln() / (15.0f64 / 16.0).ln()).round() as usize,
    }
}

/// Buckets of the items-per-row histogram: 0, 1, …, 7, and 8 or more.
const HISTOGRAM_BUCKETS: usize = 9;

impl Occupancy {
    /// Statistics for a table of `rows` rows.
    pub fn new(rows: u64) -> Self {
        Occupancy {
            rows: (0..rows).map(|_| AtomicU32::new(0)).collect(),
            occupied: AtomicU64::new(0),
            shared: AtomicU64::new(0),
            features: RwLock::new(Vec::new()),
            batches: AtomicU64::new(0),
            planned: AtomicU64::new(0),
            sample_every: AtomicU32::new(DEFAULT_SAMPLE_EVERY),
        }
    }

    /// Observes one planned batch in `n` (0: stops observing). Sampling
    /// batches keeps traffic shares unbiased; distinct counts then cover
    /// the values of the observed batches only.
    pub fn sample_every(&self, n: u32) {
        self.sample_every.store(n, Relaxed);
    }

    /// Memory the per-row part of the statistics of a table of `rows` rows
    /// takes (what a memory budget reserves; the sketches add 32 KiB per
    /// feature).
    pub fn memory_bytes(rows: u64) -> Option<u64> {
        rows.checked_mul(4)
    }

    /// Memory these statistics take.
    pub fn bytes(&self) -> u64 {
        let sketches = self.features.read().len() as u64 * 2 * (1 << HLL_BITS);
        self.rows.len() as u64 * 4 + sketches
    }

    /// Whether the next planned batch is to be observed (one in
    /// `sample_every`); counts it either way.
    pub fn wants_batch(&self) -> bool {
        let every = self.sample_every.load(Relaxed) as u64;
        every != 0 && self.planned.fetch_add(1, Relaxed) % every == 0
    }

    /// Records the traffic of `batch`, planned as `plan` with `registry`;
    /// `value_hashes` holds each value's first-chunk hash
    /// ([`BatchPlan::from_layout`]).
    pub fn observe(
        &self,
        registry: &FeatureRegistry,
        batch: &Batch,
        plan: &BatchPlan,
        value_hashes: &[u64],
    ) {
        let features = registry.features();
        if self.features.read().len() < features.len() {
            let mut counts = self.features.write();
            while counts.len() < features.len() {
                counts.push(FeatureCounts::new());
            }
        }
        let counts = self.features.read();
        self.batches.fetch_add(1, Relaxed);
        let all_rows = &plan.gather.rows;
        let mut hashes = value_hashes.iter();
        let mut rows = all_rows.iter().enumerate();
        for fb in &batch.features {
            let Some(index) = features.iter().position(|f| f.name == fb.feature) else {
                return; // planning refused it; nothing was planned
            };
            let (feature, count) = (&features[index], &counts[index]);
            let owner = index.min(SHARED as usize - 2) as u16 + 1;
            let (mut entries, mut shared) = (0u64, 0u64);
            for _ in 0..fb.values.len() {
                let Some(&hash) = hashes.next() else { return };
                // Re-mixed: the row came from this hash's high bits.
                let identity = mix(hash);
                count.values.add(identity);
                for chunk in 0..feature.chunks as u64 {
                    let Some((i, &row)) = rows.next() else { return };
                    if let Some(&ahead) = all_rows.get(i + PREFETCH_AHEAD) {
                        self.prefetch(ahead as usize);
                    }
                    count.rows.add(mix(row));
                    let item_bit = 1u32 << (16 + (mix(identity ^ chunk) & 15));
                    entries += 1;
                    shared += !self.record(row as usize, owner, item_bit) as u64;
                }
            }
            count.entries.fetch_add(entries, Relaxed);
            count.shared_entries.fetch_add(shared, Relaxed);
        }
    }

    /// Asks the CPU to load `row`'s word: batches visit rows at random, and
    /// without a hint issued a few entries ahead each is a cache miss.
    fn prefetch(&self, row: usize) {
        crate::prefetch::prefetch(self.rows.get(row..=row).unwrap_or_default());
    }

    /// Records an item (`item_bit`) of feature `owner` on `row`; returns
    /// whether the row is that feature's alone. Reads first: once the table
    /// is warm almost every entry finds its owner and bit already set, and
    /// a load costs a fraction of an atomic read-modify-write.
    fn record(&self, row: usize, owner: u16, item_bit: u32) -> bool {
        let word = &self.rows[row];
        let mut current = word.load(Relaxed);
        loop {
            let owner_now = current as u16;
            let next_owner = match owner_now {
                EMPTY => owner,
                o if o == owner => owner,
                _ => SHARED,
            };
            let next = (current & 0xffff_0000) | item_bit | next_owner as u32;
            if next == current {
                return next_owner == owner;
            }
            match word.compare_exchange_weak(current, next, Relaxed, Relaxed) {
                Ok(_) => {
                    if owner_now == EMPTY {
                        self.occupied.fetch_add(1, Relaxed);
                    } else if owner_now != SHARED && next_owner == SHARED {
                        self.shared.fetch_add(1, Relaxed);
                    }
                    return next_owner == owner;
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// The statistics now, for the features of `registry`; the
    /// items-per-row histogram reads every row's word.
    pub fn report(&self, table: &TableSpec, registry: &FeatureRegistry) -> OccupancyReport {
        let mut report = self.summary(table, registry);
        report.items_per_row = vec![0u64; HISTOGRAM_BUCKETS];
        for word in self.rows.iter() {
            let bits = (word.load(Relaxed) >> 16).count_ones();
            report.items_per_row[items_of_bits(bits).min(HISTOGRAM_BUCKETS - 1)] += 1;
        }
        report
    }

    /// [`Self::report`] without the histogram (left empty): no pass over
    /// the rows, for frequent readers such as `/metrics`.
    pub fn summary(&self, table: &TableSpec, registry: &FeatureRegistry) -> OccupancyReport {
        let counts = self.features.read();
        let features: Vec<(&Feature, &FeatureCounts)> =
            registry.features().iter().zip(counts.iter()).collect();
        let per_feature: Vec<FeatureOccupancy> = features
            .iter()
            .map(|(feature, count)| {
                let span_rows = feature.span(table.rows).rows;
                let distinct_values = count.values.estimate();
                let items = distinct_values * feature.chunks as f64;
                let rows = count.rows.estimate();
                let expected_rows = span_rows as f64 * (1.0 - empty_fraction(span_rows, items));
                let entries = count.entries.load(Relaxed);
                let entries_on_shared_rows = count.shared_entries.load(Relaxed);
                FeatureOccupancy {
                    feature: feature.name.clone(),
                    span_rows,
                    distinct_values,
                    items,
                    rows,
                    collision_rate: collision_rate(rows, items),
                    expected_collision_rate: collision_rate(expected_rows, items),
                    entries,
                    entries_on_shared_rows,
                    shared_traffic: entries_on_shared_rows as f64 / entries.max(1) as f64,
                }
            })
            .collect();
        let items: f64 = per_feature.iter().map(|f| f.items).sum();
        let expected_occupied_rows = expected_occupied(table.rows, &features, &per_feature);
        let occupied_rows = self.occupied.load(Relaxed);
        OccupancyReport {
            rows: table.rows,
            occupied_rows,
            shared_rows: self.shared.load(Relaxed),
            distinct_values: Sketch::estimate_union(features.iter().map(|(_, c)| &c.values)),
            items,
            expected_occupied_rows,
            collision_rate: collision_rate(occupied_rows as f64, items),
            expected_collision_rate: collision_rate(expected_occupied_rows, items),
            items_per_row: Vec::new(),
            relative_error: SKETCH_RELATIVE_ERROR,
            batches: self.batches.load(Relaxed),
            sample_every: self.sample_every.load(Relaxed),
            bytes: self.bytes(),
            features: per_feature,
        }
    }
}

/// Occupied rows uniform hashing predicts: each row is empty with the
/// product, over the features whose span covers it, of `(1 − 1/m_f)^n_f`.
fn expected_occupied(
    rows: u64,
    features: &[(&Feature, &FeatureCounts)],
    stats: &[FeatureOccupancy],
) -> f64 {
    let spans: Vec<(u64, u64, f64)> = features
        .iter()
        .zip(stats)
        .map(|((feature, _), s)| {
            let span = feature.span(rows);
            (span.offset, span.offset + span.rows, s.items)
        })
        .collect();
    let mut cuts: Vec<u64> = spans.iter().flat_map(|&(a, b, _)| [a, b]).collect();
    cuts.extend([0, rows]);
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2)
        .map(|w| {
            let (start, end) = (w[0], w[1]);
            let empty: f64 = spans
                .iter()
                .filter(|&&(a, b, _)| a <= start && end <= b)
                .map(|&(a, b, n)| empty_fraction(b - a, n))
                .product();
            (end - start) as f64 * (1.0 - empty)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sketch_counts_distinct_hashes_within_its_error() {
        for n in [10u64, 1_000, 50_000, 400_000] {
            let sketch = Sketch::new();
            for i in 0..n {
                sketch.add(mix(i));
                sketch.add(mix(i)); // duplicates change nothing
            }
            let estimate = sketch.estimate();
            let error = (estimate - n as f64).abs() / n as f64;
            assert!(error < 4.0 * SKETCH_RELATIVE_ERROR, "{n}: {estimate}");
        }
    }

    #[test]
    fn the_union_of_sketches_counts_their_union() {
        let (a, b) = (Sketch::new(), Sketch::new());
        for i in 0..30_000u64 {
            a.add(mix(i));
            b.add(mix(i + 20_000));
        }
        let union = Sketch::estimate_union([&a, &b].into_iter());
        assert!((union - 50_000.0).abs() / 50_000.0 < 4.0 * SKETCH_RELATIVE_ERROR);
    }

    #[test]
    fn uniform_hashing_predicts_the_classic_occupancy() {
        // 1000 items into 1000 rows leave 1/e of them empty.
        assert!((empty_fraction(1000, 1000.0) - (-1.0f64).exp()).abs() < 1e-3);
        assert_eq!(items_of_bits(1), 1);
        assert_eq!(items_of_bits(0), 0);
    }

    #[test]
    fn no_items_leave_every_row_empty_even_in_a_one_row_table() {
        // Found by schemathesis: 0 × ln(1 − 1/1) was NaN (JSON null).
        for m in [1, 2, 1000] {
            assert_eq!(empty_fraction(m, 0.0), 1.0);
        }
        assert_eq!(empty_fraction(1, 3.0), 0.0);
    }
}
