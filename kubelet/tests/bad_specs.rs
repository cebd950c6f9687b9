//! Bad specs become pod status and events, never a crash (the real kaze apiserver
//! in-process, a real containerd, runc and CNI, the kubelet's API loop): a volumeMount of no
//! volume is refused by the API (as upstream's), an image name that does not parse is
//! `InvalidImageName`, and of two pods asking for one hostPort the second is rejected at
//! admission (phase Failed, reason `NodePorts`), as are a pod asking for an unsafe sysctl
//! (`SysctlForbidden`) and one asking for more CPU than the node has (`OutOfcpu`), as
//! upstream's kubelet does. A pod whose RuntimeClass names a handler other than runc gets
//! `FailedCreatePodSandBox` and stays Pending. The kubelet runs a good pod afterwards all
//! the same.

mod support;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use support::cluster::Cluster;

async fn create(c: &Cluster, v: serde_json::Value) -> Pod {
    let mut pod: Pod = serde_json::from_value(v).expect("pod");
    let spec = pod.spec.as_mut().expect("spec");
    spec.node_name = Some(c.node.clone());
    spec.termination_grace_period_seconds = Some(1);
    c.pods("default")
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod")
}

fn waiting(p: &Pod) -> Option<(String, String)> {
    let s = p.status.as_ref()?.container_statuses.as_ref()?.first()?;
    let w = s.state.as_ref()?.waiting.as_ref()?;
    Some((
        w.reason.clone().unwrap_or_default(),
        w.message.clone().unwrap_or_default(),
    ))
}

