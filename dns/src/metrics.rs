//! Prometheus text metrics, kept by hand: a few counters and histograms do not justify a
//! metrics framework on a 2-core budget.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Query types counted separately; everything else is `OTHER`. A fixed table of atomics
/// keeps the per-query cost to one add (no lock, no allocation).
pub const QTYPES: [&str; 11] = [
    "A", "AAAA", "SRV", "PTR", "CNAME", "TXT", "SOA", "NS", "MX", "ANY", "OTHER",
];
pub const RCODES: [&str; 8] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "OTHER",
];

/// Upper bounds in seconds, covering cache hits (tens of µs) to slow upstreams.
const QUERY_BUCKETS: [f64; 12] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0,
];
/// API change → record served: the goal is under 100 ms.
const PROGRAMMING_BUCKETS: [f64; 9] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0];

pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        self.observe_n(d, 1);
    }

    /// `n` observations of the same duration (the queries of one UDP batch).
    pub fn observe_n(&self, d: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let secs = d.as_secs_f64();
        // buckets are stored non-cumulatively and summed on render
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(n, Ordering::Relaxed);
        }
        self.count.fetch_add(n, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos() as u64 * n, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

pub struct Metrics {
    /// `[qtype index * RCODES.len() + rcode index]` → count
    queries: Vec<AtomicU64>,
    pub query_duration: Histogram,
    pub programming_duration: Histogram,
    forward_cache_hits: AtomicU64,
    forward_cache_misses: AtomicU64,
    answer_cache_hits: AtomicU64,
    answer_cache_misses: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            queries: (0..QTYPES.len() * RCODES.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            query_duration: Histogram::new(&QUERY_BUCKETS),
            programming_duration: Histogram::new(&PROGRAMMING_BUCKETS),
            forward_cache_hits: AtomicU64::new(0),
            forward_cache_misses: AtomicU64::new(0),
            answer_cache_hits: AtomicU64::new(0),
            answer_cache_misses: AtomicU64::new(0),
        }
    }
}

/// Number of `(query type, rcode)` counters.
pub(crate) const SLOTS: usize = QTYPES.len() * RCODES.len();

/// Query counts kept by one UDP worker for one batch and added to the shared counters once
/// per batch: one atomic add per query from every core would contend on the same lines.
pub(crate) struct Tally {
    counts: [u32; SLOTS],
    total: u64,
    answer_cache: [u64; 2],
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            counts: [0; SLOTS],
            total: 0,
            answer_cache: [0; 2],
        }
    }
}

impl Tally {
    /// One query answered; `slot` from [`slot`].
    pub(crate) fn add(&mut self, slot: usize) {
        self.counts[slot.min(SLOTS - 1)] += 1;
        self.total += 1;
    }

    /// A cluster question answered from the UDP answer cache (`true`) or computed and
    /// added to it.
    pub(crate) fn cache_hit(&mut self, hit: bool) {
        self.answer_cache[usize::from(!hit)] += 1;
    }
}

impl Metrics {
    /// Adds `tally` (then empties it), each query having taken `took`.
    pub(crate) fn record_tally(&self, tally: &mut Tally, took: Duration) {
        if tally.total == 0 {
            return;
        }
        self.query_duration.observe_n(took, tally.total);
        for (slot, n) in tally.counts.iter_mut().enumerate() {
            if *n > 0 {
                self.queries[slot].fetch_add(u64::from(*n), Ordering::Relaxed);
                *n = 0;
            }
        }
        tally.total = 0;
        for (counter, n) in [&self.answer_cache_hits, &self.answer_cache_misses]
            .into_iter()
            .zip(tally.answer_cache.iter_mut())
        {
            if *n > 0 {
                counter.fetch_add(*n, Ordering::Relaxed);
                *n = 0;
            }
        }
    }

    pub fn record_query(&self, qtype: &str, rcode: &str, took: Duration) {
        self.query_duration.observe(took);
        self.queries[slot(qtype, rcode)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn cache_hit(&self, hit: bool) {
        let c = if hit {
            &self.forward_cache_hits
        } else {
            &self.forward_cache_misses
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// UDP cluster answers served from the answer cache, and those computed into it.
    pub fn answer_cache(&self) -> (u64, u64) {
        (
            self.answer_cache_hits.load(Ordering::Relaxed),
            self.answer_cache_misses.load(Ordering::Relaxed),
        )
    }

    /// Queries answered so far with this type and rcode.
    pub fn queries(&self, qtype: &str, rcode: &str) -> u64 {
        self.queries[slot(qtype, rcode)].load(Ordering::Relaxed)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP kaze_dns_queries_total DNS queries answered, by query type and response code\n# TYPE kaze_dns_queries_total counter\n");
        for (t, qtype) in QTYPES.iter().enumerate() {
            for (r, rcode) in RCODES.iter().enumerate() {
                let n = self.queries[t * RCODES.len() + r].load(Ordering::Relaxed);
                // absent series read as zero in Prometheus; skip them to keep scrapes small
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "kaze_dns_queries_total{{type=\"{qtype}\",rcode=\"{rcode}\"}} {n}"
                    );
                }
            }
        }
        self.query_duration.render(
            &mut out,
            "kaze_dns_query_duration_seconds",
            "time from request parsed to response sent",
        );
        self.programming_duration.render(
            &mut out,
            "kaze_dns_programming_duration_seconds",
            "time from an API change arriving to its records being served",
        );
        let _ = writeln!(
            out,
            "# HELP kaze_dns_forward_cache_total forwarded queries by cache result\n# TYPE kaze_dns_forward_cache_total counter\nkaze_dns_forward_cache_total{{result=\"hit\"}} {}\nkaze_dns_forward_cache_total{{result=\"miss\"}} {}",
            self.forward_cache_hits.load(Ordering::Relaxed),
            self.forward_cache_misses.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP kaze_dns_answer_cache_total cluster questions over UDP by answer-cache result\n# TYPE kaze_dns_answer_cache_total counter\nkaze_dns_answer_cache_total{{result=\"hit\"}} {}\nkaze_dns_answer_cache_total{{result=\"miss\"}} {}",
            self.answer_cache_hits.load(Ordering::Relaxed),
            self.answer_cache_misses.load(Ordering::Relaxed)
        );
        out
    }
}

/// The counter index of a query type and rcode label (unknown labels count as `OTHER`).
pub(crate) fn slot(qtype: &str, rcode: &str) -> usize {
    let t = QTYPES
        .iter()
        .position(|q| *q == qtype)
        .unwrap_or(QTYPES.len() - 1);
    let r = RCODES
        .iter()
        .position(|c| *c == rcode)
        .unwrap_or(RCODES.len() - 1);
    t * RCODES.len() + r
}
