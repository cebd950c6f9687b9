//! The one narrow module that touches the host: external processes (`ip`, CNI plugins),
//! network namespaces, FIFOs, cgroup files, pod directories, volume files and tmpfs mounts.
//! Everything else in the kubelet is plain logic over these calls, as youki keeps its
//! syscalls in one place.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

/// Where `ip netns add` pins network namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";
/// Where the cgroup v1 controllers are mounted on this kind of machine.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("starting {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} {args} exited with {status}: {stderr}")]
    Failed {
        program: String,
        args: String,
        status: std::process::ExitStatus,
        stderr: String,
        stdout: String,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SysError + 'a {
    move |source| SysError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Run a program to completion, feeding `stdin`; returns stdout on success.
pub async fn run<I, S>(
    program: &Path,
    args: I,
    env: &[(String, String)],
    stdin: &[u8],
) -> Result<Vec<u8>, SysError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let name = program.display().to_string();
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| SysError::Spawn {
        program: name.clone(),
        source,
    })?;
    if let Some(mut pipe) = child.stdin.take() {
        // A plugin that exits without reading gives EPIPE; its exit status tells the story.
        let _ = pipe.write_all(stdin).await;
        drop(pipe);
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| SysError::Spawn {
            program: name.clone(),
            source,
        })?;
    if !out.status.success() {
        let joined: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        return Err(SysError::Failed {
            program: name,
            args: joined.join(" "),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

async fn ip<const N: usize>(args: [&str; N]) -> Result<Vec<u8>, SysError> {
    run(Path::new("ip"), args, &[], b"").await
}

// === network namespaces ===

pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Create a pinned network namespace (a bind mount under /var/run/netns), so it outlives
/// the pause process and CNI DEL can still enter it after the sandbox died.
pub async fn netns_add(name: &str) -> Result<PathBuf, SysError> {
    if !netns_path(name).exists() {
        ip(["netns", "add", name]).await?;
    }
    Ok(netns_path(name))
}

/// Delete a pinned network namespace; absent is fine (teardown is idempotent).
pub async fn netns_del(name: &str) -> Result<(), SysError> {
    if netns_path(name).exists() {
        ip(["netns", "del", name]).await?;
    }
    Ok(())
}

/// Names of the pinned network namespaces.
pub fn netns_list() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Connect to `127.0.0.1:port` inside the network namespace pinned at `netns` (a pod's):
/// a short-lived thread enters the namespace, connects and exits, and the socket stays in
/// the namespace it was made in. The kubelet's own threads never change namespace.
pub async fn connect_in_netns(
    netns: &Path,
    port: u16,
    timeout: std::time::Duration,
) -> Result<tokio::net::TcpStream, SysError> {
    let ns = std::fs::File::open(netns).map_err(io("opening netns", netns))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let netns_path = netns.to_path_buf();
    std::thread::spawn(move || {
        let r = enter_netns(&ns).and_then(|()| {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            std::net::TcpStream::connect_timeout(&addr, timeout)
        });
        let _ = tx.send(r);
    });
    let connected = rx
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("netns thread died")))
        .map_err(io("connecting to 127.0.0.1 in netns", &netns_path))?;
    connected
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpStream::from_std(connected))
        .map_err(io("connecting to 127.0.0.1 in netns", &netns_path))
}

/// Bring up `lo` in the network namespace pinned at `netns` (what the CNI loopback plugin
/// does; the kernel gives it 127.0.0.1/8 and ::1 once up), from a short-lived thread as
/// [`connect_in_netns`] does, instead of exec'ing the plugin for every pod.
pub async fn loopback_up(netns: &Path) -> Result<(), SysError> {
    let ns = std::fs::File::open(netns).map_err(io("opening netns", netns))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(enter_netns(&ns).and_then(|()| set_link_up("lo")));
    });
    rx.await
        .unwrap_or_else(|_| Err(std::io::Error::other("netns thread died")))
        .map_err(io("bringing up lo in netns", netns))
}

