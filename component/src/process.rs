//! The `process_*` metrics every upstream component's `/metrics` carries (Prometheus
//! client_golang's process collector), read from `/proc/self`: CPU time, resident and
//! virtual memory, open and maximum file descriptors, start time, and the bytes the
//! process's network namespace has received and sent. Dashboards and alerts written for
//! upstream components (`process_resident_memory_bytes`, `rate(process_cpu_seconds_total)`)
//! work unchanged.

use std::fmt::Write;

/// Linux's `USER_HZ`: the unit of the CPU times in `/proc/<pid>/stat`, fixed at 100 by the
/// kernel's user ABI.
const USER_HZ: f64 = 100.0;

/// What `/proc/self` says, for [`metrics`].
#[derive(Debug, Default, PartialEq)]
struct Process {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    virtual_max_bytes: Option<u64>,
    open_fds: u64,
    max_fds: Option<u64>,
    start_time: f64,
    received_bytes: u64,
    transmitted_bytes: u64,
}

/// `utime` and `stime` (fields 14 and 15) and `starttime` (22) of a `/proc/<pid>/stat` line;
/// the command (field 2) may hold spaces and parentheses, so fields count after its `)`.
fn stat_times(stat: &str) -> Option<(f64, f64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3
    let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    Some(((field(14)? + field(15)?) / USER_HZ, field(22)? / USER_HZ))
}

/// A `kB` line of `/proc/<pid>/status` (`VmRSS:    1234 kB`), in bytes.
fn status_kb(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

/// The soft limit of a `/proc/<pid>/limits` row (`None`: unlimited or absent).
fn soft_limit(limits: &str, name: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

/// One interface of a `net/dev` table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// `/proc/<pid>/net/dev`: every interface of that process's network namespace.
pub fn net_dev(text: &str) -> Vec<Interface> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            Some(Interface {
                name: name.trim().to_string(),
                rx_bytes: *f.first()?,
                rx_errors: *f.get(2)?,
                tx_bytes: *f.get(8)?,
                tx_errors: *f.get(10)?,
            })
        })
        .collect()
}

/// Received and transmitted bytes summed over every interface (client_golang's totals).
fn net_bytes(dev: &str) -> (u64, u64) {
    net_dev(dev)
        .iter()
        .fold((0, 0), |(r, t), i| (r + i.rx_bytes, t + i.tx_bytes))
}

/// When the machine booted (`btime` of /proc/stat), seconds since the epoch.
pub fn boot_time(stat: &str) -> Option<i64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/self/{name}")).unwrap_or_default()
}

fn current() -> Process {
    let (cpu_seconds, started_after_boot) = stat_times(&read("stat")).unwrap_or_default();
    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| boot_time(&s))
        .unwrap_or_default() as f64;
    let status = read("status");
    let limits = read("limits");
    let (received_bytes, transmitted_bytes) = net_bytes(&read("net/dev"));
    Process {
        cpu_seconds,
        resident_bytes: status_kb(&status, "VmRSS:").unwrap_or_default(),
        virtual_bytes: status_kb(&status, "VmSize:").unwrap_or_default(),
        virtual_max_bytes: soft_limit(&limits, "Max address space"),
        open_fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64),
        max_fds: soft_limit(&limits, "Max open files"),
        start_time: boot_time + started_after_boot,
        received_bytes,
        transmitted_bytes,
    }
}

/// This process's `process_*` metrics in the Prometheus text format, with client_golang's
/// names and help texts (an unlimited maximum is reported as client_golang does, 2^64-1).
pub fn metrics() -> String {
    render(&current())
}

fn render(p: &Process) -> String {
    let unlimited =
        |v: Option<u64>| v.map_or_else(|| "1.8446744073709552e+19".into(), |v| v.to_string());
    let families: [(&str, &str, &str, String); 9] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds.to_string(),
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            unlimited(p.max_fds),
        ),
        (
            "process_network_receive_bytes_total",
            "counter",
            "Number of bytes received by the process over the network.",
            p.received_bytes.to_string(),
        ),
        (
            "process_network_transmit_bytes_total",
            "counter",
            "Number of bytes sent by the process over the network.",
            p.transmitted_bytes.to_string(),
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            p.open_fds.to_string(),
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            p.resident_bytes.to_string(),
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            p.start_time.to_string(),
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            p.virtual_bytes.to_string(),
        ),
        (
            "process_virtual_memory_max_bytes",
            "gauge",
            "Maximum amount of virtual memory available in bytes.",
            unlimited(p.virtual_max_bytes),
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in families {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_as_the_kernel_writes_them() {
        // a command with spaces and a parenthesis; utime 250, stime 50, starttime 12345
        let stat =
            "42 (kaze (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 12345 1000 200";
        assert_eq!(stat_times(stat), Some((3.0, 123.45)));
        let status = "Name:\tkaze\nVmSize:\t  204800 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(status_kb(status, "VmRSS:"), Some(1024 * 1024));
        assert_eq!(status_kb(status, "VmSize:"), Some(200 * 1024 * 1024));
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            20000                40000                files     \n\
                      Max address space         unlimited            unlimited            bytes     \n";
        assert_eq!(soft_limit(limits, "Max open files"), Some(20000));
        assert_eq!(soft_limit(limits, "Max address space"), None);
        let dev = "Inter-|   Receive |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes\n\
                   \x20   lo: 100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0\n\
                   \x20 eth0: 2000 5 0 0 0 0 0 0 300 4 0 0 0 0 0 0\n";
        assert_eq!(net_bytes(dev), (2100, 400));
    }

    #[test]
    fn this_process_is_measured() {
        let p = current();
        assert!(
            p.resident_bytes > 0 && p.virtual_bytes >= p.resident_bytes,
            "{p:?}"
        );
        assert!(p.open_fds > 0, "{p:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        assert!(
            p.start_time <= now + 1.0 && p.start_time > now - 86_400.0,
            "started {} vs now {now}",
            p.start_time
        );
        let text = metrics();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_open_fds",
            "process_max_fds",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")) && text.contains(&format!("\n{name} ")),
                "{name} in\n{text}"
            );
        }
    }
}
