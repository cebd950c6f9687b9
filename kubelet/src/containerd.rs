//! A containerd connection bound to one namespace (one per node name, so several kubelets
//! can share one containerd in tests), with the namespace and lease headers every request
//! needs.

use std::path::{Path, PathBuf};

use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient, diff_client::DiffClient,
    images_client::ImagesClient, introspection_client::IntrospectionClient,
    leases_client::LeasesClient, tasks_client::TasksClient,
};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{self, Code, Request};

use crate::error::{Error, Result};

/// The snapshotter every kaze container uses.
pub const SNAPSHOTTER: &str = "overlayfs";
/// The runc shim, as ctr and the CRI plugin use it.
pub const RUNTIME: &str = "io.containerd.runc.v2";

#[derive(Clone, Debug)]
pub struct Containerd {
    channel: Channel,
    namespace: String,
    address: PathBuf,
}

impl Containerd {
    pub async fn connect(address: &Path, namespace: &str) -> Result<Containerd> {
        let channel = containerd_client::connect(address)
            .await
            .map_err(|source| Error::Connect {
                address: address.to_path_buf(),
                source,
            })?;
        Ok(Containerd {
            channel,
            namespace: namespace.to_string(),
            address: address.to_path_buf(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn address(&self) -> &Path {
        &self.address
    }

    /// A request in this namespace, optionally inside a lease (which keeps half-imported
    /// content and snapshots from the garbage collector).
    pub fn req<T>(&self, msg: T, lease: Option<&str>) -> Request<T> {
        let mut req = Request::new(msg);
        let md = req.metadata_mut();
        if let Ok(ns) = self.namespace.parse() {
            md.insert("containerd-namespace", ns);
        }
        if let Some(lease) = lease.and_then(|l| l.parse().ok()) {
            md.insert("containerd-lease", lease);
        }
        req
    }

    pub fn content(&self) -> ContentClient<Channel> {
        // Image blobs (busybox is ~2 MB) travel in one message each way.
        ContentClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }
    pub fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }
    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }
    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }
    pub fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }
    pub fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }
    pub fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }
    pub fn introspection(&self) -> IntrospectionClient<Channel> {
        IntrospectionClient::new(self.channel.clone())
    }

    /// The runtime as the Node's `nodeInfo.containerRuntimeVersion` names it:
    /// `containerd://<version>` (as upstream's kubelet reports it through CRI).
    pub async fn runtime_version(&self) -> Result<String> {
        let v = containerd_client::services::v1::version_client::VersionClient::new(
            self.channel.clone(),
        )
        .version(())
        .await
        .map_err(|e| Error::containerd("asking containerd its version", e))?;
        Ok(format!(
            "containerd://{}",
            v.into_inner().version.trim_start_matches('v')
        ))
    }
}

/// Treat NotFound as success: teardown steps are idempotent.
pub fn ignore_not_found<T>(
    r: std::result::Result<T, tonic::Status>,
) -> std::result::Result<(), tonic::Status> {
    match r {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::NotFound => Ok(()),
        Err(s) => Err(s),
    }
}
