//! Job: run pods to `completions` successes with at most `parallelism` active, give up after
//! `backoffLimit` failures or `activeDeadlineSeconds`, honour `suspend`, and delete finished
//! Jobs `ttlSecondsAfterFinished` after they end. Pods carry upstream's labels
//! `batch.kubernetes.io/job-name` and `batch.kubernetes.io/controller-uid`.
//!
//! Upstream's 1.37 features on top: `completionMode: Indexed` (each pod gets an index in the
//! `batch.kubernetes.io/job-completion-index` annotation and label, `JOB_COMPLETION_INDEX`
//! from the label by the downward API, hostname `<job>-<index>`, name `<job>-<index>-xxxxx`;
//! `status.completedIndexes` as "0-2,5"), `podFailurePolicy` (FailJob / FailIndex / Ignore /
//! Count on exit codes or pod conditions), `backoffLimitPerIndex` + `maxFailedIndexes`
//! (`status.failedIndexes`), `successPolicy`, and `podReplacementPolicy`. A Job ends in two
//! steps as upstream: `FailureTarget` / `SuccessCriteriaMet` first (active pods are then
//! deleted), `Failed` / `Complete` once no pod is still terminating (`status.terminating`).
//! Events as upstream's: `SuccessfulCreate`/`FailedCreate`/`SuccessfulDelete` per pod,
//! `Suspended`, `Resumed`, `Completed`, and the failure reason (`BackoffLimitExceeded`, ...)
//! as a warning. Failed pods are replaced after upstream's backoff: 10 s, doubling with each
//! failure since the last success up to 6 min (per index with `backoffLimitPerIndex`).

mod backoff;
mod indexes;
mod policy;

use std::sync::Arc;
use std::time::Duration;

use futures::{stream, StreamExt};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobSpec};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::ResourceExt;
use serde_json::json;

use crate::informers::{wait_synced, Index};
use crate::replicaset::pod_from_template;
use crate::util::{controlled_by, controller_ref, is_ready};
use crate::{api_err, error_policy, Ctx, ReconcileError};

pub use indexes::{Intervals, COMPLETION_INDEX, COMPLETION_INDEX_ENV};
pub use policy::{match_pod_failure, match_success, Verdict};

pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";

pub async fn run(ctx: Arc<Ctx>, shutdown: component::CancellationToken) {
    let jobs = ctx.owners::<Job>();
    let pods = ctx.pods();
    if !wait_synced(&shutdown, async {
        jobs.synced().await;
        pods.synced().await;
    })
    .await
    {
        return;
    }
    Controller::for_shared_stream(jobs.subscribe(), jobs.store())
        .owns_shared_stream(pods.subscribe())
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

fn is_finished(p: &Pod) -> bool {
    matches!(phase(p), "Succeeded" | "Failed")
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

/// How many pods should be active now.
pub fn wanted_active(completions: Option<i32>, parallelism: i32, c: &Counts) -> i32 {
    match completions {
        Some(n) => parallelism.min((n - c.succeeded).max(0)),
        // Work-queue jobs: after the first success, leave what runs running, start nothing.
        None if c.succeeded > 0 => c.active,
        None => parallelism,
    }
}

/// How a Job ends: `Failure` becomes FailureTarget then Failed, `Success` SuccessCriteriaMet
/// then Complete, each with the same reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ending {
    Failure { reason: String, message: String },
    Success { reason: String, message: String },
}

fn condition(job: &Job, type_: &str) -> Option<JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_ && c.status == "True")
        .cloned()
}

