//! Benchmark pieces for `cargo xtask bench dns`: kaze dns and knotd serve the same
//! 10,000-service zone on the same machine in the same run, and dnsperf (Debian package
//! `dnsperf`) measures both, alternately, for several rounds. Results are written as a JSON list of
//! `{"metric","value","unit","reference","reference_value","ratio"}`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_server::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::{Name, RecordType};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::fixtures::cluster_ip_service;
use crate::knot::{KnotError, Knotd};
use crate::server::{DnsServer, ServerOptions};
use crate::{zonefile, ClusterState, ForwardConfig, Metrics, Status};

/// Published anchor: CoreDNS on a 2-vCPU VM (coredns/deployment, Scaling_CoreDNS.md).
pub const COREDNS_QPS: f64 = 33_700.0;
/// The goal for API change → record served.
pub const PROGRAMMING_GOAL_MS: f64 = 100.0;
/// The goal for p99 query latency.
pub const P99_GOAL_MS: f64 = 1.0;

#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct BenchResult {
    pub metric: String,
    pub value: f64,
    pub unit: String,
    pub reference: String,
    pub reference_value: f64,
    pub ratio: f64,
}

impl BenchResult {
    fn new(metric: &str, value: f64, unit: &str, reference: &str, reference_value: f64) -> Self {
        let ratio = if reference_value == 0.0 {
            0.0
        } else {
            value / reference_value
        };
        Self {
            metric: metric.into(),
            value,
            unit: unit.into(),
            reference: reference.into(),
            reference_value,
            ratio,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub services: usize,
    /// Length of each throughput run.
    pub seconds: u64,
    /// dnsperf `-c`.
    pub clients: usize,
    /// Fixed offered load for the latency-percentile runs (dnsperf `-Q`).
    pub latency_qps: u64,
    pub latency_seconds: u64,
    /// Service creations timed for programming latency.
    pub creations: usize,
    /// Alternating measurement rounds (each: both servers' throughput and fixed-load runs).
    pub rounds: usize,
    pub out: PathBuf,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            services: 10_000,
            seconds: 10,
            clients: 4,
            latency_qps: 20_000,
            latency_seconds: 3,
            creations: 1_000,
            rounds: 3,
            out: PathBuf::from("target/bench/dns.json"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("starting the reference server: {0}")]
    Knot(#[from] KnotError),
    #[error("starting kaze dns: {0}")]
    Kaze(#[from] crate::Error),
    #[error("running dnsperf (Debian package dnsperf): {source}")]
    Dnsperf {
        #[source]
        source: std::io::Error,
    },
    #[error("reading dnsperf output: {reason}")]
    DnsperfOutput { reason: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("timing service creation: {reason}")]
    Programming { reason: String },
}

/// `services` ClusterIP services `svc-<i>.bench` with addresses in 10.43.0.0/16.
pub fn bench_state(services: usize) -> ClusterState {
    let mut state = ClusterState::new(Name::from_ascii("cluster.local.").unwrap_or_default(), 5);
    let objects: Vec<_> = (0..services)
        .map(|i| {
            let ip = service_ip(i);
            cluster_ip_service("bench", &format!("svc-{i}"), &[&ip], &[("http", "TCP", 80)])
        })
        .collect();
    state.replace_all(&objects, &[]);
    state
}

fn service_ip(i: usize) -> String {
    // skip .0 and .255 so every address is a plain host address
    format!("10.43.{}.{}", (i / 254) % 256, i % 254 + 1)
}

/// A dnsperf data file asking every service's A record once, in a scattered order so
/// neither server benefits from locality.
pub fn write_query_file(dir: &Path, services: usize) -> Result<PathBuf, BenchError> {
    let path = dir.join("queries.txt");
    let mut text = String::with_capacity(services * 48);
    // a stride coprime with the count visits every service once
    let stride = (1..services.max(2))
        .rev()
        .find(|s| gcd(*s, services) == 1 && *s < services / 2 + 2)
        .unwrap_or(1);
    let mut i = 0;
    for _ in 0..services {
        text.push_str(&format!("svc-{i}.bench.svc.cluster.local A\n"));
        i = (i + stride) % services.max(1);
    }
    std::fs::write(&path, text).map_err(|source| BenchError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PerfRun {
    pub qps: f64,
    pub avg_latency_s: f64,
    pub completed: u64,
    pub lost: u64,
    /// Only from verbose runs, which print each response's latency.
    pub p99_latency_s: Option<f64>,
}

/// Runs dnsperf against `server`. With `max_qps` it offers a fixed load and records every
/// latency for percentiles; without, it measures throughput.
pub async fn dnsperf(
    server: SocketAddr,
    data: &Path,
    clients: usize,
    seconds: u64,
    max_qps: Option<u64>,
) -> Result<PerfRun, BenchError> {
    let mut cmd = tokio::process::Command::new("dnsperf");
    cmd.arg("-s")
        .arg(server.ip().to_string())
        .arg("-p")
        .arg(server.port().to_string())
        .arg("-d")
        .arg(data)
        .arg("-c")
        .arg(clients.to_string())
        .arg("-l")
        .arg(seconds.to_string())
        .arg("-t")
        .arg("1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(q) = max_qps {
        cmd.arg("-Q").arg(q.to_string()).arg("-v");
    }
    let out = cmd
        .output()
        .await
        .map_err(|source| BenchError::Dnsperf { source })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(BenchError::DnsperfOutput {
            reason: format!(
                "exit {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    parse_dnsperf(&text, max_qps.is_some())
}

/// Reads dnsperf's statistics block (and per-response lines when verbose).
pub fn parse_dnsperf(text: &str, verbose: bool) -> Result<PerfRun, BenchError> {
    let field = |label: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.trim_start().starts_with(label))?;
        line.split(':')
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let missing = |what: &str| BenchError::DnsperfOutput {
        reason: format!("no {what} in output"),
    };
    let mut run = PerfRun {
        qps: field("Queries per second").ok_or_else(|| missing("queries per second"))?,
        avg_latency_s: field("Average Latency (s)").ok_or_else(|| missing("average latency"))?,
        completed: field("Queries completed").ok_or_else(|| missing("completed count"))? as u64,
        lost: field("Queries lost").ok_or_else(|| missing("lost count"))? as u64,
        p99_latency_s: None,
    };
    if verbose {
        let mut latencies: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with("> "))
            .filter_map(|l| l.split_whitespace().last()?.parse().ok())
            .collect();
        latencies.sort_by(|a, b| a.total_cmp(b));
        run.p99_latency_s = percentile(&latencies, 0.99);
    }
    Ok(run)
}

pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[idx])
}

/// Times `count` service creations from the write through the seam to the first UDP
/// answer carrying the new address.
pub async fn programming_latency(
    state: &mut ClusterState,
    server: SocketAddr,
    count: usize,
) -> Result<Vec<Duration>, BenchError> {
    let sock = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| BenchError::Programming {
            reason: e.to_string(),
        })?;
    let mut out = Vec::with_capacity(count);
    let mut buf = vec![0u8; 4096];
    for i in 0..count {
        let name = format!("new-{i}.bench.svc.cluster.local.");
        let ip = format!("10.43.{}.{}", 250 - (i / 250) % 10, i % 250 + 1);
        let svc = cluster_ip_service("bench", &format!("new-{i}"), &[&ip], &[]);
        let started = Instant::now();
        state
            .apply_service(&svc)
            .map_err(|e| BenchError::Programming {
                reason: e.to_string(),
            })?;
        loop {
            let mut q = Message::new((i % 65536) as u16, MessageType::Query, OpCode::Query);
            let qname = Name::from_ascii(&name).map_err(|e| BenchError::Programming {
                reason: e.to_string(),
            })?;
            q.add_query(Query::query(qname, RecordType::A));
            let bytes = q.to_vec().map_err(|e| BenchError::Programming {
                reason: e.to_string(),
            })?;
            let io = |e: std::io::Error| BenchError::Programming {
                reason: e.to_string(),
            };
            sock.send_to(&bytes, server).await.map_err(io)?;
            let n = tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf))
                .await
                .map_err(|_| BenchError::Programming {
                    reason: "query timed out".into(),
                })?
                .map_err(io)?;
            let served = Message::from_vec(&buf[..n])
                .map(|m| m.metadata.response_code == ResponseCode::NoError && !m.answers.is_empty())
                .unwrap_or(false);
            if served {
                out.push(started.elapsed());
                break;
            }
            if started.elapsed() > Duration::from_secs(5) {
                return Err(BenchError::Programming {
                    reason: format!("{name} not served after 5s"),
                });
            }
        }
    }
    Ok(out)
}

/// One round: both servers under the same dnsperf settings, back to back.
#[derive(Debug, Clone, Default)]
pub struct Round {
    pub kaze: PerfRun,
    pub knot: PerfRun,
    pub kaze_fixed: PerfRun,
    pub knot_fixed: PerfRun,
}

impl Round {
    pub fn qps_ratio(&self) -> f64 {
        if self.knot.qps == 0.0 {
            0.0
        } else {
            self.kaze.qps / self.knot.qps
        }
    }
}

/// The whole benchmark: both servers, same zone, same query file, same dnsperf settings,
/// same machine. Both serve for the whole run and are measured alternately, round after
/// round (knotd first in even rounds, kaze first in odd ones), so load from anything else
/// on the machine falls on both alike; an idle server uses no CPU. Both get the same
/// number of UDP workers: knotd's `udp-workers` is set to the number of SO_REUSEPORT
/// sockets kaze opens per address (one per core), and both batch with recvmmsg.
pub async fn run(config: &BenchConfig) -> Result<Vec<BenchResult>, BenchError> {
    let mut state = bench_state(config.services);
    let dir = tempfile::tempdir().map_err(|source| BenchError::Write {
        path: std::env::temp_dir(),
        source,
    })?;
    let data = write_query_file(dir.path(), config.services)?;

    let workers = crate::server::udp_sockets_per_address();
    let zones = zonefile::export(&state.handle().load());
    let knot = Knotd::start(&zones, workers)?;

    let status = Arc::new(Status::default());
    let metrics = Arc::new(Metrics::default());
    let options = ServerOptions {
        bind: vec!["127.0.0.1:0".parse().expect("literal address")],
        http_bind: None,
        forward: ForwardConfig {
            upstreams: vec![],
            timeout: Duration::from_secs(1),
            cache_size: 0,
            max_ttl: Duration::ZERO,
            max_negative_ttl: Duration::ZERO,
        },
        lameduck: Duration::ZERO,
    };
    let server = DnsServer::bind(options, state.handle(), status, metrics).await?;
    let addr = server.dns_addrs()[0];
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let serving = tokio::spawn(server.serve(shutdown.clone()));

    let throughput = |server| dnsperf(server, &data, config.clients, config.seconds, None);
    let fixed = |server| {
        dnsperf(
            server,
            &data,
            config.clients,
            config.latency_seconds,
            Some(config.latency_qps),
        )
    };
    let mut rounds = Vec::new();
    for r in 0..config.rounds.max(1) {
        let mut round = Round::default();
        if r % 2 == 0 {
            round.knot = throughput(knot.addr).await?;
            round.kaze = throughput(addr).await?;
            round.knot_fixed = fixed(knot.addr).await?;
            round.kaze_fixed = fixed(addr).await?;
        } else {
            round.kaze = throughput(addr).await?;
            round.knot = throughput(knot.addr).await?;
            round.kaze_fixed = fixed(addr).await?;
            round.knot_fixed = fixed(knot.addr).await?;
        }
        eprintln!(
            "round {}: kaze {:.0} q/s, knotd {:.0} q/s ({:.2}x); p99 at {} q/s: kaze {:.3} ms, knotd {:.3} ms",
            r + 1,
            round.kaze.qps,
            round.knot.qps,
            round.qps_ratio(),
            config.latency_qps,
            round.kaze_fixed.p99_latency_s.unwrap_or(f64::NAN) * 1000.0,
            round.knot_fixed.p99_latency_s.unwrap_or(f64::NAN) * 1000.0,
        );
        rounds.push(round);
    }
    drop(knot);

    let mut programming = programming_latency(&mut state, addr, config.creations).await?;
    shutdown.cancel();
    let _ = serving.await;
    programming.sort();
    let prog_ms: Vec<f64> = programming
        .iter()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();

    let results = summarize(&rounds, workers, percentile(&prog_ms, 0.99));
    write_results(&config.out, &results)?;
    Ok(results)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The JSON lines: medians over rounds, plus the median, worst and best round's own
/// kaze/knotd ratio (the median of each server's figures may pair different rounds), so
/// a reader sees the spread and not only a favourable figure.
pub fn summarize(
    rounds: &[Round],
    workers: usize,
    programming_p99_ms: Option<f64>,
) -> Vec<BenchResult> {
    let ms = |s: f64| s * 1000.0;
    let p99 = |r: &PerfRun| r.p99_latency_s.map(ms).unwrap_or(f64::NAN);
    let over = |f: &dyn Fn(&Round) -> f64| median(rounds.iter().map(f).collect());
    let ratios: Vec<f64> = rounds.iter().map(Round::qps_ratio).collect();
    let min_ratio = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max_ratio = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let kaze_p99 = over(&|r| p99(&r.kaze_fixed));
    let worst_p99 = rounds
        .iter()
        .map(|r| p99(&r.kaze_fixed))
        .fold(f64::NEG_INFINITY, f64::max);
    vec![
        BenchResult::new(
            "service_a_qps",
            over(&|r| r.kaze.qps),
            "queries/s",
            "knotd",
            over(&|r| r.knot.qps),
        ),
        BenchResult::new(
            "service_a_qps_ratio_median_round",
            median(ratios.clone()),
            "ratio",
            "knotd-same-round",
            1.0,
        ),
        BenchResult::new(
            "service_a_qps_ratio_worst_round",
            min_ratio,
            "ratio",
            "knotd-same-round",
            1.0,
        ),
        BenchResult::new(
            "service_a_qps_ratio_best_round",
            max_ratio,
            "ratio",
            "knotd-same-round",
            1.0,
        ),
        BenchResult::new(
            "service_a_qps_vs_coredns",
            over(&|r| r.kaze.qps),
            "queries/s",
            "coredns-published-2vcpu",
            COREDNS_QPS,
        ),
        BenchResult::new(
            "service_a_latency_avg",
            over(&|r| ms(r.kaze.avg_latency_s)),
            "ms",
            "knotd",
            over(&|r| ms(r.knot.avg_latency_s)),
        ),
        BenchResult::new(
            "service_a_latency_p99_at_fixed_load",
            kaze_p99,
            "ms",
            "knotd",
            over(&|r| p99(&r.knot_fixed)),
        ),
        BenchResult::new(
            "service_a_latency_p99_goal",
            kaze_p99,
            "ms",
            "goal",
            P99_GOAL_MS,
        ),
        BenchResult::new(
            "service_a_latency_p99_worst_round",
            worst_p99,
            "ms",
            "goal",
            P99_GOAL_MS,
        ),
        BenchResult::new(
            "service_a_lost",
            rounds.iter().map(|r| r.kaze.lost as f64).sum(),
            "queries",
            "knotd",
            rounds.iter().map(|r| r.knot.lost as f64).sum(),
        ),
        BenchResult::new(
            "udp_workers",
            workers as f64,
            "threads",
            "knotd-udp-workers",
            workers as f64,
        ),
        BenchResult::new(
            "programming_latency_p99",
            programming_p99_ms.unwrap_or(f64::NAN),
            "ms",
            "goal",
            PROGRAMMING_GOAL_MS,
        ),
    ]
}

pub fn write_results(path: &Path, results: &[BenchResult]) -> Result<(), BenchError> {
    let write = |source| BenchError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(write)?;
    }
    let json =
        serde_json::to_string_pretty(results).map_err(|e| write(std::io::Error::other(e)))?;
    std::fs::write(path, json + "\n").map_err(write)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
> NOERROR svc-1.bench.svc.cluster.local A 0.000200
> NOERROR svc-2.bench.svc.cluster.local A 0.000100
> NOERROR svc-3.bench.svc.cluster.local A 0.000900
Statistics:

  Queries sent:         3
  Queries completed:    3 (100.00%)
  Queries lost:         0 (0.00%)

  Response codes:       NOERROR 3 (100.00%)
  Run time (s):         1.000154
  Queries per second:   2.999538

  Average Latency (s):  0.000400 (min 0.000100, max 0.000900)
  Latency StdDev (s):   0.000300
";

    #[test]
    fn dnsperf_statistics_are_parsed() {
        let run = parse_dnsperf(SAMPLE, true).unwrap();
        assert_eq!(run.completed, 3);
        assert_eq!(run.lost, 0);
        assert!((run.qps - 2.999538).abs() < 1e-9);
        assert!((run.avg_latency_s - 0.0004).abs() < 1e-12);
        assert_eq!(run.p99_latency_s, Some(0.0009));
        assert!(parse_dnsperf("garbage", false).is_err());
    }

    #[test]
    fn query_file_asks_every_service_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_query_file(dir.path(), 1000).unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        let mut names: Vec<&str> = text.lines().collect();
        assert_eq!(names.len(), 1000);
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 1000);
    }

