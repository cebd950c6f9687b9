//! The containerd `kaze server`/`kaze agent` start when no `--container-runtime-endpoint` is
//! given (as k3s does): Debian's containerd with its root under the data dir, its state and
//! socket under `/run/kaze/containerd`, and the CRI plugin off (kaze talks to containerd's
//! own API). It is supervised: if it exits while kaze runs it is started again (after 1 s,
//! doubling to 30 s while it keeps failing), and the kubelet reconnects — the shims keep the
//! containers running meanwhile and the new containerd finds them again. Stopping it leaves
//! containers running: their shims outlive it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

#[derive(Debug)]
pub struct Containerd {
    pub socket: PathBuf,
    state: Arc<Mutex<State>>,
    supervisor: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug)]
struct State {
    stopping: bool,
    pid: u32,
}

/// How to (re)start the process.
#[derive(Debug, Clone)]
struct Launch {
    config: PathBuf,
    log: PathBuf,
}

impl Launch {
    fn spawn(&self) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let path = format!(
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        // A process group of its own: a Ctrl-C in kaze's terminal must not reach containerd
        // directly; kaze stops it last, after the kubelet.
        Command::new("containerd")
            .arg("--config")
            .arg(&self.config)
            .env("PATH", path)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd (is it installed? `cargo xtask setup` installs it)")
    }
}

impl Containerd {
    pub fn start(data_dir: &Path, run_dir: &Path) -> anyhow::Result<Containerd> {
        let dir = data_dir.join("agent").join("containerd");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        let socket = run_dir.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = {root:?}\nstate = {state:?}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = {socket:?}\n\
             [ttrpc]\n  address = {ttrpc:?}\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt:?}\n",
            root = dir.join("root"),
            state = run_dir.join("state"),
            ttrpc = run_dir.join("containerd.sock.ttrpc"),
            opt = dir.join("opt"),
        );
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        stop_stale(&config_path);
        let launch = Launch {
            config: config_path,
            log: dir.join("containerd.log"),
        };
        let mut child = launch.spawn()?;
        wait_ready(&mut child, &socket, &launch.log)?;
        tracing::info!(socket = %socket.display(), pid = child.id(), "containerd started");
        let state = Arc::new(Mutex::new(State {
            stopping: false,
            pid: child.id(),
        }));
        let supervisor = {
            let (state, socket) = (state.clone(), socket.clone());
            std::thread::Builder::new()
                .name("containerd-supervisor".into())
                .spawn(move || supervise(child, launch, socket, state))
                .context("starting the containerd supervisor thread")?
        };
        Ok(Containerd {
            socket,
            state,
            supervisor: Some(supervisor),
        })
    }
}

/// A containerd still running with our config was left by a kaze that was killed (it
/// outlives kaze, as the shims do); a second one on the same root would wait forever for
/// the first one's database lock. Stop it: SIGTERM, then SIGKILL after 10 s.
fn stop_stale(config: &Path) {
    let Some(pid) = running_with(config) else {
        return;
    };
    tracing::warn!(
        pid,
        "stopping the containerd an earlier kaze left running with {}",
        config.display()
    );
    let signal = |sig: &str| {
        let _ = Command::new("kill")
            .args([sig, &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    };
    signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while running_with(config) == Some(pid) {
        if Instant::now() > deadline {
            signal("-KILL");
            std::thread::sleep(Duration::from_millis(200));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pid of a `containerd --config <config>` process, if one runs.
fn running_with(config: &Path) -> Option<u32> {
    let config = config.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|p| {
        let pid = p.file_name().to_str()?.parse::<u32>().ok()?;
        let cmdline = std::fs::read(p.path().join("cmdline")).ok()?;
        let mut args = cmdline.split(|b| *b == 0);
        let bin = args.next()?;
        (bin.ends_with(b"containerd") && args.any(|a| a == config)).then_some(pid)
    })
}

/// Wait until containerd answers on `socket` (30 s), or fail if it exits first.
fn wait_ready(child: &mut Child, socket: &Path, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() || std::os::unix::net::UnixStream::connect(socket).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("containerd exited with {status}; see {}", log.display());
        }
        if Instant::now() > deadline {
            bail!(
                "containerd did not open {} within 30 s; see {}",
                socket.display(),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sleep `d` in steps; false if kaze began stopping meanwhile.
fn pause(state: &Mutex<State>, d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if lock(state).stopping {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    !lock(state).stopping
}

/// Reap containerd; unless kaze is stopping it, start it again with a growing back-off
/// (reset once a containerd has run for a minute).
fn supervise(child: Child, launch: Launch, socket: PathBuf, state: Arc<Mutex<State>>) {
    let mut child = Some(child);
    let mut backoff = Duration::from_secs(1);
    loop {
        if let Some(mut c) = child.take() {
            let started = Instant::now();
            let status = c.wait();
            {
                let mut s = lock(&state);
                if s.stopping {
                    return;
                }
                // Reaped: its pid may be reused, never signal it again.
                s.pid = 0;
            }
            if started.elapsed() > Duration::from_secs(60) {
                backoff = Duration::from_secs(1);
            }
            tracing::error!(
                status = %status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                log = %launch.log.display(),
                "containerd exited; restarting it in {backoff:?}"
            );
        }
        if !pause(&state, backoff) {
            return;
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
        // Spawn under the lock so that Drop always signals the current process.
        let spawned = {
            let mut s = lock(&state);
            if s.stopping {
                return;
            }
            launch.spawn().inspect(|c| s.pid = c.id())
        };
        match spawned {
            Ok(mut c) => {
                match wait_ready(&mut c, &socket, &launch.log) {
                    Ok(()) => tracing::info!(pid = c.id(), "containerd restarted"),
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "restarting containerd"),
                }
                child = Some(c);
            }
            Err(e) => tracing::error!(error = %format!("{e:#}"), "restarting containerd"),
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let pid = {
            let mut s = lock(&self.state);
            s.stopping = true;
            s.pid
        };
        let signal = |sig: &str| {
            if pid == 0 {
                return;
            }
            let _ = Command::new("kill")
                .args([sig, &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        };
        signal("-TERM");
        let Some(supervisor) = self.supervisor.take() else {
            return;
        };
        // The supervisor returns once the process it waits on has exited.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !supervisor.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if !supervisor.is_finished() {
            signal("-KILL");
        }
        let _ = supervisor.join();
    }
}
