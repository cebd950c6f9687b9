//! The Job controller's upstream 1.37 features against the real apiserver: Indexed Jobs,
//! podFailurePolicy, backoffLimitPerIndex and successPolicy. No kubelet runs: each test
//! finishes pods itself through `pods/status` (phase, exit codes, conditions), as a kubelet
//! would report them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use testkit::wait_for;

const INDEX: &str = "batch.kubernetes.io/job-completion-index";
const WAIT: Duration = Duration::from_secs(30);

struct Cluster {
    _dir: tempfile::TempDir,
    server: apiserver::RunningServer,
    shutdown: component::CancellationToken,
    cm: tokio::task::JoinHandle<Result<(), controllers::Error>>,
    jobs: Api<Job>,
    pods: Api<Pod>,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
            .await
            .expect("apiserver");
        let kubeconfig = server.kubeconfig_path().to_path_buf();
        let client = component::client(Some(&kubeconfig)).await.expect("client");
        let shutdown = component::CancellationToken::new();
        let config = controllers::Config::new(Some(kubeconfig.clone()), &["job"]);
        let cm = tokio::spawn(controllers::run(config, shutdown.clone()));
        Cluster {
            _dir: dir,
            server,
            shutdown,
            cm,
            jobs: Api::namespaced(client.clone(), "default"),
            pods: Api::namespaced(client, "default"),
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.cm.await.expect("task").expect("clean stop");
        self.server.shutdown().await;
    }

    async fn create(&self, job: Value) {
        let job: Job = serde_json::from_value(job).expect("job");
        self.jobs
            .create(&PostParams::default(), &job)
            .await
            .expect("create job");
    }

    async fn pods_of(&self, job: &str) -> Vec<Pod> {
        self.pods
            .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
            .await
            .expect("pods")
            .items
    }

    /// The job's running pods, once there are exactly `n` of them.
    async fn active(&self, job: &str, n: usize) -> Vec<Pod> {
        wait_for(&format!("{n} active pods of {job}"), WAIT, || async {
            let active: Vec<Pod> = self
                .pods_of(job)
                .await
                .into_iter()
                .filter(is_active)
                .collect();
            (active.len() == n).then_some(active)
        })
        .await
    }

    /// The Indexed job's running pods by completion index, once there are `n`, one per index.
    async fn active_by_index(&self, job: &str, n: usize) -> BTreeMap<i32, Pod> {
        wait_for(
            &format!("{n} active pods of {job}, one per index"),
            WAIT,
            || async {
                let active = self.active(job, n).await;
                let by_ix: BTreeMap<i32, Pod> =
                    active.into_iter().map(|p| (index_of(&p), p)).collect();
                (by_ix.len() == n && !by_ix.contains_key(&-1)).then_some(by_ix)
            },
        )
        .await
    }

    /// Report the pod finished, as a kubelet would, with `extra` merged into its status.
    async fn finish(&self, pod: &Pod, phase: &str, extra: Value) {
        let mut status = json!({"phase": phase});
        merge(&mut status, extra);
        self.pods
            .patch_status(
                pod.metadata.name.as_deref().expect("name"),
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": status })),
            )
            .await
            .expect("pod status");
    }

    async fn job_until(&self, name: &str, what: &str, f: impl Fn(&Job) -> bool) -> Job {
        wait_for(what, WAIT, || async {
            let j = self.jobs.get(name).await.expect("job");
            f(&j).then_some(j)
        })
        .await
    }
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

fn is_active(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    p.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

fn index_of(p: &Pod) -> i32 {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INDEX))
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

fn exited(container: &str, code: i32) -> Value {
    json!({"containerStatuses": [{"name": container, "image": "kaze/busybox:1", "imageID": "",
        "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": code}}}]})
}

/// As [`exited`], the container having finished `ago` before now.
fn exited_ago(container: &str, code: i32, ago: Duration) -> Value {
    let at = k8s_openapi::jiff::Timestamp::now() - ago;
    json!({"containerStatuses": [{"name": container, "image": "kaze/busybox:1", "imageID": "",
        "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": code, "finishedAt": at.to_string()}}}]})
}

fn cond(j: &Job, type_: &str) -> Option<JobCondition> {
    j.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_ && c.status == "True")
        .cloned()
}

fn reason(j: &Job, type_: &str) -> Option<String> {
    cond(j, type_).and_then(|c| c.reason)
}

