//! What the scraper keeps of each node's kubelet: the two latest cumulative CPU samples and
//! the latest memory working set of the node and of each container, as metrics-server's
//! storage does, and the usage computed from them (CPU as the rate between the two samples).

use std::collections::HashMap;
use std::sync::RwLock;

/// One sample of a node or container, as `/metrics/resource` reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Cumulative CPU time, core-seconds.
    pub cpu_seconds: f64,
    /// Working set, bytes.
    pub memory_bytes: u64,
    /// When the CPU sample was taken, milliseconds since the epoch.
    pub at_ms: i64,
    /// The container's start (seconds since the epoch); 0 for nodes or when not reported.
    /// A different start means the container restarted: its counter began again.
    pub start: i64,
}

/// The latest point and the one before it (if it can be used for a rate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    pub prev: Option<Point>,
    pub last: Point,
}

impl Pair {
    /// Fold a new sample in, as metrics-server does: a newer sample pushes the stored one to
    /// `prev`; the same sample again keeps the stored `prev`; a restarted container starts
    /// over.
    pub fn next(old: Option<&Pair>, new: Point) -> Pair {
        let prev = old.and_then(|old| {
            if old.last.start != new.start {
                None
            } else if new.at_ms > old.last.at_ms {
                Some(old.last)
            } else {
                old.prev.filter(|p| p.at_ms < new.at_ms)
            }
        });
        Pair { prev, last: new }
    }

    /// CPU (nanocores), memory (bytes), timestamp (ms) and window (ms), if two samples are
    /// known and the counter did not go backwards.
    pub fn usage(&self) -> Option<Usage> {
        let prev = self.prev?;
        let window_ms = self.last.at_ms - prev.at_ms;
        let used = self.last.cpu_seconds - prev.cpu_seconds;
        if window_ms <= 0 || used < 0.0 {
            return None;
        }
        Some(Usage {
            nano_cores: (used * 1e9 / (window_ms as f64 / 1e3)) as u64,
            memory_bytes: self.last.memory_bytes,
            at_ms: self.last.at_ms,
            window_ms,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub nano_cores: u64,
    pub memory_bytes: u64,
    pub at_ms: i64,
    pub window_ms: i64,
}

/// A pod's metrics: its containers' usage (sorted by name), and the earliest of their
/// timestamps with that sample's window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodUsage {
    pub containers: Vec<(String, Usage)>,
    pub at_ms: i64,
    pub window_ms: i64,
}

/// A container by namespace, pod and name.
pub type ContainerKey = (String, String, String);

/// One scrape of one kubelet, parsed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Scrape {
    pub node: Option<Point>,
    pub containers: HashMap<ContainerKey, Point>,
}

#[derive(Debug, Default)]
struct NodeEntry {
    node: Option<Pair>,
    containers: HashMap<ContainerKey, Pair>,
}

/// Every node's latest samples.
#[derive(Debug, Default)]
pub struct Samples {
    nodes: RwLock<HashMap<String, NodeEntry>>,
}

impl Samples {
    /// Fold in a scrape of `node`; containers it no longer reports are forgotten.
    pub fn store(&self, node: &str, scrape: Scrape) {
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        let old = nodes.remove(node).unwrap_or_default();
        let entry = NodeEntry {
            node: scrape.node.map(|p| Pair::next(old.node.as_ref(), p)),
            containers: scrape
                .containers
                .into_iter()
                .map(|(k, p)| {
                    let pair = Pair::next(old.containers.get(&k), p);
                    (k, pair)
                })
                .collect(),
        };
        nodes.insert(node.to_string(), entry);
    }

    /// Forget a node whose kubelet could not be scraped: its metrics are gone until two
    /// scrapes succeed again, as metrics-server keeps only what the last round returned.
    pub fn forget(&self, node: &str) {
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        nodes.remove(node);
    }

    /// Forget nodes not in `keep` (deleted nodes).
    pub fn retain(&self, keep: &[String]) {
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        nodes.retain(|n, _| keep.contains(n));
    }

    pub fn node(&self, node: &str) -> Option<Usage> {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        nodes.get(node)?.node?.usage()
    }

