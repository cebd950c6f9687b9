//! App containers: create in a sandbox, watch for exit (with the OOM reason), stop with
//! SIGTERM then SIGKILL, remove.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use containerd_client::services::v1::{
    Container, DeleteTaskRequest, GetContainerRequest, GetRequest, KillRequest,
    UpdateContainerRequest, WaitRequest,
};
use containerd_client::tonic::Code;
use containerd_client::types::v1::Status as TaskStatus;
use tokio::sync::watch;

use super::sandbox::{Sandbox, Stdio};
use super::{
    stable_id, Runtime, KIND_CONTAINER, LABEL_ATTEMPT, LABEL_CGROUP, LABEL_CONTAINER_NAME,
    LABEL_EXIT, LABEL_KIND, LABEL_LOG_PATH, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID,
    LABEL_SANDBOX_ID, LABEL_STARTED_AT,
};
use crate::error::{Context, Error, Result};
use crate::logs::{self, LogPump};
use crate::security::{self, SecurityContext};
use crate::spec::{self, BindMount, Resources, SpecInput};
use crate::sys;

/// What one app container is made from (a PodSpec container, resolved).
#[derive(Clone, Debug, Default)]
pub struct ContainerConfig {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub resources: Resources,
    pub mounts: Vec<BindMount>,
    /// The effective securityContext (user, groups, capabilities, ...).
    pub security: SecurityContext,
    /// The restart count; names the log file `<attempt>.log`.
    pub attempt: u32,
    /// `stdin`: the main process reads what `kubectl attach -i` sends (else /dev/null).
    pub stdin: bool,
    /// `stdinOnce`: its stdin reaches end of file when the first attach ends.
    pub stdin_once: bool,
    /// `tty`: it runs on a terminal (its output is one stream).
    pub tty: bool,
    /// Join the PID namespace of this (host) pid's process instead of getting one of its
    /// own: an ephemeral container's `targetContainerName`, or the pause process for
    /// `shareProcessNamespace`.
    pub pid_namespace_of: Option<u32>,
    /// `hostPID`: run in the host's PID namespace.
    pub host_pid: bool,
    /// `terminationMessagePath`: a file of the kubelet's ([`Runtime::termination_log`]) is
    /// bound there, and what the container writes into it is the message of its
    /// terminated state.
    pub termination_message_path: Option<String>,
    /// The CDI edits of the DRA devices it uses (env, device nodes, mounts).
    pub cdi: crate::dra::cdi::ContainerEdits,
    /// Annotations of the OCI spec (device plugins' `Allocate` answers give some).
    pub annotations: Vec<(String, String)>,
}

/// How a container ended.
#[derive(Clone, Debug, PartialEq)]
pub struct ExitInfo {
    pub exit_code: i32,
    /// `Completed`, `Error` or `OOMKilled`, as in a pod's containerStatuses.
    pub reason: String,
    pub oom_killed: bool,
    pub finished_at: jiff::Timestamp,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ContainerState {
    Created,
    Running { pid: u32 },
    Exited(ExitInfo),
    Unknown,
}

#[derive(Clone, Debug)]
pub struct ContainerStatus {
    pub id: String,
    pub name: String,
    pub attempt: u32,
    pub image: String,
    pub log_path: PathBuf,
    pub state: ContainerState,
    /// When it was started (also in its `io.kaze.container.started-at` label).
    pub started_at: jiff::Timestamp,
}

impl ExitInfo {
    /// The value of the `io.kaze.container.exit` label.
    pub(crate) fn to_label(&self) -> String {
        format!("{} {} {}", self.exit_code, self.reason, self.finished_at)
    }