fn job(name: &str, spec: Value) -> Value {
    let mut spec_full = json!({
        "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "kaze/busybox:1", "command": ["true"]}],
        }},
    });
    merge(&mut spec_full, spec);
    json!({"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": name, "namespace": "default"}, "spec": spec_full})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexed_job_gives_each_pod_its_index_and_retries_a_failed_one() {
    let c = Cluster::start().await;
    c.create(job(
        "idx",
        json!({"completionMode": "Indexed", "completions": 3, "parallelism": 2,
        "template": {"spec": {
            "restartPolicy": "Never", "subdomain": "workers",
            "initContainers": [{"name": "setup", "image": "kaze/busybox:1"}],
            "containers": [{"name": "main", "image": "kaze/busybox:1"}],
        }}}),
    ))
    .await;

    let first = c.active_by_index("idx", 2).await;
    assert_eq!(first.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
    for (ix, p) in &first {
        let name = p.metadata.name.as_deref().expect("name");
        assert!(name.starts_with(&format!("idx-{ix}-")), "{name}");
        let label = p.metadata.labels.as_ref().and_then(|l| l.get(INDEX));
        assert_eq!(label, Some(&ix.to_string()), "index label of {name}");
        let spec = p.spec.as_ref().expect("spec");
        assert_eq!(spec.hostname.as_deref(), Some(format!("idx-{ix}").as_str()));
        assert_eq!(spec.subdomain.as_deref(), Some("workers"));
        let inits = spec.init_containers.iter().flatten();
        for container in spec.containers.iter().chain(inits) {
            let env = container
                .env
                .iter()
                .flatten()
                .find(|e| e.name == "JOB_COMPLETION_INDEX");
            let path = env
                .and_then(|e| e.value_from.as_ref())
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str());
            assert_eq!(
                path,
                Some("metadata.labels['batch.kubernetes.io/job-completion-index']"),
                "JOB_COMPLETION_INDEX of container {} in {name}",
                container.name
            );
        }
    }

    // Index 1 fails, index 0 succeeds: index 1 is retried with a new pod, index 2 starts.
    c.finish(&first[&1], "Failed", exited("main", 1)).await;
    c.finish(&first[&0], "Succeeded", json!({})).await;
    let second = c.active_by_index("idx", 2).await;
    assert_eq!(second.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
    assert_ne!(
        second[&1].metadata.name, first[&1].metadata.name,
        "a new pod for index 1"
    );
    let j = c
        .job_until("idx", "completedIndexes 0", |j| {
            j.status
                .as_ref()
                .and_then(|s| s.completed_indexes.as_deref())
                == Some("0")
        })
        .await;
    assert!(cond(&j, "Complete").is_none());

    for p in second.values() {
        c.finish(p, "Succeeded", json!({})).await;
    }
    let j = c
        .job_until("idx", "job idx Complete", |j| cond(j, "Complete").is_some())
        .await;
    let status = j.status.as_ref().expect("status");
    assert_eq!(status.completed_indexes.as_deref(), Some("0-2"));
    assert_eq!(status.succeeded, Some(3));
    assert_eq!(status.failed, Some(1));
    assert_eq!(status.active, Some(0));
    assert!(status.completion_time.is_some());
    assert_eq!(
        reason(&j, "SuccessCriteriaMet").as_deref(),
        Some("CompletionsReached")
    );
    assert_eq!(
        reason(&j, "Complete").as_deref(),
        Some("CompletionsReached")
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_job_rule_ends_the_job_at_once_after_its_pods_terminate() {
    let c = Cluster::start().await;
    c.create(job(
        "fatal",
        json!({"completions": 4, "parallelism": 2, "backoffLimit": 6,
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
            ]}}),
    ))
    .await;
    let mut pods = c.active("fatal", 2).await.into_iter();
    let (bad, other) = (pods.next().expect("pod"), pods.next().expect("pod"));
    // The other pod is on a node, so deleting it is graceful: it stays terminating.
    let other_name = other.metadata.name.clone().expect("name");
    c.pods
        .patch(
            &other_name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"nodeName": "n1"}})),
        )
        .await
        .expect("bind");

    c.finish(&bad, "Failed", exited("main", 42)).await;
    let bad_name = bad.metadata.name.clone().expect("name");
    let want = format!(
        "Container main for pod default/{bad_name} failed with exit code 42 matching FailJob rule at index 0"
    );
    let j = c
        .job_until("fatal", "FailureTarget with 1 terminating", |j| {
            cond(j, "FailureTarget").is_some()
                && j.status.as_ref().and_then(|s| s.terminating) == Some(1)
        })
        .await;
    let target = cond(&j, "FailureTarget").expect("FailureTarget");
    assert_eq!(target.reason.as_deref(), Some("PodFailurePolicy"));
    assert_eq!(target.message.as_deref(), Some(want.as_str()));
    assert!(
        cond(&j, "Failed").is_none(),
        "Failed waits for the terminating pod"
    );
    let other_now = c.pods.get(&other_name).await.expect("pod");
    assert!(
        other_now.metadata.deletion_timestamp.is_some(),
        "active pod deleted"
    );

    // The "kubelet" finishes the deletion; only then is the Job Failed.
    c.pods
        .delete(
            &other_name,
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .expect("delete");
    let j = c
        .job_until("fatal", "job fatal Failed", |j| cond(j, "Failed").is_some())
        .await;
    let failed = cond(&j, "Failed").expect("Failed");
    assert_eq!(failed.reason.as_deref(), Some("PodFailurePolicy"));
    assert_eq!(failed.message.as_deref(), Some(want.as_str()));
    let status = j.status.as_ref().expect("status");
    assert_eq!(
        status.failed,
        Some(1),
        "one failure, far below backoffLimit 6"
    );
    assert_eq!(status.terminating, Some(0));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_rule_keeps_disruptions_out_of_the_backoff_limit() {
    let c = Cluster::start().await;
    c.create(job(
        "spot",
        json!({"backoffLimit": 0,
        "podFailurePolicy": {"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]}}),
    ))
    .await;
    let first = c.active("spot", 1).await.into_iter().next().expect("pod");
    let mut disrupted = json!({"conditions": [{"type": "DisruptionTarget", "status": "True",
        "reason": "TerminationByKubelet", "message": "Pod was terminated in response to imminent node shutdown."}]});
    merge(&mut disrupted, exited("main", 137));
    c.finish(&first, "Failed", disrupted).await;

    // With backoffLimit 0 a counted failure would end the Job; this one is replaced instead.
    let second = wait_for("a replacement pod", WAIT, || async {
        c.pods_of("spot")
            .await
            .into_iter()
            .find(|p| is_active(p) && p.metadata.name != first.metadata.name)
    })
    .await;
    let j = c.jobs.get("spot").await.expect("job");
    assert_eq!(j.status.as_ref().and_then(|s| s.failed), Some(0));
    assert!(cond(&j, "FailureTarget").is_none() && cond(&j, "Failed").is_none());

    c.finish(&second, "Succeeded", json!({})).await;
    let j = c
        .job_until("spot", "job spot Complete", |j| {
            cond(j, "Complete").is_some()
        })
        .await;
    assert_eq!(j.status.as_ref().and_then(|s| s.failed), Some(0));

    // Without the condition the same failure counts: backoffLimit 0 fails the Job.
    c.create(job(
        "spot2",
        json!({"backoffLimit": 0,
        "podFailurePolicy": {"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]}}),
    ))
    .await;
    let p = c.active("spot2", 1).await.into_iter().next().expect("pod");
    c.finish(&p, "Failed", exited("main", 137)).await;
    let j = c
        .job_until("spot2", "job spot2 Failed", |j| cond(j, "Failed").is_some())
        .await;
    assert_eq!(
        reason(&j, "Failed").as_deref(),
        Some("BackoffLimitExceeded")
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_limit_per_index_fails_only_that_index() {
    let c = Cluster::start().await;
    c.create(job(
        "per",
        json!({"completionMode": "Indexed", "completions": 3, "parallelism": 3,
            "backoffLimitPerIndex": 1}),
    ))
    .await;
    let pods = c.active_by_index("per", 3).await;
    let failed_at = Instant::now();
    c.finish(&pods[&1], "Failed", exited_ago("main", 1, Duration::ZERO))
        .await;
    // Index 1 gets one retry, which knows it is the index's second attempt, after the
    // index's own backoff (10 s; indexes 0 and 2 run on meanwhile).
    let retry = wait_for("a retry for index 1", WAIT, || async {
        c.pods_of("per")
            .await
            .into_iter()
            .find(|p| is_active(p) && index_of(p) == 1 && p.metadata.name != pods[&1].metadata.name)
    })
    .await;
    let count = retry
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("batch.kubernetes.io/job-index-failure-count"))
        .cloned();
    assert_eq!(count.as_deref(), Some("1"));
    let waited = failed_at.elapsed();
    assert!(
        waited >= Duration::from_secs(8),
        "index 1 retried {waited:?} after its failure, before its 10 s backoff"
    );

    c.finish(&retry, "Failed", exited("main", 1)).await;
    let j = c
        .job_until("per", "failedIndexes 1", |j| {
            j.status.as_ref().and_then(|s| s.failed_indexes.as_deref()) == Some("1")
        })
        .await;
    // Indexes 0 and 2 still run, so the Job goes on, and index 1 is not started again.
    assert!(cond(&j, "FailureTarget").is_none() && cond(&j, "Failed").is_none());
    let again = c
        .pods_of("per")
        .await
        .into_iter()
        .filter(|p| is_active(p) && index_of(p) == 1)
        .count();
    assert_eq!(again, 0, "no third pod for failed index 1");

    c.finish(&pods[&0], "Succeeded", json!({})).await;
    c.finish(&pods[&2], "Succeeded", json!({})).await;
    let j = c
        .job_until("per", "job per Failed", |j| cond(j, "Failed").is_some())
        .await;
    let failed = cond(&j, "Failed").expect("Failed");
    assert_eq!(failed.reason.as_deref(), Some("FailedIndexes"));
    assert_eq!(failed.message.as_deref(), Some("Job has failed indexes"));
    assert_eq!(
        reason(&j, "FailureTarget").as_deref(),
        Some("FailedIndexes")
    );
    let status = j.status.as_ref().expect("status");
    assert_eq!(status.completed_indexes.as_deref(), Some("0,2"));
    assert_eq!(status.failed_indexes.as_deref(), Some("1"));
    assert_eq!(status.failed, Some(2));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_policy_completes_the_job_and_removes_the_rest() {
    let c = Cluster::start().await;
    c.create(job(
        "leader",
        json!({"completionMode": "Indexed", "completions": 3, "parallelism": 3,
            "successPolicy": {"rules": [{"succeededIndexes": "0"}]}}),
    ))
    .await;
    let pods = c.active_by_index("leader", 3).await;
    c.finish(&pods[&0], "Succeeded", json!({})).await;
    let j = c
        .job_until("leader", "job leader Complete", |j| {
            cond(j, "Complete").is_some()
        })
        .await;
    for type_ in ["SuccessCriteriaMet", "Complete"] {
        let cnd = cond(&j, type_).expect(type_);
        assert_eq!(cnd.reason.as_deref(), Some("SuccessPolicy"), "{type_}");
        assert_eq!(
            cnd.message.as_deref(),
            Some("Matched rules at index 0"),
            "{type_}"
        );
    }
    let status = j.status.as_ref().expect("status");
    assert_eq!(status.completed_indexes.as_deref(), Some("0"));
    assert_eq!(status.succeeded, Some(1));
    assert_eq!(status.active, Some(0));
    for ix in [1, 2] {
        let name = pods[&ix].metadata.name.as_deref().expect("name");
        assert!(
            c.pods.get_opt(name).await.expect("get").is_none(),
            "pod {name} of index {ix} deleted"
        );
    }
    c.stop().await;
}

/// The job's one active pod that is not `old`, and how long it took to appear.
async fn replacement(c: &Cluster, job: &str, old: &Pod) -> (Pod, Duration) {
    let since = Instant::now();
    let p = wait_for(&format!("a replacement pod of {job}"), WAIT, || async {
        let mut active: Vec<Pod> = c.pods_of(job).await.into_iter().filter(is_active).collect();
        (active.len() == 1 && active[0].metadata.name != old.metadata.name)
            .then(|| active.remove(0))
    })
    .await;
    (p, since.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_pods_are_replaced_after_a_backoff_that_doubles_until_a_success() {
    let c = Cluster::start().await;
    c.create(job(
        "slow",
        json!({"completions": 2, "parallelism": 1, "backoffLimit": 6}),
    ))
    .await;
    let first = c.active("slow", 1).await.remove(0);

    // The first failure holds the replacement back 10 s from when the pod finished.
    c.finish(&first, "Failed", exited_ago("main", 1, Duration::ZERO))
        .await;
    let (second, waited) = replacement(&c, "slow", &first).await;
    assert!(
        waited >= Duration::from_secs(8) && waited < Duration::from_secs(20),
        "first replacement after {waited:?}, want about 10 s"
    );

    // The second doubles it to 20 s: finished 12 s ago, 8 s are left.
    c.finish(
        &second,
        "Failed",
        exited_ago("main", 1, Duration::from_secs(12)),
    )
    .await;
    let (third, waited) = replacement(&c, "slow", &second).await;
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(16),
        "second replacement after {waited:?}, want about 8 s (20 s from its finish)"
    );

    // A success resets the count: its replacement is at once, and a failure after it is
    // back to 10 s, so one that finished 11 s ago is replaced at once (two failures
    // since a success, or three in all, would still wait).
    c.finish(&third, "Succeeded", exited_ago("main", 0, Duration::ZERO))
        .await;
    let (fourth, waited) = replacement(&c, "slow", &third).await;
    assert!(
        waited < Duration::from_secs(5),
        "after a success: {waited:?}"
    );
    c.finish(
        &fourth,
        "Failed",
        exited_ago("main", 1, Duration::from_secs(11)),
    )
    .await;
    let (fifth, waited) = replacement(&c, "slow", &fourth).await;
    assert!(
        waited < Duration::from_secs(5),
        "one failure since the success, 11 s ago: {waited:?}"
    );

    c.finish(&fifth, "Succeeded", json!({})).await;
    let j = c
        .job_until("slow", "job slow Complete", |j| {
            cond(j, "Complete").is_some()
        })
        .await;
    let status = j.status.as_ref().expect("status");
    assert_eq!((status.succeeded, status.failed), (Some(2), Some(3)));
    c.stop().await;
}
