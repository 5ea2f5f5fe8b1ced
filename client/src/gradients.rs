//! A push's gradients in wire form, copied only where they must be.
//!
//! A push carries megabytes of gradients (6.8 MB for 4,096 examples × 26
//! features × 16 floats). Copying them into the message took 28 % of a
//! pushing client's CPU (docs/results/profile.md, section 29). Sent as
//! f32 on a little-endian machine, a block's bytes are the vector's own
//! memory, so gradients the caller hands over ([`Vec<Vec<f32>>`]) or shares
//! ([`SharedGradients`]) go out from where they are. Borrowed blocks
//! (`&[Vec<f32>]`) are copied once, as are blocks sent as 16-bit floats,
//! which need a conversion anyway.

use std::sync::Arc;

use bytes::Bytes;
use featmux_proto::{payload, precision};

use crate::pb;

/// Gradient blocks a push can send: one block per batch feature, in batch
/// order.
pub trait IntoGradients {
    /// The blocks in wire form, each float in `precision` (names left
    /// empty: order is what counts).
    fn into_gradients(self, precision: pb::Precision) -> Vec<pb::Gradient>;
}

/// Borrowed blocks: each copied into the message.
impl<T: AsRef<[Vec<f32>]> + ?Sized> IntoGradients for &T {
    fn into_gradients(self, precision: pb::Precision) -> Vec<pb::Gradient> {
        wire(
            self.as_ref()
                .iter()
                .map(|block| precision::encode_slice(block, precision)),
        )
    }
}

/// Blocks the caller is done with: sent from their own memory as f32.
impl IntoGradients for Vec<Vec<f32>> {
    fn into_gradients(self, precision: pb::Precision) -> Vec<pb::Gradient> {
        wire(self.into_iter().map(|block| match precision {
            pb::Precision::F32 => payload::encode_owned(block),
            _ => precision::encode_slice(&block, precision),
        }))
    }
}

/// Gradient blocks to push more than once (the same gradients to several
/// tables, or a benchmark's prepared batches): clones share the floats,
/// and each push sends them from where they are as f32.
#[derive(Debug, Clone)]
pub struct SharedGradients(Arc<[Vec<f32>]>);

impl SharedGradients {
    /// The blocks, in batch order.
    pub fn blocks(&self) -> &[Vec<f32>] {
        &self.0
    }
}

impl From<Vec<Vec<f32>>> for SharedGradients {
    /// Moves the blocks in; their floats are not copied.
    fn from(blocks: Vec<Vec<f32>>) -> Self {
        SharedGradients(blocks.into())
    }
}

impl IntoGradients for &SharedGradients {
    fn into_gradients(self, precision: pb::Precision) -> Vec<pb::Gradient> {
        wire((0..self.0.len()).map(|index| {
            if precision == pb::Precision::F32 && cfg!(target_endian = "little") {
                Bytes::from_owner(SharedBlock {
                    blocks: self.0.clone(),
                    index,
                })
            } else {
                precision::encode_slice(&self.0[index], precision)
            }
        }))
    }
}

/// One block of shared gradients, viewed as its in-memory bytes (the
/// wire's little-endian f32 where the machine is little-endian).
struct SharedBlock {
    blocks: Arc<[Vec<f32>]>,
    index: usize,
}

impl AsRef<[u8]> for SharedBlock {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.blocks[self.index])
    }
}

fn wire(payloads: impl Iterator<Item = Bytes>) -> Vec<pb::Gradient> {
    payloads
        .map(|data| pb::Gradient {
            feature: String::new(),
            data,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks() -> Vec<Vec<f32>> {
        vec![
            (0..48).map(|i| i as f32 * 0.37 - 3.0).collect(),
            vec![],
            (0..16).map(|i| 1.0 / (i as f32 + 1.0)).collect(),
        ]
    }

    fn payloads(gradients: Vec<pb::Gradient>) -> Vec<Bytes> {
        gradients.into_iter().map(|g| g.data).collect()
    }

    #[test]
    fn every_form_sends_the_bytes_the_borrowed_blocks_send() {
        for precision in [pb::Precision::F32, pb::Precision::F16, pb::Precision::Bf16] {
            let borrowed = payloads(blocks().as_slice().into_gradients(precision));
            let expected: Vec<Bytes> = blocks()
                .iter()
                .map(|b| precision::encode_slice(b, precision))
                .collect();
            assert_eq!(borrowed, expected, "{precision:?}");
            assert_eq!(
                payloads(blocks().into_gradients(precision)),
                expected,
                "owned, {precision:?}"
            );
            let shared = SharedGradients::from(blocks());
            assert_eq!(
                payloads((&shared).into_gradients(precision)),
                expected,
                "shared, {precision:?}"
            );
            // Sent twice, the same bytes again.
            assert_eq!(payloads((&shared).into_gradients(precision)), expected);
        }
    }

    #[test]
    fn owned_and_shared_f32_blocks_are_sent_from_their_own_memory() {
        if cfg!(target_endian = "big") {
            return;
        }
        let owned = blocks();
        let at: Vec<*const u8> = owned.iter().map(|b| b.as_ptr().cast()).collect();
        let sent = payloads(owned.into_gradients(pb::Precision::F32));
        assert_eq!(at[0], sent[0].as_ptr(), "an owned block was copied");
        assert_eq!(at[2], sent[2].as_ptr(), "an owned block was copied");

        let shared = SharedGradients::from(blocks());
        for _ in 0..2 {
            let sent = payloads((&shared).into_gradients(pb::Precision::F32));
            for (block, bytes) in shared.blocks().iter().zip(&sent) {
                if !block.is_empty() {
                    assert_eq!(
                        block.as_ptr().cast(),
                        bytes.as_ptr(),
                        "a shared block was copied"
                    );
                }
            }
        }
    }
}
