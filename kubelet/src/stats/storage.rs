//! A pod's local ephemeral storage as upstream counts it: each container's writable layer
//! (the overlayfs upper dir of its active snapshot, measured by containerd's snapshotter)
//! and logs, plus the pod's emptyDirs that are not memory-backed. Used by `/stats/summary`
//! and by eviction (`limits.ephemeral-storage`, disk pressure).

use std::collections::BTreeMap;
use std::path::Path;

use containerd_client::services::v1::snapshots::UsageRequest;
use containerd_client::services::v1::ListContainersRequest;

use crate::containerd::SNAPSHOTTER;
use crate::runtime::{
    pod_filter, Runtime, KIND_CONTAINER, LABEL_CONTAINER_NAME, LABEL_KIND, LABEL_LOG_PATH,
};
use crate::sys;

/// One container's share (every attempt of it still in containerd).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContainerStorage {
    /// Bytes and inodes of its writable layers.
    pub rootfs: (u64, u64),
    /// Bytes and inodes of its log dir.
    pub logs: (u64, u64),
}

impl ContainerStorage {
    pub fn bytes(&self) -> u64 {
        self.rootfs.0 + self.logs.0
    }
}

/// A pod's local ephemeral storage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodStorage {
    pub containers: BTreeMap<String, ContainerStorage>,
    /// Bytes and inodes of its disk-backed emptyDirs.
    pub empty_dirs: (u64, u64),
}

impl PodStorage {
    pub fn bytes(&self) -> u64 {
        self.containers.values().map(|c| c.bytes()).sum::<u64>() + self.empty_dirs.0
    }

    pub fn inodes(&self) -> u64 {
        self.containers
            .values()
            .map(|c| c.rootfs.1 + c.logs.1)
            .sum::<u64>()
            + self.empty_dirs.1
    }
}

/// Measure pod `uid`'s local ephemeral storage now.
pub async fn pod(rt: &Runtime, uid: &str) -> PodStorage {
    let cd = rt.containerd();
    let containers = cd
        .containers()
        .list(cd.req(
            ListContainersRequest {
                filters: vec![pod_filter(uid)],
            },
            None,
        ))
        .await
        .map(|r| r.into_inner().containers)
        .unwrap_or_default();
    let mut out = PodStorage::default();
    for c in containers {
        if c.labels.get(LABEL_KIND).map(String::as_str) != Some(KIND_CONTAINER) {
            continue;
        }
        let name = c
            .labels
            .get(LABEL_CONTAINER_NAME)
            .cloned()
            .unwrap_or_default();
        let entry = out.containers.entry(name).or_default();
        if !c.snapshot_key.is_empty() {
            let usage = cd
                .snapshots()
                .usage(cd.req(
                    UsageRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: c.snapshot_key.clone(),
                    },
                    None,
                ))
                .await;
            if let Ok(u) = usage.map(|u| u.into_inner()) {
                entry.rootfs.0 += u.size.max(0) as u64;
                entry.rootfs.1 += u.inodes.max(0) as u64;
            }
        }
        // Every attempt logs into the same dir: count it once.
        if entry.logs == (0, 0) {
            let log = c.labels.get(LABEL_LOG_PATH).cloned().unwrap_or_default();
            if let Some(dir) = Path::new(&log).parent().filter(|_| !log.is_empty()) {
                entry.logs = sys::disk_usage(dir).unwrap_or_default();
            }
        }
    }
    out.empty_dirs = empty_dirs(&rt.config().pod_dir(uid));
    out
}

/// Bytes and inodes the pod's emptyDirs hold on the node's disk (a memory-backed one is a
/// tmpfs mount of its own, not counted).
pub fn empty_dirs(pod_dir: &Path) -> (u64, u64) {
    let dir = pod_dir.join("volumes").join(crate::volume::EMPTY_DIR);
    let mut total = (0, 0);
    for v in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = v.path();
        if sys::mounts_under(&path).contains(&path) {
            continue;
        }
        let (b, i) = sys::disk_usage(&path).unwrap_or_default();
        total.0 += b;
        total.1 += i;
    }
    total
}
