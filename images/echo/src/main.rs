//! A tiny test server for service and DNS tests: HTTP on `--http-port` (env `HTTP_PORT`,
//! default 8080) and UDP on `--udp-port` (env `UDP_PORT`, default 8081). Every answer is one
//! line, `<pod name> <client ip:port>`, where the pod name is env `POD_NAME` or the hostname
//! (the kubelet sets the pod's hostname to the pod name). Std-only threads keep the static
//! binary small; it exits on SIGTERM so a pod stops without waiting out its grace period
//! (after `DRAIN_MS` milliseconds of further serving when that env is set).
//!
//! Client mode, for test pods: `echo --get <host:port> [--count N] [--interval-ms MS]` makes
//! N HTTP requests (each a new connection, MS apart), prints each answer line (or
//! `error: ...`), then `done`. `echo --resolve <name>` prints the name's IPv4 addresses, one
//! per line. Names are resolved by a minimal stub resolver reading `/etc/resolv.conf`
//! (nameserver, search, ndots) as a pod's libc would: Debian's busybox-static `wget`/`nc`
//! and a static glibc's getaddrinfo need NSS modules that a bare image does not have.

// Only for the SIGTERM handler: as PID 1 in a container SIGTERM is ignored by default.
#![allow(unsafe_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};

static TERMINATING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Set at start when `DRAIN_MS` is (the handler must not read the environment).
static DRAINING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    if DRAINING.load(std::sync::atomic::Ordering::SeqCst) {
        // a store to an atomic is async-signal-safe; the drain thread does the rest
        TERMINATING.store(true, std::sync::atomic::Ordering::SeqCst);
        return;
    }
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

/// With env `DRAIN_MS`, a SIGTERM lets the server keep answering for that long before it
/// exits, as a well-behaved server does while its endpoint is being removed everywhere.
fn drain_on_term() {
    let Some(ms) = std::env::var("DRAIN_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    DRAINING.store(true, std::sync::atomic::Ordering::SeqCst);
    std::thread::spawn(move || {
        while !TERMINATING.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        eprintln!("echo: SIGTERM, draining for {ms} ms");
        std::thread::sleep(std::time::Duration::from_millis(ms));
        std::process::exit(0);
    });
}

fn main() {
    // SAFETY: installing a plain handler for SIGTERM/SIGINT; the handler only calls _exit.
    let handler: extern "C" fn(libc::c_int) = on_term;
    unsafe {
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
    }
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--get") {
        let target = args
            .get(i + 1)
            .cloned()
            .unwrap_or_else(|| fail("--get", "needs ip:port"));
        let count = setting("--count", "COUNT", 1);
        let interval = setting("--interval-ms", "INTERVAL_MS", 0);
        client(&target, count, u64::from(interval));
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--resolve") {
        let name = args
            .get(i + 1)
            .cloned()
            .unwrap_or_else(|| fail("--resolve", "needs a name"));
        match resolve(&name) {
            Ok(ips) => ips.iter().for_each(|ip| println!("{ip}")),
            Err(e) => fail(&format!("resolving {name}"), e),
        }
        return;
    }
    drain_on_term();
    let http_port = setting("--http-port", "HTTP_PORT", 8080);
    let udp_port = setting("--udp-port", "UDP_PORT", 8081);
    let name = pod_name();

    let udp = UdpSocket::bind(("0.0.0.0", udp_port)).unwrap_or_else(|e| fail("binding udp", e));
    let udp_name = name.clone();
    std::thread::spawn(move || serve_udp(udp, &udp_name));

    let tcp = TcpListener::bind(("0.0.0.0", http_port)).unwrap_or_else(|e| fail("binding http", e));
    eprintln!("echo: {name} serving http on :{http_port} and udp on :{udp_port}");
    for stream in tcp.incoming().flatten() {
        let name = name.clone();
        std::thread::spawn(move || serve_http(stream, &name));
    }
}

fn client(target: &str, count: u16, interval_ms: u64) {
    // a name is resolved once, as a client with a connection pool would
    let resolved = match target.rsplit_once(':') {
        Some((host, port)) if host.parse::<std::net::Ipv4Addr>().is_err() => match resolve(host) {
            Ok(ips) if !ips.is_empty() => format!("{}:{port}", ips[0]),
            Ok(_) => {
                println!("error: {host}: no addresses");
                target.to_string()
            }
            Err(e) => {
                println!("error: resolving {host}: {e}");
                target.to_string()
            }
        },
        _ => target.to_string(),
    };
    let target = resolved.as_str();
    for i in 0..count {
        if i > 0 && interval_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(interval_ms));
        }
        let answer = connect(target).and_then(|mut s| {
            s.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        });
        match answer {
            // The body is the last line of the response.
            Ok(r) => println!("{}", r.trim_end().lines().last().unwrap_or("")),
            Err(e) => println!("error: {e}"),
        }
    }
    println!("done");
}

fn serve_udp(sock: UdpSocket, name: &str) {
    let mut buf = [0u8; 2048];
    loop {
        if let Ok((_, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(format!("{name} {peer}\n").as_bytes(), peer);
        }
    }
}

fn serve_http(mut stream: TcpStream, name: &str) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "unknown".into());
    // Read until the end of the request head; bodies are ignored.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let body = format!("{name} {peer}\n");
    let resp = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes());
}

