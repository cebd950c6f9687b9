//! After a kubelet restart: find this node's sandboxes and containers again, keep watching
//! them and re-attach their log pumps, without restarting anything.

use std::time::Duration;

use containerd_client::services::v1::GetRequest;
use containerd_client::types::v1::Status as TaskStatus;
use tokio::sync::watch;

use super::container::{ContainerState, ExitInfo};
use super::sandbox::Sandbox;
use super::{
    Runtime, KIND_CONTAINER, LABEL_ATTEMPT, LABEL_CONTAINER_NAME, LABEL_EXIT, LABEL_KIND,
    LABEL_LOG_PATH, LABEL_POD_UID, LABEL_STARTED_AT,
};
use crate::containerd::Containerd;
use crate::error::{Context, Result};
use crate::logs::{self, LogPump};

/// A container of a pod as an earlier kubelet left it, now watched by this one.
#[derive(Clone, Debug)]
pub struct FoundContainer {
    pub id: String,
    /// The PodSpec container's name.
    pub name: String,
    /// Its restart count when it was started (the container id derives from it).
    pub attempt: u32,
    pub started_at: jiff::Timestamp,
    pub image: String,
    /// `Running`, `Exited` (with the exit when the task still knew it), or `Created`/`Unknown`
    /// for a container whose task never started.
    pub state: ContainerState,
}

async fn task_pid(cd: &Containerd, id: &str) -> Option<(u32, bool)> {
    task_status(cd, id)
        .await
        .map(|(pid, s)| (pid, s == TaskStatus::Running))
}

/// The task's pid and status; None when the container has no task.
async fn task_status(cd: &Containerd, id: &str) -> Option<(u32, TaskStatus)> {
    let t = cd
        .tasks()
        .get(cd.req(
            GetRequest {
                container_id: id.into(),
                exec_id: String::new(),
            },
            None,
        ))
        .await
        .ok()?;
    let p = t.into_inner().process?;
    let status = TaskStatus::try_from(p.status).unwrap_or(TaskStatus::Unknown);
    Some((p.pid, status))
}

impl Runtime {
    /// The sandbox of pod `uid` as an earlier kubelet left it (None if it has none).
    pub async fn sandbox(&self, uid: &str) -> Result<Option<Sandbox>> {
        let Some(record) = self.read_record(uid) else {
            return Ok(None);
        };
        let Some((pid, true)) = task_pid(&self.cd, &record.sandbox_id).await else {
            return Ok(None);
        };
        let ips = match &record.host_ips {
            Some(host) => host.iter().filter_map(|ip| ip.parse().ok()).collect(),
            None => record
                .cni_result
                .as_ref()
                .map(crate::cni::result_ips)
                .unwrap_or_default(),
        };
        let netns = match record.host_ips {
            Some(_) => super::sandbox::host_netns(),
            None => crate::sys::netns_path(&record.netns),
        };
        Ok(Some(Sandbox {
            id: record.sandbox_id,
            namespace: record.namespace,
            name: record.name,
            uid: record.uid,
            netns,
            ips,
            pid,
            dir: self.config.pod_dir(uid),
        }))
    }

    /// Adopt the app containers of pod `uid`: a running one's exit is watched and its log
    /// pumped again; an exited one's output still in its FIFOs is drained into the log and
    /// its exit read from the task, or from its `io.kaze.container.exit` label when the
    /// earlier kubelet had already deleted the task (without either: code 137, reason
    /// `Unknown`, as for any exit nobody saw).
    pub async fn adopt_containers(&self, uid: &str) -> Result<Vec<FoundContainer>> {
        let mut found = Vec::new();
        for c in self.pod_containers(uid).await? {
            if c.labels.get(LABEL_KIND).map(String::as_str) != Some(KIND_CONTAINER) {
                continue;
            }
            let label = |k: &str| c.labels.get(k).cloned().unwrap_or_default();
            let started_at = label(LABEL_STARTED_AT)
                .parse()
                .ok()
                .or_else(|| {
                    let t = c.created_at.as_ref()?;
                    jiff::Timestamp::new(t.seconds, t.nanos).ok()
                })
                .unwrap_or_else(jiff::Timestamp::now);
            let task = task_status(&self.cd, &c.id).await;
            let state = match task {
                Some((pid, TaskStatus::Running)) => {
                    self.adopt_io(uid, &c.id, &label(LABEL_LOG_PATH))?;
                    self.watch_exit(&c.id);
                    ContainerState::Running { pid }
                }
                Some((_, TaskStatus::Stopped)) => {
                    self.adopt_io(uid, &c.id, &label(LABEL_LOG_PATH))?;
                    // The task still holds the exit; the watch reads it and deletes the task.
                    self.wait_container(&c.id, Duration::from_secs(10))
                        .await
                        .map_or(ContainerState::Unknown, ContainerState::Exited)
                }
                Some(_) => ContainerState::Created,
                None => {
                    let exit =
                        ExitInfo::from_label(&label(LABEL_EXIT)).unwrap_or_else(|| ExitInfo {
                            exit_code: 137,
                            reason: "Unknown".into(),
                            oom_killed: false,
                            finished_at: jiff::Timestamp::now(),
                        });
                    let (tx, _) = watch::channel(Some(exit.clone()));
                    self.lock().exits.entry(c.id.clone()).or_insert(tx);
                    ContainerState::Exited(exit)
                }
            };
            found.push(FoundContainer {
                name: label(LABEL_CONTAINER_NAME),
                attempt: label(LABEL_ATTEMPT).parse().unwrap_or(0),
                started_at,
                image: c.image.clone(),
                state,
                id: c.id,
            });
        }
        Ok(found)
    }

    /// Re-attach the log pump of container `id` (idempotent).
    fn adopt_io(&self, uid: &str, id: &str, log: &str) -> Result<()> {
        if self.lock().pumps.contains_key(id) {
            return Ok(());
        }
        let (out, err) = logs::fifo_paths(&self.config.pod_dir(uid).join("fifo"), id);
        let pump = LogPump::start(&out, &err, log.as_ref(), self.config.log_rotation)
            .context(|| format!("adopting container {id}"))?;
        self.lock().pumps.insert(id.to_string(), pump);
        Ok(())
    }

    /// Adopt every running app container of this node: watch its exit and pump its logs
    /// again. Returns the adopted container ids.
    pub async fn adopt(&self) -> Result<Vec<String>> {
        let mut adopted = Vec::new();
        for uid in self.list_pod_uids().await? {
            for c in self.pod_containers(&uid).await? {
                if c.labels.get(LABEL_KIND).map(String::as_str) != Some(KIND_CONTAINER) {
                    continue;
                }
                if !matches!(task_pid(&self.cd, &c.id).await, Some((_, true))) {
                    continue;
                }
                let uid = c.labels.get(LABEL_POD_UID).cloned().unwrap_or_default();
                let log = c.labels.get(LABEL_LOG_PATH).cloned().unwrap_or_default();
                self.adopt_io(&uid, &c.id, &log)?;
                self.watch_exit(&c.id);
                adopted.push(c.id);
            }
        }
        Ok(adopted)
    }
}
