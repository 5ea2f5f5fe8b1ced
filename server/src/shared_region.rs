//! Shared-memory regions for Train streams of trainers on the server's own
//! machine (connected to its Unix socket): a lookup's embeddings are
//! written into memory the trainer has mapped and its gradients read from
//! it, instead of both crossing the socket. A socket costs two kernel
//! copies of every payload on the cores the engine uses (docs/DESIGN.md,
//! "Same-machine clients"); with a region the gather writes a lookup's
//! blocks straight into it, and a push reads its gradients where they lie.
//!
//! A region is an anonymous memory file (`memfd`) the server creates,
//! maps, and seals against shrinking and growing before anyone else can
//! hold it, so its size never changes: nothing the trainer does can make
//! the server's mapping fault (a file shrunk under a mapping raises
//! SIGBUS). The trainer gets the file's descriptor over the region socket
//! ([`crate::region_handoff`]), with a one-time token; nothing has a name,
//! so nothing is left behind however either side exits.
//!
//! The trainer may write the region while the server reads it, so the
//! server never forms references into it: a lookup's gather writes into
//! it through a raw pointer and reads nothing back (a
//! [`GatherTarget`]); a push reads its gradients in place, a row at a
//! time through a raw pointer, and validates the sums it made of them
//! ([`SharedGradients`]); a batch is copied out, then decoded.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use featmux_engine::backend::GatherTarget;
use featmux_engine::gradients::SharedGradients;
use memmap2::MmapRaw;
use prometheus::IntGauge;
use rustix::fs::{MemfdFlags, SealFlags};

use crate::error::{ApiError, ErrorKind};

/// A one-time password for one region's descriptor on the region socket.
pub type Token = [u8; 16];

/// Descriptors offered to the clients that know their token.
#[derive(Default)]
pub struct Offers(Mutex<HashMap<Token, File>>);

impl Offers {
    /// Takes the descriptor offered for `token`: each is handed out once.
    pub fn take(&self, token: &Token) -> Option<File> {
        self.lock().remove(token)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Token, File>> {
        // Nothing panics while holding it; a poisoned map is still whole.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Creates regions within a budget, and offers their descriptors.
pub struct Regions {
    /// The region socket's path, which `OpenRegion` answers.
    socket: PathBuf,
    max_bytes: u64,
    in_use: Arc<AtomicU64>,
    /// `featmux_shared_memory_bytes`: what `in_use` holds, for operators.
    gauge: IntGauge,
    offers: Arc<Offers>,
}

/// One stream's region: the sealed memory file, the server's mapping of
/// it, the offer of its descriptor (until taken or withdrawn) and its
/// share of the budget.
pub struct Region {
    map: MmapRaw,
    offer: Mutex<Option<(Token, Arc<Offers>)>>,
    _reservation: Reservation,
}

/// Bytes counted against `limits.max_shared_memory_bytes` until dropped.
struct Reservation {
    bytes: u64,
    in_use: Arc<AtomicU64>,
    gauge: IntGauge,
}

impl Regions {
    /// At most `max_bytes` of regions at a time, their total shown in
    /// `gauge`; their descriptors are handed out on `socket`.
    pub fn new(socket: PathBuf, max_bytes: u64, gauge: IntGauge) -> Self {
        Regions {
            socket,
            max_bytes,
            in_use: Arc::new(AtomicU64::new(0)),
            gauge,
            offers: Arc::default(),
        }
    }

    /// Where clients take the descriptors.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The descriptors on offer (what the region socket hands out).
    pub fn offers(&self) -> Arc<Offers> {
        self.offers.clone()
    }

    /// Creates a region of `bytes` bytes and offers its descriptor; returns
    /// it with the offer's token. Refused (and nothing created) when it
    /// would take the regions over the budget.
    pub fn open(&self, bytes: u64) -> Result<(Region, Token), ApiError> {
        if bytes == 0 || bytes % 4 != 0 {
            return Err(ApiError::invalid(format!(
                "a region of {bytes} bytes: ask for a positive multiple of 4 (it holds f32)"
            )));
        }
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes)
                    .filter(|&after| after <= self.max_bytes)
            })
            .map_err(|used| {
                ApiError::too_large(format!(
                    "limits.max_shared_memory_bytes ({}) exceeded: open regions hold {used} \
                     bytes, this one asks for {bytes}",
                    self.max_bytes
                ))
            })?;
        self.gauge.add(bytes as i64);
        // From here on, dropping it returns the bytes to the budget.
        let reservation = Reservation {
            bytes,
            in_use: self.in_use.clone(),
            gauge: self.gauge.clone(),
        };
        let failed = |what: &str, e: std::io::Error| {
            internal(format!("cannot {what} a region of {bytes} bytes: {e}"))
        };
        let file = File::from(
            rustix::fs::memfd_create(
                "featmux-region",
                MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
            )
            .map_err(|e| failed("create", e.into()))?,
        );
        file.set_len(bytes).map_err(|e| failed("size", e))?;
        rustix::fs::fcntl_add_seals(&file, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .map_err(|e| failed("seal", e.into()))?;
        // Populated: the memory is the budget's already, and the first
        // lookup need not fault every page in.
        let map = memmap2::MmapOptions::new()
            .populate()
            .map_raw(&file)
            .map_err(|e| failed("map", e))?;
        let token = new_token().map_err(|e| failed("draw a token for", e))?;
        self.offers.lock().insert(token, file);
        let region = Region {
            map,
            offer: Mutex::new(Some((token, self.offers.clone()))),
            _reservation: reservation,
        };
        Ok((region, token))
    }
}

impl Region {
    /// Its size in bytes.
    pub fn bytes(&self) -> u64 {
        self.map.len() as u64
    }

