//! Upstream's delay before a Job replaces failed pods (`backoffRecord` in the job
//! controller): 10 s after a failure, doubling with each further failure since the last
//! success, at most 6 minutes, counted from when the last failed pod finished. With
//! `backoffLimitPerIndex` each index backs off on its own, by its failure count.
//!
//! Upstream keeps the record in memory, fed by the pods whose finalizers it removes; kaze
//! reads it from the pods still in the cache (a failed pod deleted by hand no longer counts).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use super::{indexes, phase};

/// Upstream's `DefaultJobPodFailureBackOff`.
pub const FIRST: Duration = Duration::from_secs(10);
/// Upstream's `MaxJobPodFailureBackOff`.
pub const MAX: Duration = Duration::from_secs(360);

/// When a finished pod finished (upstream's `getFinishedTime`): its containers' last
/// termination, else its Ready condition turning false, else its deletion, else its creation.
pub fn finished_at(p: &Pod) -> Timestamp {
    let status = p.status.as_ref();
    let containers = status
        .into_iter()
        .flat_map(|s| {
            let inits = s.init_container_statuses.iter().flatten();
            s.container_statuses.iter().flatten().chain(inits)
        })
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    let ready_false = || {
        status?
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready" && c.status == "False")?
            .last_transition_time
            .as_ref()
            .map(|t| t.0)
    };
    containers
        .or_else(ready_false)
        .or_else(|| p.metadata.deletion_timestamp.as_ref().map(|t| t.0))
        .or_else(|| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or_else(Timestamp::now)
}

/// Upstream's `getRemainingTimeForFailuresCount`: how long after `last` failure number
/// `failures` still holds replacements back.
pub fn remaining(failures: u32, last: Timestamp, now: Timestamp) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let mut delay = FIRST;
    for _ in 1..failures {
        delay *= 2;
        if delay >= MAX {
            delay = MAX;
            break;
        }
    }
    let elapsed = now.duration_since(last);
    match Duration::try_from(elapsed) {
        Ok(e) => delay.saturating_sub(e),
        // `last` is in the future (clock skew): wait the whole delay, as upstream's
        // `clock.Since` of a later time is negative.
        Err(_) => delay,
    }
}

/// The Job-wide delay: failures since the last success, from the last failure.
pub fn job_remaining(pods: &[Pod], now: Timestamp) -> Duration {
    let last_success = pods
        .iter()
        .filter(|p| phase(p) == "Succeeded")
        .map(finished_at)
        .max();
    let failures: Vec<Timestamp> = pods
        .iter()
        .filter(|p| phase(p) == "Failed")
        .map(finished_at)
        .filter(|t| last_success.is_none_or(|s| *t > s))
        .collect();
    match failures.iter().max() {
        Some(last) => remaining(failures.len() as u32, *last, now),
        None => Duration::ZERO,
    }
}

/// An index's delay (upstream's `getRemainingTimePerIndex`): its last failed pod's failures,
/// counted and ignored, plus that pod's own.
pub fn index_remaining(last_failed: Option<&Pod>, now: Timestamp) -> Duration {
    let Some(p) = last_failed else {
        return Duration::ZERO;
    };
    let (counted, ignored) = indexes::failure_counts(p);
    let failures = (counted + ignored).max(0) as u32 + 1;
    remaining(failures, finished_at(p), now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("time")
    }

    fn pod(phase: &str, finished: i64) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "creationTimestamp": at(-1000).to_string()},
            "status": {"phase": phase, "containerStatuses": [{
                "name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 1, "finishedAt": at(finished).to_string()}}}]},
        }))
        .expect("pod")
    }

    #[test]
    fn delay_doubles_from_ten_seconds_to_six_minutes() {
        let now = at(0);
        assert_eq!(remaining(0, now, now), Duration::ZERO);
        assert_eq!(remaining(1, now, now), Duration::from_secs(10));
        assert_eq!(remaining(2, now, now), Duration::from_secs(20));
        assert_eq!(remaining(3, now, now), Duration::from_secs(40));
        assert_eq!(remaining(6, now, now), Duration::from_secs(320));
        assert_eq!(remaining(7, now, now), MAX);
        assert_eq!(remaining(50, now, now), MAX);
        assert_eq!(remaining(2, at(-15), now), Duration::from_secs(5));
        assert_eq!(remaining(1, at(-15), now), Duration::ZERO);
        assert_eq!(remaining(1, at(5), now), Duration::from_secs(10));
    }

    #[test]
    fn a_success_resets_the_count_and_finish_times_come_from_containers() {
        let now = at(0);
        let pods = [pod("Failed", -30), pod("Failed", -5)];
        // two failures: 20 s from the last one
        assert_eq!(job_remaining(&pods, now), Duration::from_secs(15));
        let pods = [pod("Failed", -30), pod("Succeeded", -20), pod("Failed", -5)];
        assert_eq!(job_remaining(&pods, now), Duration::from_secs(5));
        let pods = [pod("Failed", -30), pod("Succeeded", -2)];
        assert_eq!(job_remaining(&pods, now), Duration::ZERO);
        // no container times: the pod's creation
        let mut bare = pod("Failed", 0);
        bare.status.as_mut().expect("status").container_statuses = None;
        assert_eq!(finished_at(&bare), at(-1000));
    }

    #[test]
    fn an_index_backs_off_by_its_own_failures() {
        let now = at(0);
        let mut p = pod("Failed", -3);
        assert_eq!(index_remaining(Some(&p), now), Duration::from_secs(7));
        p.metadata.annotations = Some(
            [(indexes::INDEX_FAILURE_COUNT.to_string(), "1".to_string())]
                .into_iter()
                .collect(),
        );
        assert_eq!(index_remaining(Some(&p), now), Duration::from_secs(17));
        assert_eq!(index_remaining(None, now), Duration::ZERO);
    }
}
