//! How the features share the table's rows: the methods the MovieLens
//! experiment compares, at the same memory budget.
//!
//! - `unified`: every feature `shared` over all rows (Unified Embedding);
//! - `capped`: the hashing trick as practitioners configure it: each feature
//!   gets its own slice of min(vocabulary, t) rows, t chosen so the slices
//!   fill the budget (small features keep a full table);
//! - `proportional`: slices proportional to vocabulary (at least one row);
//! - `collisionless`: a slice of 10× its vocabulary per feature (hash
//!   collisions become rare; the budget is ignored).

use clap::ValueEnum;

/// A table layout method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Layout {
    Unified,
    Capped,
    Proportional,
    Collisionless,
}

/// Rows of the table and, per feature, its private slice (`None`: shared).
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub rows: u64,
    pub slices: Vec<Option<u64>>,
}

/// Places features with `vocabulary` sizes in a table of `budget` rows.
pub fn place(layout: Layout, vocabulary: &[usize], budget: u64) -> anyhow::Result<Placement> {
    let n = vocabulary.len() as u64;
    if n == 0 {
        return Err(anyhow::anyhow!("no features to place"));
    }
    let vocab: Vec<u64> = vocabulary.iter().map(|&v| v.max(1) as u64).collect();
    if layout != Layout::Collisionless && budget < n {
        return Err(anyhow::anyhow!(
            "a budget of {budget} rows cannot give each of {n} features a row"
        ));
    }
    let slices: Vec<u64> = match layout {
        Layout::Unified => {
            return Ok(Placement {
                rows: budget,
                slices: vec![None; vocab.len()],
            })
        }
        Layout::Collisionless => vocab.iter().map(|v| v * 10).collect(),
        Layout::Proportional => {
            let total: u64 = vocab.iter().sum();
            let mut slices: Vec<u64> = vocab
                .iter()
                .map(|&v| ((budget as u128 * v as u128 / total as u128) as u64).max(1))
                .collect();
            // The max(1) floors may overshoot: take the excess from the largest.
            while slices.iter().sum::<u64>() > budget {
                let largest = (0..slices.len())
                    .max_by_key(|&i| slices[i])
                    .expect("features");
                slices[largest] -= 1;
            }
            slices
        }
        Layout::Capped => {
            // Largest cap t with Σ min(v, t) ≤ budget (binary search).
            let (mut lo, mut hi) = (1u64, *vocab.iter().max().expect("features"));
            let used = |t: u64| vocab.iter().map(|&v| v.min(t)).sum::<u64>();
            if used(hi) <= budget {
                lo = hi;
            }
            while lo < hi {
                let mid = lo + (hi - lo).div_ceil(2);
                if used(mid) <= budget {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            vocab.iter().map(|&v| v.min(lo)).collect()
        }
    };
    Ok(Placement {
        rows: slices.iter().sum(),
        slices: slices.into_iter().map(Some).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_fill_the_budget_their_way() {
        let vocab = [943, 1682, 2, 21];
        let unified = place(Layout::Unified, &vocab, 500).unwrap();
        assert_eq!(
            unified,
            Placement {
                rows: 500,
                slices: vec![None; 4]
            }
        );

        // Cap t = 238: 238 + 238 + 2 + 21 = 499 ≤ 500 < 239·2 + 23.
        let capped = place(Layout::Capped, &vocab, 500).unwrap();
        assert_eq!(capped.slices, [Some(238), Some(238), Some(2), Some(21)]);
        assert_eq!(capped.rows, 499);
        // A budget above the total vocabulary keeps every feature whole.
        let roomy = place(Layout::Capped, &vocab, 10_000).unwrap();
        assert_eq!(roomy.slices, [Some(943), Some(1682), Some(2), Some(21)]);

        let proportional = place(Layout::Proportional, &vocab, 500).unwrap();
        assert_eq!(
            proportional.slices,
            [Some(178), Some(317), Some(1), Some(3)]
        );
        assert!(proportional.rows <= 500);

        let collisionless = place(Layout::Collisionless, &vocab, 1).unwrap();
        assert_eq!(collisionless.rows, 26_480);

        assert!(place(Layout::Capped, &vocab, 3)
            .unwrap_err()
            .to_string()
            .contains("4 features"));
    }
}
