//! What the machine offers: the memory the default memory budget is derived
//! from (the smaller of physical memory and the cgroup's limit, so a
//! container's limit counts, not the host's memory).

use std::path::Path;

/// Share of the available memory the default budget allows tables: the rest
/// is for requests, tickets, RocksDB's caches and the allocator's slack.
const DEFAULT_BUDGET_PERCENT: u64 = 80;

/// Physical memory from `/proc/meminfo`.
fn physical_memory(proc: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(proc.join("meminfo")).ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The memory limit of this process's cgroup (v2 `memory.max`, else v1
/// `memory.limit_in_bytes`); `None` when unlimited or unknown.
fn cgroup_limit(cgroup_root: &Path) -> Option<u64> {
    let read = |file: &str| std::fs::read_to_string(cgroup_root.join(file)).ok();
    let text = read("memory.max").or_else(|| read("memory/memory.limit_in_bytes"))?;
    // "max" (v2) or a huge sentinel (v1) both mean no limit.
    text.trim().parse().ok().filter(|&b: &u64| b < 1 << 60)
}

/// The memory this process may use, if it can be told.
pub fn available_memory() -> Option<u64> {
    let physical = physical_memory(Path::new("/proc"));
    let cgroup = cgroup_limit(Path::new("/sys/fs/cgroup"));
    match (physical, cgroup) {
        (Some(p), Some(c)) => Some(p.min(c)),
        (p, c) => p.or(c),
    }
}

/// The default `limits.max_memory_bytes` for `available` bytes.
pub fn default_budget(available: u64) -> u64 {
    available / 100 * DEFAULT_BUDGET_PERCENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smaller_of_meminfo_and_the_cgroup_limit_counts() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc");
        let cgroup = dir.path().join("cgroup");
        std::fs::create_dir_all(&proc).unwrap();
        std::fs::create_dir_all(cgroup.join("memory")).unwrap();
        std::fs::write(
            proc.join("meminfo"),
            "MemTotal:       16384 kB\nMemFree: 1 kB\n",
        )
        .unwrap();
        assert_eq!(physical_memory(&proc), Some(16 << 20));
        std::fs::write(cgroup.join("memory.max"), "max\n").unwrap();
        assert_eq!(cgroup_limit(&cgroup), None);
        std::fs::write(cgroup.join("memory.max"), "4194304\n").unwrap();
        assert_eq!(cgroup_limit(&cgroup), Some(4 << 20));
        std::fs::remove_file(cgroup.join("memory.max")).unwrap();
        std::fs::write(
            cgroup.join("memory/memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        assert_eq!(cgroup_limit(&cgroup), None);
        assert_eq!(default_budget(1000), 800);
        assert!(available_memory().is_some(), "this machine's memory");
    }
}
