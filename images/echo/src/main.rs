//! A tiny test server for service and DNS tests: HTTP on `--http-port` (env `HTTP_PORT`,
//! default 8080) and UDP on `--udp-port` (env `UDP_PORT`, default 8081). Every answer is one
//! line, `<pod name> <client ip:port>`, where the pod name is env `POD_NAME` or the hostname
//! (the kubelet sets the pod's hostname to the pod name). Std-only threads keep the static
//! binary small; it exits on SIGTERM so a pod stops without waiting out its grace period.
//!
//! Client mode, for test pods: `echo --get <ip:port> [--count N]` makes N HTTP requests
//! (each a new connection), prints each answer line, then `done`. (Debian's busybox-static
//! `wget`/`nc` need NSS modules that a bare image does not have.)

// Only for the SIGTERM handler: as PID 1 in a container SIGTERM is ignored by default.
#![allow(unsafe_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};

extern "C" fn on_term(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
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
        client(&target, count);
        return;
    }
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

fn client(target: &str, count: u16) {
    for _ in 0..count {
        let answer = TcpStream::connect(target).and_then(|mut s| {
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
