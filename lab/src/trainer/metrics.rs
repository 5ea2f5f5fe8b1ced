//! Evaluation metrics of a binary classifier: ROC AUC and log loss.

/// Area under the ROC curve: the probability that a random positive scores
/// above a random negative (ties count one half), via the rank-sum
/// (Mann–Whitney) formula with average ranks for tied scores. `None` when
/// one of the two classes is absent.
pub fn auc(labels: &[f32], scores: &[f32]) -> Option<f64> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let positives = labels.iter().filter(|&&l| l > 0.5).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        // Ranks i+1 ..= j+1 share their average.
        let rank = (i + j + 2) as f64 / 2.0;
        rank_sum += rank * order[i..=j].iter().filter(|&&k| labels[k] > 0.5).count() as f64;
        i = j + 1;
    }
    let (p, n) = (positives as f64, negatives as f64);
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

/// Mean binary cross-entropy of probabilities (clamped away from 0 and 1).
pub fn log_loss(labels: &[f32], probabilities: &[f32]) -> f64 {
    let eps = 1e-7;
    let total: f64 = labels
        .iter()
        .zip(probabilities)
        .map(|(&y, &p)| {
            let p = (p as f64).clamp(eps, 1.0 - eps);
            -(y as f64 * p.ln() + (1.0 - y as f64) * (1.0 - p).ln())
        })
        .sum();
    total / labels.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_ordered_pairs_and_half_ties() {
        assert_eq!(auc(&[0.0, 0.0, 1.0, 1.0], &[0.1, 0.2, 0.3, 0.4]), Some(1.0));
        assert_eq!(auc(&[1.0, 1.0, 0.0, 0.0], &[0.1, 0.2, 0.3, 0.4]), Some(0.0));
        // One pair of four misordered: 3/4.
        assert_eq!(
            auc(&[0.0, 1.0, 0.0, 1.0], &[0.1, 0.2, 0.3, 0.4]),
            Some(0.75)
        );
        // All tied: 1/2.
        assert_eq!(auc(&[0.0, 1.0, 1.0], &[0.5, 0.5, 0.5]), Some(0.5));
        assert_eq!(auc(&[1.0, 1.0], &[0.1, 0.2]), None);
    }

    #[test]
    fn log_loss_is_cross_entropy() {
        let l = log_loss(&[1.0, 0.0], &[0.8, 0.4]);
        let expected = -(0.8f64.ln() + 0.6f64.ln()) / 2.0;
        assert!((l - expected).abs() < 1e-6);
        assert!(log_loss(&[1.0], &[0.0]).is_finite());
    }
}
