//! After a kubelet restart: find this node's sandboxes and running containers again, keep
//! watching them and re-attach their log pumps, without restarting anything.

use containerd_client::services::v1::GetRequest;
use containerd_client::types::v1::Status as TaskStatus;

use super::sandbox::Sandbox;
use super::{Runtime, KIND_CONTAINER, LABEL_KIND, LABEL_LOG_PATH, LABEL_POD_UID};
use crate::containerd::Containerd;
use crate::error::{Context, Result};
use crate::logs::{self, LogPump};

async fn task_pid(cd: &Containerd, id: &str) -> Option<(u32, bool)> {
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
    Some((p.pid, p.status == TaskStatus::Running as i32))
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
        let ips = record
            .cni_result
            .as_ref()
            .map(crate::cni::result_ips)
            .unwrap_or_default();
        Ok(Some(Sandbox {
            id: record.sandbox_id,
            namespace: record.namespace,
            name: record.name,
            uid: record.uid,
            netns: crate::sys::netns_path(&record.netns),
            ips,
            pid,
            dir: self.config.pod_dir(uid),
        }))
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
                let what = || format!("adopting container {}", c.id);
                let uid = c.labels.get(LABEL_POD_UID).cloned().unwrap_or_default();
                let log = c.labels.get(LABEL_LOG_PATH).cloned().unwrap_or_default();
                if !self.lock().pumps.contains_key(&c.id) {
                    let (out, err) =
                        logs::fifo_paths(&self.config.pod_dir(&uid).join("fifo"), &c.id);
                    let pump = LogPump::start(&out, &err, log.as_ref()).context(what)?;
                    self.lock().pumps.insert(c.id.clone(), pump);
                }
                self.watch_exit(&c.id);
                adopted.push(c.id);
            }
        }
        Ok(adopted)
    }
}