fn running(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

fn sleeper(name: &str, host_port: Option<u16>) -> serde_json::Value {
    let mut c = json!({"name": "main", "image": "kaze/busybox:1", "command": ["sleep", "3600"]});
    if let Some(p) = host_port {
        c["ports"] = json!([{"containerPort": 8080, "hostPort": p}]);
    }
    json!({"metadata": {"name": name}, "spec": {"containers": [c]}})
}

#[test]
fn bad_specs_are_pod_status_and_events_never_a_crash() {
    // hostPort pods: portmap's chains and rules stay in the test's own network namespace
    testkit::in_netns("kl-bad", async {
        let mut c = Cluster::new("bad", 235).await;
        c.start_kubelet();
        c.wait_node().await;

        // A mount of no volume never reaches the kubelet: the API refuses it as upstream's does
        // (the kubelet's own answer to one, for pods from other sources, is in `pods.rs`).
        let mut ghost: Pod = serde_json::from_value(json!({"metadata": {"name": "ghost-volume"},
            "spec": {"nodeName": c.node, "containers": [{
                "name": "main", "image": "kaze/busybox:1", "command": ["sleep", "3600"],
                "volumeMounts": [{"name": "ghost", "mountPath": "/ghost"}]}]}}))
        .expect("pod");
        ghost
            .spec
            .as_mut()
            .expect("spec")
            .termination_grace_period_seconds = Some(1);
        match c
            .pods("default")
            .create(&PostParams::default(), &ghost)
            .await
        {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{e:?}");
                assert!(
                    e.message
                        .contains(r#"spec.containers[0].volumeMounts[0].name: Not found: "ghost""#),
                    "{e:?}"
                );
            }
            other => panic!("a mount of no volume was not refused: {other:?}"),
        }
        create(
            &c,
            json!({"metadata": {"name": "bad-image"}, "spec": {"containers": [{
                "name": "main", "image": "kaze/BusyBox:1", "command": ["sleep", "3600"]}]}}),
        )
        .await;
        let port = testkit::free_port();
        let first = create(&c, sleeper("port-first", Some(port))).await;
        c.wait_pod("default", "port-first", "port-first running", running)
            .await;
        let second = create(&c, sleeper("port-second", Some(port))).await;

        let want = "Failed to apply default image tag \"kaze/BusyBox:1\": couldn't parse image name \"kaze/BusyBox:1\": invalid reference format";
        let p = c
            .wait_pod("default", "bad-image", "InvalidImageName", |p| {
                waiting(p).is_some_and(|(r, _)| r == "InvalidImageName")
            })
            .await;
        assert_eq!(waiting(&p).expect("waiting").1, want);
        assert_eq!(c.warning_event("bad-image", "InspectFailed").await, want);

        let p = c
            .wait_pod("default", "port-second", "the second pod rejected", |p| {
                p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
            })
            .await;
        let s = p.status.expect("status");
        assert_eq!(s.reason.as_deref(), Some("NodePorts"));
        assert_eq!(
            s.message.as_deref(),
            Some("Pod was rejected: Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports")
        );
        assert_eq!(
            c.warning_event("port-second", "NodePorts").await,
            "Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports"
        );
        let second_uid = second.metadata.uid.clone().expect("uid");
        assert!(
            c.pod_containers(&second_uid).is_empty(),
            "the rejected pod got no sandbox"
        );
        let first_uid = first.metadata.uid.clone().expect("uid");
        assert!(
            c.running(&first_uid, "main").is_some(),
            "the first keeps running"
        );

        // The port is free again once the first pod is gone: a new pod gets it, the rejected one
        // stays rejected (as upstream).
        c.pods("default")
            .delete("port-first", &DeleteParams::default())
            .await
            .expect("delete");
        c.wait_pod_gone("default", "port-first").await;
        create(&c, sleeper("port-third", Some(port))).await;
        c.wait_pod("default", "port-third", "port-third running", running)
            .await;
        let p = c.pods("default").get("port-second").await.expect("get");
        assert_eq!(p.status.and_then(|s| s.phase).as_deref(), Some("Failed"));
        assert!(c.pod_containers(&second_uid).is_empty());

        // A sysctl that is neither safe nor allowed: rejected at admission (SysctlForbidden).
        let mut unsafe_sysctl = sleeper("unsafe-sysctl", None);
        unsafe_sysctl["spec"]["securityContext"] =
            json!({"sysctls": [{"name": "net.core.somaxconn", "value": "1024"}]});
        let unsafe_pod = create(&c, unsafe_sysctl).await;
        let p = c
            .wait_pod("default", "unsafe-sysctl", "the sysctl pod rejected", |p| {
                p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
            })
            .await;
        let s = p.status.expect("status");
        assert_eq!(
            (s.reason.as_deref(), s.message.as_deref()),
            (
                Some("SysctlForbidden"),
                Some("Pod was rejected: forbidden sysctl: \"net.core.somaxconn\" not allowlisted")
            )
        );
        assert!(c
            .pod_containers(&unsafe_pod.metadata.uid.clone().expect("uid"))
            .is_empty());

        // More CPU than the node has: rejected at admission (OutOfcpu, upstream's message).
        let mut big = sleeper("too-big", None);
        big["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "1000"}});
        create(&c, big).await;
        let p = c
            .wait_pod("default", "too-big", "the big pod rejected", |p| {
                p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
            })
            .await;
        let s = p.status.expect("status");
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(
            (s.reason.as_deref(), s.message),
            (
                Some("OutOfcpu"),
                Some(format!(
                    "Pod was rejected: Node didn't have enough resource: cpu, requested: 1000000, used: 0, capacity: {}",
                    cpus * 1000
                ))
            )
        );

        // A RuntimeClass whose handler the runtime does not have: the sandbox fails as upstream's
        // kubelet reports it and the pod stays Pending (never runs on runc); `runc` runs.
        let classes: kube::Api<RuntimeClass> = kube::Api::all(c.client.clone());
        for (name, handler) in [("kata", "kata"), ("plain", "runc")] {
            let rc: RuntimeClass =
                serde_json::from_value(json!({"metadata": {"name": name}, "handler": handler}))
                    .expect("class");
            classes
                .create(&PostParams::default(), &rc)
                .await
                .expect("create class");
        }
        let mut kata = sleeper("kata", None);
        kata["spec"]["runtimeClassName"] = json!("kata");
        let kata_pod = create(&c, kata).await;
        assert_eq!(
            c.warning_event("kata", "FailedCreatePodSandBox").await,
            "Failed to create pod sandbox: RuntimeHandler \"kata\" not supported"
        );
        let mut plain = sleeper("plain", None);
        plain["spec"]["runtimeClassName"] = json!("plain");
        create(&c, plain).await;
        c.wait_pod("default", "plain", "the runc-class pod running", running)
            .await;
        let p = c.pods("default").get("kata").await.expect("get");
        assert_eq!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Pending")
        );
        assert_eq!(
            waiting(&p).map(|w| w.0).as_deref(),
            Some("ContainerCreating")
        );
        assert!(c
            .pod_containers(&kata_pod.metadata.uid.clone().expect("uid"))
            .is_empty());

        // Nothing above hurt the kubelet: a good pod runs.
        create(&c, sleeper("good", None)).await;
        c.wait_pod("default", "good", "the good pod running", running)
            .await;
        for name in [
            "port-third",
            "good",
            "bad-image",
            "port-second",
            "unsafe-sysctl",
            "too-big",
            "kata",
            "plain",
        ] {
            c.pods("default")
                .delete(name, &DeleteParams::default())
                .await
                .expect("delete");
        }
        for name in [
            "port-third",
            "good",
            "bad-image",
            "port-second",
            "unsafe-sysctl",
            "too-big",
            "kata",
            "plain",
        ] {
            c.wait_pod_gone("default", name).await;
        }
    })
}