fn new_condition(type_: &str, status: &str, reason: &str, message: &str) -> JobCondition {
    let now = Time(Timestamp::now());
    JobCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

/// Upstream's `ensureJobConditionStatus`: add the condition, or change it when its status
/// differs; returns whether anything changed.
fn ensure_condition(
    conds: &mut Vec<JobCondition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
) -> bool {
    match conds.iter_mut().find(|c| c.type_ == type_) {
        Some(c) if c.status == status => false,
        Some(c) => {
            *c = new_condition(type_, status, reason, message);
            true
        }
        None if status == "False" => false,
        None => {
            conds.push(new_condition(type_, status, reason, message));
            true
        }
    }
}

/// A pod's failure as the pod failure policy sees it (`None`: no policy or no rule matched).
fn verdict(spec: &JobSpec, pod: &Pod) -> Option<Verdict> {
    spec.pod_failure_policy
        .as_ref()
        .and_then(|pfp| match_pod_failure(pfp, pod))
}

/// Whether a failed pod fails its index for good (upstream's `isIndexFailed`).
fn index_failed(spec: &JobSpec, per_index: i32, pod: &Pod) -> bool {
    match verdict(spec, pod) {
        Some(Verdict::FailIndex) => true,
        Some(Verdict::Ignore) => false,
        _ => indexes::failure_counts(pod).0 >= per_index,
    }
}

/// The latest failed pod of an index: the one with the most failures before it.
fn last_failed<'a>(failed_of_index: &[&'a Pod]) -> Option<&'a Pod> {
    failed_of_index.iter().copied().max_by_key(|p| {
        let (c, i) = indexes::failure_counts(p);
        (c + i, p.metadata.creation_timestamp.as_ref().map(|t| t.0))
    })
}

/// The failure-count annotations for a replacement pod of an index: the previous pod's
/// counts plus its own failure (upstream's `getNewIndexFailureCounts`).
fn next_failure_counts(spec: &JobSpec, failed_of_index: &[&Pod]) -> (i32, i32) {
    match last_failed(failed_of_index) {
        None => (0, 0),
        Some(p) => {
            let (c, i) = indexes::failure_counts(p);
            if verdict(spec, p).is_none_or(|v| v.counts()) {
                (c + 1, i)
            } else {
                (c, i + 1)
            }
        }
    }
}

/// An event about `job`, as upstream's job controller records them (`kubectl describe job`):
/// pods created and deleted, the Job suspended, resumed, completed or failed.
fn event(ctx: &Ctx, job: &Job, ty: &str, reason: &str, message: String) {
    let regarding = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: Some(job.name_any()),
        namespace: job.namespace(),
        uid: job.uid(),
        ..Default::default()
    };
    crate::events::spawn_event(
        &ctx.client,
        "job-controller",
        regarding,
        ty,
        reason,
        message,
    );
}

/// Least valuable first: not ready before ready, pending before running, newer before older.
fn removal_rank(p: &Pod) -> (bool, bool, std::cmp::Reverse<Option<Timestamp>>) {
    (
        is_ready(p),
        phase(p) == "Running",
        std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)),
    )
}

