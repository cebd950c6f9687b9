//! kaze's kube-proxy (`kaze proxy`).
//!
//! [`run`] watches Services, EndpointSlices and this node's Node object, computes which
//! backends every service address:port/protocol should balance over ([`desired`]), and
//! applies only the difference to the dataplane: the eBPF programs and pinned maps of
//! [`Dataplane`] (the default), or kube-proxy-style iptables nat chains ([`iptables`]).
//! The dataplane outlives the process, so a restarted proxy reconciles against what is
//! programmed instead of flushing it, and established flows never notice.

pub mod bench;
mod config;
mod dataplane;
pub mod desired;
mod engine;
mod error;
pub mod family;
pub mod healthcheck;
pub mod iptables;
mod ipv6;
mod linkwatch;
mod metrics;
pub mod netns;
pub mod netpol;
pub mod proxy_health;
mod run;
mod services;
mod sys;
pub mod tracker;
mod worker;

use std::{net::SocketAddr, path::PathBuf};

pub use config::{
    effective_mode, parse_duration, BindAddress, BpfCgroup, ClusterCidr, Config, IptablesBackend,
    NodePortAddress, ProxyMode, CLASSIC_MODE_ANNOTATION, MODE_ANNOTATION,
};
pub use dataplane::{Dataplane, DataplaneConfig, TcHook, DEFAULT_PIN_ROOT, DEFAULT_UDP_TIMEOUT};
pub use engine::{cleanup, remove_pins, Cleaned};
pub use error::DataplaneError;
pub use run::run;
pub use services::{Protocol, ServiceCounters, ServiceKey, ServiceState};

/// Errors that stop [`run`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to the apiserver")]
    Client(#[from] component::ClientError),

    #[error("binding the metrics address {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("entering network namespace {path}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("starting the dataplane thread")]
    Thread {
        #[source]
        source: std::io::Error,
    },

    #[error("the dataplane thread stopped unexpectedly")]
    WorkerGone,

    #[error("a watch stopped before its first list completed")]
    WatchStopped,

    #[error("starting iptables mode")]
    Iptables(#[source] iptables::IptablesError),

    #[error("cleaning up the node's service dataplane")]
    Cleanup(#[source] DataplaneError),
}
