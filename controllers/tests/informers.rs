//! The controller-manager reads from its shared informer caches, not the API: driving
//! workloads costs it a constant number of pod and ReplicaSet LISTs (the informers' initial
//! lists), counted from the real apiserver's `/metrics`; and a cache lagging its own
//! creates never makes a ReplicaSet create a pod twice (expectations), seen from a watch.
//!
//! No kubelet runs: the test marks pods Running/Ready and finishes their deletion from its
//! own watch (writes only, so the LIST counts are the controller-manager's).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::Client;
use serde_json::json;
use testkit::wait_for;

/// `apiserver_request_total` summed over scopes and codes, for one verb and resource.
fn requests(kc: &Path, verb: &str, resource: &str) -> u64 {
    let text = testkit::kubectl_ok(kc, &["get", "--raw", "/metrics"], None);
    let (verb, resource) = (
        format!("verb=\"{verb}\","),
        format!("resource=\"{resource}\","),
    );
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| l.contains(&verb) && l.contains(&resource) && l.contains("group=\""))
        .filter(|l| l.contains("subresource=\"\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// What the test's pod watch saw: every pod name ever added per controller uid, and the
/// most live (not terminating) pods each controller had at once.
#[derive(Default)]
struct Seen {
    created: BTreeMap<String, BTreeSet<String>>,
    live: BTreeMap<String, BTreeSet<String>>,
    peak: BTreeMap<String, usize>,
}

fn controller_of(p: &Pod) -> Option<String> {
    p.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.clone())
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Plays kubelet from a watch of pods (one LIST at its start, taken before the baseline)
/// and records what it saw.
async fn kubelet(client: Client, seen: Arc<Mutex<Seen>>, synced: tokio::sync::oneshot::Sender<()>) {
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let mut events = watcher(pods.clone(), watcher::Config::default()).boxed();
    let mut synced = Some(synced);
    let mut next_ip = 2u32;
    while let Some(ev) = events.next().await {
        let p = match ev {
            Ok(watcher::Event::InitDone) => {
                if let Some(s) = synced.take() {
                    let _ = s.send(());
                }
                continue;
            }
            Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => p,
            Ok(watcher::Event::Delete(p)) => {
                let name = p.metadata.name.clone().unwrap_or_default();
                if let Some(owner) = controller_of(&p) {
                    let mut s = seen.lock().expect("seen");
                    s.live.entry(owner).or_default().remove(&name);
                }
                continue;
            }
            _ => continue,
        };
        let name = p.metadata.name.clone().unwrap_or_default();
        if let Some(owner) = controller_of(&p) {
            let mut s = seen.lock().expect("seen");
            s.created
                .entry(owner.clone())
                .or_default()
                .insert(name.clone());
            let live = s.live.entry(owner.clone()).or_default();
            if p.metadata.deletion_timestamp.is_none() {
                live.insert(name.clone());
            } else {
                live.remove(&name);
            }
            let n = live.len();
            let peak = s.peak.entry(owner).or_default();
            *peak = (*peak).max(n);
        }
        if p.metadata.deletion_timestamp.is_some() {
            let _ = pods
                .delete(
                    &name,
                    &DeleteParams {
                        grace_period_seconds: Some(0),
                        ..Default::default()
                    },
                )
                .await;
        } else if !ready(&p) {
            let ip = format!("10.42.{}.{}", next_ip / 250, next_ip % 250 + 2);
            next_ip += 1;
            let now = k8s_openapi::jiff::Timestamp::now();
            let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}]}});
            let _ = pods
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await;
        }
    }
}

fn rs(name: &str, replicas: i32) -> ReplicaSet {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "kaze/busybox:1"}]}}},
    }))
    .expect("replicaset")
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "kaze/busybox:1"}]}}},
    }))
    .expect("deployment")
}

