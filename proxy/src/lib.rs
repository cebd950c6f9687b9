//! kaze's kube-proxy.
//!
//! This crate currently holds the eBPF dataplane half: [`Dataplane`] loads the programs from
//! `dataplane-ebpf`, pins their maps (reusing pins left by a previous run, so a restart keeps
//! established flows and programmed services), attaches them to interfaces and offers a typed
//! API to program services. Watching Services and EndpointSlices comes with the apiserver.

mod dataplane;
mod error;
mod services;

pub use dataplane::{Dataplane, DataplaneConfig, TcHook, DEFAULT_PIN_ROOT};
pub use error::DataplaneError;
pub use services::{Protocol, ServiceCounters, ServiceKey, ServiceState};
