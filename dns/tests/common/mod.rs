//! Shared pieces of the black-box tests: kaze dns on a random port with state injected
//! through the seam, knotd serving zone files from a temp dir, and real clients (kdig and
//! raw hickory-proto messages). Every process and directory is owned by a guard that
//! cleans up on drop, so a panicking test leaves nothing behind.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dns::records::name_key;
use dns::zonefile::{rdata_text, ZoneFile};
use dns::{ClusterState, DnsServer, ForwardConfig, Metrics, ServerOptions, Status};
use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

// === kaze dns ===

pub struct Kaze {
    pub addr: SocketAddr,
    pub http: SocketAddr,
    pub status: Arc<Status>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<Result<(), dns::Error>>>,
}

impl Kaze {
    pub async fn start(state: &ClusterState, upstreams: Vec<SocketAddr>) -> Self {
        Self::start_with_lameduck(state, upstreams, Duration::ZERO).await
    }

    pub async fn start_with_lameduck(
        state: &ClusterState,
        upstreams: Vec<SocketAddr>,
        lameduck: Duration,
    ) -> Self {
        let status = Arc::new(Status::default());
        let metrics = Arc::new(Metrics::default());
        let options = ServerOptions {
            bind: vec!["127.0.0.1:0".parse().unwrap()],
            http_bind: Some("127.0.0.1:0".parse().unwrap()),
            forward: ForwardConfig {
                upstreams,
                timeout: Duration::from_millis(500),
                cache_size: 1000,
                max_ttl: Duration::from_secs(3600),
                max_negative_ttl: Duration::from_secs(300),
            },
            lameduck,
        };
        let server = DnsServer::bind(options, state.handle(), status.clone(), metrics.clone())
            .await
            .expect("binding kaze dns");
        let addr = server.dns_addrs()[0];
        let http = server.http_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.serve(shutdown.clone()));
        Self {
            addr,
            http,
            status,
            metrics,
            shutdown,
            task: Some(task),
        }
    }
}

impl Drop for Kaze {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

// === knotd ===

pub struct Knotd(dns::knot::Knotd);

impl Knotd {
    pub fn start(zones: &[ZoneFile]) -> Self {
        Self(dns::knot::Knotd::start(zones, 1).expect("starting knotd"))
    }
}

impl std::ops::Deref for Knotd {
    type Target = dns::knot::Knotd;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

// === raw hickory-proto client ===

pub fn query_message(name: &str, qtype: RecordType, udp_size: Option<u16>) -> Message {
    let mut m = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = udp_size {
        let mut edns = Edns::new();
        edns.set_max_payload(size);
        m.set_edns(edns);
    }
    m
}

fn rand_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish() as u16
}

pub async fn udp_raw(server: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf)).await {
        Ok(Ok(n)) => {
            buf.truncate(n);
            Some(buf)
        }
        _ => None,
    }
}

pub async fn udp(server: SocketAddr, msg: &Message) -> Message {
    let reply = udp_raw(server, &msg.to_vec().unwrap())
        .await
        .expect("no udp reply");
    let reply = Message::from_vec(&reply).expect("decoding udp reply");
    assert_eq!(reply.metadata.id, msg.metadata.id);
    reply
}

/// One question and its reply over an existing socket: repeated calls on one socket reach
/// the same server socket (SO_REUSEPORT steers by source address).
pub async fn udp_exchange(sock: &UdpSocket, server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    sock.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
        .await
        .expect("no udp reply")
        .unwrap();
    buf.truncate(n);
    buf
}

/// The raw reply to `bytes` over a new TCP connection.
pub async fn tcp_raw(server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await.unwrap();
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut buf).await.unwrap();
    buf
}

pub async fn tcp(server: SocketAddr, msg: &Message) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let bytes = msg.to_vec().unwrap();
    stream
        .write_all(&(bytes.len() as u16).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&bytes).await.unwrap();
    let len = tokio::time::timeout(Duration::from_secs(2), stream.read_u16())
        .await
        .expect("tcp reply timed out")
        .unwrap();
    let mut buf = vec![0u8; len as usize];
    stream.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).expect("decoding tcp reply")
}

/// A reply reduced to what conformance compares: rcode, AA, answers and authority as
/// sorted lowercase `name TYPE rdata` (TTL and order ignored).
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub rcode: ResponseCode,
    pub authoritative: bool,
    pub answers: Vec<String>,
    pub authority: Vec<String>,
}

pub fn outcome(m: &Message) -> Outcome {
    let render = |rrs: &[hickory_server::proto::rr::Record]| {
        let mut v: Vec<String> = rrs
            .iter()
            .map(|r| {
                format!(
                    "{} {} {}",
                    name_key(&r.name),
                    r.record_type(),
                    rdata_text(&r.data).to_ascii_lowercase()
                )
            })
            .collect();
        v.sort();
        v
    };
    Outcome {
        rcode: m.metadata.response_code,
        authoritative: m.metadata.authoritative,
        answers: render(&m.answers),
        authority: render(&m.authorities),
    }
}

// === kdig ===

pub struct Kdig {
    pub status: String,
    pub flags: String,
    /// `name TYPE rdata` lines of the answer section, sorted, TTL dropped.
    pub answers: Vec<String>,
    pub authority: Vec<String>,
}

/// Runs kdig (Debian package knot-dnsutils) against `server`; `extra` are options such as
/// `+tcp` or `+bufsize=512`.
pub async fn kdig(server: SocketAddr, name: &str, qtype: &str, extra: &[&str]) -> Kdig {
    let out = tokio::process::Command::new("kdig")
        .arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args([name, qtype, "+retry=0", "+timeout=2"])
        .args(extra)
        .kill_on_drop(true)
        .output()
        .await
        .expect("running kdig (Debian package knot-dnsutils)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "kdig failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut k = Kdig {
        status: String::new(),
        flags: String::new(),
        answers: Vec::new(),
        authority: Vec::new(),
    };
    let mut section = "";
    for line in text.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            k.status = rest.split(';').next().unwrap_or("").trim().to_string();
        } else if let Some(rest) = line.strip_prefix(";; Flags: ") {
            k.flags = rest.split(';').next().unwrap_or("").trim().to_string();
        } else if line.starts_with(";; ANSWER SECTION") {
            section = "answer";
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
        } else if line.starts_with(";;") || line.trim().is_empty() {
            if line.trim().is_empty() {
                section = "";
            }
        } else {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 4 {
                // name ttl class type rdata...
                let rr = format!(
                    "{} {} {}",
                    f[0].to_ascii_lowercase(),
                    f[3],
                    f[4..].join(" ")
                );
                match section {
                    "answer" => k.answers.push(rr),
                    "authority" => k.authority.push(rr),
                    _ => {}
                }
            }
        }
    }
    k.answers.sort();
    k.authority.sort();
    k
}
