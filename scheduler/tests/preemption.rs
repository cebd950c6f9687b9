//! Priority and preemption against the real kaze apiserver (in-process, Priority admission
//! on): pending pods are tried highest priority first; a pod that fits nowhere evicts the
//! fewest lower-priority pods (DisruptionTarget condition, graceful delete, Preempted event),
//! is nominated to their node and bound there once they are gone; `preemptionPolicy: Never`
//! pods and pods of equal priority never evict anyone. No kubelet runs: the test deletes
//! terminating pods itself, as a kubelet would once their containers stopped.

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::Client;
use serde_json::json;
use testkit::wait_for;

const WAIT: Duration = Duration::from_secs(30);

struct Cluster {
    server: apiserver::RunningServer,
    client: Client,
    pods: Api<Pod>,
    shutdown: component::CancellationToken,
    scheduler: Option<tokio::task::JoinHandle<Result<(), scheduler::Error>>>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(classes: &[(&str, i32, &str)], node_cpus: &[(&str, &str)]) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
            .await
            .expect("starting the apiserver");
        let client = component::client(Some(server.kubeconfig_path()))
            .await
            .expect("client");
        let pcs: Api<PriorityClass> = Api::all(client.clone());
        for (name, value, policy) in classes {
            let pc: PriorityClass = serde_json::from_value(json!({
                "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                "metadata": {"name": name}, "value": value, "preemptionPolicy": policy,
            }))
            .expect("class");
            pcs.create(&PostParams::default(), &pc)
                .await
                .expect("create class");
        }
        for (name, cpu) in node_cpus {
            common::add_node(&client, name, cpu).await;
        }
        Cluster {
            pods: Api::namespaced(client.clone(), "default"),
            client,
            server,
            shutdown: component::CancellationToken::new(),
            scheduler: None,
            _dir: dir,
        }
    }

    fn start_scheduler(&mut self) {
        let config = scheduler::Config::embedded(self.server.kubeconfig_path().to_path_buf());
        self.scheduler = Some(tokio::spawn(scheduler::run(config, self.shutdown.clone())));
    }

    /// A pod asking for `cpu` in `class` (its default 30 s grace period).
    async fn add_pod(&self, name: &str, cpu: &str, class: &str) -> Pod {
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"priorityClassName": class, "containers": [{"name": "c",
                "image": "kaze/busybox:1", "resources": {"requests": {"cpu": cpu}}}]},
        }))
        .expect("pod json");
        self.pods
            .create(&PostParams::default(), &pod)
            .await
            .expect("create pod")
    }

    async fn get(&self, name: &str) -> Pod {
        self.pods.get(name).await.expect("get pod")
    }

    async fn bound(&self, name: &str) -> String {
        wait_for(&format!("{name} bound"), WAIT, || async {
            self.pods.get(name).await.ok()?.spec?.node_name
        })
        .await
    }

    async fn failed_scheduling(&self, name: &str, wanted: &str) {
        let events: Api<Event> = Api::namespaced(self.client.clone(), "default");
        let seen = wait_for(&format!("FailedScheduling for {name}"), WAIT, || {
            let events = events.clone();
            async move {
                let list = events.list(&ListParams::default()).await.ok()?;
                let msgs: Vec<String> = list
                    .items
                    .into_iter()
                    .filter(|e| {
                        e.reason.as_deref() == Some("FailedScheduling")
                            && e.involved_object.name.as_deref() == Some(name)
                    })
                    .filter_map(|e| e.message)
                    .collect();
                (!msgs.is_empty()).then_some(msgs)
            }
        })
        .await;
        assert!(seen.iter().all(|m| m == wanted), "{seen:?}");
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(s) = self.scheduler.take() {
            s.await
                .expect("scheduler task")
                .expect("scheduler stops cleanly");
        }
        self.server.shutdown().await;
    }
}

fn node_name(p: &Pod) -> Option<String> {
    p.spec.as_ref()?.node_name.clone()
}

