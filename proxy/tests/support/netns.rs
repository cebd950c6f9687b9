//! Network namespaces, veths and echo servers for the end-to-end tests. Everything created
//! here is removed by a guard's `Drop`, so a failing (panicking) test cleans up too.

use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

/// The one place these tests need unsafe: `setns(2)`, which std does not wrap.
#[allow(unsafe_code)]
mod sys {
    use std::{fs::File, io, os::fd::AsRawFd};

    /// Moves the calling thread (only it) into the named network namespace.
    pub fn enter_netns(name: &str) -> io::Result<()> {
        let f = File::open(format!("/var/run/netns/{name}"))?;
        // SAFETY: setns only reads the fd, which `f` keeps open for the call; with
        // CLONE_NEWNET it changes the network namespace of the calling thread alone.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Runs `cmd args...` and panics with its output if it fails.
pub fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a fresh thread inside network namespace `ns` and returns its result.
pub fn in_netns<T: Send, F: FnOnce() -> T + Send>(ns: &str, f: F) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            sys::enter_netns(ns).unwrap_or_else(|e| panic!("entering netns {ns}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A named network namespace, deleted on drop (with every interface in it).
pub struct Netns(String);

impl Netns {
    pub fn new(name: String) -> Self {
        // a leftover from a crashed run of the same test and pid is ours to remove
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.0.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// Sets `net.*` sysctl `key` (dotted) to `value` inside this namespace. `/proc/sys/net`
    /// shows the namespace of the thread that opens it, so no `sysctl` binary is needed.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        in_netns(&self.0, || {
            std::fs::write(&path, value).unwrap_or_else(|e| panic!("writing {path}: {e}"))
        });
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A "node" namespace routing between a client namespace and backend namespaces, each
/// attached by a veth pair: node side `v<tag>` with `10.200.<n>.1/24`, the other side
/// `eth0` with `10.200.<n>.2/24` and a default route to the node.
pub struct Topology {
    // dropped in this order: backends and client first, then the node
    pub backends: Vec<Netns>,
    pub client: Netns,
    pub node: Netns,
    /// Node-side interface names: the client's first, then one per backend.
    pub node_ifaces: Vec<String>,
}

impl Topology {
    pub fn new(id: &str, backends: usize) -> Self {
        let node = Netns::new(format!("kz{id}n"));
        node.sysctl("net.ipv4.ip_forward", "1");
        // replies are reverse-NATed to the service address, which the node has no route
        // for; strict reverse-path filtering would drop them
        node.sysctl("net.ipv4.conf.all.rp_filter", "0");
        node.sysctl("net.ipv4.conf.default.rp_filter", "0");
        let client = Netns::new(format!("kz{id}c"));
        let backends: Vec<Netns> = (0..backends)
            .map(|i| Netns::new(format!("kz{id}b{i}")))
            .collect();
        let mut node_ifaces = Vec::new();
        node_ifaces.push(link(&node, "vc", &client, 0));
        for (i, b) in backends.iter().enumerate() {
            node_ifaces.push(link(&node, &format!("vb{i}"), b, i as u8 + 1));
        }
        Topology {
            backends,
            client,
            node,
            node_ifaces,
        }
    }

    pub fn client_addr() -> Ipv4Addr {
        Ipv4Addr::new(10, 200, 0, 2)
    }

    pub fn backend_addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, i as u8 + 1, 2)
    }
}

fn link(node: &Netns, iface: &str, other: &Netns, subnet: u8) -> String {
    node.ip(&[
        "link",
        "add",
        iface,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        other.name(),
    ]);
    node.ip(&[
        "addr",
        "add",
        &format!("10.200.{subnet}.1/24"),
        "dev",
        iface,
    ]);
    node.ip(&["link", "set", iface, "up"]);
    other.ip(&[
        "addr",
        "add",
        &format!("10.200.{subnet}.2/24"),
        "dev",
        "eth0",
    ]);
    other.ip(&["link", "set", "eth0", "up"]);
    other.ip(&[
        "route",
        "add",
        "default",
        "via",
        &format!("10.200.{subnet}.1"),
    ]);
    iface.to_string()
}

/// A TCP and UDP server in a namespace that answers every line (TCP) or datagram (UDP)
/// with its own name. Stopped and joined on drop.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(ns: &Netns, name: &str, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut threads = Vec::new();
        for udp in [false, true] {
            let (ns, name, stop, ready) = (
                ns.name().to_string(),
                name.to_string(),
                stop.clone(),
                ready_tx.clone(),
            );
            threads.push(std::thread::spawn(move || {
                sys::enter_netns(&ns).expect("entering the backend netns");
                let addr = SocketAddr::from(([0, 0, 0, 0], port));
                if udp {
                    let sock = UdpSocket::bind(addr).expect("binding the UDP echo server");
                    sock.set_read_timeout(Some(Duration::from_millis(50)))
                        .expect("setting a read timeout");
                    ready.send(()).expect("signalling readiness");
                    serve_udp(&sock, &name, &stop);
                } else {
                    let listener = TcpListener::bind(addr).expect("binding the TCP echo server");
                    listener
                        .set_nonblocking(true)
                        .expect("making the listener non-blocking");
                    ready.send(()).expect("signalling readiness");
                    serve_tcp(&listener, &name, &stop);
                }
            }));
        }
        for _ in 0..2 {
            ready_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("echo server did not start");
        }
        EchoServer { stop, threads }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_udp(sock: &UdpSocket, name: &str, stop: &AtomicBool) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::SeqCst) {
        if let Ok((_, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(name.as_bytes(), peer);
        }
    }
}

fn serve_tcp(listener: &TcpListener, name: &str, stop: &Arc<AtomicBool>) {
    let mut conns = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (name, stop) = (name.to_string(), stop.clone());
                conns.push(std::thread::spawn(move || serve_conn(stream, &name, &stop)));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    for c in conns {
        let _ = c.join();
    }
}

fn serve_conn(stream: TcpStream, name: &str, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::SeqCst) {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                if writer.write_all(format!("{name}\n").as_bytes()).is_err() {
                    return;
                }
                line.clear();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// A TCP connection from the client namespace; asks who answers, line by line.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    pub fn open(client: &Netns, to: SocketAddrV4) -> Self {
        let stream = in_netns(client.name(), || {
            TcpStream::connect_timeout(&SocketAddr::V4(to), Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("connecting to {to} from the client: {e}"))
        });
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("setting a read timeout");
        Conn {
            writer: stream.try_clone().expect("cloning the stream"),
            reader: BufReader::new(stream),
        }
    }

