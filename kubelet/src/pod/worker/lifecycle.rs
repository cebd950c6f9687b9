//! The lifecycle around a container's run: its postStart hook right after it started (the
//! container counts as running once the hook is done), and stopping it as upstream's
//! `killContainer` does: the preStop hook within the grace period, then SIGTERM, SIGKILL
//! once the grace period is over. [`Worker::terminate`] stops a whole pod that way: app
//! containers together, then sidecars in reverse order, then the sandbox.

use std::time::Duration;

use tokio::time::Instant;

use super::{Kind, Worker};
use crate::pod::hooks::{self, Killed, Target};
use crate::pod::spec as podspec;
use crate::runtime::{ExitInfo, Sandbox};

impl Worker {
    /// The grace period: the deletion's (`kubectl delete --grace-period`) if the API told us
    /// of one, else `terminationGracePeriodSeconds`.
    pub(super) fn grace(&self) -> Duration {
        let deleting = self
            .updates
            .borrow()
            .as_ref()
            .and_then(|p| p.metadata.deletion_grace_period_seconds);
        match deleting {
            Some(s) => Duration::from_secs(s.max(0) as u64),
            None => podspec::grace_period(&self.pod),
        }
    }

    /// Stop slot `i`'s running container as upstream's `killContainer` does (preStop hook,
    /// then SIGTERM, SIGKILL after `grace`), reporting a failed hook.
    pub(super) async fn kill_slot(
        &mut self,
        i: usize,
        id: &str,
        grace: Duration,
    ) -> Option<ExitInfo> {
        let pod = hooks::pod_desc(&self.pod);
        let spec = self.slots[i].spec.clone();
        self.events.container(
            self.slots[i].field_path(),
            "Killing",
            &format!("Stopping container {}", spec.name),
        );
        let target = Target {
            rt: &self.rt,
            id,
            container: &spec.name,
            pod: &pod,
            pod_ip: self.sandbox.as_ref().and_then(Sandbox::ip),
        };
        let killed = hooks::kill(&target, &spec, grace).await;
        self.report_pre_stop(&spec.name, killed.pre_stop_failure.as_deref());
        killed.exit
    }

    fn report_pre_stop(&mut self, container: &str, failure: Option<&str>) {
        if let Some(msg) = failure {
            tracing::warn!(pod = %self.name(), %container, error = %msg, "preStop hook failed");
            // As upstream: the event leaves the hook's output out (it may hold secrets).
            self.events.warn("FailedPreStopHook", "PreStopHook failed");
        }
    }

    pub(super) async fn terminate(&mut self) {
        let Ok((_, _, uid)) = podspec::pod_identity(&self.pod) else {
            return;
        };
        let grace = self.grace();
        // As upstream: the app containers first (together), then the sidecars, the last
        // declared first, each with what is left of the grace period (2 s at least). Each
        // runs its preStop hook first, within its grace period.
        let deadline = Instant::now() + grace;
        let pod = hooks::pod_desc(&self.pod);
        let pod_ip = self.sandbox.as_ref().and_then(Sandbox::ip);
        let mut apps = tokio::task::JoinSet::new();
        for slot in self.slots.iter().filter(|s| s.kind == Kind::App) {
            if let Some(r) = &slot.running {
                self.events.container(
                    slot.field_path(),
                    "Killing",
                    &format!("Stopping container {}", slot.spec.name),
                );
                let (rt, id, spec, pod) = (
                    self.rt.clone(),
                    r.id.clone(),
                    slot.spec.clone(),
                    pod.clone(),
                );
                apps.spawn(async move {
                    let target = Target {
                        rt: &rt,
                        id: &id,
                        container: &spec.name,
                        pod: &pod,
                        pod_ip,
                    };
                    let killed: Killed = hooks::kill(&target, &spec, grace).await;
                    (spec.name.clone(), killed.pre_stop_failure)
                });
            }
        }
        while let Some(done) = apps.join_next().await {
            if let Ok((name, failure)) = done {
                self.report_pre_stop(&name, failure.as_deref());
            }
        }
        let sidecars: Vec<(usize, String)> = self
            .slots
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, s)| s.kind == Kind::Sidecar)
            .filter_map(|(i, s)| s.running.as_ref().map(|r| (i, r.id.clone())))
            .collect();
        for (i, id) in sidecars {
            let left = deadline.saturating_duration_since(Instant::now());
            self.kill_slot(i, &id, left.max(hooks::MIN_GRACE)).await;
        }
        // Whatever is left (the sandbox; containers this worker did not start).
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = self.rt.stop_pod(&uid, left).await {
            tracing::warn!(pod = %self.name(), error = %e, "stopping the pod");
        }
        for i in 0..self.slots.len() {
            if let Some(r) = self.slots[i].running.take() {
                let exit = self
                    .rt
                    .wait_container(&r.id, Duration::from_millis(100))
                    .await;
                self.slots[i].last = Some(self.exit_state(i, &r, exit.as_ref()));
            }
            let slot = &mut self.slots[i];
            slot.done = true;
            slot.ready = false;
            slot.waiting = None;
        }
        if let Err(e) = self.rt.remove_pod(&uid).await {
            tracing::warn!(pod = %self.name(), error = %e, "removing the pod");
        }
        self.sandbox = None;
    }

    /// Run slot `i`'s postStart hook for its new container `id`; the failure message if it
    /// failed. Gives up (as a success: the pod is being stopped anyway) when the worker is
    /// told to stop.
    pub(super) async fn post_start(
        &mut self,
        i: usize,
        id: &str,
        sandbox: &Sandbox,
    ) -> Option<String> {
        let spec = self.slots[i].spec.clone();
        let hook = match hooks::post_start(&spec)? {
            Ok(h) => h,
            Err(e) => return Some(e),
        };
        let pod = hooks::pod_desc(&self.pod);
        let target = Target {
            rt: &self.rt,
            id,
            container: &spec.name,
            pod: &pod,
            pod_ip: sandbox.ip(),
        };
        let mut stop = self.stop.clone();
        // Upstream gives postStart no time limit; a day stands in for none.
        let limit = Duration::from_secs(24 * 3600);
        tokio::select! {
            r = hooks::run(&target, &hook, limit) => r.err(),
            _ = stop.wait_for(|s| *s) => None,
        }
    }
}