    pub(crate) fn from_label(s: &str) -> Option<ExitInfo> {
        let mut w = s.split(' ');
        let exit_code = w.next()?.parse().ok()?;
        let reason = w.next()?.to_string();
        let finished_at = w.next()?.parse().ok()?;
        Some(ExitInfo {
            exit_code,
            oom_killed: reason == "OOMKilled",
            reason,
            finished_at,
        })
    }
}

/// Where the pid of a container's FIFO keeper is recorded.
pub(crate) fn keeper_path(fifo_dir: &std::path::Path, id: &str) -> PathBuf {
    fifo_dir.join(format!("{id}.keeper"))
}

/// The FIFO the main process of a container with `stdin: true` reads: the shim holds a
/// write end of its own until CloseIO, so the process waits for input (and never sees an
/// end of file) while nobody is attached. Gone once a `stdinOnce` container's stdin closed.
pub(crate) fn stdin_path(fifo_dir: &std::path::Path, id: &str) -> PathBuf {
    fifo_dir.join(format!("{id}-stdin"))
}

/// Present while a container's stdin is to close when its first attach ends (`stdinOnce`).
pub(crate) fn stdin_once_path(fifo_dir: &std::path::Path, id: &str) -> PathBuf {
    fifo_dir.join(format!("{id}.stdin-once"))
}

impl Runtime {
    /// A `Localhost` seccomp profile: the JSON file `<root-dir>/seccomp/<path>` (`path`
    /// relative, as upstream requires).
    fn localhost_seccomp(&self, path: &str) -> std::result::Result<serde_json::Value, String> {
        let rel = std::path::Path::new(path);
        if path.is_empty()
            || rel.is_absolute()
            || rel
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!(
                "seccomp profile {path:?} must be a path relative to the kubelet's seccomp directory"
            ));
        }
        let file = self.config.root_dir.join("seccomp").join(rel);
        let text = std::fs::read(&file).map_err(|e| {
            format!(
                "cannot load seccomp profile {:?}: {e}",
                file.display().to_string()
            )
        })?;
        serde_json::from_slice(&text).map_err(|e| {
            format!(
                "decoding seccomp profile {:?}: {e}",
                file.display().to_string()
            )
        })
    }

    /// The host file bound at container `id`'s `terminationMessagePath` (pod `uid`).
    pub fn termination_log(&self, uid: &str, id: &str) -> PathBuf {
        self.config.pod_dir(uid).join("termination").join(id)
    }

    /// Create and start an app container in `sandbox`. Its stdout/stderr go to the CRI log
    /// file; its exit (code and OOM reason) is watched from now on.
    pub async fn run_container(
        &self,
        sandbox: &Sandbox,
        c: &ContainerConfig,
    ) -> Result<ContainerStatus> {
        let what = format!(
            "starting container {} of pod {}/{}",
            c.name, sandbox.namespace, sandbox.name
        );
        let image = self.resolve_image(&c.image).await.map_err(|e| match e {
            Error::ImageNotPresent { .. } => e,
            other => Error::invalid(&what, other.to_string()),
        })?;
        // The user is resolved against the image's /etc/passwd and /etc/group once its rootfs
        // snapshot exists (`create_and_start`).
        let user = security::user_request(
            &c.security,
            &security::image_user(image.config.user.as_deref()),
        );
        let mut oci_security = security::oci_security(&c.security, &self.host_security);
        if let (security::Seccomp::Localhost(path), false) =
            (&c.security.seccomp, c.security.privileged)
        {
            oci_security.seccomp = Some(
                self.localhost_seccomp(path)
                    .map_err(|e| Error::invalid(&what, e))?,
            );
        }
        if c.security.privileged {
            oci_security.devices = sys::host_devices();
        }
        let id = stable_id(&["container", &sandbox.uid, &c.name, &c.attempt.to_string()]);
        let cgroup = format!("{}/{id}", self.cgroup_of_pod(&sandbox.uid));
        let log_path = logs::container_log_path(
            &self.config.log_dir,
            &sandbox.namespace,
            &sandbox.name,
            &sandbox.uid,
            &c.name,
            c.attempt,
        );
        let mut mounts = vec![
            BindMount {
                host_path: sandbox.dir.join("hosts"),
                container_path: "/etc/hosts".into(),
                read_only: false,
                propagation: Default::default(),
            },
            BindMount {
                host_path: sandbox.dir.join("resolv.conf"),
                container_path: "/etc/resolv.conf".into(),
                read_only: false,
                propagation: Default::default(),
            },
            BindMount {
                host_path: sandbox.dir.join("hostname"),
                container_path: "/etc/hostname".into(),
                read_only: false,
                propagation: Default::default(),
            },
        ];
        mounts.extend(c.mounts.iter().cloned());
        if let Some(path) = c
            .termination_message_path
            .as_deref()
            .filter(|p| !p.is_empty())
        {
            let host = self.termination_log(&sandbox.uid, &id);
            sys::write_file(&host, b"").context(|| what.clone())?;
            // any user the container runs as may write it, as upstream's kubelet allows
            sys::set_mode(&host, 0o666).context(|| what.clone())?;
            mounts.push(BindMount {
                host_path: host,
                container_path: path.into(),
                read_only: false,
                propagation: Default::default(),
            });
        }
        let args = spec::process_args(&image.config, &c.command, &c.args);
        if args.is_empty() {
            return Err(Error::invalid(
                &what,
                "no command: the image has no entrypoint or cmd and the pod gives none",
            ));
        }
        let cwd = c
            .working_dir
            .clone()
            .or(image.config.working_dir.clone())
            .unwrap_or_default();
        let mut oci = spec::oci_spec(&SpecInput {
            args,
            env: spec::merge_env(&image.config, &c.env),
            cwd,
            security: oci_security,
            hostname: None,
            netns: &sandbox.netns,
            sandbox_pid: Some(sandbox.pid),
            cgroups_path: cgroup.clone(),
            resources: c.resources.clone(),
            mounts,
            shim_group: &sandbox.id,
        });
        if c.tty {
            oci["process"]["terminal"] = serde_json::Value::Bool(true);
        }
        c.cdi.apply(&mut oci);
        for (k, v) in &c.annotations {
            oci["annotations"][k] = serde_json::Value::String(v.clone());
        }
        if let Some(ns) = oci
            .pointer_mut("/linux/namespaces")
            .and_then(serde_json::Value::as_array_mut)
        {
            match (c.host_pid, c.pid_namespace_of) {
                (true, _) => ns.retain(|n| n["type"] != "pid"),
                (false, Some(pid)) => {
                    ns.retain(|n| n["type"] != "pid");
                    ns.push(
                        serde_json::json!({"type": "pid", "path": format!("/proc/{pid}/ns/pid")}),
                    );
                }
                (false, None) => {}
            }
        }
        // Taken just before the task starts and kept in a label: a restarted kubelet
        // reports the same startedAt.
        let started_at = jiff::Timestamp::now();
        let labels = HashMap::from([
            (LABEL_KIND.to_string(), KIND_CONTAINER.to_string()),
            (LABEL_POD_NAMESPACE.into(), sandbox.namespace.clone()),
            (LABEL_POD_NAME.into(), sandbox.name.clone()),
            (LABEL_POD_UID.into(), sandbox.uid.clone()),
            (LABEL_SANDBOX_ID.into(), sandbox.id.clone()),
            (LABEL_CONTAINER_NAME.into(), c.name.clone()),
            (LABEL_ATTEMPT.into(), c.attempt.to_string()),
            (LABEL_LOG_PATH.into(), log_path.display().to_string()),
            (LABEL_CGROUP.into(), cgroup),
            (LABEL_STARTED_AT.into(), started_at.to_string()),
        ]);

        let fifo_dir = sandbox.dir.join("fifo");
        let (stdout, stderr) = logs::fifo_paths(&fifo_dir, &id);
        sys::create_dir_all(&fifo_dir).context(|| what.clone())?;
        sys::mkfifo(&stdout).context(|| what.clone())?;
        sys::mkfifo(&stderr).context(|| what.clone())?;
        let keeper = sys::spawn_fifo_keeper(&stdout, &stderr, &self.config.node_name)
            .context(|| what.clone())?;
        sys::write_file(&keeper_path(&fifo_dir, &id), keeper.to_string().as_bytes())
            .context(|| what.clone())?;
        let stdin = match c.stdin {
            true => {
                let path = stdin_path(&fifo_dir, &id);
                sys::mkfifo(&path).context(|| what.clone())?;
                if c.stdin_once {
                    sys::write_file(&stdin_once_path(&fifo_dir, &id), b"")
                        .context(|| what.clone())?;
                }
                Some(path)
            }
            false => None,
        };
        let pump = LogPump::start(&stdout, &stderr, &log_path, self.config.log_rotation)
            .context(|| what.clone())?;
        self.lock().pumps.insert(id.clone(), pump);

        let started = self
            .create_and_start(
                &id,
                &image.name,
                &image.chain_id,
                labels,
                &oci,
                Some(Stdio {
                    stdin,
                    stdout,
                    // a terminal's output is one stream, on stdout
                    stderr: (!c.tty).then_some(stderr),
                    terminal: c.tty,
                }),
                Some(&user),
            )
            .await;
        let pid = match started {
            Ok(pid) => pid,
            Err(e) => {
                let _ = self.remove_container(&id).await;
                return Err(Error::invalid(&what, e.to_string()));
            }
        };
        self.watch_exit(&id);
        tracing::info!(container = %c.name, pod = %format!("{}/{}", sandbox.namespace, sandbox.name), id = %id, pid, "container running");
        Ok(ContainerStatus {
            id,
            name: c.name.clone(),
            attempt: c.attempt,
            image: image.name,
            log_path,
            state: ContainerState::Running { pid },
            started_at,
        })
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, super::Shared> {
        // A panic while holding this lock leaves plain maps behind; keep going with them.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start watching a container's task for exit (idempotent); also used for containers
    /// found running after a kubelet restart.
    pub(super) fn watch_exit(&self, id: &str) -> watch::Receiver<Option<ExitInfo>> {
        let mut shared = self.lock();
        if let Some(tx) = shared.exits.get(id) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(None);
        shared.exits.insert(id.to_string(), tx.clone());
        drop(shared);
        let rt = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let cd = &rt.cd;
            // A Wait outlives containerd restarts: when the connection drops (containerd
            // died; its shims keep the task running) wait again once it is back, for as
            // long as the container is still ours.
            let mut backoff = Duration::from_millis(200);
            let (exit_code, finished_at) = loop {
                let waited = cd
                    .tasks()
                    .wait(cd.req(
                        WaitRequest {
                            container_id: id.clone(),
                            exec_id: String::new(),
                        },
                        None,
                    ))
                    .await;
                match waited {
                    Ok(r) => {
                        let r = r.into_inner();
                        let at = r
                            .exited_at
                            .and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok())
                            .unwrap_or_else(jiff::Timestamp::now);
                        break (r.exit_status as i32, at);
                    }
                    Err(e) if e.code() == Code::NotFound => {
                        tracing::debug!(id = %id, error = %e.message(), "waiting for a task ended without an exit status");
                        return;
                    }
                    Err(e) => {
                        if !rt.lock().exits.contains_key(&id) {
                            return;
                        }
                        tracing::info!(id = %id, error = %e.message(), "lost containerd while waiting for a container; waiting again in {backoff:?}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            };
            let oom_killed = rt.oom_killed(&id).await;
            let reason = if oom_killed {
                "OOMKilled"
            } else if exit_code == 0 {
                "Completed"
            } else {
                "Error"
            };
            let exit = ExitInfo {
                exit_code,
                reason: reason.into(),
                oom_killed,
                finished_at,
            };
            // Kept on the container: once the task is deleted, a kubelet started after this
            // one has no other way to learn how it ended.
            let mut labels = HashMap::new();
            labels.insert(LABEL_EXIT.to_string(), exit.to_label());
            let update = UpdateContainerRequest {
                container: Some(Container {
                    id: id.clone(),
                    labels,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec![format!("labels.{LABEL_EXIT}")],
                }),
            };
            if let Err(e) = cd.containers().update(cd.req(update, None)).await {
                tracing::debug!(id = %id, error = %e.message(), "recording a container's exit");
            }
            // Delete the exited task now, as the CRI plugin does: the shim first finishes
            // copying the output into the FIFOs, so once the pump has drained them the log
            // is complete before anyone sees the exit.
            let delete = cd
                .tasks()
                .delete(cd.req(
                    DeleteTaskRequest {
                        container_id: id.clone(),
                    },
                    None,
                ))
                .await;
            if let Err(e) = delete.as_ref().map_err(|e| e.code()) {
                if e != Code::NotFound {
                    tracing::warn!(id = %id, error = ?e, "deleting an exited task");
                }
            }
            let pump = rt.lock().pumps.remove(&id);
            if let Some(p) = pump {
                p.finish().await;
            }
            // send_replace stores the exit even when nobody is subscribed right now.
            tx.send_replace(Some(exit));
        });
        rx
    }

    /// Whether the kernel OOM-killed a process in the container's memory cgroup (cgroup v1
    /// `oom_kill` counter, read before the task's cgroup is deleted).
    async fn oom_killed(&self, id: &str) -> bool {
        let Some(cgroup) = self.cgroup_of(id).await else {
            return false;
        };
        sys::read_cgroup("memory", &cgroup, "memory.oom_control")
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                })
            })
            .is_some_and(|n| n > 0)
    }

    /// Wait up to `timeout` for a container to exit.
    pub async fn wait_container(&self, id: &str, timeout: Duration) -> Option<ExitInfo> {
        let mut rx = self.watch_exit(id);
        let waited = tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(v)) => v.clone(),
            _ => None,
        }
    }

    /// Current state of a container.
    pub async fn container_state(&self, id: &str) -> Result<ContainerState> {
        if let Some(exit) = self.lock().exits.get(id).and_then(|tx| tx.borrow().clone()) {
            return Ok(ContainerState::Exited(exit));
        }
        let cd = &self.cd;
        let got = cd
            .tasks()
            .get(cd.req(
                GetRequest {
                    container_id: id.into(),
                    exec_id: String::new(),
                },
                None,
            ))
            .await;
        let process = match got {
            Ok(r) => r.into_inner().process.unwrap_or_default(),
            Err(s) if s.code() == Code::NotFound => {
                // A watched container's task is deleted on exit, just before its exit is
                // published: wait for that instead of calling it unknown.
                let watched = self.lock().exits.contains_key(id);
                if watched {
                    let exit = self.wait_container(id, Duration::from_secs(5)).await;
                    return Ok(exit.map_or(ContainerState::Unknown, ContainerState::Exited));
                }
                return Ok(ContainerState::Unknown);
            }
            Err(s) => {
                return Err(Error::Containerd {
                    what: format!("getting the state of container {id}"),
                    source: Box::new(s),
                })
            }
        };
        Ok(
            match TaskStatus::try_from(process.status).unwrap_or(TaskStatus::Unknown) {
                TaskStatus::Created => ContainerState::Created,
                TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing => {
                    ContainerState::Running { pid: process.pid }
                }
                TaskStatus::Stopped => {
                    // Exited before we watched it (e.g. across a kubelet restart).
                    self.wait_container(id, Duration::from_secs(5))
                        .await
                        .map_or(ContainerState::Unknown, ContainerState::Exited)
                }
                TaskStatus::Unknown => ContainerState::Unknown,
            },
        )
    }

    /// The cgroup a container of this kubelet runs in (its label), None when unknown.
    async fn cgroup_of(&self, id: &str) -> Option<String> {
        let cd = &self.cd;
        cd.containers()
            .get(cd.req(GetContainerRequest { id: id.into() }, None))
            .await
            .ok()?
            .into_inner()
            .container
            .and_then(|c| c.labels.get(LABEL_CGROUP).cloned())
    }

    /// Give a running container other cpu and memory limits in place (an in-place pod
    /// resize; what CRI's `UpdateContainerResources` has runc do): its cgroup's cpu weight
    /// (shares on v1), CFS quota and memory limit. A memory limit below what the container
    /// uses now is refused, as upstream's kubelet refuses it.
    pub async fn update_resources(&self, id: &str, r: &crate::spec::Resources) -> Result<()> {
        let what = || format!("resizing container {id}");
        let cgroup = self
            .cgroup_of(id)
            .await
            .ok_or_else(|| Error::invalid(what(), "its cgroup is not known"))?;
        let v2 = sys::cgroup_v2();
        let (mem_ctl, cpu_ctl) = if v2 { ("", "") } else { ("memory", "cpu") };
        if let Some(limit) = r.memory_limit {
            let usage_file = if v2 {
                "memory.current"
            } else {
                "memory.usage_in_bytes"
            };
            let usage = sys::read_cgroup(mem_ctl, &cgroup, usage_file)
                .and_then(|u| u.trim().parse::<i64>().ok());
            if let Some(usage) = usage.filter(|u| *u > limit) {
                return Err(Error::invalid(
                    what(),
                    format!(
                        "attempting to set memory limit ({limit}) below current usage ({usage})"
                    ),
                ));
            }
        }
        let shares = r.cpu_shares();
        let quota = r.cpu_quota();
        let writes: Vec<(&str, &str, String)> = if v2 {
            // runc's ConvertCPUSharesToCgroupV2Value
            let weight = 1 + ((shares.max(2) - 2) * 9999) / 262_142;
            vec![
                (cpu_ctl, "cpu.weight", weight.to_string()),
                (
                    cpu_ctl,
                    "cpu.max",
                    format!(
                        "{} {}",
                        quota.map_or("max".to_string(), |q| q.to_string()),
                        crate::spec::CPU_PERIOD_US
                    ),
                ),
                (
                    mem_ctl,
                    "memory.max",
                    r.memory_limit.map_or("max".to_string(), |m| m.to_string()),
                ),
            ]
        } else {
            vec![
                (cpu_ctl, "cpu.shares", shares.to_string()),
                (
                    cpu_ctl,
                    "cpu.cfs_period_us",
                    crate::spec::CPU_PERIOD_US.to_string(),
                ),
                (cpu_ctl, "cpu.cfs_quota_us", quota.unwrap_or(-1).to_string()),
                (
                    mem_ctl,
                    "memory.limit_in_bytes",
                    r.memory_limit.unwrap_or(-1).to_string(),
                ),
            ]
        };
        for (controller, file, value) in writes {
            sys::write_cgroup(controller, &cgroup, file, &value)
                .map_err(|e| Error::sys(what(), e))?;
        }
        Ok(())
    }

    /// Stop a container: SIGTERM, then SIGKILL after `grace` (terminationGracePeriodSeconds).
    pub async fn stop_container(&self, id: &str, grace: Duration) -> Result<Option<ExitInfo>> {
        let what = || format!("stopping container {id}");
        if let ContainerState::Exited(e) = self.container_state(id).await? {
            return Ok(Some(e));
        }
        if matches!(self.container_state(id).await?, ContainerState::Unknown) {
            return Ok(None);
        }
        let mut rx = self.watch_exit(id);
        let cd = &self.cd;
        let kill = |signal: u32, all: bool| {
            let mut tasks = cd.tasks();
            let req = cd.req(
                KillRequest {
                    container_id: id.into(),
                    exec_id: String::new(),
                    signal,
                    all,
                },
                None,
            );
            async move { tasks.kill(req).await }
        };
        match kill(libc::SIGTERM as u32, false).await {
            Err(s) if s.code() != Code::NotFound => {
                return Err(Error::Containerd {
                    what: what(),
                    source: Box::new(s),
                })
            }
            _ => {}
        }
        if let Ok(Ok(v)) = tokio::time::timeout(grace, rx.wait_for(Option::is_some)).await {
            return Ok(v.clone());
        }
        tracing::info!(id = %id, grace = ?grace, "grace period over; sending SIGKILL");
        match kill(libc::SIGKILL as u32, true).await {
            Err(s) if s.code() != Code::NotFound => {
                return Err(Error::Containerd {
                    what: what(),
                    source: Box::new(s),
                })
            }
            _ => {}
        }
        let exited =
            match tokio::time::timeout(Duration::from_secs(10), rx.wait_for(Option::is_some)).await
            {
                Ok(Ok(v)) => Ok(v.clone()),
                _ => Err(Error::invalid(
                    what(),
                    "the task did not exit 10 s after SIGKILL",
                )),
            };
        exited
    }

    /// Remove a container (killing it if it still runs): task, container, snapshot, FIFOs,
    /// and the end of its log pump. Keeps the log file.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let cd = &self.cd;
        let uid = cd
            .containers()
            .get(cd.req(GetContainerRequest { id: id.into() }, None))
            .await
            .ok()
            .and_then(|c| c.into_inner().container)
            .and_then(|c| c.labels.get(LABEL_POD_UID).cloned());
        self.delete_container_objects(id).await?;
        let pump = {
            let mut shared = self.lock();
            shared.exits.remove(id);
            shared.pumps.remove(id)
        };
        if let Some(p) = pump {
            p.finish().await;
        }
        if let Some(uid) = uid {
            let fifo_dir = self.config.pod_dir(&uid).join("fifo");
            let keeper = keeper_path(&fifo_dir, id);
            if let Some(pid) = sys::read_file(&keeper)
                .ok()
                .and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok())
            {
                sys::kill_pid(pid);
            }
            let (out, err) = logs::fifo_paths(&fifo_dir, id);
            let (stdin, once) = (stdin_path(&fifo_dir, id), stdin_once_path(&fifo_dir, id));
            for f in [keeper, out, err, stdin, once] {
                sys::remove_file(&f).context(|| format!("removing container {id}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_label_round_trips() {
        let exit = ExitInfo {
            exit_code: 137,
            reason: "OOMKilled".into(),
            oom_killed: true,
            finished_at: "2026-11-26T03:01:02.123456789Z".parse().expect("time"),
        };
        assert_eq!(ExitInfo::from_label(&exit.to_label()), Some(exit));
        assert_eq!(ExitInfo::from_label("garbage"), None);
    }
}
