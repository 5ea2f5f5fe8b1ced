//! Memory a gather writes its output into when that memory is not the
//! engine's own: a region the server shares with a trainer on its machine,
//! which the trainer's process may read or write at any time.
//!
//! Why a raw pointer and not `&mut [f32]`: a reference promises Rust that
//! nothing else touches the floats while it lives, which another process
//! can break at will. So the engine never forms one to such memory. A
//! target is written through its pointer, each float at least once (a
//! sequence-lock retry rewrites a row), and never read back: whatever the
//! other process writes meanwhile can change what it reads, never what
//! the engine computes.
//!
//! Why gather into it at all: the alternative, a gather into a buffer of
//! the engine's own and then a copy into the shared memory, spent a fifth
//! of a region lookup's server time in that copy (docs/results/profile.md,
//! section 11).

use std::marker::PhantomData;
use std::ptr::NonNull;

use crate::error::EngineError;

/// `len` floats the caller lends a gather for `'a`, written only through a
/// raw pointer (see the module's doc).
pub struct GatherTarget<'a> {
    start: NonNull<f32>,
    len: usize,
    memory: PhantomData<&'a ()>,
}

impl<'a> GatherTarget<'a> {
    /// # Safety
    ///
    /// `start` is aligned for `f32` and valid for writes of `len` floats
    /// for `'a`, and this process holds no reference to those floats
    /// meanwhile. Another process may read or write them.
    pub unsafe fn new(start: NonNull<f32>, len: usize) -> Self {
        GatherTarget {
            start,
            len,
            memory: PhantomData,
        }
    }

    /// Floats in the target.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the target holds no floats.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Refuses a target whose size is not the gather's `[num_slots, dim]`.
    pub(crate) fn check_len(&self, floats: usize) -> Result<(), EngineError> {
        if self.len == floats {
            return Ok(());
        }
        Err(EngineError::invalid(
            "gather target",
            format!(
                "it holds {} floats and the gather writes {floats}",
                self.len
            ),
        ))
    }

    /// The first float, for a backend's loop that writes each float
    /// through it (within `len`).
    pub(crate) fn as_mut_ptr(&mut self) -> *mut f32 {
        self.start.as_ptr()
    }

    /// Copies `floats` to the start of the target.
    ///
    /// # Panics
    ///
    /// If `floats` is longer than the target (backends check the length
    /// first, with [`Self::check_len`]).
    pub(crate) fn write(&mut self, floats: &[f32]) {
        assert!(floats.len() <= self.len, "a gather wrote past its target");
        // SAFETY: in bounds (above) of memory `new`'s caller lent for
        // writes; the source is the engine's own, so they cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(floats.as_ptr(), self.start.as_ptr(), floats.len())
        };
    }
}
