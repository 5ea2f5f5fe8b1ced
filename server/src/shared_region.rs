//! Shared-memory regions for Train streams of trainers on the server's own
//! machine (connected to its Unix socket): a lookup's embeddings are
//! written into the trainer's mapped region and its gradients read from
//! it, instead of both crossing the socket. A socket costs two kernel
//! copies of every payload on the cores the engine uses (docs/DESIGN.md,
//! "Same-machine clients"); a region costs the server one, and the trainer
//! none.
//!
//! The server never maps a region. It reads and writes the file with
//! `pread`/`pwrite`, so nothing the trainer does to its side (writing
//! while the server reads, truncating the file) can fault the server or
//! reach past the region: a read past a shrunken end is an error for that
//! one request. The server creates every region itself, with a name of its
//! own choosing, so a request can never point it at another file.

use std::fs::{File, Permissions};
use std::io::ErrorKind as IoErrorKind;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::IntGauge;

use crate::error::{ApiError, ErrorKind};

/// Owner and group may open a region, as they may connect to the socket.
const REGION_MODE: u32 = 0o660;

/// Prefix of every region file's name, so an operator can tell them apart
/// in a shared `/dev/shm`.
const NAME_PREFIX: &str = "featmux-region-";

/// Where regions are created, and how much memory they may hold together.
pub struct RegionDirectory {
    dir: PathBuf,
    max_bytes: u64,
    in_use: Arc<AtomicU64>,
    /// `featmux_shared_memory_bytes`: what `in_use` holds, for operators.
    gauge: IntGauge,
    created: AtomicU64,
}

/// One stream's region: the open file (its name removed once the trainer
/// has opened it) and its share of the directory's budget.
#[derive(Debug)]
pub struct Region {
    file: File,
    name: Mutex<Option<PathBuf>>,
    reservation: Reservation,
}

/// Bytes counted against `limits.max_shared_memory_bytes` until dropped.
#[derive(Debug)]
struct Reservation {
    bytes: u64,
    in_use: Arc<AtomicU64>,
    gauge: IntGauge,
}

impl RegionDirectory {
    /// Regions in `dir`, at most `max_bytes` of them at a time, their
    /// total shown in `gauge`. Fails unless `dir` is a directory this
    /// process can list; removes what servers that are no longer running
    /// left in it.
    pub fn new(dir: PathBuf, max_bytes: u64, gauge: IntGauge) -> std::io::Result<Self> {
        let regions = RegionDirectory {
            dir,
            max_bytes,
            in_use: Arc::new(AtomicU64::new(0)),
            gauge,
            created: AtomicU64::new(0),
        };
        let removed = regions.remove_leftovers()?;
        if removed > 0 {
            tracing::info!(
                dir = %regions.dir.display(),
                removed,
                "removed the shared-memory regions of servers no longer running"
            );
        }
        Ok(regions)
    }

    /// Creates a region of `bytes` bytes; refused (and nothing created)
    /// when it would take the regions over the budget.
    pub fn open(&self, bytes: u64) -> Result<Region, ApiError> {
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
        let reservation = Reservation {
            bytes,
            in_use: self.in_use.clone(),
            gauge: self.gauge.clone(),
        };
        let (file, path) = self.create_file()?;
        // From here on, dropping `region` removes the file and returns the
        // reservation.
        let region = Region {
            file,
            name: Mutex::new(Some(path)),
            reservation,
        };
        // The mode explicitly, not as the umask leaves it: the group must
        // be able to open the file for writing (its gradients).
        let sized = region
            .file
            .set_permissions(Permissions::from_mode(REGION_MODE))
            .and_then(|()| region.file.set_len(bytes));
        sized.map_err(|e| {
            internal(format!(
                "cannot set up the region {} ({bytes} bytes): {e}",
                region.path().unwrap_or_default().display()
            ))
        })?;
        Ok(region)
    }

