//! Node pressure, as upstream's eviction manager sees it with its default hard thresholds
//! (`--eviction-hard`, default `memory.available<100Mi,nodefs.available<10%,
//! nodefs.inodesFree<5%`): the Node's `MemoryPressure`, `DiskPressure` and `PIDPressure`
//! conditions are measured (every 10 s; the status is posted when one changes, and every
//! minute), and under memory pressure one pod at a time is evicted: the first of those using
//! more memory than they request (BestEffort pods request none), lowest priority first, then
//! the largest excess. Static pods and pods of a `system-*-critical` priority are never
//! evicted. `memory.available` is the capacity minus the root cgroup's working set
//! ([`super::memory`]); `nodefs` the filesystem of
//! the kubelet's root dir; `pid.available` is the task limit minus the tasks running, and
//! PID pressure evicts through [`super::pids`]. Disk pressure and
//! `limits.ephemeral-storage` evict through [`super::local_storage`].

use std::collections::HashMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

use crate::runtime::Runtime;

/// A threshold on a signal: an absolute amount or a share of the capacity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Limit {
    Amount(u64),
    Percent(f64),
}

impl Limit {
    pub(crate) fn breached(self, available: u64, capacity: u64) -> bool {
        match self {
            Limit::Amount(a) => available < a,
            Limit::Percent(p) => capacity > 0 && (available as f64) < capacity as f64 * p / 100.0,
        }
    }
}

/// `--eviction-hard`.
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    pub memory: Option<Limit>,
    pub nodefs: Option<Limit>,
    pub nodefs_inodes: Option<Limit>,
    pub pids: Option<Limit>,
}

/// Upstream's default hard eviction thresholds (imagefs is the same filesystem here).
pub const DEFAULT_EVICTION_HARD: &str =
    "memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%";

impl Thresholds {
    /// `signal<quantity|percent` pairs, comma separated (upstream's syntax).
    pub fn parse(s: &str) -> Result<Thresholds, String> {
        let mut t = Thresholds {
            memory: None,
            nodefs: None,
            nodefs_inodes: None,
            pids: None,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (signal, value) = part
                .split_once('<')
                .ok_or_else(|| format!("{part:?}: want <signal><<quantity or percent>"))?;
            let limit = match value.strip_suffix('%') {
                Some(p) => Limit::Percent(
                    p.parse()
                        .map_err(|_| format!("{part:?}: {value:?} is not a percentage"))?,
                ),
                None => Limit::Amount(
                    crate::pod::spec::parse_quantity(value)
                        .ok_or_else(|| format!("{part:?}: {value:?} is not a quantity"))?
                        as u64,
                ),
            };
            match signal {
                "memory.available" => t.memory = Some(limit),
                "nodefs.available" | "imagefs.available" => t.nodefs = Some(limit),
                "nodefs.inodesFree" | "imagefs.inodesFree" => t.nodefs_inodes = Some(limit),
                "pid.available" => t.pids = Some(limit),
                other => return Err(format!("unknown eviction signal {other:?}")),
            }
        }
        Ok(t)
    }

    /// Which pressures `s` shows.
    pub fn pressure(&self, s: &Signals) -> Pressure {
        let hit =
            |l: Option<Limit>, avail: u64, cap: u64| l.is_some_and(|l| l.breached(avail, cap));
        Pressure {
            memory: hit(self.memory, s.memory_available, s.memory_capacity),
            disk: hit(self.nodefs, s.nodefs_available, s.nodefs_capacity)
                || hit(self.nodefs_inodes, s.inodes_free, s.inodes),
            pid: hit(self.pids, s.pids_available, s.pid_max),
        }
    }
}

/// The signals a threshold may be set on, in [`Thresholds::get`]'s order.
pub const SIGNALS: [&str; 4] = [
    "memory.available",
    "nodefs.available",
    "nodefs.inodesFree",
    "pid.available",
];

impl Thresholds {
    /// The threshold on signal `i` of [`SIGNALS`].
    pub fn get(&self, i: usize) -> Option<Limit> {
        [self.memory, self.nodefs, self.nodefs_inodes, self.pids][i]
    }

    fn set(&mut self, i: usize, l: Option<Limit>) {
        match i {
            0 => self.memory = l,
            1 => self.nodefs = l,
            2 => self.nodefs_inodes = l,
            _ => self.pids = l,
        }
    }

    fn none() -> Thresholds {
        Thresholds {
            memory: None,
            nodefs: None,
            nodefs_inodes: None,
            pids: None,
        }
    }
}

/// `--eviction-soft` with `--eviction-soft-grace-period`: a soft threshold makes its
/// pressure condition true at once, as upstream, but evicts only once it has been breached
/// for its grace period without a break.
#[derive(Clone, Debug)]
pub struct Soft {
    thresholds: Thresholds,
    grace: [std::time::Duration; 4],
    since: [Option<std::time::Instant>; 4],
}

