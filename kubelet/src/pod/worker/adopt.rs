//! A worker's first step after a kubelet restart: take over what an earlier kubelet left
//! running for this pod instead of making it again (upstream: restarting the kubelet does
//! not restart pods). The running sandbox keeps its netns and IP; each container found in
//! containerd fills its slot with its restart count (the `attempt` label, which the
//! container id derives from) and start time (a label); a running one is probed again, an
//! exited one goes through `restartPolicy` as usual. A sandbox whose pause task is dead is
//! removed, and the pod starts afresh.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus as ApiStatus};
use tokio::time::Instant;

use super::{should_restart, Kind, Running, Worker};
use crate::pod::spec as podspec;
use crate::runtime::{AdoptedContainer, ContainerState};

impl Worker {
    pub(super) async fn adopt(&mut self) {
        let Ok((_, _, uid)) = podspec::pod_identity(&self.pod) else {
            return;
        };
        // The record is written before anything of the pod is made: without it nothing is.
        if self.rt.read_record(&uid).is_none() {
            return;
        }
        let sandbox = match self.rt.sandbox(&uid).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(pod = %self.name(), error = %e, "looking for a running sandbox");
                return;
            }
        };
        let Some(sandbox) = sandbox else {
            // Its pause task is gone (or never started): clean up, then start afresh.
            tracing::info!(pod = %self.name(), "removing a sandbox that is no longer running");
            if let Err(e) = self.rt.remove_pod(&uid).await {
                tracing::warn!(pod = %self.name(), error = %e, "removing a dead sandbox");
            }
            return;
        };
        let found = match self.rt.adopt_containers(&uid).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(pod = %self.name(), error = %e, "adopting the pod's containers");
                Vec::new()
            }
        };
        tracing::info!(pod = %self.name(), sandbox = %sandbox.id, ip = ?sandbox.ip(), containers = found.len(), "adopting the running pod");
        self.sandbox_exit = Some(self.rt.watch_sandbox(&sandbox));
        self.sandbox = Some(sandbox);
        let reported = self.pod.status.clone().unwrap_or_default();
        if let Some(t) = &reported.start_time {
            self.start_time = t.0;
        }
        let api: HashMap<String, ApiStatus> = reported
            .init_container_statuses
            .into_iter()
            .flatten()
            .chain(reported.container_statuses.into_iter().flatten())
            .chain(reported.ephemeral_container_statuses.into_iter().flatten())
            .map(|s| (s.name.clone(), s))
            .collect();
        let policy = self.policy();
        for i in 0..self.slots.len() {
            let name = self.slots[i].spec.name.clone();
            let mut mine: Vec<&AdoptedContainer> =
                found.iter().filter(|c| c.name == name).collect();
            mine.sort_by_key(|c| c.attempt);
            let latest = mine.pop().cloned();
            // Older attempts are what a removal interrupted: finish it.
            for old in mine {
                if let Err(e) = self.rt.remove_container(&old.id).await {
                    tracing::warn!(container = %old.id, error = %e, "removing an older attempt");
                }
            }
            match latest {
                Some(c) => self.adopt_container(i, c, api.get(&name)).await,
                None => self.restore_from_status(i, api.get(&name), &policy),
            }
        }
        // Init containers declared before one that exists have all finished (each
        // regular one is removed once it succeeded).
        let last_made = self.slots.iter().rposition(|s| s.running.is_some());
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.kind == Kind::Init && last_made.is_some_and(|l| i < l) && !s.succeeded() {
                s.done = true;
                s.waiting = None;
                s.last = Some(ContainerStateTerminated {
                    exit_code: 0,
                    reason: Some("Completed".into()),
                    ..s.last.clone().unwrap_or_default()
                });
            }
        }
        // Once an app container has run, the pod is initialized (as upstream decides).
        let app_made = self
            .slots
            .iter()
            .any(|s| s.kind == Kind::App && (s.running.is_some() || s.last.is_some()));
        if app_made {
            self.initialized = true;
            for s in self.slots.iter_mut().filter(|s| s.kind == Kind::App) {
                if s.waiting.as_ref().is_some_and(|w| w.0 == "PodInitializing") {
                    s.waiting = Some(("ContainerCreating".into(), String::new()));
                }
            }
        }
    }

    /// Slot `i` takes container `c`: running or exited, it is this slot's current run.
    async fn adopt_container(&mut self, i: usize, c: AdoptedContainer, api: Option<&ApiStatus>) {
        if !matches!(
            c.state,
            ContainerState::Running { .. } | ContainerState::Exited(_)
        ) {
            // Created but never started: remove it; the slot starts the same attempt again.
            if let Err(e) = self.rt.remove_container(&c.id).await {
                tracing::warn!(container = %c.id, error = %e, "removing a container that never started");
            }
            self.slots[i].restarts = c.attempt;
            return;
        }
        let image_id = self
            .rt
            .resolve_image(&c.image)
            .await
            .map(|i| i.digest)
            .unwrap_or_default();
        let slot = &mut self.slots[i];
        // Probes' initial delays count from the container's start, as upstream's do.
        let age = jiff::Timestamp::now()
            .duration_since(c.started_at)
            .unsigned_abs();
        let started = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        let running = Running::new(c.id.clone(), &slot.spec, c.started_at, started);
        // What was last reported for this very container still holds until a probe says
        // otherwise (readiness would otherwise drop for a probe period, and with it the
        // pod's endpoints).
        let same =
            api.filter(|s| s.container_id.as_deref() == Some(&format!("containerd://{}", c.id)));
        slot.started = running.startup.is_none() || same.is_some_and(|s| s.started == Some(true));
        slot.ready = running.readiness.is_none() || same.is_some_and(|s| s.ready);
        slot.restarts = c.attempt;
        // The previous run: the reported lastState when the API saw this container; when it
        // last saw the run before (the kubelet stopped before reporting this one), that
        // run's end if it was reported.
        let state = api.and_then(|s| s.state.as_ref());
        let last_state = api.and_then(|s| s.last_state.as_ref());
        slot.last = match (same, state) {
            (Some(_), _) => last_state.and_then(|s| s.terminated.clone()),
            (None, Some(s)) if s.terminated.is_some() => s.terminated.clone(),
            (None, Some(s)) if s.waiting.is_some() => last_state.and_then(|s| s.terminated.clone()),
            (None, _) => None,
        };
        slot.running = Some(running);
        slot.waiting = None;
        slot.image_id = image_id;
        tracing::debug!(container = %c.id, name = %c.name, attempt = c.attempt, state = ?c.state, "adopted a container");
    }

    /// Slot `i` has no container: what the API last heard of it says whether it finished
    /// (a completed init container, an app container per `restartPolicy`) and how often it
    /// was restarted.
    fn restore_from_status(&mut self, i: usize, api: Option<&ApiStatus>, policy: &str) {
        let Some(api) = api else {
            return;
        };
        let slot = &mut self.slots[i];
        let state = api.state.as_ref();
        let terminated = state.and_then(|s| s.terminated.clone());
        let last = terminated
            .clone()
            .or_else(|| api.last_state.as_ref().and_then(|s| s.terminated.clone()));
        slot.restarts = u32::try_from(api.restart_count).unwrap_or(0);
        if let Some(t) = &terminated {
            slot.done = match slot.kind {
                Kind::Init => t.exit_code == 0 || policy == "Never",
                Kind::Sidecar => false,
                Kind::App => !should_restart(policy, t.exit_code),
                Kind::Ephemeral => true,
            };
            if slot.done {
                slot.waiting = None;
            }
        }
        slot.last = last;
    }
}