    /// A new file with a name no other region has (`O_EXCL`, so an
    /// existing file or symlink is never opened).
    fn create_file(&self) -> Result<(File, PathBuf), ApiError> {
        loop {
            let n = self.created.fetch_add(1, Ordering::Relaxed);
            let path = self
                .dir
                .join(format!("{NAME_PREFIX}{}-{n}", std::process::id()));
            match File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(REGION_MODE)
                .open(&path)
            {
                Ok(file) => return Ok((file, path)),
                Err(e) if e.kind() == IoErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(internal(format!(
                        "cannot create a region in {}: {e}",
                        self.dir.display()
                    )))
                }
            }
        }
    }

    /// Removes the region files of servers that are no longer running (a
    /// server that crashed between creating a region and its trainer
    /// opening it leaves the name behind); returns how many.
    fn remove_leftovers(&self) -> std::io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(NAME_PREFIX))
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok())
            else {
                continue;
            };
            let running = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
            if !running && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

impl Region {
    /// Its size in bytes.
    pub fn bytes(&self) -> u64 {
        self.reservation.bytes
    }

    /// The file's path; `None` once the name is removed.
    pub fn path(&self) -> Option<PathBuf> {
        self.name().clone()
    }

    /// Removes the file's name: the trainer has it open, and the memory
    /// goes back once both sides close it, however either of them exits.
    pub fn remove_name(&self) {
        if let Some(path) = self.name().take() {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a region's name");
            }
        }
    }

    /// Writes `blocks` back to back from `offset`; returns where each
    /// starts. Refused, with nothing written, unless all of them fit.
    pub fn write_blocks(
        &self,
        offset: u64,
        blocks: &[impl AsRef<[u8]>],
    ) -> Result<Vec<u64>, ApiError> {
        let total: u64 = blocks.iter().map(|b| b.as_ref().len() as u64).sum();
        self.check_range("the answer", offset, total)?;
        let mut starts = Vec::with_capacity(blocks.len());
        let mut at = offset;
        for block in blocks {
            let block = block.as_ref();
            self.file
                .write_all_at(block, at)
                .map_err(|e| internal(format!("cannot write into the region: {e}")))?;
            starts.push(at);
            at += block.len() as u64;
        }
        Ok(starts)
    }

    /// Fills `into` from the region at `offset`.
    pub fn read(&self, what: &str, offset: u64, into: &mut [u8]) -> Result<(), ApiError> {
        self.check_range(what, offset, into.len() as u64)?;
        self.file.read_exact_at(into, offset).map_err(|e| {
            if e.kind() == IoErrorKind::UnexpectedEof {
                ApiError::new(
                    ErrorKind::FailedPrecondition,
                    format!("{what}: the region's file was truncated by its client"),
                )
            } else {
                internal(format!("cannot read {what} from the region: {e}"))
            }
        })
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

impl Region {
    fn name(&self) -> std::sync::MutexGuard<'_, Option<PathBuf>> {
        // Nothing panics while holding it; a poisoned lock's value is fine.
        self.name.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        self.remove_name();
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.in_use.fetch_sub(self.bytes, Ordering::AcqRel);
        self.gauge.sub(self.bytes as i64);
    }
}