    /// The usage of each container of pod `ns/name`, as metrics-server: `None` unless every
    /// container the kubelet reports for the pod has two samples.
    pub fn pod(&self, ns: &str, name: &str) -> Option<PodUsage> {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for entry in nodes.values() {
            for ((cns, pod, container), pair) in &entry.containers {
                if cns == ns && pod == name {
                    out.push((container.clone(), pair.usage()?));
                }
            }
        }
        if out.is_empty() {
            return None;
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        let earliest = out.iter().map(|(_, u)| *u).min_by_key(|u| u.at_ms)?;
        Some(PodUsage {
            containers: out,
            at_ms: earliest.at_ms,
            window_ms: earliest.window_ms,
        })
    }
}

// === Prometheus text ===

/// One sample line: name, labels, value, timestamp (ms).
#[derive(Debug, Clone, PartialEq)]
struct Line {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
    at_ms: Option<i64>,
}

fn parse_line(line: &str) -> Option<Line> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = HashMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let end;
        loop {
            // skip separators
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            let (i, c) = chars.next()?;
            if c == '}' {
                end = i + 1;
                break;
            }
            let mut key = String::from(c);
            loop {
                let (_, c) = chars.next()?;
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                let (_, c) = chars.next()?;
                match c {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    other => value.push(other),
                }
            }
            labels.insert(key.trim().to_string(), value);
        }
        rest = &after[end..];
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next()?.parse::<f64>().ok()?;
    let at_ms = fields.next().and_then(|t| t.parse::<i64>().ok());
    Some(Line {
        name,
        labels,
        value,
        at_ms,
    })
}

/// Parse a kubelet's `/metrics/resource`. A container needs both its CPU and memory
/// samples to count (as metrics-server); `now_ms` stands in for missing timestamps.
pub fn parse(text: &str, now_ms: i64) -> Scrape {
    #[derive(Default)]
    struct Partial {
        cpu: Option<(f64, i64)>,
        memory: Option<u64>,
        start: i64,
    }
    let mut node = Partial::default();
    let mut containers: HashMap<ContainerKey, Partial> = HashMap::new();
    for line in text.lines().filter_map(parse_line) {
        let key = || -> Option<ContainerKey> {
            Some((
                line.labels.get("namespace")?.clone(),
                line.labels.get("pod")?.clone(),
                line.labels.get("container")?.clone(),
            ))
        };
        let at = line.at_ms.unwrap_or(now_ms);
        match line.name.as_str() {
            "node_cpu_usage_seconds_total" => node.cpu = Some((line.value, at)),
            "node_memory_working_set_bytes" => node.memory = Some(line.value as u64),
            "container_cpu_usage_seconds_total" => {
                if let Some(k) = key() {
                    containers.entry(k).or_default().cpu = Some((line.value, at));
                }
            }
            "container_memory_working_set_bytes" => {
                if let Some(k) = key() {
                    containers.entry(k).or_default().memory = Some(line.value as u64);
                }
            }
            "container_start_time_seconds" => {
                if let Some(k) = key() {
                    containers.entry(k).or_default().start = line.value as i64;
                }
            }
            _ => {}
        }
    }
    let point = |p: Partial| -> Option<Point> {
        let (cpu_seconds, at_ms) = p.cpu?;
        Some(Point {
            cpu_seconds,
            memory_bytes: p.memory?,
            at_ms,
            start: p.start,
        })
    };
    Scrape {
        node: point(node),
        containers: containers
            .into_iter()
            .filter_map(|(k, p)| Some((k, point(p)?)))
            .collect(),
    }
}

// === Quantities and durations as upstream prints them ===

/// Nanocores as upstream's canonical DecimalSI quantity (`250m`, `1`, `123456n`).
pub fn cpu_quantity(nano: u64) -> String {
    if nano == 0 {
        return "0".into();
    }
    for (div, suffix) in [
        (1_000_000_000, ""),
        (1_000_000, "m"),
        (1_000, "u"),
        (1, "n"),
    ] {
        if nano.is_multiple_of(div) {
            return format!("{}{suffix}", nano / div);
        }
    }
    unreachable!("every number divides by 1")
}

/// Bytes as upstream's canonical BinarySI quantity (`1024Ki` is `1Mi`; `1000` stays).
pub fn memory_quantity(bytes: u64) -> String {
    if bytes == 0 {
        return "0".into();
    }
    let mut value = bytes;
    let mut unit = 0;
    const UNITS: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    while value.is_multiple_of(1024) && unit + 1 < UNITS.len() {
        value /= 1024;
        unit += 1;
    }
    format!("{value}{}", UNITS[unit])
}

/// Milliseconds as Go's `time.Duration.String()` (`15.012s`, `1m0.5s`, `800ms`).
pub fn go_duration(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let neg = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    if ms < 1000 {
        return format!("{neg}{ms}ms");
    }
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let mut secs = s.to_string();
    if frac > 0 {
        let f = format!("{frac:03}");
        secs.push('.');
        secs.push_str(f.trim_end_matches('0'));
    }
    match (h, m) {
        (0, 0) => format!("{neg}{secs}s"),
        (0, m) => format!("{neg}{m}m{secs}s"),
        (h, m) => format!("{neg}{h}h{m}m{secs}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container="burn",namespace="default",pod="web-1"} 12.5 1700000000000
container_cpu_usage_seconds_total{container="only-cpu",namespace="default",pod="web-2"} 1 1700000000000
# TYPE container_memory_working_set_bytes gauge
container_memory_working_set_bytes{container="burn",namespace="default",pod="web-1"} 2097152 1700000000000
container_start_time_seconds{container="burn",namespace="default",pod="web-1"} 1699999000
node_cpu_usage_seconds_total 100.25 1700000000100
node_memory_working_set_bytes 1048576000 1700000000100
resource_scrape_error 0
"#;

    #[test]
    fn parses_what_the_kubelet_serves() {
        let s = parse(TEXT, 5);
        assert_eq!(
            s.node,
            Some(Point {
                cpu_seconds: 100.25,
                memory_bytes: 1048576000,
                at_ms: 1700000000100,
                start: 0
            })
        );
        let key = ("default".into(), "web-1".into(), "burn".into());
        assert_eq!(
            s.containers.get(&key),
            Some(&Point {
                cpu_seconds: 12.5,
                memory_bytes: 2097152,
                at_ms: 1700000000000,
                start: 1699999000
            })
        );
        // no memory sample: not a point
        assert_eq!(s.containers.len(), 1);
    }

    #[test]
    fn label_values_with_escapes() {
        let l = parse_line(r#"m{a="x\"y",b="c\\d"} 3"#).expect("line");
        assert_eq!(l.labels["a"], "x\"y");
        assert_eq!(l.labels["b"], "c\\d");
        assert_eq!((l.value, l.at_ms), (3.0, None));
    }

    fn point(cpu: f64, at_ms: i64, start: i64) -> Point {
        Point {
            cpu_seconds: cpu,
            memory_bytes: 1024,
            at_ms,
            start,
        }
    }

    #[test]
    fn cpu_is_the_rate_between_two_samples() {
        let first = Pair::next(None, point(10.0, 1_000, 7));
        assert_eq!(first.usage(), None, "one sample is no rate");
        let second = Pair::next(Some(&first), point(10.5, 3_000, 7));
        let u = second.usage().expect("usage");
        assert_eq!(u.nano_cores, 250_000_000);
        assert_eq!((u.at_ms, u.window_ms, u.memory_bytes), (3_000, 2_000, 1024));
        // the same sample scraped again keeps its predecessor
        let again = Pair::next(Some(&second), point(10.5, 3_000, 7));
        assert_eq!(again.usage(), second.usage());
        // a restarted container starts over
        let restarted = Pair::next(Some(&second), point(0.1, 5_000, 9));
        assert_eq!(restarted.usage(), None);
    }

    #[test]
    fn pods_need_every_container_sampled_twice() {
        let samples = Samples::default();
        let mut scrape = Scrape::default();
        let a = ("ns".to_string(), "p".to_string(), "a".to_string());
        let b = ("ns".to_string(), "p".to_string(), "b".to_string());
        scrape.containers.insert(a.clone(), point(1.0, 1_000, 1));
        scrape.containers.insert(b.clone(), point(1.0, 1_000, 1));
        samples.store("n1", scrape.clone());
        assert_eq!(samples.pod("ns", "p"), None);
        let mut next = Scrape::default();
        next.containers.insert(a, point(2.0, 2_000, 1));
        next.containers.insert(b.clone(), point(1.5, 3_000, 1));
        samples.store("n1", next);
        let PodUsage {
            containers,
            at_ms: at,
            window_ms: window,
        } = samples.pod("ns", "p").expect("pod");
        assert_eq!(containers[0].0, "a");
        assert_eq!(containers[0].1.nano_cores, 1_000_000_000);
        assert_eq!(containers[1].1.nano_cores, 250_000_000);
        assert_eq!(
            (at, window),
            (2_000, 1_000),
            "the earliest container's sample"
        );
        samples.retain(&["n1".to_string()]);
        assert!(samples.pod("ns", "p").is_some(), "n1 still exists");
        samples.forget("n1");
        assert_eq!(
            samples.pod("ns", "p"),
            None,
            "a failed scrape drops the node's metrics"
        );
    }

    #[test]
    fn quantities_as_upstream_prints_them() {
        assert_eq!(cpu_quantity(0), "0");
        assert_eq!(cpu_quantity(2_000_000_000), "2");
        assert_eq!(cpu_quantity(250_000_000), "250m");
        assert_eq!(cpu_quantity(1_500), "1500n");
        assert_eq!(cpu_quantity(123_456_789), "123456789n");
        assert_eq!(memory_quantity(1_048_576), "1Mi");
        assert_eq!(memory_quantity(2_048 * 3), "6Ki");
        assert_eq!(memory_quantity(1_000), "1000");
        assert_eq!(go_duration(15_012), "15.012s");
        assert_eq!(go_duration(60_500), "1m0.5s");
        assert_eq!(go_duration(800), "800ms");
        assert_eq!(go_duration(20_000), "20s");
    }
}