async fn rolled_out(d: &Api<Deployment>, name: &str, replicas: i32, image: &str) {
    wait_for(
        &format!("deployment {name}: {replicas} updated, available replicas of {image}"),
        Duration::from_secs(90),
        || {
            let d = d.clone();
            let (name, image) = (name.to_string(), image.to_string());
            async move {
                let dep = d.get(&name).await.ok()?;
                let st = dep.status?;
                let img = dep.spec.template.spec?.containers[0].image.clone()?;
                (img == image
                    && st.observed_generation == dep.metadata.generation
                    && st.updated_replicas == Some(replicas)
                    && st.available_replicas == Some(replicas)
                    && st.replicas == Some(replicas))
                .then_some(())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_cost_a_constant_number_of_lists_and_no_duplicate_pods() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
        .await
        .expect("apiserver");
    let kc = server.kubeconfig_path().to_path_buf();
    let client = component::client(Some(&kc)).await.expect("client");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
    let kubelet = tokio::spawn(kubelet(client.clone(), seen.clone(), synced_tx));
    synced_rx.await.expect("the test's pod watch listed");

    let pod_lists = requests(&kc, "LIST", "pods");
    let rs_lists = requests(&kc, "LIST", "replicasets");
    let shutdown = component::CancellationToken::new();
    let config = controllers::Config::new(Some(kc.clone()), &["*"]);
    let cm = tokio::spawn(controllers::run(config, shutdown.clone()));

    // 1. A ReplicaSet of 50 made at once gets exactly 50 pods: never a 51st, even one
    //    deleted again, while its cache catches up with its own creates.
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let made = sets
        .create(&PostParams::default(), &rs("burst", 50))
        .await
        .expect("create replicaset");
    let uid = made.metadata.uid.clone().expect("uid");
    wait_for("50 ready replicas", Duration::from_secs(60), || {
        let sets = sets.clone();
        async move { (sets.get("burst").await.ok()?.status?.ready_replicas? == 50).then_some(()) }
    })
    .await;
    // every pod's readiness wakes the ReplicaSet again; give late reconciles their chance
    tokio::time::sleep(Duration::from_secs(3)).await;
    {
        let s = seen.lock().expect("seen");
        let created = s.created.get(&uid).map_or(0, BTreeSet::len);
        assert_eq!(created, 50, "pods ever created for a ReplicaSet of 50");
        assert_eq!(s.peak.get(&uid).copied(), Some(50));
    }
    // scaled to 70 then to 20: 20 more made, 50 deleted, and never more than 70 at once
    sets.patch(
        "burst",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 70}})),
    )
    .await
    .expect("scale up");
    wait_for("70 ready replicas", Duration::from_secs(60), || {
        let sets = sets.clone();
        async move { (sets.get("burst").await.ok()?.status?.ready_replicas? == 70).then_some(()) }
    })
    .await;
    sets.patch(
        "burst",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 20}})),
    )
    .await
    .expect("scale down");
    wait_for("20 replicas left", Duration::from_secs(60), || {
        let (sets, seen, uid) = (sets.clone(), seen.clone(), uid.clone());
        async move {
            let st = sets.get("burst").await.ok()?.status?;
            let live = seen.lock().ok()?.live.get(&uid).map_or(0, BTreeSet::len);
            (st.replicas == 20 && st.ready_replicas == Some(20) && live == 20).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    {
        let s = seen.lock().expect("seen");
        assert_eq!(s.created.get(&uid).map_or(0, BTreeSet::len), 70);
        assert_eq!(s.peak.get(&uid).copied(), Some(70));
        assert_eq!(s.live.get(&uid).map_or(0, BTreeSet::len), 20);
    }

    // 2. A Deployment of 30: scaled up and down, then rolled to a new image.
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deploys
        .create(&PostParams::default(), &deployment("web", 30))
        .await
        .expect("create deployment");
    rolled_out(&deploys, "web", 30, "kaze/busybox:1").await;
    let scale = |n: i32| json!({"spec": {"replicas": n}});
    deploys
        .patch("web", &PatchParams::default(), &Patch::Merge(&scale(45)))
        .await
        .expect("scale up");
    rolled_out(&deploys, "web", 45, "kaze/busybox:1").await;
    deploys
        .patch("web", &PatchParams::default(), &Patch::Merge(&scale(15)))
        .await
        .expect("scale down");
    rolled_out(&deploys, "web", 15, "kaze/busybox:1").await;
    let image = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "kaze/busybox:2"}]}}}});
    deploys
        .patch("web", &PatchParams::default(), &Patch::Strategic(&image))
        .await
        .expect("new image");
    rolled_out(&deploys, "web", 15, "kaze/busybox:2").await;

    // 3. All of it cost the controller-manager its informers' initial lists: one for pods
    //    and one for ReplicaSets, shared by every controller (the garbage collector, quota
    //    and node lifecycle included), not one per reconcile (hundreds); a relist after a
    //    broken watch may add one.
    let pod_lists = requests(&kc, "LIST", "pods") - pod_lists;
    let rs_lists = requests(&kc, "LIST", "replicasets") - rs_lists;
    eprintln!("controller-manager LISTs: pods {pod_lists}, replicasets {rs_lists}");
    assert!(pod_lists <= 2, "{pod_lists} pod LISTs");
    assert!(rs_lists <= 2, "{rs_lists} replicaset LISTs");

    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), cm).await;
    kubelet.abort();
}