async fn delete_pods(ctx: &Ctx, job: &Job, uid: &str, api: &Api<Pod>, pods: &[&Pod]) -> i32 {
    let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    ctx.expectations
        .expect_deletions(uid, names.iter().cloned());
    let results: Vec<(bool, String)> = stream::iter(names)
        .map(|name| {
            let api = api.clone();
            async move {
                let ok = match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => true,
                    Err(kube::Error::Api(e)) if e.code == 404 => true,
                    Err(e) => {
                        tracing::warn!(pod = %name, error = %e, "deleting job pod");
                        false
                    }
                };
                // only an accepted delete will show in the cache
                (ok, name)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut deleted = 0;
    for (ok, name) in results {
        if ok {
            deleted += 1;
            event(
                ctx,
                job,
                "Normal",
                "SuccessfulDelete",
                format!("Deleted pod: {name}"),
            );
        } else {
            ctx.expectations.deletion_observed(uid, &name);
        }
    }
    deleted
}

/// The pod for one completion index (`None`: a NonIndexed pod).
fn job_pod(
    job: &Job,
    spec: &JobSpec,
    ix: Option<i32>,
    failure_counts: (i32, i32),
    owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> Pod {
    let name = job.name_any();
    let ns = job.namespace().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let mut template = spec.template.clone();
    let meta = template.metadata.get_or_insert_with(Default::default);
    let labels = meta.labels.get_or_insert_with(Default::default);
    labels.insert(JOB_NAME_LABEL.into(), name.clone());
    labels.insert(CONTROLLER_UID_LABEL.into(), uid);
    labels.insert("job-name".into(), name.clone());
    let Some(ix) = ix else {
        return pod_from_template(&template, &ns, &name, owner.clone());
    };
    labels.insert(COMPLETION_INDEX.into(), ix.to_string());
    let annotations = meta.annotations.get_or_insert_with(Default::default);
    annotations.insert(COMPLETION_INDEX.into(), ix.to_string());
    if spec.backoff_limit_per_index.is_some() {
        annotations.insert(
            indexes::INDEX_FAILURE_COUNT.into(),
            failure_counts.0.to_string(),
        );
        if failure_counts.1 > 0 {
            annotations.insert(
                indexes::INDEX_IGNORED_FAILURE_COUNT.into(),
                failure_counts.1.to_string(),
            );
        }
    }
    if let Some(pod_spec) = template.spec.as_mut() {
        pod_spec.hostname = Some(format!("{name}-{ix}"));
        // Upstream (PodIndexLabel, GA) reads the index from the label.
        let env = EnvVar {
            name: COMPLETION_INDEX_ENV.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: format!("metadata.labels['{COMPLETION_INDEX}']"),
                    api_version: None,
                }),
                ..Default::default()
            }),
            value: None,
        };
        let inits = pod_spec.init_containers.iter_mut().flatten();
        for c in pod_spec.containers.iter_mut().chain(inits) {
            let vars = c.env.get_or_insert_with(Vec::new);
            if !vars.iter().any(|v| v.name == COMPLETION_INDEX_ENV) {
                vars.push(env.clone());
            }
        }
    }
    let prefix = indexes::generate_name(&name, ix);
    pod_from_template(&template, &ns, prefix.trim_end_matches('-'), owner.clone())
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    if job.metadata.deletion_timestamp.is_some() {
        ctx.expectations.forget(&uid);
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
    if spec
        .completion_mode
        .as_deref()
        .is_some_and(|m| m != "Indexed" && m != "NonIndexed")
    {
        // Upstream skips (with an event) a Job whose completion mode it does not know.
        return Ok(Action::await_change());
    }

    // Pods from the shared cache; while this job's creates or deletes are not all in it,
    // none are added or removed (upstream's expectations), or the lag would make it
    // create the same missing pods twice. Expectations first, then the cache (see
    // replicaset::sync_replicas).
    let settled = ctx.expectations.satisfied(&uid);
    let pods: Vec<Pod> = ctx
        .pods()
        .by(Index::Controller, &uid)
        .iter()
        .filter(|p| controlled_by(&p.metadata, &uid))
        .map(|p| p.as_ref().clone())
        .collect();
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions.unwrap_or(0);
    let per_index = spec.backoff_limit_per_index.filter(|_| indexed);
    let backoff_limit =
        spec.backoff_limit
            .unwrap_or(if per_index.is_some() { i32::MAX } else { 6 });
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let suspended = spec.suspend.unwrap_or(false);
    // With a pod failure policy upstream only allows "Failed": a pod is replaced once it has
    // failed, not while it is still terminating.
    let replace_only_failed = spec.pod_replacement_policy.as_deref() == Some("Failed")
        || spec.pod_failure_policy.is_some();
    let prev = job.status.clone().unwrap_or_default();
    let start = prev.start_time.as_ref().map(|t| t.0);

    let mut active: Vec<&Pod> = pods
        .iter()
        .filter(|p| !is_finished(p) && p.metadata.deletion_timestamp.is_none())
        .collect();
    let terminating_pods: Vec<&Pod> = pods
        .iter()
        .filter(|p| !is_finished(p) && p.metadata.deletion_timestamp.is_some())
        .collect();
    let failed_pods: Vec<&Pod> = pods.iter().filter(|p| phase(p) == "Failed").collect();
    let failed = failed_pods
        .iter()
        .filter(|p| verdict(&spec, p).is_none_or(|v| v.counts()))
        .count() as i32;

    // Indexed: what succeeded (and, per index, failed) is kept in the status, so pods that
    // are gone still count.
    let succeeded_ix =
        Intervals::parse(prev.completed_indexes.as_deref().unwrap_or(""), completions).with(
            pods.iter()
                .filter(|p| phase(p) == "Succeeded")
                .filter_map(|p| indexes::pod_index(p, completions)),
        );
    let failed_ix = per_index.map(|limit| {
        Intervals::parse(prev.failed_indexes.as_deref().unwrap_or(""), completions).with(
            failed_pods
                .iter()
                .filter(|p| index_failed(&spec, limit, p))
                .filter_map(|p| indexes::pod_index(p, completions)),
        )
    });
    let succeeded = if indexed {
        succeeded_ix.total()
    } else {
        pods.iter().filter(|p| phase(p) == "Succeeded").count() as i32
    };

    // Upstream's order: an ending already recorded, a FailJob rule, backoffLimit, the
    // deadline, then (Indexed) failed indexes and the success policy.
    let recorded = |type_: &str| {
        condition(&job, type_)
            .map(|c| (c.reason.unwrap_or_default(), c.message.unwrap_or_default()))
    };
    let mut ending =
        recorded("SuccessCriteriaMet").map(|(reason, message)| Ending::Success { reason, message });
    if ending.is_none() {
        ending = recorded("FailureTarget")
            .map(|(reason, message)| Ending::Failure { reason, message })
            .or_else(|| {
                failed_pods.iter().find_map(|p| match verdict(&spec, p) {
                    Some(Verdict::FailJob(message)) => Some(Ending::Failure {
                        reason: "PodFailurePolicy".into(),
                        message,
                    }),
                    _ => None,
                })
            });
    }
    let fail = |reason: &str, message: &str| Ending::Failure {
        reason: reason.into(),
        message: message.into(),
    };
    if ending.is_none() {
        if failed > backoff_limit {
            ending = Some(fail(
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ));
        } else if let (Some(deadline), Some(started), false) =
            (spec.active_deadline_seconds, start, suspended)
        {
            if now - started.as_second() >= deadline {
                ending = Some(fail(
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                ));
            }
        }
    }
    if indexed && ending.is_none() {
        if let Some(fi) = &failed_ix {
            if spec.max_failed_indexes.is_some_and(|max| fi.total() > max) {
                ending = Some(fail(
                    "MaxFailedIndexesExceeded",
                    "Job has exceeded the specified maximal number of failed indexes",
                ));
            } else if fi.total() > 0 && fi.total() + succeeded >= completions {
                ending = Some(fail("FailedIndexes", "Job has failed indexes"));
            }
        }
        if ending.is_none() {
            if let Some(message) = spec
                .success_policy
                .as_ref()
                .and_then(|sp| match_success(sp, completions, &succeeded_ix))
            {
                ending = Some(Ending::Success {
                    reason: "SuccessPolicy".into(),
                    message,
                });
            }
        }
    }

    let mut conditions = prev.conditions.clone().unwrap_or_default();
    let mut start_time = start.is_none().then_some(Timestamp::now());
    let mut deleted = 0;
    let mut created = 0;
    let mut deleted_all = true;
    // Set when failed pods' replacements wait for their backoff.
    let mut backing_off: Option<Duration> = None;
    if ending.is_some() {
        deleted = delete_pods(&ctx, &job, &uid, &pods_api, &active).await;
        deleted_all = deleted == active.len() as i32;
        active.clear();
    } else if suspended {
        deleted = delete_pods(&ctx, &job, &uid, &pods_api, &active).await;
        active.clear();
        if ensure_condition(
            &mut conditions,
            "Suspended",
            "True",
            "JobSuspended",
            "Job suspended",
        ) {
            event(&ctx, &job, "Normal", "Suspended", "Job suspended".into());
        }
        start_time = None;
    } else {
        if ensure_condition(
            &mut conditions,
            "Suspended",
            "False",
            "JobResumed",
            "Job resumed",
        ) {
            // The deadline counts from the resume, as upstream.
            start_time = Some(Timestamp::now());
            event(&ctx, &job, "Normal", "Resumed", "Job resumed".into());
        }
        let counts = Counts {
            active: active.len() as i32,
            succeeded,
            failed,
        };
        let want = wanted_active(spec.completions, parallelism, &counts);
        // Pods without a valid index, or a second pod of one index, go first.
        let mut remove: Vec<&Pod> = Vec::new();
        if indexed {
            let by_ix = indexes::by_index(&active, completions);
            remove.extend(
                active
                    .iter()
                    .filter(|p| indexes::pod_index(p, completions).is_none()),
            );
            for mut same in by_ix.into_values().filter(|v| v.len() > 1) {
                same.sort_by_key(|p| removal_rank(p));
                same.pop();
                remove.extend(same);
            }
        }
        let mut left: Vec<&Pod> = active
            .iter()
            .copied()
            .filter(|p| !remove.iter().any(|r| std::ptr::eq(*r, *p)))
            .collect();
        let excess = left.len() as i32 - want;
        if excess > 0 {
            left.sort_by_key(|p| removal_rank(p));
            remove.extend(left.drain(..excess as usize));
        }
        if !settled {
            tracing::debug!(job = %format!("{ns}/{name}"), "waiting for the pod cache to show earlier creates and deletes");
        } else if !remove.is_empty() {
            // As upstream: a sync either deletes or creates, never both.
            deleted = delete_pods(&ctx, &job, &uid, &pods_api, &remove).await;
            active = left;
        } else {
            let waiting = if replace_only_failed {
                terminating_pods.len() as i32
            } else {
                0
            };
            let missing = want - waiting - active.len() as i32;
            let global_backoff = if missing > 0 && per_index.is_none() {
                backoff::job_remaining(&pods, Timestamp::now())
            } else {
                Duration::ZERO
            };
            if !global_backoff.is_zero() {
                backing_off = Some(global_backoff);
            } else if missing > 0 {
                let owner = controller_ref(job.as_ref());
                let new_pods: Vec<Pod> = if indexed {
                    let mut taken = succeeded_ix.with(
                        active
                            .iter()
                            .filter_map(|p| indexes::pod_index(p, completions)),
                    );
                    if replace_only_failed {
                        taken = taken.with(
                            terminating_pods
                                .iter()
                                .filter_map(|p| indexes::pod_index(p, completions)),
                        );
                    }
                    if let Some(fi) = &failed_ix {
                        taken = taken.union(fi);
                    }
                    let now = Timestamp::now();
                    let mut out = Vec::new();
                    for ix in taken.first_missing(missing as usize, completions) {
                        let of_ix: Vec<&Pod> = failed_pods
                            .iter()
                            .copied()
                            .filter(|p| indexes::pod_index(p, completions) == Some(ix))
                            .collect();
                        if per_index.is_some() {
                            let wait = backoff::index_remaining(last_failed(&of_ix), now);
                            if !wait.is_zero() {
                                backing_off = Some(backing_off.map_or(wait, |b| b.min(wait)));
                                continue;
                            }
                        }
                        let counts = next_failure_counts(&spec, &of_ix);
                        out.push(job_pod(&job, &spec, Some(ix), counts, &owner));
                    }
                    out
                } else {
                    (0..missing)
                        .map(|_| job_pod(&job, &spec, None, (0, 0), &owner))
                        .collect()
                };
                ctx.expectations.expect_creations(&uid, new_pods.len());
                let results: Vec<Result<Pod, kube::Error>> = stream::iter(new_pods)
                    .map(|pod| {
                        let api = pods_api.clone();
                        async move { api.create(&PostParams::default(), &pod).await }
                    })
                    .buffer_unordered(8)
                    .collect()
                    .await;
                let mut first_err = None;
                for r in results {
                    match r {
                        Ok(pod) => {
                            created += 1;
                            let msg = format!("Created pod: {}", pod.name_any());
                            event(&ctx, &job, "Normal", "SuccessfulCreate", msg);
                        }
                        Err(e) => {
                            ctx.expectations.creation_observed(&uid);
                            let msg = format!("Error creating: {}", crate::events::error_text(&e));
                            event(&ctx, &job, "Warning", "FailedCreate", msg);
                            first_err.get_or_insert(e);
                        }
                    }
                }
                if let Some(e) = first_err {
                    return Err(api_err(format!("creating pods for job {ns}/{name}"))(e));
                }
            }
        }
        let complete = match spec.completions {
            Some(n) => succeeded >= n && active.is_empty(),
            None => succeeded > 0 && active.is_empty(),
        };
        if complete {
            ending = Some(Ending::Success {
                reason: "CompletionsReached".into(),
                message: "Reached expected number of succeeded pods".into(),
            });
        }
    }
    let terminating = terminating_pods.len() as i32 + deleted;

    let mut completion_time = None;
    let mut pending_end = false;
    match &ending {
        Some(Ending::Failure { reason, message }) => {
            ensure_condition(&mut conditions, "FailureTarget", "True", reason, message);
            if terminating == 0 && deleted_all {
                if ensure_condition(&mut conditions, "Failed", "True", reason, message) {
                    event(&ctx, &job, "Warning", reason, message.clone());
                }
            } else {
                pending_end = true;
            }
        }
        Some(Ending::Success { reason, message }) => {
            ensure_condition(
                &mut conditions,
                "SuccessCriteriaMet",
                "True",
                reason,
                message,
            );
            if terminating == 0 && deleted_all {
                if ensure_condition(&mut conditions, "Complete", "True", reason, message) {
                    event(&ctx, &job, "Normal", "Completed", "Job completed".into());
                }
                completion_time = Some(Timestamp::now());
            } else {
                pending_end = true;
            }
        }
        None => {}
    }

    let ready = active.iter().filter(|p| is_ready(p)).count() as i32;
    let mut status = json!({
        "active": active.len() as i32 + created,
        "ready": ready,
        "terminating": terminating,
        "succeeded": succeeded,
        "failed": failed,
    });
    if !conditions.is_empty() {
        status["conditions"] = json!(conditions);
    }
    if indexed {
        status["completedIndexes"] = json!(succeeded_ix.to_string());
    }
    if let Some(fi) = &failed_ix {
        status["failedIndexes"] = json!(fi.to_string());
    }
    if let Some(t) = start_time.filter(|_| !suspended) {
        status["startTime"] = json!(Time(t));
    }
    if let Some(t) = completion_time {
        status["completionTime"] = json!(Time(t));
    }
    let before = serde_json::to_value(&prev).unwrap_or_default();
    let changed = status
        .as_object()
        .is_some_and(|m| m.iter().any(|(k, v)| before.get(k) != Some(v)));
    if changed {
        jobs.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await
        .map_err(api_err(format!("updating status of job {ns}/{name}")))?;
    }
    let next = if pending_end {
        // Waiting for deleted pods to go; their deletion also wakes us.
        Duration::from_secs(1)
    } else if spec.active_deadline_seconds.is_some() {
        // Deadlines need a clock tick even when nothing changes.
        Duration::from_secs(1)
    } else {
        Duration::from_secs(60)
    };
    // A replacement held back by its backoff is due when the backoff ends.
    Ok(Action::requeue(
        backing_off.map_or(next, |b| next.min(b + Duration::from_millis(50))),
    ))
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
        assert_eq!(wanted_active(None, 2, &c(1, 1, 0)), 1);
        assert_eq!(wanted_active(None, 2, &c(0, 1, 0)), 0);
    }

    #[test]
    fn conditions_change_only_when_their_status_does() {
        let mut conds = Vec::new();
        assert!(!ensure_condition(
            &mut conds,
            "Suspended",
            "False",
            "JobResumed",
            "Job resumed"
        ));
        assert!(ensure_condition(
            &mut conds,
            "Suspended",
            "True",
            "JobSuspended",
            "Job suspended"
        ));
        assert!(!ensure_condition(
            &mut conds,
            "Suspended",
            "True",
            "JobSuspended",
            "Job suspended"
        ));
        assert!(ensure_condition(
            &mut conds,
            "Suspended",
            "False",
            "JobResumed",
            "Job resumed"
        ));
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].reason.as_deref(), Some("JobResumed"));
    }

    fn pod(annotations: serde_json::Value, status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "annotations": annotations},
            "status": status,
        }))
        .expect("pod")
    }

    #[test]
    fn index_failure_counts_carry_over_to_the_replacement() {
        let spec: JobSpec = serde_json::from_value(json!({
            "template": {},
            "backoffLimitPerIndex": 1,
            "podFailurePolicy": {"rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                {"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [7]}},
            ]},
        }))
        .expect("spec");
        let first = pod(
            json!({(indexes::INDEX_FAILURE_COUNT): "0"}),
            json!({"phase": "Failed"}),
        );
        assert_eq!(next_failure_counts(&spec, &[&first]), (1, 0));
        assert!(!index_failed(&spec, 1, &first));
        let second = pod(
            json!({(indexes::INDEX_FAILURE_COUNT): "1"}),
            json!({"phase": "Failed"}),
        );
        assert!(index_failed(&spec, 1, &second), "the retry failed too");
        let evicted = pod(
            json!({(indexes::INDEX_FAILURE_COUNT): "1"}),
            json!({"phase": "Failed", "conditions": [{"type": "DisruptionTarget", "status": "True"}]}),
        );
        assert!(
            !index_failed(&spec, 1, &evicted),
            "ignored failures do not count"
        );
        assert_eq!(next_failure_counts(&spec, &[&first, &evicted]), (1, 1));
        let fail_index = pod(
            json!({}),
            json!({"phase": "Failed", "containerStatuses": [{"name": "c", "image": "i", "imageID": "",
                "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 7}}}]}),
        );
        assert!(
            index_failed(&spec, 1, &fail_index),
            "FailIndex fails it at once"
        );
        assert_eq!(next_failure_counts(&spec, &[]), (0, 0));
    }
}