/// Set IFF_UP on interface `name` of the calling thread's network namespace.
#[allow(unsafe_code)] // SIOCGIFFLAGS/SIOCSIFFLAGS ioctls; this module is where syscalls live
fn set_link_up(name: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // Any socket of the namespace will do for interface ioctls.
    let sock = std::net::UdpSocket::bind(("0.0.0.0", 0))?;
    // SAFETY: ifreq is plain old data (all zeroes is a valid value).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq naming the interface, `sock` an open socket; the
    // kernel reads and writes only within `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Move the calling thread into the network namespace `ns`.
#[allow(unsafe_code)] // setns(2) has no safe std wrapper; this module is where syscalls live
fn enter_netns(ns: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `ns` is an open namespace file for the duration of the call; setns only
    // changes this thread's namespace, and the thread exits after its one connect.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

// === links ===

pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Interfaces enslaved to a bridge (the host ends of pod veths).
pub fn bridge_ports(bridge: &str) -> Vec<String> {
    std::fs::read_dir(Path::new("/sys/class/net").join(bridge).join("brif"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub async fn link_del(name: &str) -> Result<(), SysError> {
    if link_exists(name) {
        ip(["link", "del", name]).await?;
    }
    Ok(())
}

// === CNI ===

/// Exec one CNI plugin binary with the CNI_* environment and its config on stdin; returns
/// its stdout (the result JSON, or an error JSON the caller decodes from `Failed`).
pub async fn cni_exec(
    plugin: &Path,
    env: &[(String, String)],
    config: &[u8],
) -> Result<Vec<u8>, SysError> {
    run(plugin, std::iter::empty::<&str>(), env, config).await
}

// === files ===

pub fn create_dir_all(path: &Path) -> Result<(), SysError> {
    std::fs::create_dir_all(path).map_err(io("creating directory", path))
}

pub fn write_file(path: &Path, data: &[u8]) -> Result<(), SysError> {
    if let Some(parent) = path.parent() {
        create_dir_all(parent)?;
    }
    std::fs::write(path, data).map_err(io("writing", path))
}

pub fn read_file(path: &Path) -> Result<Vec<u8>, SysError> {
    std::fs::read(path).map_err(io("reading", path))
}

/// Remove a directory tree; absent is fine.
pub fn remove_dir_all(path: &Path) -> Result<(), SysError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", path)(e)),
        _ => Ok(()),
    }
}

/// The names of the entries of a directory (none when it cannot be read).
pub fn dir_names(path: &Path) -> Vec<String> {
    std::fs::read_dir(path)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub fn remove_file(path: &Path) -> Result<(), SysError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", path)(e)),
        _ => Ok(()),
    }
}

/// Create a FIFO for a container's stdout/stderr (the shim writes, the kubelet reads).
#[allow(unsafe_code)] // mkfifo(3) has no safe std wrapper; this module is where syscalls live
pub fn mkfifo(path: &Path) -> Result<(), SysError> {
    use std::os::unix::ffi::OsStrExt;
    if path.exists() {
        return Ok(());
    }
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|e| {
        io("creating fifo", path)(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    })?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(io("creating fifo", path)(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Open a FIFO's read end without blocking and without ever seeing EOF before the writer
/// (the shim) opens it: Linux allows opening a FIFO read-write for exactly this.
pub fn open_fifo_reader(path: &Path) -> Result<tokio::net::unix::pipe::Receiver, SysError> {
    tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(path)
        .map_err(io("opening fifo", path))
}

/// Open a FIFO's write end without blocking on a reader: read-write, as for the readers,
/// so an exec's stdin FIFO can be filled before the shim has opened it.
pub fn open_fifo_writer(path: &Path) -> Result<tokio::net::unix::pipe::Sender, SysError> {
    tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(path)
        .map_err(io("opening fifo", path))
}

/// Hold both FIFOs of a container open in a small helper process (`sleep infinity`), so
/// the shim's writes never hit EPIPE while no kubelet is reading (a kubelet restart):
/// output waits in the pipe buffer and the next kubelet's log pump picks it up. It runs as
/// [`fifo_keeper_name`]`(node)` (its argv[0]), so what a dead node left can be found.
pub fn spawn_fifo_keeper(stdout: &Path, stderr: &Path, node: &str) -> Result<u32, SysError> {
    use std::os::unix::process::CommandExt;
    let open = |p: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .map_err(io("opening fifo", p))
    };
    let (a, b) = (open(stdout)?, open(stderr)?);
    let child = std::process::Command::new("sleep")
        .arg0(fifo_keeper_name(node))
        .arg("infinity")
        .stdin(a)
        .stdout(b)
        .stderr(Stdio::null())
        // Its own process group: a Ctrl-C to the kubelet's group must not take it down.
        .process_group(0)
        .spawn()
        .map_err(|source| SysError::Spawn {
            program: "sleep".into(),
            source,
        })?;
    let pid = child.id();
    // Reap it in the background when it is killed (if this process still lives then).
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    Ok(pid)
}

/// The argv[0] of node `node`'s FIFO keepers (`kaze-fifo-keeper-<node>`).
pub fn fifo_keeper_name(node: &str) -> String {
    format!("kaze-fifo-keeper-{node}")
}

/// SIGKILL a process we started (by pid); gone already is fine.
#[allow(unsafe_code)] // kill(2) has no safe std wrapper for a pid we no longer own a Child of
pub fn kill_pid(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        if pid > 1 {
            // SAFETY: kill with a positive pid and a valid signal has no memory effects.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Open a log file for appending.
pub fn open_append(path: &Path) -> Result<std::fs::File, SysError> {
    if let Some(parent) = path.parent() {
        create_dir_all(parent)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io("opening log", path))
}

// === cgroups (v1) ===

/// The controllers mounted under /sys/fs/cgroup (cgroup v1 hierarchies).
pub fn cgroup_controllers() -> Vec<PathBuf> {
    std::fs::read_dir(CGROUP_ROOT)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.join("cgroup.procs").exists())
                .collect()
        })
        .unwrap_or_default()
}

/// Read a file of one controller's cgroup, e.g. ("memory", "/kaze/n/p/c", "memory.oom_control").
pub fn read_cgroup(controller: &str, cgroup: &str, file: &str) -> Option<String> {
    let path = Path::new(CGROUP_ROOT)
        .join(controller)
        .join(cgroup.trim_start_matches('/'))
        .join(file);
    std::fs::read_to_string(path).ok()
}

/// Write `value` to `file` of cgroup `cgroup` under `controller` ("" on the v2 tree).
pub fn write_cgroup(
    controller: &str,
    cgroup: &str,
    file: &str,
    value: &str,
) -> Result<(), SysError> {
    let path = Path::new(CGROUP_ROOT)
        .join(controller)
        .join(cgroup.trim_start_matches('/'))
        .join(file);
    std::fs::write(&path, value).map_err(io("writing", &path))
}

/// Remove an (empty) cgroup directory from every controller; runc removes the container's
/// own cgroup, the kubelet removes the pod and node parents it implied. Busy or absent
/// directories are skipped: a parent still holding another pod must stay.
pub fn remove_cgroup(cgroup: &str) {
    for controller in cgroup_controllers() {
        let dir = controller.join(cgroup.trim_start_matches('/'));
        let _ = std::fs::remove_dir(&dir);
    }
}

/// Whether a cgroup exists in any controller (teardown checks).
pub fn cgroup_exists(cgroup: &str) -> bool {
    cgroup_controllers()
        .iter()
        .any(|c| c.join(cgroup.trim_start_matches('/')).exists())
}

// === volumes: modes, symlinks, tmpfs ===

/// chmod, ignoring the umask (volume files get exactly the mode the pod asked for).
pub fn set_mode(path: &Path, mode: u32) -> Result<(), SysError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", path))
}

pub fn symlink(target: &Path, link: &Path) -> Result<(), SysError> {
    std::os::unix::fs::symlink(target, link).map_err(io("creating symlink", link))
}

/// The target of a symlink; None when `path` is absent or not a symlink.
pub fn read_link(path: &Path) -> Option<PathBuf> {
    std::fs::read_link(path).ok()
}

/// rename(2): atomic replacement of `to` (a symlink swap, for volume payloads).
pub fn rename(from: &Path, to: &Path) -> Result<(), SysError> {
    std::fs::rename(from, to).map_err(io("renaming", from))
}

fn c_path(path: &Path, what: &'static str) -> Result<std::ffi::CString, SysError> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io(what, path)(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))
}

/// Mount a tmpfs on `dir` (emptyDir `medium: Memory`, secret and projected volumes), with
/// `size` bytes at most when given. Already mounted is fine.
#[allow(unsafe_code)] // mount(2) has no safe std wrapper; this module is where syscalls live
pub fn mount_tmpfs(dir: &Path, size: Option<u64>) -> Result<(), SysError> {
    if mounts_under(dir).iter().any(|m| m == dir) {
        return Ok(());
    }
    let target = c_path(dir, "mounting tmpfs on")?;
    let mut opts = String::from("mode=0777");
    if let Some(s) = size {
        opts.push_str(&format!(",size={s}"));
    }
    let data = std::ffi::CString::new(opts).unwrap_or_default();
    let fstype = c"tmpfs";
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io("mounting tmpfs on", dir)(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Detach the mount on `dir` (lazily, so a straggling open file cannot keep it).
#[allow(unsafe_code)] // umount2(2) has no safe std wrapper
pub fn unmount(dir: &Path) -> Result<(), SysError> {
    let target = c_path(dir, "unmounting")?;
    // SAFETY: `target` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = std::io::Error::last_os_error();
        // EINVAL: not a mount point (any more); ENOENT: gone. Teardown is idempotent.
        if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
            return Err(io("unmounting", dir)(e));
        }
    }
    Ok(())
}

/// Mount points at or below `dir` in this mount namespace, deepest last.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmount everything at or below `dir`, deepest first (pod teardown; test cleanup).
pub fn unmount_all_under(dir: &Path) -> Result<(), SysError> {
    let mut mounts = mounts_under(dir);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in mounts {
        unmount(&m)?;
    }
    Ok(())
}

/// What sits at a host path, for hostPath `type` checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Missing,
    Directory,
    File,
    Socket,
    CharDevice,
    BlockDevice,
    Other,
}

pub fn file_kind(path: &Path) -> FileKind {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Err(_) => FileKind::Missing,
        Ok(m) => {
            let t = m.file_type();
            if t.is_dir() {
                FileKind::Directory
            } else if t.is_file() {
                FileKind::File
            } else if t.is_socket() {
                FileKind::Socket
            } else if t.is_char_device() {
                FileKind::CharDevice
            } else if t.is_block_device() {
                FileKind::BlockDevice
            } else {
                FileKind::Other
            }
        }
    }
}

