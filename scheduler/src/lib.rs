//! kaze's scheduler (`kaze scheduler`): a pure API client, like upstream's kube-scheduler.
//! It watches nodes and pods, picks a node for every pending pod whose `schedulerName` it
//! serves ([`framework`]: filters then scores), and binds through the `pods/binding`
//! subresource. Pods that fit nowhere get a `FailedScheduling` event with upstream's wording
//! and `PodScheduled=False`, and are retried with backoff when the cluster changes; a retry
//! that fails the same way counts on the first event (`count`, `lastTimestamp`).
//!
//! Pending pods are tried highest `spec.priority` first (then oldest), as upstream's
//! priority queue. A pod that fits nowhere may preempt ([`preemption`], upstream's
//! DefaultPreemption PostFilter): on the node where evicting the fewest pods of lower
//! priority makes it pass every filter (PodDisruptionBudget violations avoided when
//! possible; the node chosen as upstream), the victims get a `DisruptionTarget` condition
//! (`PreemptionByScheduler`), a `Preempted` event and a delete with their grace period, and
//! the pod's `status.nominatedNodeName` names the node, whose room lower-priority pods cannot
//! take meanwhile. `preemptionPolicy: Never` pods only wait; equal-priority pods are never
//! victims. The FailedScheduling message ends with upstream's preemption diagnosis
//! (`preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.`).

use std::path::PathBuf;

pub mod config;
pub mod dra;
pub mod framework;
#[cfg(test)]
mod framework_tests;
mod loop_;
pub mod preemption;
pub mod quantity;
pub mod selectors;
mod serving;
pub mod volumebinding;

pub use loop_::{Scheduler, Stats};

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// kubeconfig to reach the apiserver (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,

    /// Name of the (only) profile when no --config is given.
    #[arg(long = "scheduler-name", default_value = "default-scheduler")]
    pub scheduler_name: String,

    /// KubeSchedulerConfiguration-style YAML: profiles, plugins enabled/disabled, weights.
    #[arg(long, conflicts_with = "policy_config_file")]
    pub config: Option<PathBuf>,

    /// Classic Kubernetes scheduler policy JSON (predicates and priorities by name).
    #[arg(long = "policy-config-file")]
    pub policy_config_file: Option<PathBuf>,

    #[command(flatten)]
    pub leader: component::leader::LeaderElectionArgs,

    /// Bindings in flight at once.
    #[arg(long = "parallelism", default_value_t = 16)]
    pub parallelism: usize,

    /// The secure port (default 10259): health, and metrics for authorized callers.
    #[command(flatten)]
    pub serving: component::serving::SecureServing,
}

impl Config {
    /// The flags' defaults for a scheduler reaching the apiserver through `kubeconfig`, not
    /// leader-elected and without a secure port: what `kaze server`, tests and benchmarks
    /// start in-process (set fields after `..` to differ).
    pub fn embedded(kubeconfig: PathBuf) -> Config {
        Config {
            kubeconfig: Some(kubeconfig),
            scheduler_name: "default-scheduler".into(),
            config: None,
            policy_config_file: None,
            leader: component::leader::LeaderElectionArgs::disabled(),
            parallelism: 16,
            serving: component::serving::SecureServing::disabled(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("connecting to the apiserver: {0}")]
    Client(#[from] component::ClientError),
    #[error(transparent)]
    Leader(#[from] component::leader::LeaderError),
    #[error("the secure port: {0}")]
    Serving(#[from] component::serving::ServingError),
}

/// The profiles `config` asks for; a bad file is an error naming the file and the problem.
pub fn profiles(config: &Config) -> Result<Vec<config::Profile>, Error> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|source| config::ConfigError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    if let Some(p) = &config.config {
        return Ok(config::from_yaml(&p.display().to_string(), &read(p)?)?);
    }
    if let Some(p) = &config.policy_config_file {
        let mut profile = config::from_policy(&p.display().to_string(), &read(p)?)?;
        profile.scheduler_name = config.scheduler_name.clone();
        return Ok(vec![profile]);
    }
    Ok(vec![config::Profile::default_named(&config.scheduler_name)])
}

/// Run until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: component::CancellationToken) -> Result<(), Error> {
    let profiles = profiles(&config)?;
    // upstream's kube-scheduler names its client `scheduler` (rest.AddUserAgent)
    let agent = component::user_agent("kube-scheduler", Some("scheduler"));
    let client = component::client_as(config.kubeconfig.as_deref(), &agent).await?;
    let identity = component::leader::default_identity();
    let elector = component::leader::Elector::new(
        client.clone(),
        "kube-scheduler",
        &identity,
        config.leader.clone(),
    );
    let secure =
        component::serving::bind("kube-scheduler", 10259, &config.serving, &client).await?;
    let scheduler = Scheduler::new(client, profiles, config.parallelism);
    let stop_serving = shutdown.child_token();
    let serving = secure.map(|port| {
        let endpoints = serving::endpoints(&elector, &scheduler.stats, &shutdown);
        tokio::spawn(port.serve(endpoints, stop_serving.clone()))
    });
    let result = elector.run(shutdown, |token| scheduler.run(token)).await;
    stop_serving.cancel();
    if let Some(task) = serving {
        let _ = task.await;
    }
    match result? {
        Some(result) => result,
        None => Ok(()),
    }
}
