//! A lookup's output blocks handed on one at a time, as the gather
//! finishes each.
//!
//! A gRPC answer in 16 bits converts every float it gathers. Converted
//! after the whole gather, the blocks had left the CPU's caches by then:
//! the conversion's pass was 14 % of such a lookup's server samples and
//! waited on memory (docs/results/profile.md, section 21). Handed on block
//! by block, each is converted while it is still in the core's cache, and
//! a backend that pools block after block writes every block into the same
//! buffer, so the f32 output is never whole in memory.

/// Receives a lookup's output blocks, in batch order, each once.
pub trait BlockSink {
    /// Block `index`: its `[rows, width]` floats, lent for this call only.
    fn block(&mut self, index: usize, floats: &[f32]);
}

/// Hands already gathered `blocks` to `sink`: what a backend that gathers
/// the whole output before any block is done does.
pub(crate) fn feed(blocks: &[Vec<f32>], sink: &mut dyn BlockSink) {
    for (index, block) in blocks.iter().enumerate() {
        sink.block(index, block);
    }
}