    #[test]
    fn the_summary_reports_medians_and_the_spread_of_rounds() {
        let run = |qps: f64, p99_ms: f64| PerfRun {
            qps,
            avg_latency_s: 0.001,
            completed: 10,
            lost: 1,
            p99_latency_s: Some(p99_ms / 1000.0),
        };
        let round = |kaze: f64, knot: f64, p99: f64| Round {
            kaze: run(kaze, 0.0),
            knot: run(knot, 0.0),
            kaze_fixed: run(0.0, p99),
            knot_fixed: run(0.0, 0.2),
        };
        let rounds = [
            round(90.0, 100.0, 0.5),
            round(120.0, 100.0, 0.9),
            round(100.0, 80.0, 0.4),
        ];
        let results = summarize(&rounds, 2, Some(3.0));
        let get = |m: &str| results.iter().find(|r| r.metric == m).unwrap().clone();
        let qps = get("service_a_qps");
        assert_eq!((qps.value, qps.reference_value), (100.0, 100.0));
        // per-round ratios 0.9, 1.2, 1.25: the median round, not median over median
        assert!((get("service_a_qps_ratio_median_round").value - 1.2).abs() < 1e-9);
        assert!((get("service_a_qps_ratio_worst_round").value - 0.9).abs() < 1e-9);
        assert!((get("service_a_qps_ratio_best_round").value - 1.25).abs() < 1e-9);
        assert!((get("service_a_latency_p99_goal").value - 0.5).abs() < 1e-9);
        assert!((get("service_a_latency_p99_worst_round").value - 0.9).abs() < 1e-9);
        assert_eq!(get("service_a_lost").value, 3.0);
        assert_eq!(get("udp_workers").value, 2.0);
        assert_eq!(get("programming_latency_p99").value, 3.0);
    }

    #[test]
    fn ratios_are_value_over_reference() {
        let r = BenchResult::new("m", 50.0, "ms", "goal", 100.0);
        assert_eq!(r.ratio, 0.5);
    }
}