fn internal(message: String) -> ApiError {
    ApiError::new(ErrorKind::Internal, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge() -> IntGauge {
        IntGauge::new("shared_memory_bytes", "test").unwrap()
    }

    fn directory(max_bytes: u64) -> (tempfile::TempDir, RegionDirectory) {
        let dir = tempfile::tempdir().unwrap();
        let regions = RegionDirectory::new(dir.path().to_owned(), max_bytes, gauge()).unwrap();
        (dir, regions)
    }

    #[test]
    fn a_region_is_a_file_of_its_size_until_its_name_is_removed() {
        let (dir, regions) = directory(1 << 20);
        let region = regions.open(4096).unwrap();
        let path = region.path().unwrap();
        assert!(path.starts_with(dir.path()));
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 4096);
        assert_eq!(meta.permissions().mode() & 0o777, REGION_MODE);
        assert_eq!(regions.gauge.get(), 4096);

        // What the trainer opened stays shared after the name goes.
        let trainer = File::options().read(true).write(true).open(&path).unwrap();
        region.remove_name();
        assert!(!path.exists());
        assert_eq!(region.path(), None);
        let starts = region
            .write_blocks(8, &[&b"abcd"[..], &b"efghijkl"[..]])
            .unwrap();
        assert_eq!(starts, [8, 12]);
        let mut seen = [0; 12];
        trainer.read_exact_at(&mut seen, 8).unwrap();
        assert_eq!(&seen, b"abcdefghijkl");
        trainer.write_all_at(b"wxyz", 100).unwrap();
        let mut read = [0; 4];
        region.read("gradient", 100, &mut read).unwrap();
        assert_eq!(&read, b"wxyz");

        drop(region);
        assert_eq!(regions.gauge.get(), 0);
    }

    #[test]
    fn dropping_an_unopened_region_removes_its_file() {
        let (dir, regions) = directory(1 << 20);
        let path = regions.open(64).unwrap().path().unwrap();
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn regions_over_the_budget_are_refused_and_create_nothing() {
        let (dir, regions) = directory(1000);
        let first = regions.open(600).unwrap();
        let err = regions.open(600).unwrap_err();
        assert_eq!(err.kind, ErrorKind::TooLarge);
        assert!(err.message.contains("max_shared_memory_bytes"), "{err:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        drop(first);
        regions.open(1000).unwrap();
        for bytes in [0, 6] {
            let err = regions.open(bytes).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidArgument, "{bytes}");
        }
    }

    #[test]
    fn ranges_outside_the_region_or_misaligned_are_refused_untouched() {
        let (_dir, regions) = directory(1 << 20);
        let region = regions.open(64).unwrap();
        for (offset, len) in [(60, 8), (2, 4), (u64::MAX - 3, 8)] {
            let block = vec![7; len];
            let err = region.write_blocks(offset, &[&block]).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidArgument, "{offset} {len}");
            let mut into = vec![0; len];
            assert!(region.read("gradient", offset, &mut into).is_err());
        }
        // Both blocks or neither: the first fits, the second does not.
        assert!(region
            .write_blocks(0, &[&[1; 32][..], &[2; 40][..]])
            .is_err());
        let mut head = [9; 32];
        region.read("head", 0, &mut head).unwrap();
        assert_eq!(head, [0; 32]);
    }

    #[test]
    fn a_region_its_client_truncated_fails_the_read_not_the_server() {
        let (_dir, regions) = directory(1 << 20);
        let region = regions.open(4096).unwrap();
        File::options()
            .write(true)
            .open(region.path().unwrap())
            .unwrap()
            .set_len(16)
            .unwrap();
        let mut into = [0; 64];
        let err = region.read("gradient `f0`", 0, &mut into).unwrap_err();
        assert_eq!(err.kind, ErrorKind::FailedPrecondition);
        assert!(err.message.contains("truncated"), "{err:?}");
    }

    #[test]
    fn leftovers_of_servers_that_are_gone_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        // No process has pid 4194304 (above Linux's pid_max).
        let gone = dir.path().join(format!("{NAME_PREFIX}4194304-0"));
        let running = dir.path().join(format!("{NAME_PREFIX}1-0"));
        let other = dir.path().join("someone-elses-file");
        for path in [&gone, &running, &other] {
            std::fs::write(path, b"x").unwrap();
        }
        RegionDirectory::new(dir.path().to_owned(), 64, gauge()).unwrap();
        assert!(!gone.exists());
        assert!(running.exists(), "pid 1 is running");
        assert!(other.exists());
    }

    #[test]
    fn a_directory_that_is_not_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(RegionDirectory::new(file, 64, gauge()).is_err());
        assert!(RegionDirectory::new(dir.path().join("missing"), 64, gauge()).is_err());
    }
}
