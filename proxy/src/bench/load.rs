//! Load for the new-flow-rate runs: `trafgen` sending UDP where every packet is a new flow,
//! a UDP sink and a short-connection TCP server in the backend namespace, a multi-threaded
//! TCP client in the client namespace, and the interface counters that measure them.
//! Every process and thread started here is stopped by its guard's `Drop`.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use socket2::{Domain, Socket, Type};

use super::BenchError;
use crate::netns::{self, Netns};

/// The backend's port (every service's target port).
pub const BACKEND_PORT: u16 = 8080;

/// Source addresses trafgen cycles through: 10.200.0.64–127, in the client's subnet.
const SOURCES: (u8, u8) = (64, 127);
/// Source ports trafgen cycles through. 64,511 values (odd) against 64 addresses: the
/// (address, port) pair repeats only after 64 × 64,511 ≈ 4.1 M packets, so within a run
/// every packet is a new flow.
const SOURCE_PORTS: (u16, u16) = (1024, 65534);

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Setup { what, source }
}

// === interface counters ===

/// (rx packets, tx packets) of `iface` in namespace `ns`, read from `/proc/thread-self/net/dev`
/// by a thread inside it (sysfs would show the namespace of whoever mounted it).
pub fn counters(ns: &Netns, iface: &str) -> Result<(u64, u64), BenchError> {
    let text = netns::in_netns(ns.name(), || {
        std::fs::read_to_string("/proc/thread-self/net/dev")
    })?
    .map_err(io_err(format!(
        "reading the interface counters of {}",
        ns.name()
    )))?;
    // "  eth0: rx_bytes rx_packets errs drop fifo frame compressed multicast tx_bytes tx_packets ..."
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim() == iface)
        .and_then(|(_, fields)| {
            let f: Vec<u64> = fields
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            Some((*f.get(1)?, *f.get(9)?))
        })
        .ok_or_else(|| BenchError::Failed(format!("no counters for {iface} in {}", ns.name())))
}

// === trafgen ===

/// `trafgen` sending UDP to `target` from the client namespace's `eth0` as fast as one CPU
/// lets it, every packet a new flow (source address and port both counting up). Stopped
/// (with its forked worker: it runs in a process group of its own) on drop.
pub struct Trafgen {
    child: Child,
}

impl Trafgen {
    pub fn start(client: &Netns, node_mac: &str, target: SocketAddrV4) -> Result<Self, BenchError> {
        let (lo, hi) = SOURCES;
        let (plo, phi) = SOURCE_PORTS;
        let base = Ipv4Addr::new(10, 200, 0, lo);
        // 60-byte frames; trafgen recomputes the IPv4 and UDP checksums of every packet
        // whose fields it changes at run time
        let packet = format!(
            "{{ eth(da={node_mac}), \
               ipv4(sa={base}, sa[3]=dinc({lo}, {hi}), da={}, ttl=64, df), \
               udp(sp=dinc({plo}, {phi}), dp={}), \
               fill(0x6b, 18) }}",
            target.ip(),
            target.port()
        );
        let child = Command::new("ip")
            .args(["netns", "exec", client.name(), "trafgen"])
            .args(["--dev", "eth0", "--cpus", "1"])
            // leave the host's socket-memory sysctls and IRQ affinities alone
            .args(["--no-sock-mem", "--notouch-irq", "--no-cpu-stats"])
            .arg(&packet)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err(
                "running trafgen (Debian package netsniff-ng; `cargo xtask setup` installs it)",
            ))?;
        Ok(Trafgen { child })
    }

    /// Fails with trafgen's own words if it is no longer running.
    pub fn check_running(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                let mut stderr = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                Err(BenchError::Failed(format!(
                    "trafgen exited ({status}): {}",
                    stderr.trim()
                )))
            }
            Err(e) => Err(io_err("waiting for trafgen")(e)),
        }
    }

    fn signal_group(&self, signal: rustix::process::Signal) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, signal);
        }
    }
}

impl Drop for Trafgen {
    fn drop(&mut self) {
        // SIGINT: trafgen stops its workers and exits; SIGKILL the group if it does not
        self.signal_group(rustix::process::Signal::INT);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                // the worker may outlive the parent by a moment
                self.signal_group(rustix::process::Signal::KILL);
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.signal_group(rustix::process::Signal::KILL);
        let _ = self.child.wait();
    }
}