    /// Withdraws the descriptor's offer if it was not taken: called when the
    /// stream's next message arrives (the client has it by then, or never
    /// will), and when the region closes.
    pub fn withdraw_offer(&self) {
        let offer = self.offer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((token, offers)) = offer {
            offers.take(&token);
        }
    }

    /// The `floats` floats from `offset`, lent to a gather that writes a
    /// lookup's blocks there: refused unless all of them fit.
    pub fn gather_target(&self, offset: u64, floats: usize) -> Result<GatherTarget<'_>, ApiError> {
        let start = self.floats_at("the answer", offset, floats)?;
        // SAFETY: as in `floats_at`.
        Ok(unsafe { GatherTarget::new(start, floats) })
    }

    /// The `floats` floats from `offset`, lent to a push that reads its
    /// gradients there: refused unless all of them fit.
    pub fn gradients(
        &self,
        what: &str,
        offset: u64,
        floats: usize,
    ) -> Result<SharedGradients<'_>, ApiError> {
        let start = self.floats_at(what, offset, floats)?;
        // SAFETY: as in `floats_at`; the push reads them only by copying.
        Ok(unsafe { SharedGradients::new(start, floats) })
    }

    /// Where the `floats` floats from `offset` start, refused unless all of
    /// them fit. Valid for reads and writes for as long as `self` is
    /// borrowed: the range is inside the mapping, whose size the seals fix,
    /// at an offset that is a multiple of 4 from a page-aligned start. The
    /// server forms no reference to it: the client may read or write it
    /// meanwhile.
    fn floats_at(&self, what: &str, offset: u64, floats: usize) -> Result<NonNull<f32>, ApiError> {
        self.check_range(what, offset, (floats as u64).saturating_mul(4))?;
        // SAFETY: `check_range` put the offset inside the mapping.
        let start = unsafe { self.map.as_mut_ptr().add(offset as usize) };
        Ok(NonNull::new(start.cast::<f32>()).expect("a mapping is never at address 0"))
    }

    /// Copies `len` bytes out of the region from `offset` into a new
    /// vector: a snapshot the caller validates (a batch it decodes),
    /// whatever the client writes meanwhile.
    pub fn copy_out(&self, what: &str, offset: u64, len: usize) -> Result<Vec<u8>, ApiError> {
        self.check_range(what, offset, len as u64)?;
        let mut bytes = Vec::<u8>::with_capacity(len);
        // SAFETY: as in `gather_target`, the source is in bounds of a
        // mapping of fixed size; the destination is the vector's own
        // memory, `len` bytes long, every one of them written by the copy.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.as_ptr().add(offset as usize),
                bytes.as_mut_ptr(),
                len,
            );
            bytes.set_len(len);
        }
        Ok(bytes)
    }

    /// Refuses a range that is misaligned for f32 or outside the region.
    fn check_range(&self, what: &str, offset: u64, len: u64) -> Result<(), ApiError> {
        let size = self.bytes();
        if offset % 4 != 0 {
            return Err(ApiError::invalid(format!(
                "{what} at offset {offset}: offsets in a region are multiples of 4"
            )));
        }
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(ApiError::invalid(format!(
                "{what} needs bytes {offset}..{} of a region of {size} bytes",
                offset.saturating_add(len)
            ))),
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        self.withdraw_offer();
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.in_use.fetch_sub(self.bytes, Ordering::AcqRel);
        self.gauge.sub(self.bytes as i64);
    }
}

