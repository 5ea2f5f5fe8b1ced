//! glibc malloc settings for featmux's allocation pattern: megabyte
//! buffers per batch request, and dozens of small ones per HTTP request.
//! Both are set before anything else runs; other allocators were measured
//! and dropped (docs/results/profile.md, section 9: they slowed pushes).

/// Keeps large allocations on the reusable heap. A lookup's output and a
/// push's gradients are megabytes; above glibc's default threshold each one
/// is a fresh mmap, so every request page-faulted its buffers in and unmapped
/// them again (a quarter of the in-process lookup time). 32 MiB is glibc's
/// largest allowed threshold.
pub fn keep_large_allocations_on_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}

/// The tunable that sets how many freed chunks of each small size (up to
/// 1,032 bytes) a thread keeps for its next allocations: glibc's default
/// is 7.
const TCACHE_COUNT: &str = "glibc.malloc.tcache_count";

/// Freed small chunks kept per size and thread. Worst case, a thread holds
/// 64 sizes × this many chunks (about 4 MiB at 128).
const TCACHE_CHUNKS: u32 = 128;

/// Restarts the process in place (same pid, arguments and environment)
/// with [`TCACHE_COUNT`] raised to [`TCACHE_CHUNKS`], unless
/// `GLIBC_TUNABLES` already sets it (an operator's choice, or this
/// restart's). A single-example HTTP lookup allocates and frees nearly 300
/// small chunks (its strings, the batch, the answer's pieces). With 7 kept
/// per size, most frees went past the thread's cache into glibc's shared
/// bins, and the answer's buffer (over 1 KiB) then made glibc consolidate
/// them: malloc and free were a quarter of the server's instructions per
/// lookup (docs/results/profile.md, section 20). glibc reads tunables only
/// when a process starts (there is no `mallopt` for this one), hence the
/// exec. A profiler that does not follow exec (valgrind without
/// `--trace-children=yes`) should be given `GLIBC_TUNABLES` itself.
pub fn keep_more_freed_chunks_per_thread() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;

        // SAFETY: getauxval reads the process's auxiliary vector.
        // A setuid start (AT_SECURE) drops GLIBC_TUNABLES, which would
        // restart forever.
        if unsafe { libc::getauxval(libc::AT_SECURE) } != 0 {
            return;
        }
        let tunables = match std::env::var("GLIBC_TUNABLES") {
            Ok(tunables) => with_more_freed_chunks(Some(&tunables)),
            Err(std::env::VarError::NotPresent) => with_more_freed_chunks(None),
            Err(std::env::VarError::NotUnicode(_)) => None,
        };
        let Some(tunables) = tunables else {
            return;
        };
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let mut args = std::env::args_os();
        let name = args.next().unwrap_or_else(|| exe.clone().into_os_string());
        let error = std::process::Command::new(&exe)
            .arg0(name)
            .args(args)
            .env("GLIBC_TUNABLES", tunables)
            .exec();
        // Only a failed exec returns; glibc's default works, only slower.
        eprintln!(
            "warning: running with glibc's default {TCACHE_COUNT}: restarting failed: {error}"
        );
    }
}

/// `GLIBC_TUNABLES` (`current`) with [`TCACHE_COUNT`] added; `None` when
/// it already sets it.
fn with_more_freed_chunks(current: Option<&str>) -> Option<String> {
    let setting = format!("{TCACHE_COUNT}={TCACHE_CHUNKS}");
    match current {
        Some(current) if current.contains(TCACHE_COUNT) => None,
        Some(current) if !current.is_empty() => Some(format!("{current}:{setting}")),
        _ => Some(setting),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_setting_joins_other_tunables_and_yields_to_its_own() {
        let ours = "glibc.malloc.tcache_count=128";
        assert_eq!(with_more_freed_chunks(None).as_deref(), Some(ours));
        assert_eq!(with_more_freed_chunks(Some("")).as_deref(), Some(ours));
        assert_eq!(
            with_more_freed_chunks(Some("glibc.malloc.arena_max=2")),
            Some(format!("glibc.malloc.arena_max=2:{ours}"))
        );
        assert_eq!(
            with_more_freed_chunks(Some("glibc.malloc.tcache_count=7")),
            None
        );
    }
}
