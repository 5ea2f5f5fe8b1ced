//! A Train stream's shared-memory region, as the trainer maps it: the
//! server writes lookups' embeddings into it and reads pushes' gradients
//! from it, so on the server's own machine neither crosses the socket
//! (the server's `shared_region.rs` has the design). The region's
//! descriptor comes over the server's region socket
//! (`server/src/region_handoff.rs`), with the token `OpenRegion` answered.

use std::fs::File;
use std::io::{IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::unix::net::UnixStream;

use memmap2::{MmapMut, MmapOptions};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

use crate::{pb, ClientError};

/// The mapped region.
#[derive(Debug)]
pub struct SharedRegion {
    map: MmapMut,
    file: File,
}

impl SharedRegion {
    /// Takes the region's descriptor from the region socket and maps it.
    /// Blocking (a local connection and two small messages).
    pub(crate) fn take(opened: &pb::RegionOpened) -> Result<Self, ClientError> {
        let failed = |e: std::io::Error| {
            ClientError::Response(format!(
                "cannot take the region from {}: {e}",
                opened.socket
            ))
        };
        let file = receive_descriptor(opened).map_err(failed)?;
        let len = usize::try_from(opened.bytes)
            .map_err(|_| ClientError::Response(format!("a region of {} bytes", opened.bytes)))?;
        // SAFETY: the mapping is shared with the server, which writes it
        // only while it answers a message this stream sent; every view
        // handed out borrows the stream, which sending needs mutably, so no
        // view is alive while the server may write. The server sealed the
        // file's size, so the mapping cannot lose its pages.
        let map = unsafe { MmapOptions::new().len(len).map_mut(&file) }.map_err(failed)?;
        Ok(SharedRegion { map, file })
    }

    /// Another descriptor of the region's memory, for another mapping of
    /// it (a Python `mmap`, say).
    pub fn try_clone_file(&self) -> std::io::Result<File> {
        self.file.try_clone()
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

    /// Encodes `message` from byte `offset` (a multiple of 4), if it fits
    /// there; returns its length.
    pub(crate) fn encode_at(
        &mut self,
        offset: u64,
        message: &impl prost::Message,
    ) -> Option<usize> {
        let start = usize::try_from(offset).ok().filter(|o| o % 4 == 0)?;
        let len = message.encoded_len();
        let mut into = self.map.get_mut(start..start.checked_add(len)?)?;
        message.encode(&mut into).ok()?;
        Some(len)
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

/// Sends the token; receives the answer byte and the descriptor.
fn receive_descriptor(opened: &pb::RegionOpened) -> std::io::Result<File> {
    let mut socket = UnixStream::connect(&opened.socket)?;
    socket.write_all(&opened.token)?;
    let mut answer = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    rustix::net::recvmsg(
        &socket,
        &mut [IoSliceMut::new(&mut answer)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let descriptor = control.drain().find_map(|message| match message {
        RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
        _ => None,
    });
    match (answer[0], descriptor) {
        (1, Some(fd)) => Ok(File::from(fd)),
        _ => Err(std::io::Error::other(
            "the server no longer offers this region (its token is good until the stream's next message)",
        )),
    }
}
