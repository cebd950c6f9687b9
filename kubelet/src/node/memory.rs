//! The `memory.available` signal as upstream's eviction manager measures it: the machine's
//! memory capacity (`MemTotal`, cadvisor's `MemoryCapacity`) minus the working set of the
//! root cgroup, as cadvisor reads it (its summary's `node.memory.availableBytes`), not the
//! kernel's `MemAvailable`. The working set is usage minus inactive file pages, floored at
//! 0:
//! - cgroup v1: the memory controller's root `memory.usage_in_bytes` minus memory.stat's
//!   hierarchical `total_inactive_file` (cadvisor's key on v1);
//! - cgroup v2: the root cgroup has no `memory.current`; runc's cgroup library (which
//!   cadvisor reads it through) takes usage as memory.stat's `anon + file`, minus
//!   `inactive_file`.

use crate::stats::read::{key_values, memory_v1};

/// The root cgroup's working set from its files: `usage_in_bytes` is v1's
/// `memory.usage_in_bytes` (None on v2, or unreadable), `stat` its memory.stat. None when
/// the numbers are not there (no memory controller).
pub fn root_working_set(v2: bool, usage_in_bytes: Option<u64>, stat: &str) -> Option<u64> {
    if v2 {
        let kv = key_values(stat);
        let usage = kv.get("anon")? + kv.get("file")?;
        Some(usage.saturating_sub(kv.get("inactive_file").copied().unwrap_or(0)))
    } else {
        Some(memory_v1(usage_in_bytes?, None, stat).working_set)
    }
}

/// `(available, capacity)` from `/proc/meminfo` and the root cgroup's working set. Without a
/// readable root memory cgroup, `MemAvailable` stands in (upstream would have no signal,
/// and so no memory pressure at all).
pub fn signal(meminfo: &str, working_set: Option<u64>) -> (u64, u64) {
    let kib = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|k| k * 1024)
    };
    let capacity = kib("MemTotal:").unwrap_or(0);
    let available = match working_set {
        Some(ws) => capacity.saturating_sub(ws),
        None => kib("MemAvailable:").unwrap_or(0),
    };
    (available, capacity)
}

/// The signal now.
pub fn observe() -> (u64, u64) {
    use crate::sys;
    let working_set = if sys::cgroup_v2() {
        sys::read_cgroup("", "/", "memory.stat").and_then(|s| root_working_set(true, None, &s))
    } else {
        let usage = sys::read_cgroup("memory", "/", "memory.usage_in_bytes")
            .and_then(|u| u.trim().parse().ok());
        sys::read_cgroup("memory", "/", "memory.stat")
            .and_then(|s| root_working_set(false, usage, &s))
    };
    signal(&sys::read_proc("meminfo").unwrap_or_default(), working_set)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str =
        "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    700 kB\n";

    #[test]
    fn available_is_capacity_minus_the_root_working_set() {
        // v1: usage minus the hierarchical inactive file pages (the root's own
        // `inactive_file` is not what counts)
        let v1 = "inactive_file 1\ntotal_inactive_file 102400\ntotal_rss 5\n";
        let ws = root_working_set(false, Some(512_000), v1);
        assert_eq!(ws, Some(409_600));
        assert_eq!(signal(MEMINFO, ws), (1_024_000 - 409_600, 1_024_000));
        // v2: anon + file, minus inactive_file
        let v2 = "anon 200000\nfile 300000\ninactive_file 100000\nactive_file 200000\n";
        assert_eq!(root_working_set(true, None, v2), Some(400_000));
        // floored at 0: more inactive file pages than usage, a working set above capacity
        assert_eq!(
            root_working_set(false, Some(10), "total_inactive_file 20\n"),
            Some(0)
        );
        assert_eq!(signal(MEMINFO, Some(2_000_000)), (0, 1_024_000));
        // no memory cgroup to read: MemAvailable stands in
        assert_eq!(root_working_set(false, None, v1), None);
        assert_eq!(root_working_set(true, None, "inactive_file 3\n"), None);
        assert_eq!(signal(MEMINFO, None), (716_800, 1_024_000));
    }

    #[test]
    fn this_machines_signal_is_sane() {
        let (available, capacity) = observe();
        assert!(capacity > 0);
        assert!(available <= capacity, "{available} > {capacity}");
    }
}