// === backend servers ===

/// In the backend namespace, on [`BACKEND_PORT`]: a UDP socket that is never read (datagrams
/// are counted at the interface; a bound port keeps the kernel from answering each with an
/// ICMP port unreachable), and a TCP server whose threads accept a connection, read the
/// request, write a reply, and wait for the client to close. Stopped and joined on drop.
pub struct Servers {
    _udp: UdpSocket,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    pub fn start(backend: &Netns, threads: usize) -> Result<Self, BenchError> {
        let addr = SocketAddr::from(([0, 0, 0, 0], BACKEND_PORT));
        // sockets belong to the namespace they are created in, whichever thread uses them
        let (udp, listener) = netns::in_netns(backend.name(), || -> std::io::Result<_> {
            let udp = UdpSocket::bind(addr)?;
            let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            sock.set_reuse_address(true)?;
            // accept() gives up after this, so the threads notice the stop flag
            sock.set_read_timeout(Some(Duration::from_millis(100)))?;
            sock.bind(&addr.into())?;
            sock.listen(4096)?;
            Ok((udp, TcpListener::from(sock)))
        })?
        .map_err(io_err("binding the backend's servers"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for i in 0..threads {
            let listener = listener
                .try_clone()
                .map_err(io_err("cloning the listener"))?;
            let stop = stop.clone();
            let handle = std::thread::Builder::new()
                .name(format!("bench-server-{i}"))
                .spawn(move || serve(&listener, &stop))
                .map_err(io_err("starting a server thread"))?;
            handles.push(handle);
        }
        Ok(Servers {
            _udp: udp,
            stop,
            threads: handles,
        })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve(listener: &TcpListener, stop: &AtomicBool) {
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut conn, _)) = listener.accept() else {
            continue; // the accept timeout, or a connection reset before it was accepted
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = conn.set_nodelay(true);
        if matches!(conn.read(&mut buf), Ok(n) if n > 0) && conn.write_all(b"ok\n").is_ok() {
            // the client closes first (with an RST): wait for it
            let _ = conn.read(&mut buf);
        }
    }
}

// === TCP clients ===

/// What a TCP run did: connections completed (connect, request, reply, close), and failures.
#[derive(Clone, Debug, Default)]
pub struct TcpCounts {
    pub done: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
}

/// `threads` client threads in the client namespace, each opening one connection after
/// another to `target` until dropped.
pub struct TcpClients {
    pub counts: TcpCounts,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl TcpClients {
    pub fn start(client: &Netns, target: SocketAddrV4, threads: usize) -> Result<Self, BenchError> {
        // built first, so threads already started are stopped if a later one fails to start
        let mut clients = TcpClients {
            counts: TcpCounts::default(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        for i in 0..threads {
            let (path, counts, stop) =
                (client.path(), clients.counts.clone(), clients.stop.clone());
            let handle = std::thread::Builder::new()
                .name(format!("bench-client-{i}"))
                .spawn(move || connect_loop(&path, target, &counts, &stop))
                .map_err(io_err("starting a client thread"))?;
            clients.threads.push(handle);
        }
        Ok(clients)
    }
}

impl Drop for TcpClients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn connect_loop(netns_path: &Path, target: SocketAddrV4, counts: &TcpCounts, stop: &AtomicBool) {
    if netns::enter(netns_path).is_err() {
        counts.failed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let target = SocketAddr::V4(target);
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        match exchange(&target, &mut buf) {
            Ok(()) => counts.done.fetch_add(1, Ordering::Relaxed),
            Err(_) => {
                // e.g. no source port free: do not spin
                std::thread::sleep(Duration::from_millis(1));
                counts.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// One short connection: connect, request, reply, close. The close is an abort (`SO_LINGER`
/// 0: an RST, no TIME_WAIT): otherwise each run leaves tens of thousands of TIME_WAIT
/// sockets in the client namespace, and searching a free port among them made TCP runs
/// vary more than the dataplanes do.
fn exchange(target: &SocketAddr, buf: &mut [u8]) -> std::io::Result<()> {
    let mut conn = TcpStream::connect_timeout(target, Duration::from_secs(1))?;
    socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(1)))?;
    conn.write_all(b"GET\n")?;
    if conn.read(buf)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(()) // dropping `conn` closes it
}