impl Soft {
    /// `soft` in `--eviction-hard`'s syntax, `grace` as `signal=duration,...` (Go
    /// durations); every soft threshold needs a grace period (upstream's rule).
    pub fn parse(soft: &str, grace: &str) -> Result<Soft, String> {
        let thresholds = Thresholds::parse(soft)?;
        let mut periods = [None; 4];
        for part in grace.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (signal, d) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: want <signal>=<duration>"))?;
            let signal = signal.replace("imagefs.", "nodefs.");
            let i = SIGNALS
                .iter()
                .position(|s| *s == signal)
                .ok_or_else(|| format!("unknown eviction signal {signal:?}"))?;
            periods[i] = Some(
                super::config_file::parse_go_duration(d).map_err(|e| format!("{part:?}: {e}"))?,
            );
        }
        let mut grace = [std::time::Duration::ZERO; 4];
        for (i, signal) in SIGNALS.iter().enumerate() {
            if thresholds.get(i).is_some() {
                grace[i] = periods[i].ok_or_else(|| {
                    format!(
                        "grace period must be specified for the soft eviction threshold {signal}"
                    )
                })?;
            }
        }
        Ok(Soft {
            thresholds,
            grace,
            since: [None; 4],
        })
    }

    /// No soft thresholds.
    pub fn none() -> Soft {
        Soft {
            thresholds: Thresholds::none(),
            grace: [std::time::Duration::ZERO; 4],
            since: [None; 4],
        }
    }

    /// With `hard` and signals `s` observed at `now`: the pressures the Node reports (hard or
    /// soft thresholds met) and the thresholds to evict by (each signal's hard threshold if
    /// met, else its soft one once met for its grace period).
    pub fn observe(
        &mut self,
        hard: &Thresholds,
        s: &Signals,
        now: std::time::Instant,
    ) -> (Pressure, Thresholds) {
        let mut met = Thresholds::none();
        let mut act = Thresholds::none();
        for i in 0..SIGNALS.len() {
            let h = hard.get(i).filter(|l| breached(i, *l, s));
            let soft = self.thresholds.get(i).filter(|l| breached(i, *l, s));
            self.since[i] = soft.and(self.since[i].or(Some(now)));
            met.set(i, h.or(soft));
            let grace_over = self.since[i].is_some_and(|t| now.duration_since(t) >= self.grace[i]);
            act.set(i, h.or(soft.filter(|_| grace_over)));
        }
        (met.pressure(s), act)
    }
}

fn breached(i: usize, l: Limit, s: &Signals) -> bool {
    let (available, capacity) = [
        (s.memory_available, s.memory_capacity),
        (s.nodefs_available, s.nodefs_capacity),
        (s.inodes_free, s.inodes),
        (s.pids_available, s.pid_max),
    ][i];
    l.breached(available, capacity)
}

/// The measured signals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Signals {
    pub memory_available: u64,
    pub memory_capacity: u64,
    pub nodefs_available: u64,
    pub nodefs_capacity: u64,
    pub inodes_free: u64,
    pub inodes: u64,
    pub pids_available: u64,
    pub pid_max: u64,
}

/// Read the signals now (the node filesystem is the one holding `root_dir`).
pub fn observe(root_dir: &Path) -> Signals {
    let fs = crate::sys::statvfs(root_dir).unwrap_or_default();
    let (pids_available, pid_max) = super::pids::observe();
    let (memory_available, memory_capacity) = super::memory::observe();
    Signals {
        memory_available,
        memory_capacity,
        nodefs_available: fs.available,
        nodefs_capacity: fs.capacity,
        inodes_free: fs.inodes_free,
        inodes: fs.inodes,
        pids_available,
        pid_max,
    }
}

/// The node's pressures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
    pub pid: bool,
}

/// The Node's conditions for `pressure` (Ready besides), with upstream's reasons and
/// messages; `since` keeps each condition's last transition (updated here).
pub fn conditions(
    pressure: Pressure,
    since: &mut HashMap<&'static str, (bool, jiff::Timestamp)>,
) -> Value {
    let now = jiff::Timestamp::now();
    let mut cond = |t: &'static str, on: bool, yes: (&str, &str), no: (&str, &str)| {
        let at = since.entry(t).or_insert((on, now));
        if at.0 != on {
            *at = (on, now);
        }
        let (reason, message) = if on { yes } else { no };
        json!({"type": t, "status": if on { "True" } else { "False" }, "reason": reason,
               "message": message, "lastHeartbeatTime": now.to_string(),
               "lastTransitionTime": at.1.to_string()})
    };
    json!([
        cond(
            "MemoryPressure",
            pressure.memory,
            (
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available"
            ),
            (
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available"
            ),
        ),
        cond(
            "DiskPressure",
            pressure.disk,
            ("KubeletHasDiskPressure", "kubelet has disk pressure"),
            ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ),
        cond(
            "PIDPressure",
            pressure.pid,
            (
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available"
            ),
            (
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available"
            ),
        ),
        cond(
            "Ready",
            true,
            ("KubeletReady", "kubelet is posting ready status"),
            ("", ""),
        ),
    ])
}

