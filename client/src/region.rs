//! A Train stream's shared-memory region, as the trainer maps it: the
//! server writes lookups' embeddings into it and reads pushes' gradients
//! from it, so on the server's own machine neither crosses the socket
//! (the server's `shared_region.rs` has the design).

use std::fs::File;
use std::path::Path;

use memmap2::{MmapMut, MmapOptions};

use crate::{pb, ClientError};

/// The mapped region.
#[derive(Debug)]
pub struct SharedRegion {
    map: MmapMut,
    path: String,
}

impl SharedRegion {
    /// Maps the file the server created (before the server removes its
    /// name, which it does on the stream's next message).
    pub(crate) fn map(opened: &pb::RegionOpened) -> Result<Self, ClientError> {
        let failed = |e: std::io::Error| {
            ClientError::Response(format!("cannot map the region {}: {e}", opened.path))
        };
        let file = File::options()
            .read(true)
            .write(true)
            .open(Path::new(&opened.path))
            .map_err(failed)?;
        let len = usize::try_from(opened.bytes)
            .map_err(|_| ClientError::Response(format!("a region of {} bytes", opened.bytes)))?;
        // SAFETY: the mapping is shared with the server, which writes it
        // (pwrite) only while it answers a message this stream sent, and
        // every view handed out borrows the stream, which sending needs
        // mutably: no view is alive while the server may write. The file
        // has the size the server gave it and only this client can resize
        // it once its name is gone.
        let map = unsafe { MmapOptions::new().len(len).map_mut(&file) }.map_err(failed)?;
        Ok(SharedRegion {
            map,
            path: opened.path.clone(),
        })
    }

    /// The file the server created. Its name is removed when the server
    /// reads the stream's next message: another mapping of the same memory
    /// (a Python `mmap`, say) must open it before then.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it has no bytes (never: the server refuses empty regions).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// `floats` floats from byte `offset` (a multiple of 4).
    pub fn floats(&self, offset: u64, floats: usize) -> Result<&[f32], ClientError> {
        let range = self.range(offset, floats)?;
        bytemuck::try_cast_slice(&self.map[range]).map_err(misaligned)
    }

    /// The same, to write (gradients for a region push).
    pub fn floats_mut(&mut self, offset: u64, floats: usize) -> Result<&mut [f32], ClientError> {
        let range = self.range(offset, floats)?;
        bytemuck::try_cast_slice_mut(&mut self.map[range]).map_err(misaligned)
    }

    /// A lookup's block, as the server wrote it.
    pub fn block(&self, block: &pb::RegionBlock) -> Result<&[f32], ClientError> {
        self.floats(block.offset, block.rows as usize * block.width as usize)
    }

    fn range(&self, offset: u64, floats: usize) -> Result<std::ops::Range<usize>, ClientError> {
        if cfg!(target_endian = "big") {
            return Err(ClientError::Response(
                "regions hold little-endian floats; this machine is big-endian".into(),
            ));
        }
        let start = usize::try_from(offset).ok().filter(|o| o % 4 == 0);
        let end = start.and_then(|s| s.checked_add(floats.checked_mul(4)?));
        match (start, end) {
            (Some(start), Some(end)) if end <= self.map.len() => Ok(start..end),
            _ => Err(ClientError::Response(format!(
                "{floats} floats at byte {offset} do not fit an aligned range of the \
                 region's {} bytes",
                self.map.len()
            ))),
        }
    }
}

/// Never: the mapping is page-aligned and ranges start at multiples of 4.
fn misaligned(e: bytemuck::PodCastError) -> ClientError {
    ClientError::Response(format!(
        "the region's floats cannot be viewed in place: {e:?}"
    ))
}
