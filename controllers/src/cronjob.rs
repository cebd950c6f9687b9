//! CronJob: create a Job for each scheduled time (in `spec.timeZone`, default UTC), named
//! `<cronjob>-<scheduled minutes since the epoch>` as upstream does so a repeat is harmless,
//! honouring `suspend`, `startingDeadlineSeconds`, `concurrencyPolicy` (Allow, Forbid,
//! Replace) and the history limits; status carries active jobs and the last schedule and
//! success times.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::ResourceExt;
use serde_json::json;

use crate::informers::{wait_synced, Index};
use crate::util::{controlled_by, controller_ref};
use crate::{api_err, error_policy, Ctx, ReconcileError};
use component::cron::Schedule;

pub async fn run(ctx: Arc<Ctx>, shutdown: component::CancellationToken) {
    let cronjobs = ctx.informers.get::<CronJob>();
    let jobs = ctx.informers.get::<Job>();
    if !wait_synced(&shutdown, async {
        cronjobs.synced().await;
        jobs.synced().await;
    })
    .await
    {
        return;
    }
    Controller::for_shared_stream(cronjobs.subscribe(), cronjobs.store())
        .owns_shared_stream(jobs.subscribe())
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

fn job_finished(j: &Job) -> Option<(bool, Timestamp)> {
    j.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find_map(|c| {
            (c.status == "True" && (c.type_ == "Complete" || c.type_ == "Failed")).then(|| {
                let at = c
                    .last_transition_time
                    .as_ref()
                    .map_or(Timestamp::UNIX_EPOCH, |t| {
                        Timestamp::from_second(t.0.as_second()).unwrap_or(Timestamp::UNIX_EPOCH)
                    });
                (c.type_ == "Complete", at)
            })
        })
}

/// The run due now, if any: the most recent scheduled time after `last` that is not past
/// the starting deadline.
pub fn due(
    schedule: &Schedule,
    tz: &TimeZone,
    last: Timestamp,
    now: Timestamp,
    starting_deadline: Option<i64>,
) -> Option<Timestamp> {
    let (latest, _missed) = schedule.most_recent(last, now, tz);
    let t = latest?;
    match starting_deadline {
        Some(d) if now.as_second() - t.as_second() > d => None,
        _ => Some(t),
    }
}

async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = cj.namespace().unwrap_or_default();
    let name = cj.name_any();
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = cj.spec.clone();
    let schedule = Schedule::parse(&spec.schedule)
        .map_err(|e| ReconcileError::Invalid(format!("cronjob {ns}/{name}: {e}")))?;
    let tz = match spec.time_zone.as_deref() {
        None | Some("") => TimeZone::UTC,
        Some(z) => TimeZone::get(z).map_err(|e| {
            ReconcileError::Invalid(format!("cronjob {ns}/{name}: time zone {z:?}: {e}"))
        })?,
    };
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let cj_api: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
    // Jobs from the shared cache: a job made by an earlier reconcile and not in it yet has
    // its schedule's fixed name, so making it again is a harmless 409.
    let mut jobs: Vec<Job> = ctx
        .informers
        .get::<Job>()
        .by(Index::Controller, &uid)
        .iter()
        .filter(|j| controlled_by(&j.metadata, &uid))
        .map(|j| j.as_ref().clone())
        .collect();
    jobs.sort_by_key(|j| {
        j.metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second())
    });

    let now = Timestamp::now();
    let to_ts = |t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time| {
        Timestamp::from_second(t.0.as_second()).unwrap_or(now)
    };
    let last = cj
        .status
        .as_ref()
        .and_then(|s| s.last_schedule_time.as_ref())
        .or(cj.metadata.creation_timestamp.as_ref())
        .map_or(now, to_ts);

    let mut active: Vec<&Job> = jobs
        .iter()
        .filter(|j| job_finished(j).is_none() && j.metadata.deletion_timestamp.is_none())
        .collect();
    let mut scheduled = None;
    if !spec.suspend.unwrap_or(false) {
        if let Some(t) = due(&schedule, &tz, last, now, spec.starting_deadline_seconds) {
            let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
            let blocked = policy == "Forbid" && !active.is_empty();
            if !blocked {
                if policy == "Replace" {
                    for j in &active {
                        let _ = jobs_api
                            .delete(&j.name_any(), &DeleteParams::background())
                            .await;
                    }
                    active.clear();
                }
                let template = spec.job_template.clone();
                let meta = template.metadata.clone().unwrap_or_default();
                let job_name = format!("{name}-{}", t.as_second() / 60);
                let mut annotations = meta.annotations.clone().unwrap_or_default();
                annotations.insert(
                    "batch.kubernetes.io/cronjob-scheduled-timestamp".into(),
                    t.to_string(),
                );
                let job = Job {
                    metadata: ObjectMeta {
                        name: Some(job_name.clone()),
                        namespace: Some(ns.clone()),
                        labels: meta.labels.clone(),
                        annotations: Some(annotations),
                        owner_references: Some(vec![controller_ref(cj.as_ref())]),
                        ..Default::default()
                    },
                    spec: template.spec.clone(),
                    status: None,
                };
                match jobs_api.create(&PostParams::default(), &job).await {
                    Ok(_) => {
                        tracing::info!(cronjob = %format!("{ns}/{name}"), job = %job_name, scheduled = %t, "created job");
                        let msg = format!("Created job {job_name}");
                        event(&ctx, &cj, "Normal", "SuccessfulCreate", msg);
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => {
                        return Err(api_err(format!(
                            "creating job {job_name} for cronjob {ns}/{name}"
                        ))(e))
                    }
                }
                scheduled = Some(t);
            } else {
                tracing::info!(cronjob = %format!("{ns}/{name}"), "skipping a run: concurrencyPolicy Forbid and a job is still active");
            }
        }
    }

    // History limits: oldest finished jobs beyond the limits go.
    let keep_ok = spec.successful_jobs_history_limit.unwrap_or(3).max(0) as usize;
    let keep_failed = spec.failed_jobs_history_limit.unwrap_or(1).max(0) as usize;
    let ok: Vec<&Job> = jobs
        .iter()
        .filter(|j| job_finished(j).is_some_and(|(c, _)| c))
        .collect();
    let failed: Vec<&Job> = jobs
        .iter()
        .filter(|j| job_finished(j).is_some_and(|(c, _)| !c))
        .collect();
    for (list, keep) in [(ok.clone(), keep_ok), (failed, keep_failed)] {
        if list.len() > keep {
            for j in &list[..list.len() - keep] {
                let deleted = jobs_api
                    .delete(&j.name_any(), &DeleteParams::background())
                    .await;
                if deleted.is_ok() {
                    let msg = format!("Deleted job {}", j.name_any());
                    event(&ctx, &cj, "Normal", "SuccessfulDelete", msg);
                }
            }
        }
    }

    // a job the status still lists as active that has finished: upstream's SawCompletedJob
    let was_active: Vec<String> = cj
        .status
        .as_ref()
        .and_then(|s| s.active.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|r| r.uid.clone())
        .collect();
    for j in &jobs {
        let listed = j
            .metadata
            .uid
            .as_ref()
            .is_some_and(|u| was_active.contains(u));
        if let (true, Some((complete, _))) = (listed, job_finished(j)) {
            let condition = if complete { "Complete" } else { "Failed" };
            let msg = format!(
                "Saw completed job: {}, condition: {condition}",
                j.name_any()
            );
            event(&ctx, &cj, "Normal", "SawCompletedJob", msg);
        }
    }
    let last_success = ok
        .iter()
        .filter_map(|j| job_finished(j).map(|(_, at)| at))
        .max();
    let active_refs: Vec<_> = active
        .iter()
        .map(|j| json!({"apiVersion": "batch/v1", "kind": "Job", "name": j.name_any(), "namespace": ns, "uid": j.metadata.uid}))
        .collect();
    let mut status = json!({"active": active_refs});
    if let Some(t) = scheduled {
        status["lastScheduleTime"] = json!(t.to_string());
    }
    if let Some(t) = last_success {
        status["lastSuccessfulTime"] = json!(t.to_string());
    }
    cj_api
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await
        .map_err(api_err(format!("updating status of cronjob {ns}/{name}")))?;

    let next = schedule
        .next_after(now, &tz)
        .map_or(Duration::from_secs(60), |n| {
            Duration::from_secs((n.as_second() - now.as_second()).max(1) as u64)
        });
    Ok(Action::requeue(next))
}