/// A token no one can guess from the outside (the kernel's random bytes).
fn new_token() -> std::io::Result<Token> {
    let mut token = [0; 16];
    let mut filled = 0;
    while filled < token.len() {
        filled +=
            rustix::rand::getrandom(&mut token[filled..], rustix::rand::GetRandomFlags::empty())?;
    }
    Ok(token)
}

fn internal(message: String) -> ApiError {
    ApiError::new(ErrorKind::Internal, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use featmux_engine::gradients::GradientSource;
    use std::os::unix::fs::FileExt;

    fn regions(max_bytes: u64) -> Regions {
        Regions::new(
            PathBuf::from("/run/featmux/grpc.sock.regions"),
            max_bytes,
            IntGauge::new("shared_memory_bytes", "test").unwrap(),
        )
    }

    #[test]
    fn a_region_is_shared_with_whoever_takes_its_offer_once() {
        let regions = regions(1 << 20);
        let (region, token) = regions.open(4096).unwrap();
        assert_eq!(region.bytes(), 4096);
        assert_eq!(regions.gauge.get(), 4096);
        let client = regions.offers().take(&token).expect("offered");
        assert!(regions.offers().take(&token).is_none(), "offered once");

        assert_eq!(region.gather_target(8, 1022).unwrap().len(), 1022);
        client.write_all_at(b"wxyz", 100).unwrap();
        let read = region.copy_out("the batch", 100, 4).unwrap();
        assert_eq!(read, b"wxyz");
        client.write_all_at(&1.5f32.to_ne_bytes(), 200).unwrap();
        let mut sum = [1.0];
        let gradients = region.gradients("gradient", 200, 1).unwrap();
        gradients.add_scaled_to(0, 2.0, &mut sum);
        assert_eq!(sum, [4.0]);

        drop(region);
        assert_eq!(regions.gauge.get(), 0);
    }

    #[test]
    fn its_client_can_neither_shrink_nor_grow_it() {
        let regions = regions(1 << 20);
        let (_region, token) = regions.open(4096).unwrap();
        let client = regions.offers().take(&token).unwrap();
        for size in [0, 16, 8192] {
            let err = client.set_len(size).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{size}");
        }
        assert_eq!(client.metadata().unwrap().len(), 4096);
    }

    #[test]
    fn an_offer_not_taken_is_withdrawn_with_its_region() {
        let regions = regions(1 << 20);
        let (region, token) = regions.open(64).unwrap();
        region.withdraw_offer();
        assert!(regions.offers().take(&token).is_none());
        let (region, token) = regions.open(64).unwrap();
        drop(region);
        assert!(regions.offers().take(&token).is_none());
    }

    #[test]
    fn regions_over_the_budget_are_refused() {
        let regions = regions(1000);
        let first = regions.open(600).unwrap();
        let err = regions.open(600).err().unwrap();
        assert_eq!(err.kind, ErrorKind::TooLarge);
        assert!(err.message.contains("max_shared_memory_bytes"), "{err:?}");
        assert_eq!(regions.gauge.get(), 600);
        drop(first);
        regions.open(1000).unwrap();
        for bytes in [0, 6] {
            let err = regions.open(bytes).err().unwrap();
            assert_eq!(err.kind, ErrorKind::InvalidArgument, "{bytes}");
        }
    }

    #[test]
    fn ranges_outside_the_region_or_misaligned_are_refused_untouched() {
        let regions = regions(1 << 20);
        let (region, _) = regions.open(64).unwrap();
        for (offset, len) in [(60, 8), (2, 4), (u64::MAX - 3, 8)] {
            let err = region.gather_target(offset, len / 4).err().unwrap();
            assert_eq!(err.kind, ErrorKind::InvalidArgument, "{offset} {len}");
            assert!(region.copy_out("the batch", offset, len).is_err());
            assert!(region.gradients("gradient", offset, len / 4).is_err());
        }
        let err = region.gather_target(0, usize::MAX).err().unwrap();
        assert!(err.message.contains("the answer"), "{err:?}");
    }
}
