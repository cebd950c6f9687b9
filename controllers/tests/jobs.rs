//! Job and CronJob controllers against the real apiserver with the real kubectl. A test
//! "kubelet" finishes pods: those of job `failing` fail, all others succeed.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::Client;
use serde_json::json;

fn kubectl_ok(kc: &Path, args: &[&str], input: Option<&str>) -> String {
    testkit::kubectl_ok(kc, args, input)
}

async fn kubelet(client: Client, stop: Arc<AtomicBool>, max_active_work: Arc<AtomicI32>) {
    let pods: Api<Pod> = Api::namespaced(client, "default");
    while !stop.load(Ordering::Relaxed) {
        if let Ok(list) = pods.list(&ListParams::default()).await {
            let running = |p: &&Pod| {
                p.status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .is_none_or(|ph| ph == "Pending" || ph == "Running")
            };
            let active_work = list
                .items
                .iter()
                .filter(running)
                .filter(|p| {
                    p.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("job-name"))
                        .map(String::as_str)
                        == Some("work")
                })
                .count() as i32;
            max_active_work.fetch_max(active_work, Ordering::Relaxed);
            for p in list.items.iter().filter(running) {
                let age = p.metadata.creation_timestamp.as_ref().map_or(0, |t| {
                    k8s_openapi::jiff::Timestamp::now().as_second() - t.0.as_second()
                });
                if age < 1 {
                    continue;
                }
                let job = p
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("job-name"))
                    .cloned()
                    .unwrap_or_default();
                let phase = if job == "failing" {
                    "Failed"
                } else {
                    "Succeeded"
                };
                let st = json!({"status": {"phase": phase}});
                let _ = pods
                    .patch_status(
                        p.metadata.name.as_deref().unwrap_or(""),
                        &PatchParams::default(),
                        &Patch::Merge(&st),
                    )
                    .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const JOBS: &str = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: work, namespace: default}
spec:
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: kaze/busybox:1, command: ["true"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: failing, namespace: default}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: kaze/busybox:1, command: ["false"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: shortlived, namespace: default}
spec:
  ttlSecondsAfterFinished: 1
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: kaze/busybox:1, command: ["true"]}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick, namespace: default}
spec:
  schedule: "*/1 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: c, image: kaze/busybox:1, command: ["true"]}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_fail_expire_and_cronjobs_fire() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
        .await
        .expect("apiserver");
    let kc = server.kubeconfig_path().to_path_buf();
    let client = component::client(Some(&kc)).await.expect("client");
    let shutdown = component::CancellationToken::new();
    let config = controllers::Config::new(Some(kc.clone()), &["job", "cronjob"]);
    let cm = tokio::spawn(controllers::run(config, shutdown.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let max_active = Arc::new(AtomicI32::new(0));
    let kl = tokio::spawn(kubelet(client.clone(), stop.clone(), max_active.clone()));

    kubectl_ok(&kc, &["apply", "-f", "-"], Some(JOBS));
    let out = kubectl_ok(
        &kc,
        &[
            "wait",
            "--for=condition=complete",
            "job/work",
            "--timeout=60s",
        ],
        None,
    );
    assert!(out.contains("condition met"), "{out}");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let work = jobs.get("work").await.expect("job");
    assert_eq!(work.status.as_ref().and_then(|s| s.succeeded), Some(3));
    assert!(
        max_active.load(Ordering::Relaxed) <= 2,
        "parallelism 2 exceeded: {}",
        max_active.load(Ordering::Relaxed)
    );

    kubectl_ok(
        &kc,
        &[
            "wait",
            "--for=condition=failed",
            "job/failing",
            "--timeout=60s",
        ],
        None,
    );
    let failing = jobs.get("failing").await.expect("job");
    let reason = failing
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Failed")
        .and_then(|c| c.reason);
    assert_eq!(reason.as_deref(), Some("BackoffLimitExceeded"));

    // what `kubectl describe job` lists: upstream's job-controller events
    let events = |job: &str| {
        testkit::kubectl_ok(
            &kc,
            &[
                "get",
                "events",
                "--field-selector",
                &format!("involvedObject.kind=Job,involvedObject.name={job}"),
                "-o",
                "jsonpath={range .items[*]}{.type} {.reason} {.message}{\"\\n\"}{end}",
            ],
            None,
        )
    };
    let wait_events = |job: &'static str, want: &'static [&'static str]| {
        let events = &events;
        async move {
            let start = Instant::now();
            loop {
                let got = events(job);
                if want.iter().all(|w| got.lines().any(|l| l.starts_with(w))) {
                    return got;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "{job}: {want:?} in\n{got}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let work_events = wait_events(
        "work",
        &[
            "Normal SuccessfulCreate Created pod: work-",
            "Normal Completed Job completed",
        ],
    )
    .await;
    let created = work_events
        .lines()
        .filter(|l| l.starts_with("Normal SuccessfulCreate"))
        .count();
    assert_eq!(created, 3, "{work_events}");
    wait_events(
        "failing",
        &["Warning BackoffLimitExceeded Job has reached the specified backoff limit"],
    )
    .await;

    let start = Instant::now();
    while jobs.get_opt("shortlived").await.expect("get").is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ttlSecondsAfterFinished job not deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The cron job fires at the next minute boundary (at most ~60 s from now).
    let start = Instant::now();
    let fired = loop {
        let list = jobs.list(&ListParams::default()).await.expect("jobs");
        if let Some(j) = list.items.into_iter().find(|j| {
            j.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("tick-"))
        }) {
            break j;
        }
        assert!(
            start.elapsed() < Duration::from_secs(75),
            "cronjob did not create a job within a minute"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let owner = fired.metadata.owner_references.unwrap_or_default();
    assert!(owner
        .iter()
        .any(|o| o.kind == "CronJob" && o.name == "tick"));
    let out = kubectl_ok(
        &kc,
        &[
            "get",
            "cronjob",
            "tick",
            "-o",
            "jsonpath={.status.lastScheduleTime}",
        ],
        None,
    );
    assert!(!out.is_empty(), "lastScheduleTime set");
    // the cron job's events: the job it created, then seen completed (the test kubelet
    // succeeds its pod)
    let fired_name = fired.metadata.name.clone().unwrap_or_default();
    let start = Instant::now();
    loop {
        let got = testkit::kubectl_ok(
            &kc,
            &[
                "get",
                "events",
                "--field-selector",
                "involvedObject.kind=CronJob,involvedObject.name=tick",
                "-o",
                "jsonpath={range .items[*]}{.reason} {.message}{\"\\n\"}{end}",
            ],
            None,
        );
        let created = got
            .lines()
            .any(|l| l == format!("SuccessfulCreate Created job {fired_name}"));
        let saw = got.lines().any(|l| {
            l == format!("SawCompletedJob Saw completed job: {fired_name}, condition: Complete")
        });
        if created && saw {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "cronjob events:\n{got}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    stop.store(true, Ordering::Relaxed);
    let _ = kl.await;
    shutdown.cancel();
    cm.await.expect("task").expect("clean stop");
    server.shutdown().await;
}
