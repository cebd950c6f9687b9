//! Network namespaces joined by veth pairs: the "node", "client" and "pod" namespaces of
//! the privileged tests and of `cargo xtask bench dataplane`. Every namespace is deleted
//! (with its interfaces, iptables rules and conntrack table) by its guard's `Drop`, so a
//! failing run cleans up too.

use std::{
    fs::File,
    io,
    net::Ipv4Addr,
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::Command,
};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("running {command}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("entering network namespace {path}")]
    Enter {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {path} in network namespace {netns}")]
    Sysctl {
        path: String,
        netns: String,
        #[source]
        source: io::Error,
    },
}

/// Moves the calling thread (only it) into the network namespace at `path`
/// (e.g. `/var/run/netns/<name>`). Sockets it creates afterwards belong to that namespace,
/// and so do processes it spawns.
pub fn enter(path: &Path) -> io::Result<()> {
    let f = File::open(path)?;
    rustix::thread::move_into_link_name_space(
        f.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(io::Error::from)
}

/// The path `ip netns add <name>` binds the namespace to.
pub fn path_of(name: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/netns/{name}"))
}

/// Runs `f` on a fresh thread inside network namespace `name` and returns its result (a
/// panic in `f` is resumed on the caller's thread).
pub fn in_netns<T: Send, F: FnOnce() -> T + Send>(name: &str, f: F) -> Result<T, NetnsError> {
    let path = path_of(name);
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(&path).map_err(|source| NetnsError::Enter {
                path: path.clone(),
                source,
            })?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Runs `cmd args...` and returns its stdout.
pub fn run(cmd: &str, args: &[&str]) -> Result<String, NetnsError> {
    let command = format!("{cmd} {}", args.join(" "));
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|source| NetnsError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetnsError::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A named network namespace, deleted on drop (with every interface in it).
#[derive(Debug)]
pub struct Netns(String);

impl Netns {
    /// Creates the namespace (replacing a leftover of the same name: names are unique to a
    /// run, so one that exists was left by a crashed run of the same id) with `lo` up.
    pub fn new(name: String) -> Result<Self, NetnsError> {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name])?;
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    pub fn path(&self) -> PathBuf {
        path_of(&self.0)
    }

    /// `ip -n <this> args...`; returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String, NetnsError> {
        let mut all = vec!["-n", self.0.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs `cmd args...` inside this namespace (`ip netns exec`); returns its stdout.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Result<String, NetnsError> {
        let mut all = vec!["netns", "exec", self.0.as_str(), cmd];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Sets `net.*` sysctl `key` (dotted) to `value` inside this namespace. `/proc/sys/net`
    /// shows the namespace of the thread that opens it, so no `sysctl` binary is needed.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), NetnsError> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        in_netns(&self.0, || std::fs::write(&path, value))?.map_err(|source| NetnsError::Sysctl {
            path,
            netns: self.0.clone(),
            source,
        })
    }

    /// The MAC address of `iface` in this namespace.
    pub fn mac(&self, iface: &str) -> Result<String, NetnsError> {
        let out = self.ip(&["-o", "link", "show", "dev", iface])?;
        // "5: vc@if4: <...> mtu 1500 ... link/ether 8a:3b:7e:0b:3b:0f brd ff:..."
        out.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .map(str::to_string)
            .ok_or_else(|| NetnsError::Failed {
                command: format!("ip -n {} link show dev {iface}", self.0),
                stderr: format!("no link/ether address in {out:?}"),
            })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A "node" namespace routing between a client namespace and backend namespaces, each
/// attached by a veth pair: node side `v<tag>` with `10.200.<n>.1/24`, the other side
/// `eth0` with `10.200.<n>.2/24` and a default route to the node. Namespaces are named
/// `kz<id>n` (node), `kz<id>c` (client) and `kz<id>b<i>` (backends).
pub struct Topology {
    // dropped in this order: backends and client first, then the node
    pub backends: Vec<Netns>,
    pub client: Netns,
    pub node: Netns,
    /// Node-side interface names: the client's first, then one per backend.
    pub node_ifaces: Vec<String>,
}

impl Topology {
    pub fn new(id: &str, backends: usize) -> Result<Self, NetnsError> {
        let node = Netns::new(format!("kz{id}n"))?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        // replies are reverse-NATed to the service address, which the node has no route
        // for; strict reverse-path filtering would drop them
        node.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
        node.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        let client = Netns::new(format!("kz{id}c"))?;
        let backends: Vec<Netns> = (0..backends)
            .map(|i| Netns::new(format!("kz{id}b{i}")))
            .collect::<Result<_, _>>()?;
        let mut node_ifaces = Vec::new();
        node_ifaces.push(link(&node, "vc", &client, 0)?);
        for (i, b) in backends.iter().enumerate() {
            node_ifaces.push(link(&node, &format!("vb{i}"), b, i as u8 + 1)?);
        }
        Ok(Topology {
            backends,
            client,
            node,
            node_ifaces,
        })
    }

    pub fn client_addr() -> Ipv4Addr {
        Ipv4Addr::new(10, 200, 0, 2)
    }

    /// Makes the topology dual-stack: every veth gets `fd00:200:<n>::1/64` (node side) and
    /// `fd00:200:<n>::2/64` (`nodad`: usable at once, no duplicate address detection), the
    /// far sides an IPv6 default route to the node, and the node forwards IPv6.
    pub fn add_ipv6(&self) -> Result<(), NetnsError> {
        self.node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        let others = std::iter::once(&self.client).chain(&self.backends);
        for (n, (iface, other)) in self.node_ifaces.iter().zip(others).enumerate() {
            self.node.ip(&[
                "addr",
                "add",
                &format!("fd00:200:{n}::1/64"),
                "dev",
                iface,
                "nodad",
            ])?;
            other.ip(&[
                "addr",
                "add",
                &format!("fd00:200:{n}::2/64"),
                "dev",
                "eth0",
                "nodad",
            ])?;
            other.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd00:200:{n}::1"),
            ])?;
        }
        Ok(())
    }

    pub fn client_addr6() -> std::net::Ipv6Addr {
        std::net::Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 2)
    }

    pub fn backend_addr6(i: usize) -> std::net::Ipv6Addr {
        std::net::Ipv6Addr::new(0xfd00, 0x200, i as u16 + 1, 0, 0, 0, 0, 2)
    }

    pub fn backend_addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, i as u8 + 1, 2)
    }
}

fn link(node: &Netns, iface: &str, other: &Netns, subnet: u8) -> Result<String, NetnsError> {
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
    ])?;
    node.ip(&[
        "addr",
        "add",
        &format!("10.200.{subnet}.1/24"),
        "dev",
        iface,
    ])?;
    node.ip(&["link", "set", iface, "up"])?;
    other.ip(&[
        "addr",
        "add",
        &format!("10.200.{subnet}.2/24"),
        "dev",
        "eth0",
    ])?;
    other.ip(&["link", "set", "eth0", "up"])?;
    other.ip(&[
        "route",
        "add",
        "default",
        "via",
        &format!("10.200.{subnet}.1"),
    ])?;
    Ok(iface.to_string())
}