/// Create an empty file with `mode` unless something is there already.
pub fn create_file(path: &Path, mode: u32) -> Result<(), SysError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
    {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(io("creating", path)(e)),
        _ => Ok(()),
    }
}

/// The path with every symlink resolved (subPath containment checks).
pub fn canonicalize(path: &Path) -> Result<PathBuf, SysError> {
    std::fs::canonicalize(path).map_err(io("resolving", path))
}

// === stats: filesystems, /proc, cgroup v2 ===

/// A filesystem's size and inode counts (statvfs(3)), in bytes and inodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsUsage {
    pub capacity: u64,
    /// What an unprivileged writer may still use.
    pub available: u64,
    pub used: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

/// The usage of the filesystem holding `path`; None if it cannot be read.
#[allow(unsafe_code)] // statvfs(3) has no safe std wrapper; this module is where syscalls live
pub fn statvfs(path: &Path) -> Option<FsUsage> {
    let p = c_path(path, "statvfs").ok()?;
    // SAFETY: statvfs is plain old data; zeroed is a valid value for it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `p` is a valid NUL-terminated path and `st` a valid out-pointer, both live
    // for the call.
    if unsafe { libc::statvfs(p.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize;
    Some(FsUsage {
        capacity: st.f_blocks * frsize,
        available: st.f_bavail * frsize,
        used: st.f_blocks.saturating_sub(st.f_bfree) * frsize,
        inodes: st.f_files,
        inodes_free: st.f_ffree,
    })
}

/// Bytes allocated (as du counts them) and inodes below `path`, without following symlinks
/// or crossing into other filesystems.
pub fn disk_usage(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let top = std::fs::symlink_metadata(path).ok()?;
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.dev() != top.dev() {
            continue;
        }
        bytes += m.blocks() * 512;
        inodes += 1;
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    Some((bytes, inodes))
}

/// A file under /proc (`"stat"`, `"<pid>/net/dev"`).
pub fn read_proc(rel: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/proc").join(rel)).ok()
}

/// The pids in `cgroup` (any controller of a v1 hierarchy has them; v2 has one tree).
pub fn cgroup_pids(cgroup: &str) -> Vec<u32> {
    let procs = if cgroup_v2() {
        read_cgroup("", cgroup, "cgroup.procs")
    } else {
        read_cgroup("pids", cgroup, "cgroup.procs")
            .or_else(|| read_cgroup("memory", cgroup, "cgroup.procs"))
    };
    procs
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Whether /sys/fs/cgroup is the unified (v2) hierarchy rather than v1 controllers.
pub fn cgroup_v2() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}

// === security: capabilities, devices, image files, group ownership ===

/// The capabilities this process may hand on (`CapBnd` of /proc/self/status): what "all
/// capabilities" means to runc started from here.
pub fn bounding_caps() -> u64 {
    read_proc("self/status")
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// `/sys/devices/system/cpu/cpu<N>/thermal_throttle` of each possible CPU that has one (upstream
/// masks them).
pub fn thermal_throttle_paths() -> Vec<String> {
    let possible = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    let mut cpus = Vec::new();
    for range in possible.trim().split(',').filter(|r| !r.is_empty()) {
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
            cpus.extend(a..=b);
        }
    }
    cpus.into_iter()
        .map(|c| format!("/sys/devices/system/cpu/cpu{c}/thermal_throttle"))
        .filter(|p| Path::new(p).exists())
        .collect()
}

/// The type (`c` or `b`), major and minor of the device node at `path` (symlinks
/// followed); an error for anything else.
pub fn device_numbers(path: &Path) -> std::io::Result<(char, u64, u64)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(path)?;
    let t = m.file_type();
    let kind = if t.is_char_device() {
        'c'
    } else if t.is_block_device() {
        'b'
    } else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a device node",
        ));
    };
    Ok((
        kind,
        libc::major(m.rdev()) as u64,
        libc::minor(m.rdev()) as u64,
    ))
}

