//! Reading the numbers: a cgroup's CPU time and memory (v1 `cpuacct`/`memory` controllers or
//! the v2 unified tree, as cadvisor reads them), the machine's from /proc, and network
//! counters from a `net/dev` table. The parsers are pure and unit-tested; the files come
//! through [`crate::sys`].

use std::collections::HashMap;

use crate::sys;

/// Above this a v1 memory limit means "none" (the kernel's unlimited is 2^63 rounded down
/// to the page size).
const UNLIMITED: u64 = 1 << 60;

/// What one read of a cgroup (or the machine) gives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Cumulative CPU time, nanoseconds.
    pub cpu_ns: Option<u64>,
    pub memory: Option<Memory>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub usage: u64,
    /// Usage minus inactive file pages: what cannot be reclaimed easily (what the OOM killer
    /// and eviction look at).
    pub working_set: u64,
    pub rss: u64,
    /// Page cache (cadvisor's `container_memory_cache`).
    pub cache: Option<u64>,
    /// The limit, None when unlimited.
    pub limit: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
}

/// `key value` lines (memory.stat, cpu.stat, /proc/vmstat).
pub fn key_values(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?, w.next()?.parse().ok()?))
        })
        .collect()
}

fn number(text: Option<String>) -> Option<u64> {
    text?.trim().parse().ok()
}

/// Cgroup `path` (e.g. `/kaze/<node>/pod<uid>/<id>`); None when it does not exist.
pub fn cgroup(path: &str) -> Option<Usage> {
    if sys::cgroup_v2() {
        let read = |f: &str| sys::read_cgroup("", path, f);
        let cpu_stat = read("cpu.stat")?;
        let cpu_ns = key_values(&cpu_stat).get("usage_usec").map(|us| us * 1000);
        let memory = number(read("memory.current")).map(|usage| {
            let limit = read("memory.max").and_then(|m| m.trim().parse().ok());
            memory_v2(usage, limit, &read("memory.stat").unwrap_or_default())
        });
        Some(Usage { cpu_ns, memory })
    } else {
        let cpu_ns = number(sys::read_cgroup("cpuacct", path, "cpuacct.usage"));
        let read = |f: &str| sys::read_cgroup("memory", path, f);
        let memory = number(read("memory.usage_in_bytes")).map(|usage| {
            let limit = number(read("memory.limit_in_bytes"));
            memory_v1(usage, limit, &read("memory.stat").unwrap_or_default())
        });
        if cpu_ns.is_none() && memory.is_none() {
            return None;
        }
        Some(Usage { cpu_ns, memory })
    }
}

/// cgroup v1: the hierarchical `total_*` counters of memory.stat (children included).
pub fn memory_v1(usage: u64, limit: Option<u64>, stat: &str) -> Memory {
    let kv = key_values(stat);
    let get = |k: &str| {
        kv.get(format!("total_{k}").as_str())
            .or_else(|| kv.get(k))
            .copied()
    };
    Memory {
        usage,
        working_set: usage.saturating_sub(get("inactive_file").unwrap_or(0)),
        rss: get("rss").unwrap_or(0),
        cache: get("cache"),
        limit: limit.filter(|l| *l < UNLIMITED),
        page_faults: get("pgfault"),
        major_page_faults: get("pgmajfault"),
    }
}

/// cgroup v2: memory.current, memory.max and memory.stat.
pub fn memory_v2(usage: u64, limit: Option<u64>, stat: &str) -> Memory {
    let kv = key_values(stat);
    Memory {
        usage,
        working_set: usage.saturating_sub(kv.get("inactive_file").copied().unwrap_or(0)),
        rss: kv.get("anon").copied().unwrap_or(0),
        cache: kv.get("file").copied(),
        limit,
        page_faults: kv.get("pgfault").copied(),
        major_page_faults: kv.get("pgmajfault").copied(),
    }
}

/// The kernel's USER_HZ: /proc/stat counts in 1/100 s on every Linux architecture.
const NS_PER_TICK: u64 = 10_000_000;

/// The machine: CPU time from /proc/stat, memory from /proc/meminfo and /proc/vmstat.
pub fn machine() -> Usage {
    let cpu_ns = sys::read_proc("stat").and_then(|s| proc_stat_cpu_ns(&s));
    let memory = sys::read_proc("meminfo")
        .map(|m| meminfo_memory(&m, &sys::read_proc("vmstat").unwrap_or_default()));
    Usage { cpu_ns, memory }
}

