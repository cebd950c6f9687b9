//! The pod model: a `v1.Pod` turned into runtime calls ([`spec`]), probes ([`probe`]) and a
//! per-pod worker that keeps it running and reports its status ([`worker`]). Nothing here
//! talks to the API server; the sync loop that will feed pods from it sits on top.

pub mod probe;
pub mod spec;
pub mod worker;

pub use spec::{NodeContext, SpecError};
pub use worker::{spawn, PodHandle, WorkerConfig};
