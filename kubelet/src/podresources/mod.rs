//! The pod-resources API (v1) on `<root-dir>/pod-resources/kubelet.sock` (mode 0600), as
//! upstream's `v1PodResourcesServer`: node agents (device monitoring, NUMA-aware
//! schedulers) ask which devices each container holds.
//! - `List`: the active pods (not finished), their sidecars and app containers, each with
//!   its device plugin devices (one entry per device and NUMA node, as upstream reports
//!   them) and its DRA claims' devices (`dynamic_resources`: claim, driver/pool/device, CDI
//!   devices);
//! - `Get`: the same for one pod the kubelet runs (upstream's `KubeletPodResourcesGet`,
//!   on by default since 1.34);
//! - `GetAllocatableResources`: every healthy device.
//!
//! `cpu_ids` and `memory` are always empty: kaze has no CPU manager or memory manager
//! (no exclusive CPUs or NUMA-pinned memory to report). Not done: upstream's rate limit
//! on the socket.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_client::tonic;
use k8s_openapi::api::core::v1::{Container, Pod};

pub mod proto;

/// The dir under the kubelet's root dir and the socket in it (upstream's).
pub const DIR: &str = "pod-resources";
pub const SOCKET: &str = "kubelet.sock";

/// Where the answers come from.
#[derive(Clone)]
pub struct Providers {
    pub active: crate::pod::ActivePods,
    pub devices: Option<Arc<crate::deviceplugin::Manager>>,
    pub dra: Option<Arc<crate::dra::Manager>>,
}

/// The socket's path under `root_dir`.
pub fn socket(root_dir: &Path) -> PathBuf {
    root_dir.join(DIR).join(SOCKET)
}

/// Serve the API until `shutdown`.
pub async fn serve(
    root_dir: PathBuf,
    providers: Providers,
    shutdown: component::CancellationToken,
) {
    let path = socket(&root_dir);
    let made = {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(root_dir.join(DIR))
    };
    let listener = match made.and_then(|()| crate::grpc::bind(&path, Some(0o600))) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(socket = %path.display(), error = %e, "serving the pod-resources API");
            return;
        }
    };
    tracing::info!(socket = %path.display(), "serving the pod-resources API");
    let providers = Arc::new(providers);
    let handler: crate::grpc::Handler = Arc::new(move |req| {
        let p = providers.clone();
        Box::pin(async move {
            match req.uri().path() {
                proto::LIST => {
                    crate::grpc::unary(req, move |_: proto::ListPodResourcesRequest| async move {
                        Ok(p.list())
                    })
                    .await
                }
                proto::GET => {
                    crate::grpc::unary(req, move |r: proto::GetPodResourcesRequest| async move {
                        p.get(&r.pod_namespace, &r.pod_name)
                    })
                    .await
                }
                proto::GET_ALLOCATABLE_RESOURCES => crate::grpc::unary(
                    req,
                    move |_: proto::AllocatableResourcesRequest| async move { Ok(p.allocatable()) },
                )
                .await,
                _ => crate::grpc::unimplemented(&req),
            }
        })
    });
    crate::grpc::serve(listener, handler, shutdown).await;
}

fn terminal(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
}

/// One entry per device and NUMA node (none: no topology), as upstream's
/// `containerDevicesFromResourceDeviceInstances`.
fn devices(refs: Vec<crate::deviceplugin::DeviceRef>) -> Vec<proto::ContainerDevices> {
    let mut out = Vec::new();
    for (resource, id, nodes) in refs {
        if nodes.is_empty() {
            out.push(proto::ContainerDevices {
                resource_name: resource,
                device_ids: vec![id],
                topology: None,
            });
            continue;
        }
        for n in nodes {
            out.push(proto::ContainerDevices {
                resource_name: resource.clone(),
                device_ids: vec![id.clone()],
                topology: Some(proto::TopologyInfo {
                    nodes: vec![proto::NumaNode { id: n }],
                }),
            });
        }
    }
    out
}

impl Providers {
    pub fn list(&self) -> proto::ListPodResourcesResponse {
        if let Some(d) = &self.devices {
            d.refresh();
        }
        let pods = self.active.list();
        proto::ListPodResourcesResponse {
            pod_resources: pods
                .iter()
                .filter(|p| !terminal(p))
                .map(|p| self.pod(p))
                .collect(),
        }
    }

    pub fn get(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<proto::GetPodResourcesResponse, tonic::Status> {
        let pod = self.active.list().into_iter().find(|p| {
            p.metadata.namespace.as_deref().unwrap_or("default") == ns
                && p.metadata.name.as_deref() == Some(name)
        });
        match pod {
            Some(p) => Ok(proto::GetPodResourcesResponse {
                pod_resources: Some(self.pod(&p)),
            }),
            None => Err(tonic::Status::unknown(format!(
                "pod {name} in namespace {ns} not found"
            ))),
        }
    }

    pub fn allocatable(&self) -> proto::AllocatableResourcesResponse {
        proto::AllocatableResourcesResponse {
            devices: self
                .devices
                .as_ref()
                .map(|d| devices(d.allocatable_device_refs()))
                .unwrap_or_default(),
            cpu_ids: vec![],
            memory: vec![],
        }
    }

    /// Sidecars (restartable init containers) and app containers, as upstream lists them.
    fn pod(&self, p: &Pod) -> proto::PodResources {
        let spec = p.spec.as_ref();
        let sidecars = spec
            .and_then(|s| s.init_containers.as_ref())
            .into_iter()
            .flatten()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"));
        let apps = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
        proto::PodResources {
            name: p.metadata.name.clone().unwrap_or_default(),
            namespace: p.metadata.namespace.clone().unwrap_or_default(),
            containers: sidecars.chain(apps).map(|c| self.container(p, c)).collect(),
        }
    }

    fn container(&self, p: &Pod, c: &Container) -> proto::ContainerResources {
        let uid = p.metadata.uid.as_deref().unwrap_or_default();
        let device_refs = self
            .devices
            .as_ref()
            .map(|d| d.container_device_refs(uid, &c.name))
            .unwrap_or_default();
        let dynamic_resources = self
            .dra
            .as_ref()
            .map(|d| d.container_claims(p, c))
            .unwrap_or_default()
            .into_iter()
            .map(|claim| proto::DynamicResource {
                claim_name: claim.name,
                claim_namespace: claim.namespace,
                claim_resources: claim
                    .devices
                    .into_iter()
                    .map(|(driver, d)| proto::ClaimResource {
                        cdi_devices: d
                            .cdi_device_ids
                            .into_iter()
                            .map(|name| proto::CdiDevice { name })
                            .collect(),
                        driver_name: driver,
                        pool_name: d.pool_name,
                        device_name: d.device_name,
                    })
                    .collect(),
            })
            .collect();
        proto::ContainerResources {
            name: c.name.clone(),
            devices: devices(device_refs),
            cpu_ids: vec![],
            memory: vec![],
            dynamic_resources,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_reported_once_per_numa_node() {
        let out = devices(vec![
            ("r".into(), "a".into(), vec![]),
            ("r".into(), "b".into(), vec![0, 1]),
        ]);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].topology, None);
        assert_eq!(out[2].device_ids, ["b"]);
        assert_eq!(out[2].topology.as_ref().map(|t| t.nodes[0].id), Some(1));
    }
}