/// Priorities at or above this (`system-cluster-critical`) are never evicted.
const CRITICAL_PRIORITY: i32 = 2_000_000_000;

/// Bytes as upstream's messages print them (`51200Ki`).
fn ki(bytes: u64) -> String {
    format!("{}Ki", bytes / 1024)
}

/// A pod the eviction manager may evict: still running, neither static nor of a
/// `system-*-critical` priority; its uid and priority.
pub(crate) fn evictable(p: &Pod) -> Option<(String, i32)> {
    if matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return None;
    }
    let static_pod = p
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::static_pod::source::SOURCE_ANNOTATION))
        .is_some_and(|s| s != "api");
    let priority = p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
    if static_pod || priority >= CRITICAL_PRIORITY {
        return None;
    }
    Some((p.metadata.uid.clone()?, priority))
}

/// Under memory pressure: the pod to evict among `pods` (with their current status) and
/// upstream's message for it, or None.
pub fn memory_victim(
    rt: &Runtime,
    pods: &[Pod],
    limit: Limit,
    signals: &Signals,
) -> Option<(String, String)> {
    let mut ranked: Vec<(bool, i32, i64, &Pod, u64)> = Vec::new();
    for p in pods {
        let Some((uid, priority)) = evictable(p) else {
            continue;
        };
        let usage = crate::stats::read::cgroup(&rt.cgroup_of_pod(&uid))
            .and_then(|u| u.memory)
            .map_or(0, |m| m.working_set);
        let request = crate::pod::admit::pod_requests(p).1.max(0) as u64;
        let excess = usage as i64 - request as i64;
        ranked.push((usage > request, priority, excess, p, usage));
    }
    // exceeding requests first, then lower priority, then the larger excess
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(b.2.cmp(&a.2)));
    let (_, _, _, pod, _) = ranked.first()?;
    let threshold = match limit {
        Limit::Amount(a) => ki(a),
        Limit::Percent(p) => format!("{p}%"),
    };
    let mut message = format!(
        "The node was low on resource: memory. Threshold quantity: {threshold}, available: {}. ",
        ki(signals.memory_available)
    );
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref());
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let id = statuses
            .into_iter()
            .flatten()
            .find(|s| s.name == c.name)
            .and_then(|s| s.container_id.as_deref())
            .map(|id| id.trim_start_matches("containerd://").to_string());
        let used = id
            .and_then(|id| crate::stats::read::cgroup(&format!("{}/{id}", rt.cgroup_of_pod(uid))))
            .and_then(|u| u.memory)
            .map_or(0, |m| m.working_set);
        let request = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref().or(r.limits.as_ref()))
            .and_then(|r| r.get("memory"))
            .map_or_else(|| "0".to_string(), |q| q.0.clone());
        let requested = crate::pod::spec::parse_quantity(&request).unwrap_or(0.0) as u64;
        if used > requested {
            message.push_str(&format!(
                "Container {} was using {}, request is {request}, has larger consumption of memory. ",
                c.name,
                ki(used)
            ));
        }
    }
    Some((uid.to_string(), message.trim_end().to_string()))
}

