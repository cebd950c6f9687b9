//! Test fixtures shared by kaze's test suites: real etcd processes on free ports in temp
//! dirs, killed and removed on drop (also when the test panics).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound then released; good enough for tests), chosen in
/// 20000-29999: below the kernel's ephemeral range (32768+ by default), so an outgoing
/// connection of a parallel test cannot take it between this check and its use (CI saw an
/// etcd fail with "address already in use" so, session 13), and clear of the well-known
/// ports kaze's components use (6443, 102xx) and the NodePort range (30000-32767). A port
/// is handed out once per process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
        ^ (u64::from(std::process::id()) << 20);
    for _ in 0..200 {
        // a cheap mix of time, pid and a counter (splitmix64's finalizer)
        let mut x = seed.wrapping_add(
            NEXT.fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        let port = 20000 + (x % 10000) as u16;
        // never the same port twice in one process: a test takes several before starting
        // what binds them (in a network namespace of its own nothing else would tell)
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port on 127.0.0.1")
}

/// A real single-member etcd, started from Debian's `etcd` binary.
#[derive(Debug)]
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    bin: PathBuf,
}

/// Debian trixie's etcd 3.5 that `cargo xtask setup` unpacks: `$KAZE_ETCD35` (set by
/// `cargo xtask`), else `target/tools/etcd-3.5/etcd`. The system's `etcd` is Debian 12's 3.4.
pub fn etcd35() -> PathBuf {
    let p = std::env::var_os("KAZE_ETCD35")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/etcd-3.5/etcd")
        });
    assert!(
        p.is_file(),
        "etcd 3.5 not found at {} (run `cargo xtask setup`)",
        p.display()
    );
    p
}

/// The version an etcd binary reports (`3.4.23`), or `unknown`.
pub fn etcd_version(bin: &std::path::Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("etcd Version: "))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

impl Etcd {
    /// Start the system's etcd (Debian's) and wait until it answers.
    pub fn start() -> Etcd {
        let bin = which("etcd").expect("etcd is not installed (run `cargo xtask setup`)");
        Etcd::start_bin(&bin)
    }

    /// Start the etcd binary `bin` (e.g. `etcd35()`) and wait until it answers.
    pub fn start_bin(bin: &std::path::Path) -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("kaze-etcd-")
            .tempdir()
            .expect("creating a temp dir for etcd");
        let mut etcd = Etcd {
            child: None,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            bin: bin.to_path_buf(),
        };
        // A port taken between free_port() and etcd's bind (by a parallel test): new ports.
        for _ in 0..5 {
            match etcd.try_spawn() {
                Ok(()) => return etcd,
                Err(log) if log.contains("address already in use") => {
                    etcd.child = None;
                    let _ = std::fs::remove_dir_all(etcd.data_dir());
                    let _ = std::fs::remove_file(etcd.dir.path().join("etcd.log"));
                    etcd.client_port = free_port();
                    etcd.peer_port = free_port();
                }
                Err(log) => panic!("etcd exited early; log:\n{log}"),
            }
        }
        etcd.spawn();
        etcd
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The etcd process's id (benches read its CPU time with [`bench::cpu_seconds`]).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The binary this etcd runs.
    pub fn bin(&self) -> &std::path::Path {
        &self.bin
    }

    fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("etcd exited early; log:\n{log}");
        }
    }

    /// Start etcd and wait until it answers; `Err(log)` if it exited.
    fn try_spawn(&mut self) -> Result<(), String> {
        let bin = &self.bin;
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("opening the etcd log");
        let child = Command::new(bin)
            .arg("--name=kaze-test")
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={}", self.url()))
            .arg(format!("--advertise-client-urls={}", self.url()))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=kaze-test={peer}"))
            // Room for 1.5 MiB values plus key and framing.
            .arg("--max-request-bytes=3145728")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log)
            .spawn()
            .expect("spawning etcd");
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={}", self.url()))
                .args(["endpoint", "health", "--command-timeout=1s"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("({status})\n{}", self.log()));
                }
            }
            if Instant::now() > deadline {
                panic!("etcd did not become healthy in 30 s; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The etcd log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Kill etcd (SIGKILL) and wait for it to exit. Data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start etcd again on the same data dir and ports.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Find an executable on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The real upstream kubectl the tests drive: `$KAZE_KUBECTL` (set by `cargo xtask`), else
/// the venv `cargo xtask setup` creates.
pub fn kubectl() -> PathBuf {
    if let Some(p) = std::env::var_os("KAZE_KUBECTL") {
        return PathBuf::from(p);
    }
    let p =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/venv/bin/kubectl");
    assert!(
        p.exists(),
        "kubectl 1.37 not found at {} (run `cargo xtask setup`)",
        p.display()
    );
    p
}

/// A child process killed (SIGKILL) and reaped on drop, so a failing test leaves nothing.
#[derive(Debug)]
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn new(child: Child) -> Self {
        ChildGuard(Some(child))
    }

    pub fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// Send SIGTERM and wait up to `timeout` for a clean exit; returns whether it exited
    /// successfully in time (it is SIGKILLed otherwise).
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        matches!(self.stop(timeout), Some(status) if status.success())
    }

    /// Send SIGTERM and wait up to `timeout`: how the process exited, or `None` if it had
    /// to be SIGKILLed (or was already reaped).
    pub fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.0.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A network namespace of the test's own, which the calling thread enters until the guard
/// drops. Every process the test spawns from that thread (the `kaze server` under test,
/// kubectl, kdig, a containerd) and every socket it opens live in it, so a node's host-wide
/// network state (the proxy's iptables chains, the pod masquerade `KZPOD-MASQ`, routes,
/// sysctls, tc/XDP attachments) stays out of the host's namespace and out of the way of
/// parallel tests, and goes with the namespace. Declare it first in the test: it drops last,
/// so the other guards (processes, links) run inside it, and then the thread goes back to
/// the host's namespace and the namespace is deleted.
#[derive(Debug)]
pub struct Netns {
    name: String,
    host: std::fs::File,
}

impl Netns {
    /// Creates `<prefix>-<pid>-<n>` with `lo` up and moves the calling thread into it.
    pub fn enter(prefix: &str) -> Netns {
        use std::os::fd::AsRawFd;
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        let run = |args: &[&str]| {
            let status = Command::new("ip").args(args).status().expect("running ip");
            assert!(status.success(), "ip {args:?} failed: {status}");
        };
        run(&["netns", "add", &name]);
        let host = std::fs::File::open("/proc/thread-self/ns/net").expect("this thread's netns");
        let guard = Netns { name, host };
        run(&["-n", &guard.name, "link", "set", "lo", "up"]);
        let target = std::fs::File::open(guard.path()).expect("opening the new netns");
        // SAFETY: setns on a valid namespace fd affects only the calling thread
        #[allow(unsafe_code)] // setns(2) has no safe std wrapper
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        guard
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as in `enter`, with the fd of the namespace the thread came from
        #[allow(unsafe_code)] // setns(2) has no safe std wrapper
        let rc = unsafe { libc::setns(self.host.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            eprintln!(
                "netns {}: going back to the host's namespace: {}",
                self.name,
                std::io::Error::last_os_error()
            );
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs the async test `test` on a multi-threaded tokio runtime whose threads all live in a
/// network namespace of their own ([`Netns`], `<prefix>-<pid>-<n>`): the namespace is
/// entered before the runtime starts, so its workers, the threads they start and every
/// process they spawn (CNI plugins, containerd, iptables) inherit it. `#[tokio::test]`
/// starts its workers before the test body runs, so a test cannot enter one there. The
/// runtime ends first, then the namespace goes, also when the test panics.
pub fn in_netns<F: std::future::Future>(prefix: &str, test: F) -> F::Output {
    let netns = Netns::enter(prefix);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("test runtime");
    let out = rt.block_on(test);
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(netns);
    out
}

/// A real containerd (Debian's 1.6) with its own root, state and socket in a temp dir, the
/// CRI plugin disabled. On drop every task it ran is killed, its shims are stopped, its
/// mounts are undone and the dir is removed — also when the test panics.
#[derive(Debug)]
pub struct Containerd {
    child: ChildGuard,
    dir: tempfile::TempDir,
}

impl Containerd {
    /// Start containerd and wait until it answers on its socket.
    pub fn start() -> Containerd {
        Containerd::start_in(&std::env::temp_dir())
    }

    /// [`Containerd::start`] with its root, state and socket in a new dir under `parent`
    /// (a filesystem the test controls, e.g. a small tmpfs).
    pub fn start_in(parent: &std::path::Path) -> Containerd {
        let bin =
            which("containerd").expect("containerd is not installed (run `cargo xtask setup`)");
        let dir = tempfile::Builder::new()
            .prefix("kaze-ctrd-")
            .tempdir_in(parent)
            .expect("creating a temp dir for containerd");
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        let sock = dir.path().join("containerd.sock");
        let config = format!(
            "version = 2\nroot = {root:?}\nstate = {state:?}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = {sock:?}\n\
             [ttrpc]\n  address = {ttrpc:?}\n\
             [debug]\n  level = \"info\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt:?}\n",
            ttrpc = dir.path().join("containerd.sock.ttrpc"),
            opt = dir.path().join("opt"),
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).expect("writing containerd's config");
        let log = std::fs::File::create(dir.path().join("containerd.log"))
            .expect("creating the containerd log");
        // The shims it starts find runc on PATH; make sure sbin dirs are on it.
        let path = format!(
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config_path)
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log)
            .spawn()
            .expect("spawning containerd");
        let mut c = Containerd {
            child: ChildGuard::new(child),
            dir,
        };
        c.wait_ready();
        c
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Run `ctr --address <socket> <args>` and return its stdout (panics on failure).
    pub fn ctr(&self, args: &[&str]) -> String {
        let out = self.ctr_raw(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn ctr_raw(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running ctr")
    }

    /// The containerd log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.socket().exists() && self.ctr_raw(&["version"]).status.success() {
                return;
            }
            if let Some(child) = self.child.0.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "containerd exited early with {status}; log:\n{}",
                        self.log()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer in 30 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kill every task and delete every container in every namespace.
    fn reap_all(&self) {
        reap_containerd(&self.socket());
    }
}

fn ctr_lines(socket: &std::path::Path, args: &[&str]) -> Vec<String> {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

/// Kill every task and delete every container in every namespace of the containerd on
/// `socket` (which must still be running), then force-delete what runc still holds for
/// those namespaces. For tests whose containerd is started by the code under test.
pub fn reap_containerd(socket: &std::path::Path) {
    for ns in ctr_lines(socket, &["namespaces", "ls", "-q"]) {
        for task in ctr_lines(socket, &["-n", &ns, "tasks", "ls", "-q"]) {
            ctr_lines(
                socket,
                &["-n", &ns, "tasks", "kill", "-a", "-s", "SIGKILL", &task],
            );
            std::thread::sleep(Duration::from_millis(100));
            ctr_lines(socket, &["-n", &ns, "tasks", "rm", "-f", &task]);
        }
        for c in ctr_lines(socket, &["-n", &ns, "containers", "ls", "-q"]) {
            ctr_lines(socket, &["-n", &ns, "containers", "rm", &c]);
        }
        runc_force_delete(&ns);
    }
}

/// Force-delete what runc still holds for containerd namespace `ns` (its state under
/// `/run/containerd/runc/<ns>`: empty once the tasks are gone; a container orphaned by a
/// killed shim is force-deleted, which kills it), then the state dir itself.
pub fn runc_force_delete(ns: &str) {
    let runc_root = std::path::Path::new("/run/containerd/runc").join(ns);
    for id in std::fs::read_dir(&runc_root)
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["delete", "--force"])
            .arg(id.file_name())
            .stderr(Stdio::null())
            .status();
    }
    let _ = std::fs::remove_dir(&runc_root);
}

/// SIGKILL the shims started by the containerd on `socket` (they outlive containerd).
pub fn kill_shims(socket: &std::path::Path) {
    let sock = socket.display().to_string();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains("containerd-shim") && cmdline.contains(&sock) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.reap_all();
        self.child.terminate(Duration::from_secs(5));
        kill_shims(&self.socket());
        // Undo leftover mounts so the temp dir can go.
        umount_under(self.dir.path());
    }
}

/// Lazily unmounts every mount at or below `dir`, deepest first.
pub fn umount_under(dir: &std::path::Path) {
    let prefix = dir.display().to_string();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut ours: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in ours {
        let _ = Command::new("umount").args(["-l", m]).status();
    }
}

/// Deletes a network link (a test's bridge) on drop, also when the test fails.
#[derive(Debug)]
pub struct LinkGuard(pub String);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// Run the real kubectl with `kubeconfig`, feeding `stdin` when given.
pub fn kubectl_with(
    kubeconfig: &std::path::Path,
    args: &[&str],
    stdin: Option<&str>,
) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(kubectl())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kubectl");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("kubectl stdin")
            .write_all(input.as_bytes())
            .expect("writing kubectl stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("kubectl output")
}

/// [`kubectl_with`], panicking with kubectl's output unless it succeeds; returns stdout.
pub fn kubectl_ok(kubeconfig: &std::path::Path, args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl_with(kubeconfig, args, stdin);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Helpers the `cargo xtask bench` drivers share.
pub mod bench {
    /// The `p`-quantile (0..=1) of sorted values.
    pub fn percentile(sorted: &[f64], p: f64) -> f64 {
        sorted
            .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    }

    /// CPU time (user + system, all threads) a process has used so far, in seconds; `None`
    /// for this process. Read before and after a phase, it divides into CPU per operation,
    /// which other load on the machine does not change the way it changes a rate.
    pub fn cpu_seconds(pid: Option<u32>) -> f64 {
        let path = pid.map_or("/proc/self/stat".to_string(), |p| format!("/proc/{p}/stat"));
        let stat = std::fs::read_to_string(path).unwrap_or_default();
        // the fields after the command name (which may hold spaces) in parentheses
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
            .sum();
        // in USER_HZ clock ticks, 100 per second on every Linux architecture kaze runs on
        ticks / 100.0
    }

    /// This process's peak resident set size (VmHWM), MiB.
    pub fn peak_rss_mib() -> f64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("VmHWM:")
                        .map(|v| v.trim().trim_end_matches("kB").trim().to_string())
                })
            })
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    /// One figure of `target/bench/<name>.json`; the ratio is value/reference when higher is
    /// better, reference/value otherwise (so > 1 always means "better than the reference").
    pub fn figure(
        metric: &str,
        value: f64,
        unit: &str,
        reference: &str,
        reference_value: f64,
        higher_is_better: bool,
    ) -> serde_json::Value {
        let ratio = if higher_is_better {
            value / reference_value.max(1e-9)
        } else {
            reference_value / value.max(1e-9)
        };
        serde_json::json!({"metric": metric, "value": (value * 100.0).round() / 100.0, "unit": unit,
            "reference": reference, "reference_value": (reference_value * 100.0).round() / 100.0,
            "ratio": (ratio * 1000.0).round() / 1000.0})
    }

    /// Write the figures as `out` (a JSON list) and print them.
    pub fn write(out: &std::path::Path, figures: &[serde_json::Value]) {
        let json = serde_json::to_string_pretty(figures).expect("serializing figures");
        if let Some(d) = out.parent() {
            std::fs::create_dir_all(d).expect("creating the bench output dir");
        }
        std::fs::write(out, &json).expect("writing the bench figures");
        println!("{json}");
    }
}

/// Removes what a kubelet left for `node` when a test ends early: pod network namespaces
/// (named `kaze-<16 hex>-<node>`, or, as kubelets before session 18 named them, `kaze-*`
/// holding an address starting with `pod_ip_prefix`, e.g. `"10.245."`) with their veths,
/// and the node's host-local IPAM directory. Drop it after the node's containerd.
#[derive(Debug)]
pub struct NodeGuard {
    pub node: String,
    pub pod_ip_prefix: String,
}

impl Drop for NodeGuard {
    fn drop(&mut self) {
        let netns = std::fs::read_dir("/var/run/netns")
            .into_iter()
            .flatten()
            .flatten();
        for ns in netns {
            let name = ns.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("kaze-") else {
                continue;
            };
            // the kubelet's name for this node's pods (`kubelet::runtime::netns_name`)
            let named_for_node = rest.len() > 17
                && rest.as_bytes()[..16].iter().all(u8::is_ascii_hexdigit)
                && rest.as_bytes()[16] == b'-'
                && !self.node.is_empty()
                && (rest[17..] == self.node
                    || (name.len() == 255 && self.node.starts_with(&rest[17..])));
            if named_for_node {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
                continue;
            }
            let addrs = Command::new("ip")
                .args(["-n", &name, "-4", "-o", "addr", "show"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            if addrs.contains(&format!("inet {}", self.pod_ip_prefix)) {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
        let _ = std::fs::remove_dir_all(format!("/var/lib/cni/networks/kaze-{}", self.node));
        remove_node_cgroups(&self.node);
        kill_fifo_keepers(&self.node);
    }
}

/// Kills the FIFO keepers (`sleep` processes run as `kaze-fifo-keeper-<node>`, see the
/// kubelet's `sys::spawn_fifo_keeper`) of `node`'s containers: a kubelet that stops its pods
/// kills them itself; a test that failed midway leaves them.
pub fn kill_fifo_keepers(node: &str) {
    let wanted = format!("kaze-fifo-keeper-{node}\0");
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if cmdline.starts_with(wanted.as_bytes()) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// Removes the cgroups a kubelet made for `node` under kaze's cgroup roots (`kaze`, and the
/// tests' and benches' `kaze-test`, `kaze-bench`): what a killed kubelet leaves (one that
/// stops its pods tears them down itself).
pub fn remove_node_cgroups(node: &str) {
    for root in ["kaze", "kaze-test", "kaze-bench"] {
        remove_cgroup_tree(&format!("{root}/{node}"));
    }
}

/// Removes the cgroup `parent` (e.g. `/kaze-test/<node>`) and everything below it from every
/// mounted hierarchy, deepest first; a process still in one (a container started while a
/// test was unwinding) is killed first.
pub fn remove_cgroup_tree(parent: &str) {
    let hierarchies: Vec<std::path::PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").exists())
        .collect();
    let trees: Vec<Vec<std::path::PathBuf>> = hierarchies
        .iter()
        .map(|h| {
            let mut dirs = Vec::new();
            let mut stack = vec![h.join(parent.trim_start_matches('/'))];
            while let Some(d) = stack.pop() {
                let Ok(rd) = std::fs::read_dir(&d) else {
                    continue;
                };
                stack.extend(
                    rd.flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
                dirs.push(d);
            }
            dirs
        })
        .collect();
    let mut killed = false;
    for d in trees.iter().flatten() {
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace() {
            killed = true;
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    if killed {
        // a killed process takes a moment to leave its cgroup
        std::thread::sleep(Duration::from_millis(200));
    }
    for mut dirs in trees {
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

/// Poll `f` every 100 ms until it returns `Some`, panicking with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`wait_for`] for blocking tests (polls every 250 ms).
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod keeper_tests {
    use super::*;

    #[test]
    fn kill_fifo_keepers_kills_only_the_nodes_own() {
        use std::os::unix::process::CommandExt;
        let node = format!("kt-keeper-{}", std::process::id());
        let spawn = |name: String| {
            Command::new("sleep")
                .arg0(name)
                .arg("60")
                .spawn()
                .expect("sleep")
        };
        let mut ours = spawn(format!("kaze-fifo-keeper-{node}"));
        // a node whose name extends ours is another node
        let mut other = spawn(format!("kaze-fifo-keeper-{node}0"));
        // both exec'd (a child between fork and exec still shows the test's command line)
        for child in [&ours, &other] {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !std::fs::read(format!("/proc/{}/cmdline", child.id()))
                .is_ok_and(|c| c.starts_with(b"kaze-fifo-keeper-"))
            {
                assert!(Instant::now() < deadline, "the keeper never started");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        kill_fifo_keepers(&node);
        let deadline = Instant::now() + Duration::from_secs(5);
        while ours.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "the node's keeper still runs");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            other.try_wait().expect("wait").is_none(),
            "another node's keeper was killed"
        );
        let _ = other.kill();
        let _ = other.wait();
    }
}

#[cfg(test)]
mod node_guard_tests {
    use std::process::Command;

    use super::NodeGuard;

    fn exists(name: &str) -> bool {
        std::path::Path::new("/var/run/netns").join(name).exists()
    }

    #[test]
    fn a_nodes_address_less_pod_namespaces_go_and_other_nodes_stay() {
        let node = format!("guard-{}", std::process::id());
        let mine = format!("kaze-0123456789abcdef-{node}");
        let other = format!("kaze-0123456789abcdef-{node}x");
        for ns in [&mine, &other] {
            let ok = Command::new("ip").args(["netns", "add", ns]).status();
            assert!(ok.is_ok_and(|s| s.success()), "ip netns add {ns}");
        }
        drop(NodeGuard {
            node: node.clone(),
            pod_ip_prefix: "10.254.".into(),
        });
        let (mine_left, other_left) = (exists(&mine), exists(&other));
        let _ = Command::new("ip").args(["netns", "del", &other]).status();
        let _ = Command::new("ip").args(["netns", "del", &mine]).status();
        assert!(!mine_left, "the node's namespace (no address) was removed");
        assert!(other_left, "another node's namespace was left alone");
    }
}
