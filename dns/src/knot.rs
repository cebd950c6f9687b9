//! knotd (Debian package `knot`) as a reference server for conformance tests and
//! benchmarks: serves zone files from a private temp dir on a free port on 127.0.0.1, and
//! is killed (and its dir removed) when the guard drops, also during a panic.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_server::proto::op::{Message, MessageType, OpCode, Query};
use hickory_server::proto::rr::{Name, RecordType};

use crate::zonefile::ZoneFile;

#[derive(Debug, thiserror::Error)]
pub enum KnotError {
    #[error("preparing knotd files: {source}")]
    Files {
        #[source]
        source: std::io::Error,
    },
    #[error("spawning knotd (Debian package knot): {source}")]
    Spawn {
        #[source]
        source: std::io::Error,
    },
    #[error("starting knotd: {reason}")]
    Start { reason: String },
}

pub struct Knotd {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

/// A port free for both UDP and TCP right now (knotd binds it a moment later).
fn free_port() -> std::io::Result<u16> {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
}

impl Knotd {
    /// Serves `zones` with `workers` UDP/TCP worker threads (0: knotd's default) and waits
    /// until every zone answers its SOA.
    pub fn start(zones: &[ZoneFile], workers: usize) -> Result<Self, KnotError> {
        let mut last = None;
        // a port taken between probing and knotd's bind shows up as a failed start: retry
        for _ in 0..5 {
            match Self::try_start(zones, workers) {
                Ok(k) => return Ok(k),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(KnotError::Start {
            reason: "no attempt made".into(),
        }))
    }

    fn try_start(zones: &[ZoneFile], workers: usize) -> Result<Self, KnotError> {
        let files = |source| KnotError::Files { source };
        let dir = tempfile::tempdir().map_err(files)?;
        let port = free_port().map_err(files)?;
        let root = dir.path().display().to_string();
        let threads = if workers > 0 {
            format!("  udp-workers: {workers}\n  tcp-workers: {workers}\n  background-workers: 1\n")
        } else {
            String::new()
        };
        let mut conf = format!(
            "server:\n  listen: 127.0.0.1@{port}\n  rundir: {root}\n  udp-max-payload: 1232\n{threads}\
             log:\n  - target: {root}/knotd.log\n    any: warning\n\
             database:\n  storage: {root}\n  journal-db-max-size: 10M\n  timer-db-max-size: 10M\n  kasp-db-max-size: 10M\n  catalog-db-max-size: 10M\nzone:\n"
        );
        for (i, zone) in zones.iter().enumerate() {
            let file = dir.path().join(format!("zone{i}.zone"));
            std::fs::write(&file, &zone.text).map_err(files)?;
            conf.push_str(&format!(
                "  - domain: {}\n    file: {}\n",
                zone.origin,
                file.display()
            ));
        }
        let conf_path = dir.path().join("knot.conf");
        std::fs::write(&conf_path, conf).map_err(files)?;
        let child = Command::new("knotd")
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| KnotError::Spawn { source })?;
        let mut knot = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            dir,
        };
        // a 10,000-service zone takes a moment to load
        let deadline = Instant::now() + Duration::from_secs(30);
        for zone in zones {
            loop {
                if let Ok(Some(status)) = knot.child.try_wait() {
                    let log = std::fs::read_to_string(knot.dir.path().join("knotd.log"))
                        .unwrap_or_default();
                    return Err(KnotError::Start {
                        reason: format!("knotd exited with {status}: {log}"),
                    });
                }
                if answers_soa(knot.addr, &zone.origin) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(KnotError::Start {
                        reason: format!("zone {} not served within 30s", zone.origin),
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(knot)
    }
}

/// True once `server` answers the zone's SOA authoritatively.
fn answers_soa(server: SocketAddr, origin: &str) -> bool {
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let Ok(name) = Name::from_ascii(origin) else {
        return false;
    };
    let mut q = Message::new(0x4b4e, MessageType::Query, OpCode::Query);
    q.add_query(Query::query(name, RecordType::SOA));
    let Ok(bytes) = q.to_vec() else {
        return false;
    };
    if sock.send_to(&bytes, server).is_err() {
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
