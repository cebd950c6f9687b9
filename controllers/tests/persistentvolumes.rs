//! PersistentVolumes and claims against the real apiserver (its DefaultStorageClass and
//! StorageObjectInUseProtection admission on) with the `persistentvolume-binder`,
//! `pvc-protection`, `pv-protection` and `local-path-provisioner` controllers: static
//! binding by size, access modes, class, selector and pre-binding on either side; Released
//! volumes per reclaim policy; the protection finalizers holding a claim a pod uses and a
//! bound volume; provisioning by the built-in `kaze.io/local-path` once the scheduler's
//! selected node is known. No kubelet or scheduler runs: the test plays their parts.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;
use testkit::wait_for;

struct Cluster {
    token: component::CancellationToken,
    _server: apiserver::RunningServer,
    client: kube::Client,
    kubeconfig: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn cluster(tag: &str) -> Cluster {
    cluster_with(
        tag,
        &[
            "persistentvolume-binder",
            "pvc-protection",
            "pv-protection",
            "local-path-provisioner",
        ],
    )
    .await
}

/// A real apiserver with the named controllers running.
async fn cluster_with(tag: &str, controllers: &[&str]) -> Cluster {
    let dir = tempfile::Builder::new()
        .prefix(&format!("kaze-pv-{tag}-"))
        .tempdir()
        .expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
        .await
        .expect("apiserver");
    let kubeconfig = server.kubeconfig_path().to_path_buf();
    let client = component::client(Some(&kubeconfig)).await.expect("client");
    let token = component::CancellationToken::new();
    let config = controllers::Config::new(Some(kubeconfig.clone()), controllers);
    tokio::spawn(controllers::run(config, token.clone()));
    Cluster {
        token,
        _server: server,
        client,
        kubeconfig,
        _dir: dir,
    }
}

impl Cluster {
    fn pvs(&self) -> Api<PersistentVolume> {
        Api::all(self.client.clone())
    }

    fn pvcs(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), "default")
    }

    async fn pv(&self, v: serde_json::Value) {
        let pv: PersistentVolume = serde_json::from_value(v).expect("pv");
        self.pvs()
            .create(&PostParams::default(), &pv)
            .await
            .expect("create pv");
    }

    async fn pvc(&self, v: serde_json::Value) -> PersistentVolumeClaim {
        let pvc: PersistentVolumeClaim = serde_json::from_value(v).expect("pvc");
        self.pvcs()
            .create(&PostParams::default(), &pvc)
            .await
            .expect("create pvc")
    }

    /// The claim once it is Bound.
    async fn bound(&self, name: &str) -> PersistentVolumeClaim {
        let pvcs = self.pvcs();
        wait_for(
            &format!("claim {name} Bound"),
            Duration::from_secs(20),
            || {
                let pvcs = pvcs.clone();
                async move {
                    pvcs.get_opt(name)
                        .await
                        .ok()
                        .flatten()
                        .filter(|c| component::volumes::claim_phase(c) == "Bound")
                }
            },
        )
        .await
    }

    async fn volume_phase(&self, name: &str, phase: &'static str) -> PersistentVolume {
        let pvs = self.pvs();
        wait_for(
            &format!("volume {name} {phase}"),
            Duration::from_secs(20),
            || {
                let pvs = pvs.clone();
                async move {
                    pvs.get_opt(name)
                        .await
                        .ok()
                        .flatten()
                        .filter(|v| component::volumes::volume_phase(v) == phase)
                }
            },
        )
        .await
    }

    async fn gone<K>(&self, api: &Api<K>, name: &str)
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        wait_for(&format!("{name} gone"), Duration::from_secs(30), || {
            let api = api.clone();
            async move {
                api.get_opt(name)
                    .await
                    .ok()
                    .and_then(|o| o.is_none().then_some(()))
            }
        })
        .await
    }

    /// (reason, message) of the events about `name` in `ns`, once one with `reason` is there.
    async fn event(&self, ns: &str, name: &str, reason: &str) -> String {
        let events: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let fields = format!("involvedObject.name={name}");
        wait_for(
            &format!("event {reason} about {name}"),
            Duration::from_secs(20),
            || {
                let (events, fields) = (events.clone(), fields.clone());
                async move {
                    events
                        .list(&ListParams::default().fields(&fields))
                        .await
                        .ok()?
                        .items
                        .into_iter()
                        .find(|e| e.reason.as_deref() == Some(reason))
                        .and_then(|e| e.message)
                }
            },
        )
        .await
    }
}