/// The host's device nodes under /dev, as containerd's `HostDevices` lists them for
/// privileged containers (pts, shm, fd, mqueue and the console skipped).
pub fn host_devices() -> Vec<crate::security::Device> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from("/dev")];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(m) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let t = m.file_type();
            if t.is_dir() {
                if !matches!(
                    name.as_str(),
                    "pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev"
                ) {
                    stack.push(path);
                }
                continue;
            }
            let kind = if t.is_char_device() {
                'c'
            } else if t.is_block_device() {
                'b'
            } else {
                continue;
            };
            if path == Path::new("/dev/console") {
                continue;
            }
            out.push(crate::security::Device {
                path: path.display().to_string(),
                kind,
                major: libc::major(m.rdev()) as u64,
                minor: libc::minor(m.rdev()) as u64,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// `rel` (e.g. `etc/passwd`) from an image rootfs given as overlay layer dirs, top first (the
/// snapshot's upperdir, then its lowerdirs): the first layer that has it as a regular file,
/// as overlayfs would show it. None if no layer has it.
pub fn read_layered_file(layers: &[PathBuf], rel: &str) -> Option<String> {
    for dir in layers {
        let path = dir.join(rel);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => return std::fs::read_to_string(&path).ok(),
            // A whiteout (char device) or anything else hides the lower layers' file.
            Ok(_) => return None,
            Err(_) => continue,
        }
    }
    None
}

/// lchown(2) to group `gid`, the owner unchanged (fsGroup on volume files).
pub fn lchown_group(path: &Path, gid: u32) -> Result<(), SysError> {
    std::os::unix::fs::lchown(path, None, Some(gid)).map_err(io("chown", path))
}