    /// Sends a line and returns the name of the backend that answered.
    pub fn ask(&mut self) -> String {
        self.writer
            .write_all(b"who\n")
            .expect("writing to the connection");
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .expect("reading the backend's answer");
        assert!(!line.is_empty(), "the connection was closed");
        line.trim_end().to_string()
    }
}

/// One new TCP connection: connect, ask once, close.
pub fn tcp_once(client: &Netns, to: SocketAddrV4) -> String {
    Conn::open(client, to).ask()
}

/// A UDP socket in the client namespace (one source port: one flow).
pub fn udp_socket(client: &Netns) -> UdpSocket {
    let sock = in_netns(client.name(), || {
        UdpSocket::bind("0.0.0.0:0").expect("binding a client UDP socket")
    });
    sock.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("setting a read timeout");
    sock
}

/// Sends a datagram on `sock` and returns the answering backend's name.
pub fn udp_ask(sock: &UdpSocket, to: SocketAddrV4) -> String {
    sock.send_to(b"who", to).expect("sending a datagram");
    let mut buf = [0u8; 256];
    let (n, from) = sock
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no UDP answer from {to}: {e}"));
    assert_eq!(
        from,
        SocketAddr::V4(to),
        "the answer must come from the service address"
    );
    String::from_utf8_lossy(&buf[..n]).into_owned()
}
