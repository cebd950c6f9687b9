//! The pod model: a `v1.Pod` turned into runtime calls ([`spec`]), probes ([`probe`]),
//! volumes ([`crate::volume`]) and a per-pod worker that keeps it running and reports its
//! status ([`worker`], computed in `status`). The only API calls made here are reading
//! ConfigMaps/Secrets for volumes and posting pod events, through the `volume::Source` the
//! sync loop ([`crate::node::sync`]) hands in.

pub mod admit;
pub(crate) mod events;
pub mod hooks;
pub mod probe;
pub mod runtimeclass;
pub mod service_env;
pub mod spec;
mod status;
pub mod worker;

pub use admit::ActivePods;
pub(crate) use events::Recorder;
pub use spec::{NodeContext, SpecError};
pub use worker::{spawn, spawn_with, PodHandle, WorkerConfig};
