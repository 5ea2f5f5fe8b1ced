//! A stable least-significant-digit radix sort on integer keys.
//!
//! A push sorts every gather entry of its batch by row (10^5 entries for a
//! batch of 4,096 × 26). As a comparison sort this was 4 % of all CPU
//! samples of the push bench (8 % of the engine threads') and 6 % of the
//! train stream's (perf). Rows are bounded by the table's size, so two or
//! three passes over 11-bit digits order them, each pass a count and a
//! scatter in sequence.

/// Bits per digit: 2,048 counters fit in L1 beside the data streaming by.
const DIGIT_BITS: u32 = 11;

/// Below this many items a comparison sort is faster than the passes'
/// fixed cost of clearing and summing the counters.
const SMALL: usize = 256;

/// Sorts `items` by `key`, keeping items with equal keys in their input
/// order (as `slice::sort_by_key` does).
pub(crate) fn sort_stable_by_key<T: Copy>(mut items: Vec<T>, key: impl Fn(&T) -> u64) -> Vec<T> {
    if items.len() < SMALL {
        items.sort_by_key(&key);
        return items;
    }
    let max = items.iter().map(&key).max().unwrap_or(0);
    let bits = u64::BITS - max.leading_zeros();
    let mut scratch = items.clone();
    let mut counts = vec![0usize; 1 << DIGIT_BITS];
    let mask = (1u64 << DIGIT_BITS) - 1;
    let mut shift = 0;
    while shift < bits {
        let digit = |item: &T| ((key(item) >> shift) & mask) as usize;
        counts.fill(0);
        for item in &items {
            counts[digit(item)] += 1;
        }
        // Counts become each digit's first position.
        let mut next = 0;
        for count in counts.iter_mut() {
            let here = *count;
            *count = next;
            next += here;
        }
        for item in &items {
            let d = digit(item);
            scratch[counts[d]] = *item;
            counts[d] += 1;
        }
        std::mem::swap(&mut items, &mut scratch);
        shift += DIGIT_BITS;
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic stream of pseudo-random numbers (xorshift).
    fn numbers(seed: u64, n: usize) -> Vec<u64> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            })
            .collect()
    }

    /// Same order as the standard library's stable sort, ties included:
    /// each item is (key, its input position), keys drawn from a range
    /// small enough for many ties.
    fn agrees_with_std(keys: &[u64]) {
        let items: Vec<(u64, usize)> = keys.iter().copied().zip(0..).collect();
        let mut expected = items.clone();
        expected.sort_by_key(|x| x.0);
        assert_eq!(sort_stable_by_key(items, |x| x.0), expected);
    }

    #[test]
    fn orders_like_a_stable_sort_below_and_above_the_small_cutoff() {
        for n in [0, 1, 2, SMALL - 1, SMALL, 10_000] {
            // Rows of a 10^6-row table (two digits), with many ties.
            agrees_with_std(&numbers(7, n).iter().map(|x| x % 1_000).collect::<Vec<_>>());
            agrees_with_std(
                &numbers(9, n)
                    .iter()
                    .map(|x| x % 1_000_000)
                    .collect::<Vec<_>>(),
            );
        }
    }

    #[test]
    fn keys_of_every_width_are_ordered() {
        // Full 64-bit keys take six passes, the last over 9 bits.
        agrees_with_std(&numbers(11, 5_000));
        agrees_with_std(&[u64::MAX; 300]);
        agrees_with_std(&(0..300).rev().collect::<Vec<u64>>());
        let zeros_and_max: Vec<u64> = (0..1_000)
            .map(|i| if i % 3 == 0 { u64::MAX } else { 0 })
            .collect();
        agrees_with_std(&zeros_and_max);
    }
}