fn setting(flag: &str, env: &str, default: u16) -> u16 {
    let args: Vec<String> = std::env::args().collect();
    let from_args = args
        .iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .or_else(|| {
            let prefix = format!("{flag}=");
            args.iter()
                .find_map(|a| a.strip_prefix(&prefix).map(str::to_string))
        });
    let raw = from_args.or_else(|| std::env::var(env).ok());
    match raw {
        None => default,
        Some(v) => v.parse().unwrap_or_else(|_| {
            fail(
                &format!("parsing {flag}/{env}"),
                format!("{v:?} is not a port"),
            )
        }),
    }
}

fn pod_name() -> String {
    if let Ok(n) = std::env::var("POD_NAME") {
        if !n.is_empty() {
            return n;
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("echo: {what}: {e}");
    std::process::exit(1)
}

// === stub resolver ===

/// Connects to `host:port`, resolving `host` with [`resolve`] unless it is an address.
fn connect(target: &str) -> std::io::Result<TcpStream> {
    let (host, port) = target
        .rsplit_once(':')
        .ok_or_else(|| std::io::Error::other(format!("{target}: expected host:port")))?;
    let port: u16 = port
        .parse()
        .map_err(|_| std::io::Error::other(format!("{target}: bad port")))?;
    let ip = match host.parse::<std::net::Ipv4Addr>() {
        Ok(ip) => ip,
        Err(_) => *resolve(host)?
            .first()
            .ok_or_else(|| std::io::Error::other(format!("{host}: no addresses")))?,
    };
    TcpStream::connect_timeout(
        &std::net::SocketAddr::from((ip, port)),
        std::time::Duration::from_secs(2),
    )
}

/// A records of `name` from the first nameserver in /etc/resolv.conf, trying the search
/// domains first when the name has fewer dots than `ndots` (default 1), like glibc/musl.
fn resolve(name: &str) -> std::io::Result<Vec<std::net::Ipv4Addr>> {
    let conf = std::fs::read_to_string("/etc/resolv.conf")?;
    let mut server = None;
    let mut search = Vec::new();
    let mut ndots = 1;
    for line in conf.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") if server.is_none() => server = words.next().map(str::to_string),
            Some("search") => search = words.map(str::to_string).collect(),
            Some("options") => {
                for o in words {
                    if let Some(n) = o.strip_prefix("ndots:") {
                        ndots = n.parse().unwrap_or(1);
                    }
                }
            }
            _ => {}
        }
    }
    let server: std::net::IpAddr = server
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no nameserver in /etc/resolv.conf"))?;
    let mut candidates = Vec::new();
    if let Some(fqdn) = name.strip_suffix('.') {
        candidates.push(fqdn.to_string());
    } else {
        let dots = name.matches('.').count();
        if dots >= ndots {
            candidates.push(name.to_string());
        }
        candidates.extend(search.iter().map(|d| format!("{name}.{d}")));
        if dots < ndots {
            candidates.push(name.to_string());
        }
    }
    let mut last = std::io::Error::other(format!("{name}: not found"));
    for candidate in candidates {
        match query_a(server, &candidate) {
            Ok(ips) if !ips.is_empty() => return Ok(ips),
            Ok(_) => last = std::io::Error::other(format!("{candidate}: no A records")),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn query_a(server: std::net::IpAddr, name: &str) -> std::io::Result<Vec<std::net::Ipv4Addr>> {
    let id = (std::process::id() as u16) ^ 0x5a5a;
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    let sock = UdpSocket::bind(("0.0.0.0", 0))?;
    sock.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
    sock.connect((server, 53))?;
    let mut buf = [0u8; 1500];
    let mut tries = 0;
    let n = loop {
        sock.send(&q)?;
        match sock.recv(&mut buf) {
            Ok(n) if n >= 12 && buf[..2] == id.to_be_bytes() => break n,
            Ok(_) => {}
            Err(e) if tries >= 2 => return Err(e),
            Err(_) => {}
        }
        tries += 1;
    };
    let msg = &buf[..n];
    let bad = || std::io::Error::other(format!("{name}: malformed answer"));
    let rcode = msg[3] & 0x0f;
    if rcode != 0 {
        return Ok(Vec::new());
    }
    let answers = u16::from_be_bytes([msg[6], msg[7]]);
    let mut at = skip_name(msg, 12).ok_or_else(bad)? + 4;
    let mut ips = Vec::new();
    for _ in 0..answers {
        at = skip_name(msg, at).ok_or_else(bad)?;
        let head = msg.get(at..at + 10).ok_or_else(bad)?;
        let (rtype, len) = (
            u16::from_be_bytes([head[0], head[1]]),
            usize::from(u16::from_be_bytes([head[8], head[9]])),
        );
        let data = msg.get(at + 10..at + 10 + len).ok_or_else(bad)?;
        if rtype == 1 && len == 4 {
            ips.push(std::net::Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += 10 + len;
    }
    Ok(ips)
}

/// The offset just past the (possibly compressed) name at `at`.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        if len & 0xc0 == 0xc0 {
            return Some(at + 2);
        }
        if len == 0 {
            return Some(at + 1);
        }
        at += 1 + usize::from(len);
    }
}
