//! Socket-level balancing for the node's own processes (the cgroup `sock_addr` programs) on
//! a real kernel: clients are real processes (python3) placed in a cgroup v2 of the test's
//! own, talking to real sockets of the test; the programs are attached to that cgroup only,
//! so nothing else on the machine is affected.

mod support;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use proxy::{BpfCgroup, Protocol, ServiceKey};
use support::PinRoot;

/// Not routed anywhere: a connect that is not rewritten fails or times out.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 10);

/// A cgroup v2 directory of the test's own, removed afterwards.
struct Cgroup(PathBuf);

impl Cgroup {
    fn new(test: &str) -> Cgroup {
        let root = BpfCgroup::Auto
            .resolve()
            .expect("a cgroup v2 hierarchy is mounted");
        let path = root.join(format!("kaze-test-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir(&path).expect("creating the test cgroup");
        Cgroup(path)
    }

    /// Runs a python3 program inside this cgroup, optionally in network namespace `netns`;
    /// returns (success, stdout, stderr).
    fn python(&self, netns: Option<&str>, program: &str) -> (bool, String, String) {
        // into the cgroup first: `ip netns exec` mounts a fresh /sys, without the cgroup
        // hierarchy, and the processes it starts stay in the caller's cgroup
        let enter = netns.map_or(String::new(), |ns| format!("ip netns exec {ns} "));
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec {enter}python3 -c \"$0\"",
            self.0.display()
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c");
        let out = cmd
            .arg(&script)
            .arg(program)
            .output()
            .expect("running python3");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// How many programs are attached to this cgroup (any type).
    fn attached(&self) -> usize {
        let out = Command::new("bpftool")
            .args(["cgroup", "show"])
            .arg(&self.0)
            .args(["-j"])
            .output()
            .expect("bpftool");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v.as_array().map_or(0, Vec::len)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // the clients have exited; an empty cgroup can be removed
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A network namespace of the test's own (no routes at all), removed afterwards.
struct Netns(String);

impl Netns {
    fn new(test: &str) -> Netns {
        let name = format!("kzsock-{test}-{}", std::process::id() % 100_000);
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        assert!(Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add")
            .success());
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// `n` TCP backends on 127.0.0.1, each answering every connection with its name.
fn tcp_backends(n: usize) -> Vec<SocketAddrV4> {
    (0..n)
        .map(|i| {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = match l.local_addr().expect("addr") {
                std::net::SocketAddr::V4(a) => a,
                a => panic!("unexpected {a}"),
            };
            std::thread::spawn(move || {
                for s in l.incoming().flatten() {
                    let mut s = s;
                    let _ = s.write_all(format!("tcp{i}\n").as_bytes());
                }
            });
            addr
        })
        .collect()
}

/// `n` UDP backends on 127.0.0.1, each answering every datagram with its name.
fn udp_backends(n: usize) -> Vec<SocketAddrV4> {
    (0..n)
        .map(|i| {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let addr = match s.local_addr().expect("addr") {
                std::net::SocketAddr::V4(a) => a,
                a => panic!("unexpected {a}"),
            };
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok((_, from)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(format!("udp{i}").as_bytes(), from);
                }
            });
            addr
        })
        .collect()
}

const TCP_CLIENT: &str = "
import socket
for i in range(9):
    s = socket.create_connection(('10.97.0.10', 80), 2)
    print(s.recv(16).decode().strip(), s.getpeername()[0], s.getpeername()[1])
    s.close()
";

const UDP_CLIENT: &str = "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
for i in range(3):
    s.sendto(b'hi', ('10.97.0.10', 53))
    data, addr = s.recvfrom(64)
    print(data.decode(), addr[0], addr[1])
";

#[test]
fn node_processes_reach_a_service_through_the_socket_programs() {
    let pins = PinRoot::new("sock");
    let cg = Cgroup::new("sock");
    let mut dp = pins.load();
    let attached = dp
        .attach_cgroup(&cg.0)
        .expect("attaching the socket programs");
    assert_eq!(attached.len(), 4, "four socket programs: {attached:?}");
    assert_eq!(cg.attached(), 4, "attached to the test's cgroup");

    let tcp = tcp_backends(3);
    let tcp_key = ServiceKey {
        address: VIP,
        port: 80,
        protocol: Protocol::Tcp,
    };
    dp.upsert_service(tcp_key, &tcp).expect("tcp service");
    let udp = udp_backends(3);
    dp.upsert_service(
        ServiceKey {
            address: VIP,
            port: 53,
            protocol: Protocol::Udp,
        },
        &udp,
    )
    .expect("udp service");

    // TCP: every connect() gets the next backend; getpeername() shows the service.
    let (ok, out, err) = cg.python(None, TCP_CLIENT);
    assert!(ok, "tcp client failed: {err}\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 9, "{out}");
    for l in &lines {
        assert!(
            l.ends_with(" 10.97.0.10 80"),
            "getpeername() shows the service address: {l}"
        );
    }
    let names: Vec<&str> = lines
        .iter()
        .map(|l| l.split(' ').next().unwrap_or(""))
        .collect();
    // round-robin: three turns of the same order
    assert_eq!(names[0..3], names[3..6], "{out}");
    assert_eq!(names[0..3], names[6..9], "{out}");
    let mut first: Vec<&str> = names[0..3].to_vec();
    first.sort();
    assert_eq!(first, ["tcp0", "tcp1", "tcp2"], "{out}");

    // UDP, unconnected: the datagrams of one socket stay on one backend, and the answers
    // come from the service address (recvmsg).
    let (ok, out, err) = cg.python(None, UDP_CLIENT);
    assert!(ok, "udp client failed: {err}\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("udp"), "{out}");
    for l in &lines {
        assert_eq!(*l, lines[0], "one socket, one backend: {out}");
        assert!(
            l.ends_with(" 10.97.0.10 53"),
            "answer from the service: {l}"
        );
    }

    // Another network namespace (a pod, another node) is not the proxy's: untouched, so
    // its connect finds no route.
    let ns = Netns::new("sock");
    let (ok, out, err) = cg.python(Some(&ns.0), TCP_CLIENT);
    assert!(
        !ok && err.contains("unreachable"),
        "a socket in another netns is not balanced here: {err}\n{out}"
    );

    // A service without backends refuses at connect() instead of timing out.
    dp.upsert_service(tcp_key, &[]).expect("no backends");
    let (ok, _, err) = cg.python(None, TCP_CLIENT);
    assert!(
        !ok && err.contains("PermissionError"),
        "connect() to a service without backends is refused (EPERM): {err}"
    );
    dp.upsert_service(tcp_key, &tcp).expect("backends again");

    // loadBalancerSourceRanges: the node's sockets are looked up as 0.0.0.0, which the proxy
    // adds where upstream allows the node; without it they are refused at connect().
    let node = proxy::desired::NODE_SOURCE;
    let elsewhere = (std::net::Ipv4Addr::new(203, 0, 113, 0), 24);
    dp.upsert_frontend(tcp_key, &tcp, 0, 0, &[elsewhere], None)
        .expect("ranges without the node");
    let (ok, _, err) = cg.python(None, TCP_CLIENT);
    assert!(
        !ok && err.contains("PermissionError"),
        "the node outside the ranges is refused (EPERM): {err}"
    );
    dp.upsert_frontend(tcp_key, &tcp, 0, 0, &[elsewhere, node], None)
        .expect("ranges with the node");
    let (ok, out, err) = cg.python(None, TCP_CLIENT);
    assert!(ok, "the node let in: {err}\n{out}");
    dp.upsert_service(tcp_key, &tcp).expect("no ranges");

    // externalTrafficPolicy Local's short-circuit: the node's own connections to the
    // frontend go to every endpoint, not only to the frontend's (this node's) backends
    dp.upsert_frontend(tcp_key, &tcp[..1], 0, 0, &[], None)
        .expect("one local backend");
    let (ok, out, err) = cg.python(None, TCP_CLIENT);
    assert!(ok, "tcp client, one backend: {err}\n{out}");
    assert!(
        out.lines().all(|l| l.starts_with("tcp0 ")),
        "without a short-circuit: the frontend's backend only\n{out}"
    );
    dp.upsert_frontend(tcp_key, &tcp[..1], 0, 0, &[], Some(&tcp))
        .expect("with a short-circuit");
    let (ok, out, err) = cg.python(None, TCP_CLIENT);
    assert!(ok, "tcp client, short-circuit: {err}\n{out}");
    let mut names: Vec<&str> = out
        .lines()
        .map(|l| l.split(' ').next().unwrap_or(""))
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(
        names,
        ["tcp0", "tcp1", "tcp2"],
        "the node's sockets take the short-circuit\n{out}"
    );
    dp.upsert_service(tcp_key, &tcp).expect("plain again");

    // A restarted proxy replaces its programs (no doubles) and keeps working.
    drop(dp);
    let mut dp = pins.load();
    let again = dp.attach_cgroup(&cg.0).expect("attaching again");
    assert_eq!(again.len(), 4);
    assert_eq!(
        cg.attached(),
        4,
        "the old links were replaced, not added to"
    );
    let (ok, out, err) = cg.python(None, TCP_CLIENT);
    assert!(ok, "tcp client after the restart: {err}\n{out}");
    assert_eq!(out.lines().count(), 9);

    // Removing the pins detaches the programs.
    drop(dp);
    drop(pins);
    let mut detached = false;
    for _ in 0..50 {
        if cg.attached() == 0 {
            detached = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(detached, "programs still attached after the pins went");
}