/// Pods whose emptyDir volumes hold more than their `sizeLimit`: evicted whatever the
/// node's pressure, as upstream's local storage eviction, with its message (`Usage of
/// EmptyDir volume "scratch" exceeds the limit "1Mi". `). `(uid, message)` for each.
pub fn over_size_limit(rt: &Runtime, pods: &[Pod]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in pods {
        if matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) {
            continue;
        }
        let Some(uid) = p.metadata.uid.as_deref() else {
            continue;
        };
        let volumes = p.spec.iter().flat_map(|s| s.volumes.iter().flatten());
        for v in volumes {
            let Some(limit) = v.empty_dir.as_ref().and_then(|e| e.size_limit.as_ref()) else {
                continue;
            };
            let Some(bytes) = crate::pod::spec::parse_quantity(&limit.0) else {
                continue;
            };
            let dir = rt
                .config()
                .pod_dir(uid)
                .join("volumes")
                .join(crate::volume::EMPTY_DIR)
                .join(&v.name);
            let used = crate::sys::disk_usage(&dir).map_or(0, |(b, _)| b);
            if used as f64 > bytes {
                out.push((
                    uid.to_string(),
                    format!(
                        "Usage of EmptyDir volume {:?} exceeds the limit {:?}. ",
                        v.name, limit.0
                    ),
                ));
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_and_decide() {
        let t = Thresholds::parse(DEFAULT_EVICTION_HARD).expect("default");
        assert_eq!(t.memory, Some(Limit::Amount(100 << 20)));
        assert_eq!(t.nodefs, Some(Limit::Percent(10.0)));
        let fine = Signals {
            memory_available: 1 << 30,
            memory_capacity: 4 << 30,
            nodefs_available: 50,
            nodefs_capacity: 100,
            inodes_free: 50,
            inodes: 100,
            pids_available: 1000,
            pid_max: 4096,
        };
        assert_eq!(t.pressure(&fine), Pressure::default());
        let low_memory = Signals {
            memory_available: 50 << 20,
            ..fine
        };
        assert!(t.pressure(&low_memory).memory);
        let full_disk = Signals {
            nodefs_available: 5,
            ..fine
        };
        assert!(t.pressure(&full_disk).disk && !t.pressure(&full_disk).memory);
        let no_inodes = Signals {
            inodes_free: 4,
            ..fine
        };
        assert!(t.pressure(&no_inodes).disk);
        // no pid threshold by default
        let few_pids = Signals {
            pids_available: 1,
            ..fine
        };
        assert!(!t.pressure(&few_pids).pid);
        let t = Thresholds::parse("pid.available<10%").expect("pids");
        assert!(t.pressure(&few_pids).pid);
        for bad in [
            "memory.available>1Gi",
            "cpu.available<1",
            "memory.available<lots",
            "nodefs.available<x%",
        ] {
            assert!(Thresholds::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn soft_thresholds_press_at_once_and_evict_after_their_grace_period() {
        use std::time::{Duration, Instant};
        let hard = Thresholds::parse("memory.available<100Mi").expect("hard");
        assert_eq!(
            Soft::parse("memory.available<1Gi", "").unwrap_err(),
            "grace period must be specified for the soft eviction threshold memory.available"
        );
        assert!(Soft::parse("memory.available<1Gi", "memory.available=1x").is_err());
        assert!(Soft::parse("", "cpu.available=1s").is_err());
        let mut soft = Soft::parse("memory.available<1Gi", "memory.available=1m30s").expect("soft");
        let signals = Signals {
            memory_available: 512 << 20,
            memory_capacity: 4 << 30,
            nodefs_available: 50,
            nodefs_capacity: 100,
            inodes_free: 50,
            inodes: 100,
            pids_available: 1000,
            pid_max: 4096,
        };
        let t0 = Instant::now();
        let (pressure, act) = soft.observe(&hard, &signals, t0);
        assert!(pressure.memory, "the condition is met at once");
        assert_eq!(act.memory, None, "no eviction within the grace period");
        let (_, act) = soft.observe(&hard, &signals, t0 + Duration::from_secs(89));
        assert_eq!(act.memory, None);
        let (_, act) = soft.observe(&hard, &signals, t0 + Duration::from_secs(90));
        assert_eq!(act.memory, Some(Limit::Amount(1 << 30)));
        // a break restarts the grace period
        let plenty = Signals {
            memory_available: 2 << 30,
            ..signals
        };
        let (pressure, _) = soft.observe(&hard, &plenty, t0 + Duration::from_secs(91));
        assert!(!pressure.memory);
        let (_, act) = soft.observe(&hard, &signals, t0 + Duration::from_secs(100));
        assert_eq!(act.memory, None);
        // the hard threshold acts at once
        let starving = Signals {
            memory_available: 50 << 20,
            ..signals
        };
        let (_, act) = soft.observe(&hard, &starving, t0 + Duration::from_secs(101));
        assert_eq!(act.memory, Some(Limit::Amount(100 << 20)));
    }

    #[test]
    fn conditions_keep_their_transition_times() {
        let mut since = HashMap::new();
        let first = conditions(Pressure::default(), &mut since);
        assert_eq!(first[0]["type"], "MemoryPressure");
        assert_eq!(first[0]["status"], "False");
        assert_eq!(first[0]["reason"], "KubeletHasSufficientMemory");
        let t0 = first[0]["lastTransitionTime"].clone();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let same = conditions(Pressure::default(), &mut since);
        assert_eq!(same[0]["lastTransitionTime"], t0);
        let pressed = conditions(
            Pressure {
                memory: true,
                ..Default::default()
            },
            &mut since,
        );
        assert_eq!(pressed[0]["status"], "True");
        assert_eq!(pressed[0]["reason"], "KubeletHasInsufficientMemory");
        assert_ne!(pressed[0]["lastTransitionTime"], t0);
        assert_eq!(
            pressed[1]["lastTransitionTime"],
            same[1]["lastTransitionTime"]
        );
    }
}
