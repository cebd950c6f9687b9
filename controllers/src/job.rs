//! Job: run pods to `completions` successes with at most `parallelism` active, give up after
//! `backoffLimit` failures or `activeDeadlineSeconds`, honour `suspend`, and delete finished
//! Jobs `ttlSecondsAfterFinished` after they end. Pods carry upstream's labels
//! `batch.kubernetes.io/job-name` and `batch.kubernetes.io/controller-uid`.

use std::sync::Arc;
use std::time::Duration;

use futures::{stream, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;

use crate::replicaset::pod_from_template;
use crate::util::{controlled_by, controller_ref};
use crate::{api_err, error_policy, Ctx, ReconcileError};

pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";

pub async fn run(ctx: Arc<Ctx>, shutdown: component::CancellationToken) {
    let client = ctx.client.clone();
    Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Pod>::all(client), watcher::Config::default())
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

fn finished(job: &Job) -> Option<(&'static str, i64)> {
    let status = job.status.as_ref()?;
    for c in status.conditions.iter().flatten() {
        if c.status == "True" && (c.type_ == "Complete" || c.type_ == "Failed") {
            let at = c
                .last_transition_time
                .as_ref()
                .map_or(0, |t| t.0.as_second());
            return Some((
                if c.type_ == "Complete" {
                    "Complete"
                } else {
                    "Failed"
                },
                at,
            ));
        }
    }
    None
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// What the job's pods add up to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub active: i32,
    pub succeeded: i32,
    pub failed: i32,
}

pub fn count(pods: &[Pod]) -> Counts {
    let mut c = Counts::default();
    for p in pods {
        match phase(p) {
            "Succeeded" => c.succeeded += 1,
            "Failed" => c.failed += 1,
            _ if p.metadata.deletion_timestamp.is_none() => c.active += 1,
            _ => {}
        }
    }
    c
}

/// How many more pods to start now (negative: how many active to stop).
pub fn wanted_active(completions: Option<i32>, parallelism: i32, c: &Counts) -> i32 {
    match completions {
        Some(n) => parallelism.min((n - c.succeeded).max(0)),
        // Work-queue jobs: keep `parallelism` going until the first success.
        None if c.succeeded > 0 => 0,
        None => parallelism,
    }
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = job.spec.clone().unwrap_or_default();
    let now = Timestamp::now().as_second();

    if let Some((_, at)) = finished(&job) {
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            let due = at + i64::from(ttl);
            if now >= due {
                tracing::info!(job = %format!("{ns}/{name}"), "deleting finished job after ttlSecondsAfterFinished");
                let _ = jobs.delete(&name, &DeleteParams::background()).await;
                return Ok(Action::await_change());
            }
            return Ok(Action::requeue(Duration::from_secs(
                (due - now).max(1) as u64
            )));
        }
        return Ok(Action::await_change());
    }

    let listed = pods_api
        .list(&ListParams::default().labels(&format!("{CONTROLLER_UID_LABEL}={uid}")))
        .await
        .map_err(api_err(format!("listing pods of job {ns}/{name}")))?;
    let pods: Vec<Pod> = listed
        .items
        .into_iter()
        .filter(|p| controlled_by(&p.metadata, &uid))
        .collect();
    let c = count(&pods);
    let start = job
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0);
    let suspended = spec.suspend.unwrap_or(false);
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let parallelism = spec.parallelism.unwrap_or(1).max(0);

    let mut failure: Option<(&str, String)> = None;
    if c.failed > backoff_limit {
        failure = Some((
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit".into(),
        ));
    } else if let (Some(deadline), Some(started)) = (spec.active_deadline_seconds, start) {
        if now - started.as_second() >= deadline {
            failure = Some((
                "DeadlineExceeded",
                "Job was active longer than specified deadline".into(),
            ));
        }
    }
    let complete = failure.is_none()
        && match spec.completions {
            Some(n) => c.succeeded >= n,
            None => c.succeeded > 0 && c.active == 0,
        };

    let active_pods: Vec<&Pod> = pods
        .iter()
        .filter(|p| {
            !matches!(phase(p), "Succeeded" | "Failed") && p.metadata.deletion_timestamp.is_none()
        })
        .collect();
    if failure.is_some() || suspended {
        for p in &active_pods {
            let _ = pods_api
                .delete(&p.name_any(), &DeleteParams::default())
                .await;
        }
    } else if !complete {
        let want = wanted_active(spec.completions, parallelism, &c);
        let missing = want - c.active;
        if missing > 0 {
            let mut template = spec.template.clone();
            let meta = template.metadata.get_or_insert_with(Default::default);
            let labels = meta.labels.get_or_insert_with(Default::default);
            labels.insert(JOB_NAME_LABEL.into(), name.clone());
            labels.insert(CONTROLLER_UID_LABEL.into(), uid.clone());
            labels.insert("job-name".into(), name.clone());
            let owner = controller_ref(job.as_ref());
            let results: Vec<Result<Pod, kube::Error>> = stream::iter(0..missing)
                .map(|_| {
                    let pod = pod_from_template(&template, &ns, &name, owner.clone());
                    let api = pods_api.clone();
                    async move { api.create(&PostParams::default(), &pod).await }
                })
                .buffer_unordered(8)
                .collect()
                .await;
            if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                return Err(api_err(format!("creating pods for job {ns}/{name}"))(e));
            }
        }
    }

    let now_t = Timestamp::now();
    let mut status = json!({
        "active": if failure.is_some() || suspended || complete { 0 } else { c.active },
        "succeeded": c.succeeded,
        "failed": c.failed,
    });
    if start.is_none() && !suspended {
        status["startTime"] = json!(now_t);
    }
    if let Some((reason, message)) = &failure {
        status["conditions"] = json!([
            {"type": "FailureTarget", "status": "True", "reason": reason, "message": message, "lastProbeTime": now_t, "lastTransitionTime": now_t},
            {"type": "Failed", "status": "True", "reason": reason, "message": message, "lastProbeTime": now_t, "lastTransitionTime": now_t},
        ]);
    } else if complete {
        status["completionTime"] = json!(now_t);
        status["conditions"] = json!([
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods", "lastProbeTime": now_t, "lastTransitionTime": now_t},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods", "lastProbeTime": now_t, "lastTransitionTime": now_t},
        ]);
    } else if suspended {
        status["conditions"] = json!([{"type": "Suspended", "status": "True", "reason": "JobSuspended", "message": "Job suspended", "lastProbeTime": now_t, "lastTransitionTime": now_t}]);
    }
    let prev = job.status.clone().unwrap_or_default();
    let changed = prev.active.unwrap_or(0) != status["active"].as_i64().unwrap_or(0) as i32
        || prev.succeeded.unwrap_or(0) != c.succeeded
        || prev.failed.unwrap_or(0) != c.failed
        || status.get("conditions").is_some()
        || status.get("startTime").is_some();
    if changed {
        jobs.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await
        .map_err(api_err(format!("updating status of job {ns}/{name}")))?;
    }
    // Deadlines need a clock tick even when nothing changes.
    Ok(match spec.active_deadline_seconds {
        Some(_) => Action::requeue(Duration::from_secs(1)),
        None => Action::requeue(Duration::from_secs(60)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_target_respects_parallelism_and_completions() {
        let c = |a, s, f| Counts {
            active: a,
            succeeded: s,
            failed: f,
        };
        assert_eq!(wanted_active(Some(3), 2, &c(0, 0, 0)), 2);
        assert_eq!(wanted_active(Some(3), 2, &c(2, 2, 0)), 1);
        assert_eq!(wanted_active(Some(3), 2, &c(0, 3, 0)), 0);
        assert_eq!(wanted_active(None, 2, &c(0, 0, 0)), 2);
        assert_eq!(wanted_active(None, 2, &c(1, 1, 0)), 0);
    }
}
