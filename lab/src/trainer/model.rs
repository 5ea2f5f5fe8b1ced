//! The dense part of the model: an MLP over the concatenated embeddings,
//! trained with Adam, written with candle-nn.
//!
//! The embeddings are inputs here, not parameters: they come from featmux
//! (looked up with a ticket), and the gradient of the loss with respect to
//! them is what goes back to featmux, where the sparse optimizer runs.

use anyhow::Context;
use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Linear, Module, Optimizer, ParamsAdamW};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// ReLU MLP `input → hidden… → 1` (a logit) and its Adam state.
pub struct Mlp {
    layers: Vec<Linear>,
    optimizer: AdamW,
}

fn error(e: candle_core::Error) -> anyhow::Error {
    anyhow::anyhow!("model: {e}")
}

impl Mlp {
    /// Weights uniform in ±1/√fan_in from `seed` (candle's CPU generator
    /// cannot be seeded, so runs would not repeat); trained by Adam with
    /// `adam` (weight decay 0: plain Adam).
    pub fn new(
        input: usize,
        hidden: &[usize],
        adam: ParamsAdamW,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut layers = Vec::new();
        let mut vars = Vec::new();
        let mut fan_in = input;
        for &out in hidden.iter().chain(&[1]) {
            let bound = 1.0 / (fan_in as f32).sqrt();
            let mut uniform = |n: usize| -> Vec<f32> {
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            };
            let w =
                Var::from_vec(uniform(out * fan_in), (out, fan_in), &Device::Cpu).map_err(error)?;
            let b = Var::from_vec(uniform(out), out, &Device::Cpu).map_err(error)?;
            layers.push(Linear::new(
                w.as_tensor().clone(),
                Some(b.as_tensor().clone()),
            ));
            vars.extend([w, b]);
            fan_in = out;
        }
        Ok(Mlp {
            layers,
            optimizer: AdamW::new(vars, adam).map_err(error)?,
        })
    }

    fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if i + 1 < self.layers.len() {
                h = h.relu()?;
            }
        }
        h.squeeze(1)
    }

    /// One step on a batch (`inputs` row-major `[labels.len(), input]`):
    /// the loss summed over the batch, Adam on the dense weights, and the
    /// loss's gradient with respect to the inputs (same layout).
    pub fn train_step(
        &mut self,
        inputs: Vec<f32>,
        labels: &[f32],
    ) -> anyhow::Result<(f32, Vec<f32>)> {
        let n = labels.len();
        let width = inputs.len() / n.max(1);
        let x = Var::from_vec(inputs, (n, width), &Device::Cpu).map_err(error)?;
        let y = Tensor::from_slice(labels, n, &Device::Cpu).map_err(error)?;
        let loss = self
            .logits(x.as_tensor())
            .and_then(|z| bce_with_logits_sum(&z, &y))
            .map_err(error)?;
        let grads = loss.backward().map_err(error)?;
        self.optimizer.step(&grads).map_err(error)?;
        let input_grad = grads
            .get(x.as_tensor())
            .context("model: no gradient for the inputs")?
            .flatten_all()
            .and_then(|g| g.to_vec1::<f32>())
            .map_err(error)?;
        let loss = loss.to_scalar::<f32>().map_err(error)?;
        Ok((loss, input_grad))
    }

    /// Probabilities for `inputs` (row-major, `n` rows).
    pub fn predict(&self, inputs: Vec<f32>, n: usize) -> anyhow::Result<Vec<f32>> {
        let width = inputs.len() / n.max(1);
        let x = Tensor::from_vec(inputs, (n, width), &Device::Cpu).map_err(error)?;
        self.logits(&x)
            .and_then(|z| candle_nn::ops::sigmoid(&z))
            .and_then(|p| p.to_vec1::<f32>())
            .map_err(error)
    }
}

/// Σ binary cross-entropy of logits `z` against labels `y`, in the stable
/// form max(z, 0) − z·y + ln(1 + e^−|z|).
fn bce_with_logits_sum(z: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let softplus = (z.abs()?.neg()?.exp()? + 1.0)?.log()?;
    ((z.relu()? - (z * y)?)? + softplus)?.sum_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loss_is_cross_entropy_and_training_lowers_it() {
        let z = Tensor::new(&[2.0f32, -1.0, 0.0], &Device::Cpu).unwrap();
        let y = Tensor::new(&[1.0f32, 1.0, 0.0], &Device::Cpu).unwrap();
        let loss = bce_with_logits_sum(&z, &y)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let s = |x: f32| 1.0 / (1.0 + (-x).exp());
        let expected = -(s(2.0).ln() + s(-1.0).ln() + (1.0 - s(0.0)).ln());
        assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");

        // Label = sign of the first input: a few hundred Adam steps learn it,
        // and the input gradient has the input's shape.
        let adam = ParamsAdamW {
            lr: 0.05,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        };
        let mut mlp = Mlp::new(2, &[8], adam, 3).unwrap();
        let inputs: Vec<f32> = (0..64).flat_map(|i| [i as f32 / 32.0 - 1.0, 0.5]).collect();
        let labels: Vec<f32> = (0..64).map(|i| f32::from(u8::from(i >= 32))).collect();
        let (first, grad) = mlp.train_step(inputs.clone(), &labels).unwrap();
        assert_eq!(grad.len(), inputs.len());
        let mut last = first;
        for _ in 0..300 {
            last = mlp.train_step(inputs.clone(), &labels).unwrap().0;
        }
        assert!(last < first * 0.3, "loss {first} -> {last}");
        let p = mlp.predict(vec![-0.9, 0.5, 0.9, 0.5], 2).unwrap();
        assert!(p[0] < 0.2 && p[1] > 0.8, "{p:?}");
    }
}
