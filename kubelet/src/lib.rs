//! kaze's kubelet: runs pods on containerd.
//!
//! Layers, bottom up:
//! - [`sys`]: the one module that touches the host (processes, netns, FIFOs, cgroups);
//! - [`containerd`], [`images`], [`cni`], [`spec`], [`security`], [`logs`]: one concern each;
//! - [`runtime`]: pod sandboxes and containers built from those;
//! - [`dra`]: Dynamic Resource Allocation: DRA driver plugins, ResourceClaims prepared
//!   before a pod starts, their CDI devices in its containers;
//! - [`deviceplugin`]: device plugins (deviceplugin v1beta1): their devices in the Node's
//!   capacity, allocated to pods at admission, applied to their containers;
//! - [`podresources`]: the pod-resources API (v1) on its unix socket;
//! - [`grpc`]: unary gRPC over unix sockets, client and server;
//! - [`volume`]: pod volumes (emptyDir, configMap, secret, downwardAPI, projected, hostPath);
//! - [`pod`]: PodSpec -> runtime calls, volumes, init containers, probes, restart policy,
//!   status and events;
//! - [`static_pod`]: pods from manifest files and URLs, with mirror pods in the API;
//! - [`stats`]: the Summary API (`/stats/summary`) from cgroups and /proc;
//! - [`metrics`]: the kubelet's Prometheus counters, `/metrics` and `/metrics/resource`;
//! - [`node`]: the API client: node registration, Lease heartbeats, the pod sync loop, the
//!   kubelet's HTTPS server (logs, exec, attach, port-forward, stats).

pub mod cni;
pub mod containerd;
pub mod deviceplugin;
pub mod dra;
pub mod error;
pub mod grpc;
pub mod images;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod pod;
pub mod podresources;
pub mod runtime;
pub mod security;
pub mod spec;
pub mod static_pod;
pub mod stats;
pub mod sys;
pub mod volume;

pub use error::{Error, Result};
pub use runtime::{
    ContainerConfig, ContainerState, ContainerStatus, ExitInfo, PodSandboxConfig, Runtime,
    RuntimeConfig, Sandbox,
};
