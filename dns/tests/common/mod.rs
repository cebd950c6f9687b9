//! Shared pieces of the black-box tests: kaze dns on a random port with state injected
//! through the seam, knotd serving zone files from a temp dir, and real clients (kdig and
//! raw hickory-proto messages). Every process and directory is owned by a guard that
//! cleans up on drop, so a panicking test leaves nothing behind.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket as StdUdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

pub struct Knotd {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

/// A port free for both UDP and TCP right now (knotd binds it a moment later).
fn free_port() -> u16 {
    loop {
        let udp = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if StdTcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Knotd {
    /// Serves `zones` on 127.0.0.1 and waits until every zone answers its SOA.
    pub fn start(zones: &[ZoneFile]) -> Self {
        let mut last_err = String::new();
        // a port taken between probing and knotd's bind shows up as a failed start: retry
        for _ in 0..5 {
            match Self::try_start(zones) {
                Ok(k) => return k,
                Err(e) => last_err = e,
            }
        }
        panic!("starting knotd: {last_err}");
    }

    fn try_start(zones: &[ZoneFile]) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = free_port();
        let root = dir.path();
        let mut conf = format!(
            "server:\n  listen: 127.0.0.1@{port}\n  rundir: {r}\n  udp-max-payload: 1232\n\
             log:\n  - target: {r}/knotd.log\n    any: warning\n\
             database:\n  storage: {r}\n  journal-db-max-size: 10M\n  timer-db-max-size: 10M\n  kasp-db-max-size: 10M\n  catalog-db-max-size: 10M\nzone:\n",
            r = root.display()
        );
        for (i, zone) in zones.iter().enumerate() {
            let file = root.join(format!("zone{i}.zone"));
            std::fs::write(&file, &zone.text).map_err(|e| e.to_string())?;
            conf.push_str(&format!(
                "  - domain: {}\n    file: {}\n",
                zone.origin,
                file.display()
            ));
        }
        let conf_path = root.join("knot.conf");
        std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
        let child = Command::new("knotd")
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning knotd (Debian package knot): {e}"))?;
        let mut knot = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        for zone in zones {
            loop {
                if let Ok(Some(status)) = knot.child.try_wait() {
                    let log = std::fs::read_to_string(root_log(&knot)).unwrap_or_default();
                    return Err(format!("knotd exited with {status}: {log}"));
                }
                if blocking_soa(knot.addr, &zone.origin) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("knotd did not serve {} in time", zone.origin));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(knot)
    }
}

fn root_log(k: &Knotd) -> PathBuf {
    k._dir.path().join("knotd.log")
}

/// True once `server` answers the zone's SOA authoritatively.
fn blocking_soa(server: SocketAddr, origin: &str) -> bool {
    let Ok(sock) = StdUdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let q = query_message(origin, RecordType::SOA, None);
    if sock.send_to(&q.to_vec().unwrap(), server).is_err() {
        return false;
    }
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => Message::from_vec(&buf[..n])
            .map(|m| m.metadata.authoritative && !m.answers.is_empty())
            .unwrap_or(false),
        Err(_) => false,
    }
}

impl Drop for Knotd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
