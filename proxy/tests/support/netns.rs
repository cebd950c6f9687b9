//! Echo servers and clients for the end-to-end tests, in the namespaces and veths of
//! [`proxy::netns`]. Everything created here is removed by a guard's `Drop`, so a failing
//! (panicking) test cleans up too.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

#[allow(unused_imports)] // not every test file uses both
pub use proxy::netns::{Netns, Topology};

/// Runs `f` on a fresh thread inside network namespace `ns` and returns its result.
pub fn in_netns<T: Send, F: FnOnce() -> T + Send>(ns: &str, f: F) -> T {
    proxy::netns::in_netns(ns, f).unwrap_or_else(|e| panic!("entering netns {ns}: {e}"))
}

/// A TCP and UDP server in a namespace that answers every line (TCP) or datagram (UDP)
/// with its own name. Stopped and joined on drop.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(ns: &Netns, name: &str, port: u16) -> Self {
        Self::start_at(ns, name, SocketAddr::from(([0, 0, 0, 0], port)))
    }

    /// [`EchoServer::start`] bound to `addr` (e.g. `[::]:port` for IPv6 clients).
    pub fn start_at(ns: &Netns, name: &str, addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut threads = Vec::new();
        for udp in [false, true] {
            let (ns, name, stop, ready) =
                (ns.path(), name.to_string(), stop.clone(), ready_tx.clone());
            threads.push(std::thread::spawn(move || {
                proxy::netns::enter(&ns).expect("entering the backend netns");
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