/// Busy CPU time of all CPUs (everything but idle and iowait) from /proc/stat.
pub fn proc_stat_cpu_ns(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already)
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|i| f.get(*i)).sum();
    Some(busy * NS_PER_TICK)
}

/// The machine's memory as cadvisor's root container reports it: usage = total - free,
/// working set = usage - inactive file pages, limit = the RAM.
pub fn meminfo_memory(meminfo: &str, vmstat: &str) -> Memory {
    let kb: HashMap<&str, u64> = meminfo
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k, v.split_whitespace().next()?.parse::<u64>().ok()? * 1024))
        })
        .collect();
    let get = |k: &str| kb.get(k).copied().unwrap_or(0);
    let usage = get("MemTotal").saturating_sub(get("MemFree"));
    let vm = key_values(vmstat);
    Memory {
        usage,
        working_set: usage.saturating_sub(get("Inactive(file)")),
        rss: get("AnonPages"),
        cache: Some(get("Cached")),
        limit: Some(get("MemTotal")),
        page_faults: vm.get("pgfault").copied(),
        major_page_faults: vm.get("pgmajfault").copied(),
    }
}

pub use component::process::Interface;

/// `/proc/<pid>/net/dev`: the interfaces of that process's network namespace, `lo` left out.
pub fn net_dev(text: &str) -> Vec<Interface> {
    component::process::net_dev(text)
        .into_iter()
        .filter(|i| i.name != "lo")
        .collect()
}

/// The interface of the default route in a `/proc/net/route` table.
pub fn default_route_interface(route: &str) -> Option<String> {
    route.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"00000000") && f.get(7) == Some(&"00000000")).then(|| f[0].to_string())
    })
}

/// When the machine booted (`btime` of /proc/stat), seconds since the epoch.
pub fn boot_time(stat: &str) -> Option<i64> {
    component::process::boot_time(stat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_memory_v1_and_v2() {
        let v1 = "cache 100\nrss 5\ntotal_cache 4096\ntotal_rss 1000\ntotal_inactive_file 300\ntotal_pgfault 7\ntotal_pgmajfault 1\n";
        let m = memory_v1(5000, Some(9223372036854771712), v1);
        assert_eq!(
            m,
            Memory {
                usage: 5000,
                working_set: 4700,
                rss: 1000,
                cache: Some(4096),
                limit: None,
                page_faults: Some(7),
                major_page_faults: Some(1),
            }
        );
        assert_eq!(memory_v1(10, Some(64 << 20), "").limit, Some(64 << 20));
        assert_eq!(
            memory_v1(10, None, "total_inactive_file 20\n").working_set,
            0
        );
        let v2 = "anon 2000\nfile 3000\ninactive_file 1000\npgfault 9\npgmajfault 2\n";
        let m = memory_v2(6000, Some(1 << 30), v2);
        assert_eq!((m.working_set, m.rss, m.limit), (5000, 2000, Some(1 << 30)));
    }

    #[test]
    fn machine_files() {
        let stat = "cpu  100 20 30 4000 50 6 7 8 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nbtime 1700000000\n";
        assert_eq!(
            proc_stat_cpu_ns(stat),
            Some((100 + 20 + 30 + 6 + 7 + 8) * NS_PER_TICK)
        );
        assert_eq!(boot_time(stat), Some(1_700_000_000));
        let meminfo = "MemTotal:       2000 kB\nMemFree:         500 kB\nInactive(file):  100 kB\nAnonPages:       300 kB\n";
        let m = meminfo_memory(meminfo, "pgfault 11\npgmajfault 3\n");
        assert_eq!(m.usage, 1500 * 1024);
        assert_eq!(m.working_set, 1400 * 1024);
        assert_eq!(m.rss, 300 * 1024);
        assert_eq!(m.limit, Some(2000 * 1024));
        assert_eq!(m.page_faults, Some(11));
    }

    #[test]
    fn net_dev_and_routes() {
        let dev = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0\n  eth0:    1296      16    1    0    0     0          0         0      656       8    2    0    0     0       0          0\n";
        assert_eq!(
            net_dev(dev),
            vec![Interface {
                name: "eth0".into(),
                rx_bytes: 1296,
                rx_errors: 1,
                tx_bytes: 656,
                tx_errors: 2,
            }]
        );
        let route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\nens4\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\nens4\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(default_route_interface(route).as_deref(), Some("ens4"));
    }
}
