//! The containerd `kaze server`/`kaze agent` start when no `--container-runtime-endpoint` is
//! given (as k3s does): Debian's containerd with its root under the data dir, its state and
//! socket under `/run/kaze/containerd`, and the CRI plugin off (kaze talks to containerd's
//! own API). Stopping it leaves containers running: their shims outlive it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

#[derive(Debug)]
pub struct Containerd {
    child: Child,
    pub socket: PathBuf,
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
        let log_path = dir.join("containerd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let path = format!(
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd (is it installed? `cargo xtask setup` installs it)")?;
        let mut c = Containerd { child, socket };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.socket.exists() || std::os::unix::net::UnixStream::connect(&c.socket).is_err() {
            if let Some(status) = c.child.try_wait()? {
                bail!(
                    "containerd exited with {status}; see {}",
                    log_path.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd did not open {} within 30 s; see {}",
                    c.socket.display(),
                    log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        tracing::info!(socket = %c.socket.display(), "containerd started");
        Ok(c)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