/// An event about `cj`, as upstream's cronjob controller records them.
fn event(ctx: &Ctx, cj: &CronJob, ty: &str, reason: &str, message: String) {
    crate::events::spawn_event_about(&ctx.client, "cronjob-controller", cj, ty, reason, message);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn due_runs_with_a_controllable_clock() {
        let s = Schedule::parse("*/1 * * * *").expect("valid");
        let created = ts("2026-11-25T10:00:20Z");
        assert_eq!(
            due(
                &s,
                &TimeZone::UTC,
                created,
                ts("2026-11-25T10:00:59Z"),
                None
            ),
            None,
            "nothing due within the first minute"
        );
        assert_eq!(
            due(
                &s,
                &TimeZone::UTC,
                created,
                ts("2026-11-25T10:01:02Z"),
                None
            ),
            Some(ts("2026-11-25T10:01:00Z"))
        );
        // After a 10-minute outage only the latest run is made, and a starting deadline can
        // rule it out.
        assert_eq!(
            due(
                &s,
                &TimeZone::UTC,
                created,
                ts("2026-11-25T10:10:30Z"),
                None
            ),
            Some(ts("2026-11-25T10:10:00Z"))
        );
        assert_eq!(
            due(
                &s,
                &TimeZone::UTC,
                created,
                ts("2026-11-25T10:10:30Z"),
                Some(10)
            ),
            None
        );
    }
}