fn volume(name: &str, size: &str, modes: &[&str], extra: serde_json::Value) -> serde_json::Value {
    let mut v = json!({"metadata": {"name": name},
        "spec": {"capacity": {"storage": size}, "accessModes": modes,
                 "hostPath": {"path": format!("/tmp/kaze-pv-test/{name}")}}});
    merge(&mut v, extra);
    v
}

fn claim(name: &str, size: &str, modes: &[&str], extra: serde_json::Value) -> serde_json::Value {
    let mut c = json!({"metadata": {"name": name},
        "spec": {"accessModes": modes, "resources": {"requests": {"storage": size}}}});
    merge(&mut c, extra);
    c
}

fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
    if let (Some(b), serde_json::Value::Object(e)) = (base.as_object_mut(), extra) {
        for (k, v) in e {
            match (b.get_mut(&k), v) {
                (Some(inner @ serde_json::Value::Object(_)), v @ serde_json::Value::Object(_)) => {
                    merge(inner, v)
                }
                (_, v) => {
                    b.insert(k, v);
                }
            }
        }
    }
}

fn annotation<'a>(meta: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_volumes_bind_by_size_access_modes_class_selector_and_pre_binding() {
    let c = cluster("static").await;
    c.pv(volume("pv-small", "1Gi", &["ReadWriteOnce"], json!({})))
        .await;
    c.pv(volume("pv-mid", "5Gi", &["ReadWriteOnce"], json!({})))
        .await;
    c.pv(volume(
        "pv-gold",
        "3Gi",
        &["ReadWriteOnce"],
        json!({"metadata": {"labels": {"tier": "gold"}}}),
    ))
    .await;
    c.pv(volume(
        "pv-shared",
        "10Gi",
        &["ReadWriteOnce", "ReadWriteMany"],
        json!({}),
    ))
    .await;
    c.pv(volume(
        "pv-fast",
        "2Gi",
        &["ReadWriteOnce"],
        json!({"spec": {"storageClassName": "fast"}}),
    ))
    .await;
    c.pv(volume(
        "pv-reserved",
        "1Gi",
        &["ReadWriteOnce"],
        json!({"spec": {"claimRef": {"namespace": "default", "name": "reserver"}}}),
    ))
    .await;
    for name in [
        "pv-small",
        "pv-mid",
        "pv-gold",
        "pv-shared",
        "pv-fast",
        "pv-reserved",
    ] {
        let pv = c.volume_phase(name, "Available").await;
        assert!(
            pv.finalizers()
                .iter()
                .any(|f| f == "kubernetes.io/pv-protection"),
            "{name}: {:?}",
            pv.finalizers()
        );
    }

    // 4Gi RWO: pv-gold (3Gi) is too small, pv-shared offers more modes than asked: pv-mid
    c.pvc(claim("sized", "4Gi", &["ReadWriteOnce"], json!({})))
        .await;
    // the selector picks pv-gold over the smaller pv-small
    c.pvc(claim(
        "selected",
        "1Gi",
        &["ReadWriteOnce"],
        json!({"spec": {"selector": {"matchLabels": {"tier": "gold"}}}}),
    ))
    .await;
    c.pvc(claim("shared", "1Gi", &["ReadWriteMany"], json!({})))
        .await;
    c.pvc(claim(
        "fast",
        "1Gi",
        &["ReadWriteOnce"],
        json!({"spec": {"storageClassName": "fast"}}),
    ))
    .await;
    c.pvc(claim(
        "named",
        "1Gi",
        &["ReadWriteOnce"],
        json!({"spec": {"volumeName": "pv-small"}}),
    ))
    .await;
    c.pvc(claim("reserver", "1Gi", &["ReadWriteOnce"], json!({})))
        .await;
    let none = c
        .pvc(claim("nothing", "50Gi", &["ReadWriteOnce"], json!({})))
        .await;
    assert_eq!(
        none.spec
            .as_ref()
            .and_then(|s| s.storage_class_name.clone()),
        None,
        "no default class: the claim keeps no class"
    );
    assert_eq!(
        none.finalizers(),
        &["kubernetes.io/pvc-protection".to_string()],
        "the admission protects new claims"
    );

    for (claim, volume, size, modes) in [
        ("sized", "pv-mid", "5Gi", vec!["ReadWriteOnce"]),
        ("selected", "pv-gold", "3Gi", vec!["ReadWriteOnce"]),
        (
            "shared",
            "pv-shared",
            "10Gi",
            vec!["ReadWriteOnce", "ReadWriteMany"],
        ),
        ("fast", "pv-fast", "2Gi", vec!["ReadWriteOnce"]),
        ("named", "pv-small", "1Gi", vec!["ReadWriteOnce"]),
        ("reserver", "pv-reserved", "1Gi", vec!["ReadWriteOnce"]),
    ] {
        let pvc = c.bound(claim).await;
        let spec = pvc.spec.clone().unwrap_or_default();
        let status = pvc.status.clone().unwrap_or_default();
        assert_eq!(spec.volume_name.as_deref(), Some(volume), "{claim}");
        assert_eq!(
            status
                .capacity
                .as_ref()
                .and_then(|c| c.get("storage"))
                .map(|q| q.0.as_str()),
            Some(size),
            "{claim}"
        );
        assert_eq!(
            status.access_modes,
            Some(modes.iter().map(|m| m.to_string()).collect()),
            "{claim}"
        );
        assert_eq!(
            annotation(&pvc.metadata, "pv.kubernetes.io/bind-completed"),
            Some("yes"),
            "{claim}"
        );
        // the controller set volumeName except where the user did
        let by_controller = annotation(&pvc.metadata, "pv.kubernetes.io/bound-by-controller");
        assert_eq!(
            by_controller,
            (claim != "named").then_some("yes"),
            "{claim}"
        );
        let pv = c.volume_phase(volume, "Bound").await;
        let r = pv
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.clone())
            .expect("claimRef");
        assert_eq!(
            (r.namespace.as_deref(), r.name.as_deref()),
            (Some("default"), Some(claim))
        );
        assert_eq!(r.uid, pvc.metadata.uid, "{claim}");
        // a volume pre-bound by its creator is not marked as bound by the controller
        assert_eq!(
            annotation(&pv.metadata, "pv.kubernetes.io/bound-by-controller"),
            (volume != "pv-reserved").then_some("yes"),
            "{volume}"
        );
    }
    let msg = c.event("default", "nothing", "FailedBinding").await;
    assert_eq!(
        msg,
        "no persistent volumes available for this claim and no storage class is set"
    );
    assert_eq!(
        component::volumes::claim_phase(&c.pvcs().get("nothing").await.expect("claim")),
        "Pending"
    );

    // a claim naming a volume that does not fit is told why
    c.pv(volume("pv-tiny", "1Mi", &["ReadWriteOnce"], json!({})))
        .await;
    c.pvc(claim(
        "too-big",
        "1Gi",
        &["ReadWriteOnce"],
        json!({"spec": {"volumeName": "pv-tiny"}}),
    ))
    .await;
    let msg = c.event("default", "too-big", "VolumeMismatch").await;
    assert_eq!(
        msg,
        "Cannot bind to requested volume \"pv-tiny\": requested PV is too small"
    );

    // kubectl shows upstream's columns
    let out = testkit::kubectl_ok(
        &c.kubeconfig,
        &["get", "pvc", "sized", "--no-headers"],
        None,
    );
    let cols: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        &cols[..6],
        ["sized", "Bound", "pv-mid", "5Gi", "RWO", "<unset>"],
        "{out}"
    );
    let out = testkit::kubectl_ok(
        &c.kubeconfig,
        &["get", "pv", "pv-fast", "--no-headers"],
        None,
    );
    let cols: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        &cols[..7],
        [
            "pv-fast",
            "2Gi",
            "RWO",
            "Retain",
            "Bound",
            "default/fast",
            "fast"
        ],
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_volumes_follow_their_policy_and_protection_holds_what_is_in_use() {
    let c = cluster("reclaim").await;
    c.pv(volume(
        "keep",
        "1Gi",
        &["ReadWriteOnce"],
        json!({"spec": {"claimRef": {"namespace": "default", "name": "keep"}}}),
    ))
    .await;
    c.pv(volume(
        "drop",
        "1Gi",
        &["ReadWriteOnce"],
        json!({"spec": {
        "persistentVolumeReclaimPolicy": "Delete",
        "claimRef": {"namespace": "default", "name": "drop"}}}),
    ))
    .await;
    c.pv(volume(
        "made",
        "1Gi",
        &["ReadWriteOnce"],
        json!({
        "metadata": {"annotations": {"pv.kubernetes.io/provisioned-by": "kaze.io/local-path"},
                     "finalizers": ["kaze.io/local-path-cleanup"]},
        "spec": {"persistentVolumeReclaimPolicy": "Delete",
                 "claimRef": {"namespace": "default", "name": "made"}}}),
    ))
    .await;
    for name in ["keep", "drop", "made"] {
        c.pvc(claim(name, "1Gi", &["ReadWriteOnce"], json!({})))
            .await;
        c.bound(name).await;
    }

    // a pod on a node uses "keep": deleting the claim leaves it Terminating
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "user"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "kaze/busybox:1"}],
                 "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "keep"}}]}}))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("pod");
    c.pvcs()
        .delete("keep", &DeleteParams::default())
        .await
        .expect("delete claim");
    // a bound volume being deleted stays too
    c.pvs()
        .delete("keep", &DeleteParams::default())
        .await
        .expect("delete volume");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = c
        .pvcs()
        .get("keep")
        .await
        .expect("the claim is still there");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(
        held.finalizers(),
        &["kubernetes.io/pvc-protection".to_string()]
    );
    let out = testkit::kubectl_ok(&c.kubeconfig, &["get", "pvc", "keep", "--no-headers"], None);
    assert!(
        out.split_whitespace().nth(1) == Some("Terminating"),
        "{out}"
    );
    let pv = c
        .pvs()
        .get("keep")
        .await
        .expect("the volume is still there");
    assert!(pv.metadata.deletion_timestamp.is_some());
    assert_eq!(component::volumes::volume_phase(&pv), "Bound");
    // the pod goes: the claim goes, the volume is released and, deleted, goes too
    pods.delete("user", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete pod");
    c.gone(&c.pvcs(), "keep").await;
    c.gone(&c.pvs(), "keep").await;

    // Delete without a provisioner that could delete it: Failed, with upstream's event
    c.pvcs()
        .delete("drop", &DeleteParams::default())
        .await
        .expect("delete claim");
    c.volume_phase("drop", "Failed").await;
    let msg = c.event("default", "drop", "VolumeFailedDelete").await;
    assert_eq!(
        msg,
        "error getting deleter volume plugin for volume \"drop\": no deletable volume plugin matched"
    );

    // Retain: a released volume stays, Released, for its admin
    c.pv(volume(
        "kept",
        "1Gi",
        &["ReadWriteOnce"],
        json!({"spec": {"claimRef": {"namespace": "default", "name": "kept"}}}),
    ))
    .await;
    c.pvc(claim("kept", "1Gi", &["ReadWriteOnce"], json!({})))
        .await;
    c.bound("kept").await;
    c.pvcs()
        .delete("kept", &DeleteParams::default())
        .await
        .expect("delete claim");
    c.volume_phase("kept", "Released").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        component::volumes::volume_phase(&c.pvs().get("kept").await.expect("kept")),
        "Released"
    );

    // the local-path provisioner's volume is deleted; its data finalizer (the kubelet's
    // part) holds it until removed
    c.pvcs()
        .delete("made", &DeleteParams::default())
        .await
        .expect("delete claim");
    let pvs = c.pvs();
    // (pv-protection lets go of it once it sees the deletion: wait for that too)
    let deleting = wait_for(
        "the provisioned volume deleted, held by the kubelet's finalizer alone",
        Duration::from_secs(20),
        || {
            let pvs = pvs.clone();
            async move {
                pvs.get_opt("made")
                    .await
                    .ok()
                    .flatten()
                    .filter(|v| v.metadata.deletion_timestamp.is_some())
                    .filter(|v| v.finalizers() == ["kaze.io/local-path-cleanup".to_string()])
            }
        },
    )
    .await;
    assert!(deleting.metadata.deletion_timestamp.is_some());
    c.pvs()
        .patch(
            "made",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("the kubelet's part");
    c.gone(&c.pvs(), "made").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_path_provisions_on_the_selected_node_and_deletes_with_the_claim() {
    let c = cluster("provision").await;
    // made before any default class exists: gets one retroactively
    c.pvc(claim("early", "1Gi", &["ReadWriteOnce"], json!({})))
        .await;
    let class: StorageClass = serde_json::from_value(json!({
        "metadata": {"name": "local-path",
                     "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "kaze.io/local-path", "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer"}))
    .expect("class");
    let classes: Api<StorageClass> = Api::all(c.client.clone());
    classes
        .create(&PostParams::default(), &class)
        .await
        .expect("class");
    let now: StorageClass = serde_json::from_value(json!({
        "metadata": {"name": "now"}, "provisioner": "kaze.io/local-path",
        "volumeBindingMode": "Immediate"}))
    .expect("class");
    classes
        .create(&PostParams::default(), &now)
        .await
        .expect("class");
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1",
        "labels": {"kubernetes.io/hostname": "n1"},
        "annotations": {"kaze.io/local-storage-path": "/var/lib/kaze-test/storage"}}}))
    .expect("node");
    Api::<Node>::all(c.client.clone())
        .create(&PostParams::default(), &node)
        .await
        .expect("node");

    // the admission gives a claim without a class the default one
    let data = c
        .pvc(claim("data", "2Gi", &["ReadWriteOnce"], json!({})))
        .await;
    assert_eq!(
        data.spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref()),
        Some("local-path")
    );
    let msg = c.event("default", "data", "WaitForFirstConsumer").await;
    assert_eq!(
        msg,
        "waiting for first consumer to be created before binding"
    );
    // a pod waits for it; then the scheduler chooses n1
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "consumer"},
        "spec": {"containers": [{"name": "c", "image": "kaze/busybox:1"}],
                 "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}]}}))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("pod");
    let msg = c.event("default", "data", "WaitForPodScheduled").await;
    assert_eq!(msg, "waiting for pod default/consumer to be scheduled");
    c.pvcs()
        .patch(
            "data",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"volume.kubernetes.io/selected-node": "n1"}}}),
            ),
        )
        .await
        .expect("selected node");
    let bound = c.bound("data").await;
    let uid = bound.uid().expect("uid");
    let pv_name = format!("pvc-{uid}");
    assert_eq!(
        bound.spec.as_ref().and_then(|s| s.volume_name.as_deref()),
        Some(pv_name.as_str())
    );
    assert_eq!(
        annotation(&bound.metadata, "volume.kubernetes.io/storage-provisioner"),
        Some("kaze.io/local-path")
    );
    let pv = c.volume_phase(&pv_name, "Bound").await;
    let v = serde_json::to_value(&pv).expect("json");
    assert_eq!(
        v["spec"]["hostPath"]["path"],
        format!("/var/lib/kaze-test/storage/pvc-{uid}_default_data")
    );
    assert_eq!(
        v["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0],
        json!({"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]})
    );
    assert_eq!(v["spec"]["persistentVolumeReclaimPolicy"], "Delete");
    assert_eq!(v["spec"]["capacity"]["storage"], "2Gi");
    assert_eq!(
        v["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"],
        "kaze.io/local-path"
    );
    assert!(c
        .event("default", "data", "ExternalProvisioning")
        .await
        .contains("'kaze.io/local-path'"));
    assert_eq!(
        c.event("default", "data", "Provisioning").await,
        "External provisioner is provisioning volume for claim \"default/data\""
    );
    assert_eq!(
        c.event("default", "data", "ProvisioningSucceeded").await,
        format!("Successfully provisioned volume {pv_name}")
    );

    // Immediate: the provisioner has no node to put it on
    c.pvc(claim(
        "immediate",
        "1Gi",
        &["ReadWriteOnce"],
        json!({"spec": {"storageClassName": "now"}}),
    ))
    .await;
    assert_eq!(
        c.event("default", "immediate", "ProvisioningFailed").await,
        "failed to provision volume with StorageClass \"now\": configuration error, no node was specified"
    );

    // the early claim got the default class once there was one
    let pvcs = c.pvcs();
    wait_for(
        "the default class given retroactively",
        Duration::from_secs(40),
        || {
            let pvcs = pvcs.clone();
            async move {
                pvcs.get_opt("early").await.ok().flatten().filter(|c| {
                    c.spec
                        .as_ref()
                        .and_then(|s| s.storage_class_name.as_deref())
                        == Some("local-path")
                })
            }
        },
    )
    .await;

    // the claim goes (its pod first): the volume is deleted with it (Delete)
    pods.delete("consumer", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete pod");
    c.pvcs()
        .delete("data", &DeleteParams::default())
        .await
        .expect("delete claim");
    c.gone(&c.pvs(), &pv_name).await;
}

/// A Parallel StatefulSet (no kubelet: its pods are never Ready) with one claim template.
fn stateful_set(
    name: &str,
    replicas: i32,
    when_deleted: &str,
    when_scaled: &str,
) -> serde_json::Value {
    json!({"metadata": {"name": name},
        "spec": {"serviceName": name, "replicas": replicas, "podManagementPolicy": "Parallel",
                 "selector": {"matchLabels": {"app": name}},
                 "persistentVolumeClaimRetentionPolicy": {"whenDeleted": when_deleted, "whenScaled": when_scaled},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": "kaze/busybox:1",
                                  "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
                 "volumeClaimTemplates": [{"metadata": {"name": "data", "labels": {"kind": "state"}},
                     "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_set_claims_are_made_per_pod_and_kept_or_deleted_per_policy() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    let cl = cluster_with(
        "sts",
        &[
            "statefulset",
            "garbagecollector",
            "pvc-protection",
            "persistentvolume-binder",
        ],
    )
    .await;
    let client = cl.client.clone();
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let create_set = |v: serde_json::Value| {
        let sets = sets.clone();
        async move {
            let s: StatefulSet = serde_json::from_value(v).expect("statefulset");
            sets.create(&PostParams::default(), &s)
                .await
                .expect("create statefulset")
        }
    };
    let claim_of = |name: &'static str| {
        let pvcs = pvcs.clone();
        async move {
            wait_for(&format!("claim {name}"), Duration::from_secs(20), || {
                let pvcs = pvcs.clone();
                async move { pvcs.get_opt(name).await.ok().flatten() }
            })
            .await
        }
    };
    let pod_of = |name: &'static str| {
        let pods = pods.clone();
        async move {
            wait_for(&format!("pod {name}"), Duration::from_secs(20), || {
                let pods = pods.clone();
                async move { pods.get_opt(name).await.ok().flatten() }
            })
            .await
        }
    };
    let owners = |c: &PersistentVolumeClaim| -> Vec<(String, String)> {
        c.metadata
            .owner_references
            .iter()
            .flatten()
            .map(|r| (r.kind.clone(), r.name.clone()))
            .collect()
    };

    // Retain/Retain: a claim per pod, labelled with the selector, mounted by its pod
    create_set(stateful_set("keep", 2, "Retain", "Retain")).await;
    for (claim, pod) in [("data-keep-0", "keep-0"), ("data-keep-1", "keep-1")] {
        let c = claim_of(claim).await;
        assert_eq!(c.labels().get("app").map(String::as_str), Some("keep"));
        assert_eq!(c.labels().get("kind").map(String::as_str), Some("state"));
        assert!(owners(&c).is_empty(), "{claim}: {:?}", owners(&c));
        let p = pod_of(pod).await;
        let volume = p
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .and_then(|v| v.iter().find(|v| v.name == "data"))
            .and_then(|v| v.persistent_volume_claim.clone())
            .expect("the claim volume");
        assert_eq!(volume.claim_name, claim);
    }
    // a recreated pod reuses its claim
    let first = claim_of("data-keep-0").await.uid();
    let old_pod = pod_of("keep-0").await.uid();
    pods.delete("keep-0", &DeleteParams::default())
        .await
        .expect("delete pod");
    wait_for("keep-0 recreated", Duration::from_secs(20), || {
        let (pods, old_pod) = (pods.clone(), old_pod.clone());
        async move {
            pods.get_opt("keep-0")
                .await
                .ok()?
                .filter(|p| p.uid() != old_pod)
        }
    })
    .await;
    assert_eq!(claim_of("data-keep-0").await.uid(), first, "the same claim");
    // scaled down and deleted: the claims stay
    sets.patch(
        "keep",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .expect("scale");
    cl.gone(&pods, "keep-1").await;
    sets.delete("keep", &DeleteParams::default())
        .await
        .expect("delete set");
    cl.gone(&pods, "keep-0").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for claim in ["data-keep-0", "data-keep-1"] {
        assert!(
            pvcs.get_opt(claim).await.expect("get").is_some(),
            "{claim} kept"
        );
    }

    // Delete/Delete: owned by the set; a scaled-away pod's claim goes with it, the rest with
    // the set
    create_set(stateful_set("drop", 2, "Delete", "Delete")).await;
    for claim in ["data-drop-0", "data-drop-1"] {
        let c = claim_of(claim).await;
        assert_eq!(
            owners(&c),
            vec![("StatefulSet".to_string(), "drop".to_string())]
        );
    }
    pod_of("drop-1").await;
    sets.patch(
        "drop",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .expect("scale");
    cl.gone(&pods, "drop-1").await;
    cl.gone(&pvcs, "data-drop-1").await;
    assert!(pvcs.get_opt("data-drop-0").await.expect("get").is_some());
    sets.delete("drop", &DeleteParams::default())
        .await
        .expect("delete set");
    cl.gone(&pvcs, "data-drop-0").await;

    // Retain/Delete: no owner while in range; scaled away, the pod owns its claim
    create_set(stateful_set("half", 2, "Retain", "Delete")).await;
    let c = claim_of("data-half-1").await;
    assert!(owners(&c).is_empty());
    pod_of("half-1").await;
    sets.patch(
        "half",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .expect("scale");
    cl.gone(&pvcs, "data-half-1").await;
    sets.delete("half", &DeleteParams::default())
        .await
        .expect("delete set");
    cl.gone(&pods, "half-0").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        pvcs.get_opt("data-half-0").await.expect("get").is_some(),
        "kept with the set gone"
    );
}
