//! Probes (exec, httpGet, tcpSocket, grpc) with upstream's timing: initial delay, period,
//! timeout, success/failure thresholds. [`ProbeTracker`] is the pure state machine;
//! [`run_http`]/[`run_tcp`]/[`run_grpc`] do the network part; exec goes through the
//! runtime.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Exec(Vec<String>),
    Http {
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
        https: bool,
    },
    Tcp {
        host: Option<String>,
        port: u16,
    },
    /// The gRPC health checking protocol (`grpc.health.v1.Health/Check`) on the pod IP.
    Grpc {
        port: u16,
        service: String,
    },
}

/// A probe with its timing, defaults filled in as the API server would.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeSpec {
    pub action: Action,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ProbeResult {
    Success,
    Failure(String),
}

/// A probe's or hook's port: a number, or the name of one of the container's ports.
pub fn port(c: &Container, p: &IntOrString) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} out of range")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .ok_or_else(|| format!("container has no port named {name:?}")),
    }
}

impl ProbeSpec {
    /// Build from the API type; `Err` says why the probe cannot run (e.g. gRPC probes).
    pub fn from_api(c: &Container, p: &Probe) -> Result<ProbeSpec, String> {
        let action = if let Some(e) = &p.exec {
            Action::Exec(e.command.clone().unwrap_or_default())
        } else if let Some(h) = &p.http_get {
            Action::Http {
                host: h.host.clone().filter(|h| !h.is_empty()),
                port: port(c, &h.port)?,
                path: h
                    .path
                    .clone()
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "/".into()),
                headers: h
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
                https: h.scheme.as_deref() == Some("HTTPS"),
            }
        } else if let Some(t) = &p.tcp_socket {
            Action::Tcp {
                host: t.host.clone().filter(|h| !h.is_empty()),
                port: port(c, &t.port)?,
            }
        } else if let Some(g) = &p.grpc {
            Action::Grpc {
                port: u16::try_from(g.port)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("grpc probe port {} is not a port", g.port))?,
                service: g.service.clone().unwrap_or_default(),
            }
        } else {
            return Err("probe has no action".into());
        };
        let secs = |v: Option<i32>, default: i32, min: i32| {
            Duration::from_secs(v.unwrap_or(default).max(min) as u64)
        };
        Ok(ProbeSpec {
            action,
            initial_delay: secs(p.initial_delay_seconds, 0, 0),
            period: secs(p.period_seconds, 10, 1),
            timeout: secs(p.timeout_seconds, 1, 1),
            success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        })
    }
}

/// One probe's state over time: when it is due and what it concluded.
#[derive(Clone, Debug)]
pub struct ProbeTracker {
    pub spec: ProbeSpec,
    next: Instant,
    successes: u32,
    failures: u32,
    /// The probe's verdict so far; None until thresholds are first met.
    pub verdict: Option<bool>,
    pub last_message: Option<String>,
}

impl ProbeTracker {
    /// Start tracking for a container that started at `started`.
    pub fn new(spec: ProbeSpec, started: Instant) -> ProbeTracker {
        let next = started + spec.initial_delay;
        ProbeTracker {
            spec,
            next,
            successes: 0,
            failures: 0,
            verdict: None,
            last_message: None,
        }
    }

    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    pub fn next_due(&self) -> Instant {
        self.next
    }

    /// Record one result at `now`; returns the new verdict when it changed.
    pub fn record(&mut self, result: &ProbeResult, now: Instant) -> Option<bool> {
        self.next = now + self.spec.period;
        let before = self.verdict;
        match result {
            ProbeResult::Success => {
                self.successes += 1;
                self.failures = 0;
                self.last_message = None;
                if self.successes >= self.spec.success_threshold {
                    self.verdict = Some(true);
                }
            }
            ProbeResult::Failure(msg) => {
                self.failures += 1;
                self.successes = 0;
                self.last_message = Some(msg.clone());
                if self.failures >= self.spec.failure_threshold {
                    self.verdict = Some(false);
                }
            }
        }
        (self.verdict != before).then_some(self.verdict.unwrap_or(false))
    }
}