fn nominated(p: &Pod) -> Option<String> {
    p.status.as_ref()?.nominated_node_name.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_priority_pod_preempts_the_fewest_lowest_priority_pods() {
    let mut c = Cluster::start(
        &[
            ("low", 100, "PreemptLowerPriority"),
            ("mid", 500, "PreemptLowerPriority"),
            ("high", 1000, "PreemptLowerPriority"),
        ],
        &[("n1", "2")],
    )
    .await;
    c.start_scheduler();
    c.add_pod("lowest", "1", "low").await;
    assert_eq!(c.bound("lowest").await, "n1");
    c.add_pod("lower", "1", "mid").await;
    assert_eq!(c.bound("lower").await, "n1");

    // The node is full; one victim makes room, and it is the lowest-priority pod.
    let vip = c.add_pod("vip", "1", "high").await;
    let victim = wait_for("the victim terminating", WAIT, || async {
        let p = c.pods.get("lowest").await.ok()?;
        p.metadata.deletion_timestamp.is_some().then_some(p)
    })
    .await;
    assert_eq!(
        victim.metadata.deletion_grace_period_seconds,
        Some(30),
        "deleted with its own grace period"
    );
    let cond = victim
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "DisruptionTarget")
        .expect("DisruptionTarget condition on the victim");
    assert_eq!(cond.status, "True");
    assert_eq!(cond.reason.as_deref(), Some("PreemptionByScheduler"));
    assert_eq!(
        cond.message.as_deref(),
        Some("default-scheduler: preempting to accommodate a higher priority pod")
    );

    let nominated_to = wait_for("vip nominated", WAIT, || async {
        nominated(&c.pods.get("vip").await.ok()?)
    })
    .await;
    assert_eq!(nominated_to, "n1");
    assert_eq!(
        node_name(&c.get("vip").await),
        None,
        "not bound while the victim terminates"
    );

    let events: Api<Event> = Api::namespaced(c.client.clone(), "default");
    let preempted = wait_for("Preempted event", WAIT, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| {
                e.reason.as_deref() == Some("Preempted")
                    && e.involved_object.name.as_deref() == Some("lowest")
            })
        }
    })
    .await;
    assert_eq!(
        preempted.message.as_deref(),
        Some(
            format!(
                "Preempted by pod {} on node n1",
                vip.metadata.uid.as_deref().unwrap_or("")
            )
            .as_str()
        )
    );
    assert_eq!(preempted.type_.as_deref(), Some("Normal"));

    // Play the kubelet: the victim's containers stopped, its object goes.
    c.pods
        .delete("lowest", &DeleteParams::default().grace_period(0))
        .await
        .expect("kubelet's final delete");
    assert_eq!(c.bound("vip").await, "n1");

    // The second low pod was never needed: untouched.
    let lower = c.get("lower").await;
    assert!(lower.metadata.deletion_timestamp.is_none());
    assert_eq!(node_name(&lower).as_deref(), Some("n1"));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_policy_and_equal_priority_pods_evict_nobody() {
    let mut c = Cluster::start(
        &[
            ("mid", 500, "PreemptLowerPriority"),
            ("patient", 1000, "Never"),
        ],
        &[("n1", "1")],
    )
    .await;
    c.start_scheduler();
    c.add_pod("resident", "1", "mid").await;
    assert_eq!(c.bound("resident").await, "n1");

    c.add_pod("waiter", "1", "patient").await;
    c.failed_scheduling(
        "waiter",
        "0/1 nodes are available: 1 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never.",
    )
    .await;
    c.add_pod("peer", "1", "mid").await;
    c.failed_scheduling(
        "peer",
        "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.",
    )
    .await;

    let resident = c.get("resident").await;
    assert!(resident.metadata.deletion_timestamp.is_none());
    for name in ["waiter", "peer"] {
        let p = c.get(name).await;
        assert_eq!(node_name(&p), None, "{name} stays pending");
        assert_eq!(nominated(&p), None, "{name} is nominated nowhere");
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_pods_are_tried_highest_priority_first() {
    // `high` never preempts: if the older low-priority pod were tried first it would keep
    // the only cpu and the high one would stay pending.
    let mut c = Cluster::start(
        &[
            ("low", 100, "PreemptLowerPriority"),
            ("high", 1000, "Never"),
        ],
        &[("n1", "1")],
    )
    .await;
    c.add_pod("a-low", "1", "low").await;
    c.add_pod("b-high", "1", "high").await;
    c.start_scheduler();
    assert_eq!(c.bound("b-high").await, "n1");
    c.failed_scheduling(
        "a-low",
        "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.",
    )
    .await;
    let low = c.get("a-low").await;
    assert_eq!(node_name(&low), None);
    assert!(low.metadata.deletion_timestamp.is_none());
    c.stop().await;
}
