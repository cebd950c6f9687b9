//! `/healthz` and `/metrics` (Prometheus text format), kube-proxy's metric set under kaze's
//! names.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use tokio_util::sync::CancellationToken;

use crate::{config::ProxyMode, services::ServiceKey, tracker::Change, worker::Worker};

/// How long syncs may keep failing before `/healthz` says so.
pub const UNHEALTHY_AFTER: Duration = Duration::from_secs(60);

const SYNC_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const PROGRAMMING_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug)]
struct Histogram {
    buckets: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(buckets: &'static [f64]) -> Self {
        Histogram {
            buckets,
            counts: vec![0; buckets.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (i, le) in self.buckets.iter().enumerate() {
            if v <= *le {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (le, n) in self.buckets.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

#[derive(Debug)]
struct Inner {
    mode: ProxyMode,
    sync: Histogram,
    programming: Histogram,
    services: usize,
    endpoints: usize,
    syncs: u64,
    sync_errors: u64,
    synced: bool,
    /// When the current streak of failing syncs began.
    failing_since: Option<Instant>,
    /// Name and backend count of every programmed service port.
    services_by_key: BTreeMap<ServiceKey, (String, usize)>,
}

/// The proxy's metrics, shared between the sync loop and the HTTP server.
#[derive(Debug)]
pub struct Metrics(Mutex<Inner>);

impl Metrics {
    pub fn new(mode: ProxyMode) -> Self {
        Metrics(Mutex::new(Inner {
            mode,
            sync: Histogram::new(SYNC_BUCKETS),
            programming: Histogram::new(PROGRAMMING_BUCKETS),
            services: 0,
            endpoints: 0,
            syncs: 0,
            sync_errors: 0,
            synced: false,
            failing_since: None,
            services_by_key: BTreeMap::new(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // a panic while holding it cannot leave the counters invalid
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one sync.
    pub fn synced(
        &self,
        took: Duration,
        services: usize,
        endpoints: usize,
        errors: usize,
        changes: &[Change],
    ) {
        let mut m = self.lock();
        m.sync.observe(took.as_secs_f64());
        m.syncs += 1;
        m.services = services;
        m.endpoints = endpoints;
        for (key, entry) in changes {
            match entry {
                Some(e) => m
                    .services_by_key
                    .insert(*key, (e.name.clone(), e.backends.len())),
                None => m.services_by_key.remove(key),
            };
        }
        if errors == 0 {
            m.synced = true;
            m.failing_since = None;
        } else {
            m.sync_errors += 1;
            m.failing_since.get_or_insert_with(Instant::now);
        }
    }

    pub fn set_mode(&self, mode: ProxyMode) {
        self.lock().mode = mode;
    }

    /// Time from an EndpointSlice's `last-change-trigger-time` to its programming.
    pub fn programmed_after(&self, latency: Duration) {
        self.lock().programming.observe(latency.as_secs_f64());
    }

    /// `/healthz`: `Ok` once a sync has succeeded, unless syncs have been failing for longer
    /// than [`UNHEALTHY_AFTER`] by `now` (kube-proxy's rule, so a stuck proxy is restarted).
    pub fn health(&self, now: Instant) -> Result<(), &'static str> {
        let m = self.lock();
        if !m.synced {
            return Err("not synced yet\n");
        }
        match m.failing_since {
            Some(t) if now.saturating_duration_since(t) > UNHEALTHY_AFTER => {
                Err("syncs have been failing for over a minute\n")
            }
            _ => Ok(()),
        }
    }

    fn render(&self, counters: &[(ServiceKey, crate::ServiceCounters)]) -> String {
        let m = self.lock();
        let mut out = String::new();
        m.sync.render(
            &mut out,
            "kaze_proxy_sync_proxy_rules_duration_seconds",
            "Time one sync of the dataplane took.",
        );
        m.programming.render(
            &mut out,
            "kaze_proxy_network_programming_duration_seconds",
            "Time from an EndpointSlice change (last-change-trigger-time) to the dataplane using it.",
        );
        let gauges = [
            (
                "kaze_proxy_programmed_services",
                "Service ports programmed (cluster IPs and node ports).",
                m.services as u64,
            ),
            (
                "kaze_proxy_programmed_endpoints",
                "Backends programmed, summed over service ports.",
                m.endpoints as u64,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let counters_total = [
            ("kaze_proxy_syncs_total", "Syncs of the dataplane.", m.syncs),
            (
                "kaze_proxy_sync_errors_total",
                "Syncs that left something unprogrammed (retried).",
                m.sync_errors,
            ),
        ];
        for (name, help, v) in counters_total {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP kaze_proxy_mode The dataplane in use.\n# TYPE kaze_proxy_mode gauge\nkaze_proxy_mode{{mode=\"{}\"}} 1",
            m.mode.as_str()
        );
        let name = "kaze_proxy_service_endpoints";
        let _ = writeln!(
            out,
            "# HELP {name} Backends programmed for a service port.\n# TYPE {name} gauge"
        );
        for (key, (svc, n)) in &m.services_by_key {
            let _ = writeln!(out, "{name}{{service=\"{svc}\",address=\"{key}\"}} {n}");
        }
        let families = [
            (
                "kaze_proxy_service_packets_total",
                "Packets through a service (eBPF mode), by direction.",
            ),
            (
                "kaze_proxy_service_bytes_total",
                "IPv4 bytes through a service (eBPF mode), by direction.",
            ),
            (
                "kaze_proxy_service_no_backend_total",
                "New flows refused because the service had no backend (eBPF mode).",
            ),
        ];
        for (i, (name, help)) in families.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (key, c) in counters {
                let svc = m.services_by_key.get(key).map_or("", |(n, _)| n.as_str());
                let labels = format!("service=\"{svc}\",address=\"{key}\"");
                match i {
                    0 => {
                        let _ = writeln!(
                            out,
                            "{name}{{{labels},direction=\"forward\"}} {}",
                            c.fwd_packets
                        );
                        let _ = writeln!(
                            out,
                            "{name}{{{labels},direction=\"reply\"}} {}",
                            c.rev_packets
                        );
                    }
                    1 => {
                        let _ = writeln!(
                            out,
                            "{name}{{{labels},direction=\"forward\"}} {}",
                            c.fwd_bytes
                        );
                        let _ = writeln!(
                            out,
                            "{name}{{{labels},direction=\"reply\"}} {}",
                            c.rev_bytes
                        );
                    }
                    _ => {
                        let _ = writeln!(out, "{name}{{{labels}}} {}", c.no_backend);
                    }
                }
            }
        }
        out
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    worker: Worker,
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    match s.metrics.health(Instant::now()) {
        Ok(()) => (StatusCode::OK, "ok\n"),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn render_metrics(State(s): State<AppState>) -> impl IntoResponse {
    let counters = tokio::time::timeout(Duration::from_secs(5), s.worker.counters())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(&counters) + &component::process::metrics(),
    )
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    worker: Worker,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .with_state(AppState { metrics, worker });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Protocol, ServiceCounters};

    #[test]
    fn renders_histograms_gauges_and_per_service_counters() {
        let m = Metrics::new(ProxyMode::Ebpf);
        let key = ServiceKey {
            address: "10.43.0.10".parse().expect("ip"),
            port: 80,
            protocol: Protocol::Tcp,
        };
        let entry = crate::desired::DesiredService {
            name: "default/web:http".into(),
            backends: (1..=3)
                .map(|i| std::net::SocketAddrV4::new([10, 42, 0, i].into(), 8080))
                .collect(),
            masquerade: false,
            affinity_timeout: None,
            source_ranges: Vec::new(),
            short_circuit: None,
            no_local_endpoints: false,
        };
        m.synced(Duration::from_millis(3), 1, 3, 0, &[(key, Some(entry))]);
        m.programmed_after(Duration::from_millis(40));
        let c = ServiceCounters {
            fwd_packets: 7,
            fwd_bytes: 700,
            rev_packets: 5,
            rev_bytes: 500,
            no_backend: 1,
        };
        let text = m.render(&[(key, c)]);
        for line in [
            "kaze_proxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.002\"} 0",
            "kaze_proxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.005\"} 1",
            "kaze_proxy_sync_proxy_rules_duration_seconds_count 1",
            "kaze_proxy_network_programming_duration_seconds_bucket{le=\"0.05\"} 1",
            "kaze_proxy_programmed_services 1",
            "kaze_proxy_programmed_endpoints 3",
            "kaze_proxy_mode{mode=\"ebpf\"} 1",
            "kaze_proxy_service_endpoints{service=\"default/web:http\",address=\"10.43.0.10:80/tcp\"} 3",
            "kaze_proxy_service_packets_total{service=\"default/web:http\",address=\"10.43.0.10:80/tcp\",direction=\"forward\"} 7",
            "kaze_proxy_service_bytes_total{service=\"default/web:http\",address=\"10.43.0.10:80/tcp\",direction=\"reply\"} 500",
            "kaze_proxy_service_no_backend_total{service=\"default/web:http\",address=\"10.43.0.10:80/tcp\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert_eq!(m.health(Instant::now()), Ok(()));
    }

    #[test]
    fn healthz_fails_before_the_first_sync_and_after_a_minute_of_failures() {
        let m = Metrics::new(ProxyMode::Iptables);
        let now = Instant::now();
        assert!(m.health(now).is_err(), "healthy before any sync");
        m.synced(Duration::from_millis(1), 0, 0, 1, &[]);
        assert!(m.health(now).is_err(), "a failed first sync is not health");
        m.synced(Duration::from_millis(1), 0, 0, 0, &[]);
        assert_eq!(m.health(now), Ok(()));
        m.synced(Duration::from_millis(1), 0, 0, 1, &[]);
        let later = Instant::now();
        assert_eq!(
            m.health(later),
            Ok(()),
            "one failure is retried, not unhealthy"
        );
        assert!(m
            .health(later + UNHEALTHY_AFTER + Duration::from_secs(1))
            .is_err());
        m.synced(Duration::from_millis(1), 0, 0, 0, &[]);
        assert_eq!(
            m.health(later + UNHEALTHY_AFTER + Duration::from_secs(1)),
            Ok(())
        );
    }
}