fn target(host: &Option<String>, pod_ip: Option<IpAddr>, port: u16) -> Result<SocketAddr, String> {
    let ip = match host {
        Some(h) => h
            .parse()
            .map_err(|_| format!("probe host {h:?} is not an IP address"))?,
        None => pod_ip.ok_or("the pod has no IP yet")?,
    };
    Ok(SocketAddr::new(ip, port))
}

/// tcpSocket: success when a connection opens within the timeout.
pub async fn run_tcp(
    host: &Option<String>,
    port: u16,
    pod_ip: Option<IpAddr>,
    timeout: Duration,
) -> ProbeResult {
    let addr = match target(host, pod_ip, port) {
        Ok(a) => a,
        Err(e) => return ProbeResult::Failure(e),
    };
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => ProbeResult::Success,
        Ok(Err(e)) => ProbeResult::Failure(format!("dial tcp {addr}: {e}")),
        Err(_) => ProbeResult::Failure(format!("dial tcp {addr}: timeout after {timeout:?}")),
    }
}

/// grpc: the health checking protocol's `Check` for `service` on the pod IP within the
/// timeout; success when it answers SERVING. Failures read as upstream's.
pub async fn run_grpc(
    port: u16,
    service: &str,
    pod_ip: Option<IpAddr>,
    timeout: Duration,
) -> ProbeResult {
    use containerd_client::tonic;
    let addr = match target(&None, pod_ip, port) {
        Ok(a) => a,
        Err(e) => return ProbeResult::Failure(e),
    };
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{addr}")) {
        Ok(e) => e.connect_timeout(timeout).timeout(timeout),
        Err(e) => return ProbeResult::Failure(e.to_string()),
    };
    let connected = tokio::time::timeout(timeout, endpoint.connect()).await;
    let channel = match connected {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return ProbeResult::Failure(format!(
                "timeout: failed to connect service {addr:?} within {timeout:?}: {e}"
            ))
        }
        Err(_) => {
            return ProbeResult::Failure(format!(
                "timeout: failed to connect service {addr:?} within {timeout:?}: context deadline exceeded"
            ))
        }
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        return ProbeResult::Failure(format!("error: health rpc probe failed: {e}"));
    }
    // HealthCheckRequest { string service = 1; }
    let mut request = Vec::new();
    if !service.is_empty() {
        request.push(0x0a);
        put_varint(&mut request, service.len() as u64);
        request.extend_from_slice(service.as_bytes());
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check");
    let answer = grpc
        .unary(tonic::Request::new(request), path, RawCodec)
        .await;
    match answer {
        Ok(r) => match serving_status(&r.into_inner()) {
            1 => ProbeResult::Success,
            s => {
                let name = match s {
                    0 => "UNKNOWN",
                    2 => "NOT_SERVING",
                    3 => "SERVICE_UNKNOWN",
                    _ => "UNKNOWN",
                };
                ProbeResult::Failure(format!("service unhealthy (responded with {name:?})"))
            }
        },
        Err(s) if s.code() == tonic::Code::Unimplemented => ProbeResult::Failure(format!(
            "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
            s.message()
        )),
        Err(s) if s.code() == tonic::Code::DeadlineExceeded => ProbeResult::Failure(format!(
            "timeout: health rpc did not complete within {timeout:?}"
        )),
        Err(s) => ProbeResult::Failure(format!("error: health rpc probe failed: {s}")),
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// `HealthCheckResponse.status` (field 1, a varint enum; absent: 0, UNKNOWN).
fn serving_status(msg: &[u8]) -> u64 {
    let varint = |b: &[u8], i: &mut usize| -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*i)?;
            *i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    };
    let mut i = 0;
    let mut status = 0;
    while i < msg.len() {
        let Some(key) = varint(msg, &mut i) else {
            break;
        };
        match key & 7 {
            0 => {
                let Some(v) = varint(msg, &mut i) else { break };
                if key >> 3 == 1 {
                    status = v;
                }
            }
            1 => i += 8,
            2 => {
                let Some(len) = varint(msg, &mut i) else {
                    break;
                };
                i += len as usize;
            }
            5 => i += 4,
            _ => break,
        }
    }
    status
}

/// Messages as bytes: the probe encodes and decodes its two tiny messages itself.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl containerd_client::tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl containerd_client::tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = containerd_client::tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut containerd_client::tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Self::Error> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl containerd_client::tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = containerd_client::tonic::Status;

    fn decode(
        &mut self,
        src: &mut containerd_client::tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, Self::Error> {
        let mut out = vec![0; bytes::Buf::remaining(src)];
        bytes::Buf::copy_to_slice(src, &mut out);
        Ok(Some(out))
    }
}

/// httpGet: success on a 2xx/3xx status within the timeout (redirects are not followed).
pub async fn run_http(
    host: &Option<String>,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    https: bool,
    pod_ip: Option<IpAddr>,
    timeout: Duration,
) -> ProbeResult {
    match http_get(
        host,
        port,
        path,
        headers,
        https,
        pod_ip,
        timeout,
        "kube-probe/1.37",
    )
    .await
    {
        Ok(code) if (200..400).contains(&code) => ProbeResult::Success,
        Ok(code) => ProbeResult::Failure(format!("HTTP probe failed with statuscode: {code}")),
        Err(e) => ProbeResult::Failure(e),
    }
}

/// An HTTP GET to `host` (or the pod IP) within `timeout`: the response's status code.
/// `https`: over TLS without verifying the server's certificate, as upstream's probes and
/// hooks do (`InsecureSkipVerify`; the handshake's signatures are still checked).
#[allow(clippy::too_many_arguments)] // the fields of an httpGet action, and who asks
pub async fn http_get(
    host: &Option<String>,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    https: bool,
    pod_ip: Option<IpAddr>,
    timeout: Duration,
    user_agent: &str,
) -> Result<u16, String> {
    let addr = target(host, pod_ip, port)?;
    let scheme = if https { "https" } else { "http" };
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: {user_agent}\r\nAccept: */*\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("dial tcp {addr}: {e}"))?;
        if !https {
            return status_code(tcp, &req).await;
        }
        let name = tokio_rustls::rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let tls = tokio_rustls::TlsConnector::from(insecure_tls())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
        status_code(tls, &req).await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "Get {scheme}://{addr}{path}: timeout after {timeout:?}"
        )),
    }
}

/// Send `req` on `s` and read the status line's code.
async fn status_code<S>(mut s: S, req: &str) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("writing the request: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = s
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading the response: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            format!(
                "malformed HTTP response {:?}",
                line.lines().next().unwrap_or("")
            )
        })
}

/// A TLS client that accepts any server certificate (once per process).
fn insecure_tls() -> std::sync::Arc<tokio_rustls::rustls::ClientConfig> {
    use tokio_rustls::rustls;
    static CONFIG: std::sync::OnceLock<std::sync::Arc<rustls::ClientConfig>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.dangerous()
                        .with_custom_certificate_verifier(component::https::any_server_cert(
                            provider.clone(),
                        ))
                        .with_no_client_auth()
                });
            // the ring provider supports the default versions; should it not, no
            // verification is wanted anyway
            std::sync::Arc::new(config.unwrap_or_else(|_| {
                rustls::ClientConfig::builder()
                    .dangerous()
                    .with_custom_certificate_verifier(component::https::any_server_cert(provider))
                    .with_no_client_auth()
            }))
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(threshold_ok: u32, threshold_fail: u32) -> ProbeSpec {
        ProbeSpec {
            action: Action::Tcp {
                host: None,
                port: 1,
            },
            initial_delay: Duration::from_secs(5),
            period: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            success_threshold: threshold_ok,
            failure_threshold: threshold_fail,
        }
    }

    #[test]
    fn api_probes_get_upstream_defaults_and_named_ports() {
        let c: Container = serde_json::from_value(
            json!({"name": "a", "ports": [{"name": "http", "containerPort": 8080}]}),
        )
        .unwrap();
        let p: Probe = serde_json::from_value(json!({"httpGet": {"port": "http"}})).unwrap();
        let s = ProbeSpec::from_api(&c, &p).unwrap();
        assert_eq!(
            s.action,
            Action::Http {
                host: None,
                port: 8080,
                path: "/".into(),
                headers: vec![],
                https: false
            }
        );
        assert_eq!(
            (
                s.period,
                s.timeout,
                s.success_threshold,
                s.failure_threshold
            ),
            (Duration::from_secs(10), Duration::from_secs(1), 1, 3)
        );
        let p: Probe = serde_json::from_value(json!({"tcpSocket": {"port": "nope"}})).unwrap();
        assert!(ProbeSpec::from_api(&c, &p)
            .unwrap_err()
            .contains("no port named"));
        let p: Probe =
            serde_json::from_value(json!({"grpc": {"port": 50051, "service": "db"}})).unwrap();
        assert_eq!(
            ProbeSpec::from_api(&c, &p).unwrap().action,
            Action::Grpc {
                port: 50051,
                service: "db".into()
            }
        );
    }

    #[test]
    fn thresholds_decide_the_verdict() {
        let t0 = Instant::now();
        let mut t = ProbeTracker::new(spec(2, 3), t0);
        assert!(!t.due(t0));
        assert!(t.due(t0 + Duration::from_secs(5)));
        assert_eq!(t.record(&ProbeResult::Success, t0), None);
        assert_eq!(t.next_due(), t0 + Duration::from_secs(2));
        assert_eq!(t.record(&ProbeResult::Success, t0), Some(true));
        let fail = ProbeResult::Failure("x".into());
        assert_eq!(t.record(&fail, t0), None);
        assert_eq!(t.record(&fail, t0), None);
        assert_eq!(
            t.record(&ProbeResult::Success, t0),
            None,
            "a success resets the failure count"
        );
        assert_eq!(t.record(&fail, t0), None);
        assert_eq!(t.record(&fail, t0), None);
        assert_eq!(t.record(&fail, t0), Some(false));
        assert_eq!(t.last_message.as_deref(), Some("x"));
    }

    #[tokio::test]
    async fn http_and_tcp_probes_against_local_listeners() {
        let ok = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port_ok = ok.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = ok.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let code = if req.starts_with("GET /healthz ") && req.contains("X-Probe: yes") {
                    200
                } else {
                    503
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let local = Some("127.0.0.1".parse().unwrap());
        let t = Duration::from_secs(2);
        let hdr = vec![("X-Probe".to_string(), "yes".to_string())];
        assert_eq!(
            run_http(&None, port_ok, "/healthz", &hdr, false, local, t).await,
            ProbeResult::Success
        );
        let bad = run_http(&None, port_ok, "/other", &hdr, false, local, t).await;
        assert_eq!(
            bad,
            ProbeResult::Failure("HTTP probe failed with statuscode: 503".into())
        );
        assert_eq!(
            run_tcp(&None, port_ok, local, t).await,
            ProbeResult::Success
        );

        let closed = testkit::free_port();
        assert!(matches!(
            run_tcp(&None, closed, local, t).await,
            ProbeResult::Failure(_)
        ));
        assert!(matches!(
            run_http(&None, closed, "/", &[], false, local, t).await,
            ProbeResult::Failure(_)
        ));
        assert!(
            matches!(run_tcp(&None, 1, None, t).await, ProbeResult::Failure(m) if m.contains("no IP"))
        );
    }
}
