//! Unit tests of the scheduling algorithm: filters with upstream's reasons, scoring, ties.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, Node, NodeSpec, NodeStatus, Pod, PodAffinityTerm,
    PodAntiAffinity, PodSpec, ResourceRequirements, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::config::Profile;
use crate::framework::{schedule, NodeInfo};

fn node(name: &str, cpu: &str, mem: &str, labels: &[(&str, &str)]) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            allocatable: Some(
                [("cpu", cpu), ("memory", mem), ("pods", "110")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                    .collect(),
            ),
            ..Default::default()
        }),
    }
}

fn pod(name: &str, cpu: &str, mem: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                resources: Some(ResourceRequirements {
                    requests: Some(
                        [("cpu", cpu), ("memory", mem)]
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                            .collect(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

fn snapshot(nodes: Vec<Node>) -> BTreeMap<String, NodeInfo> {
    nodes
        .into_iter()
        .map(|n| {
            (
                n.metadata.name.clone().unwrap_or_default(),
                NodeInfo::new(Arc::new(n)),
            )
        })
        .collect()
}

fn profile() -> Profile {
    Profile::default_named("default-scheduler")
}

#[test]
fn reasons_are_counted_and_worded_like_upstream() {
    let mut tainted = node("c", "8", "8Gi", &[]);
    tainted.spec = Some(NodeSpec {
        taints: Some(vec![Taint {
            key: "dedicated".into(),
            value: Some("gpu".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        }]),
        ..Default::default()
    });
    let nodes = snapshot(vec![
        node("a", "1", "8Gi", &[]),
        node("b", "1", "8Gi", &[]),
        tainted,
    ]);
    let err = schedule(&pod("p", "2", "1Gi"), &nodes, &profile(), 0).expect_err("nothing fits");
    assert_eq!(
        err.to_string(),
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient cpu."
    );
    // a cluster without nodes says so, as upstream's ErrNoNodesAvailable
    let none =
        schedule(&pod("p", "1", "1Gi"), &snapshot(vec![]), &profile(), 0).expect_err("no nodes");
    assert_eq!(none.to_string(), "no nodes available to schedule pods");
}

#[test]
fn toleration_and_selector_choose_the_right_node() {
    let mut gpu = node("gpu", "8", "8Gi", &[("accel", "yes")]);
    gpu.spec = Some(NodeSpec {
        taints: Some(vec![Taint {
            key: "dedicated".into(),
            value: Some("gpu".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        }]),
        ..Default::default()
    });
    let nodes = snapshot(vec![node("plain", "8", "8Gi", &[]), gpu]);
    let mut p = pod("p", "100m", "64Mi");
    let spec = p.spec.as_mut().expect("spec");
    spec.node_selector = Some(
        [("accel".to_string(), "yes".to_string())]
            .into_iter()
            .collect(),
    );
    let err = schedule(&p, &nodes, &profile(), 0).expect_err("taint not tolerated");
    assert!(
        err.to_string()
            .contains("1 node(s) didn't match Pod's node affinity/selector"),
        "{err}"
    );
    p.spec.as_mut().expect("spec").tolerations = Some(vec![Toleration {
        key: Some("dedicated".into()),
        operator: Some("Equal".into()),
        value: Some("gpu".into()),
        effect: Some("NoSchedule".into()),
        toleration_seconds: None,
    }]);
    assert_eq!(schedule(&p, &nodes, &profile(), 0).expect("fits"), "gpu");
}

#[test]
fn bound_pods_consume_resources_and_ports() {
    let mut nodes = snapshot(vec![node("a", "1", "1Gi", &[]), node("b", "4", "4Gi", &[])]);
    let mut hp = pod("web", "100m", "10Mi");
    hp.spec.as_mut().expect("spec").containers[0].ports = Some(vec![ContainerPort {
        container_port: 80,
        host_port: Some(8080),
        ..Default::default()
    }]);
    nodes.get_mut("b").expect("b").add_pod(&hp);
    // b has room but its host port is taken; a has the port but not the cpu.
    let mut p = hp.clone();
    p.metadata.name = Some("web2".into());
    p.spec.as_mut().expect("spec").containers[0]
        .resources
        .as_mut()
        .expect("res")
        .requests
        .as_mut()
        .expect("req")
        .insert("cpu".into(), Quantity("2".into()));
    let err = schedule(&p, &nodes, &profile(), 0).expect_err("no node");
    assert_eq!(
        err.to_string(),
        "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) didn't have free ports for the requested pod ports."
    );
}

#[test]
fn least_allocated_prefers_the_emptier_node() {
    let mut nodes = snapshot(vec![
        node("busy", "4", "4Gi", &[]),
        node("idle", "4", "4Gi", &[]),
    ]);
    nodes
        .get_mut("busy")
        .expect("busy")
        .add_pod(&pod("x", "3", "3Gi"));
    for tie in 0..4 {
        assert_eq!(
            schedule(&pod("p", "500m", "256Mi"), &nodes, &profile(), tie).expect("fits"),
            "idle"
        );
    }
}

#[test]
fn equal_nodes_take_turns() {
    let nodes = snapshot(vec![node("a", "4", "4Gi", &[]), node("b", "4", "4Gi", &[])]);
    let picks: Vec<String> = (0..4)
        .map(|t| schedule(&pod("p", "1", "1Gi"), &nodes, &profile(), t).expect("fits"))
        .collect();
    assert!(
        picks.contains(&"a".to_string()) && picks.contains(&"b".to_string()),
        "{picks:?}"
    );
}

#[test]
fn required_anti_affinity_spreads_replicas() {
    let mut nodes = snapshot(vec![
        node("a", "4", "4Gi", &[("kubernetes.io/hostname", "a")]),
        node("b", "4", "4Gi", &[("kubernetes.io/hostname", "b")]),
    ]);
    let mut replica = pod("r1", "100m", "10Mi");
    replica.metadata.labels = Some(
        [("app".to_string(), "web".to_string())]
            .into_iter()
            .collect(),
    );
    replica.spec.as_mut().expect("spec").affinity = Some(Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                label_selector: Some(LabelSelector {
                    match_labels: Some(
                        [("app".to_string(), "web".to_string())]
                            .into_iter()
                            .collect(),
                    ),
                    ..Default::default()
                }),
                topology_key: "kubernetes.io/hostname".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    });
    nodes.get_mut("a").expect("a").add_pod(&replica);
    let mut r2 = replica.clone();
    r2.metadata.name = Some("r2".into());
    assert_eq!(schedule(&r2, &nodes, &profile(), 0).expect("fits"), "b");
    nodes.get_mut("b").expect("b").add_pod(&r2);
    let mut r3 = replica.clone();
    r3.metadata.name = Some("r3".into());
    let err = schedule(&r3, &nodes, &profile(), 0).expect_err("both hosts taken");
    assert_eq!(
        err.to_string(),
        "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules."
    );
}

#[test]
fn node_condition_taints_keep_pods_away_unless_tolerated() {
    let condition_taint = |key: &str| Taint {
        key: format!("node.kubernetes.io/{key}"),
        value: None,
        effect: "NoSchedule".into(),
        time_added: None,
    };
    for key in [
        "not-ready",
        "unreachable",
        "memory-pressure",
        "disk-pressure",
        "pid-pressure",
        "network-unavailable",
        "unschedulable",
    ] {
        let mut sick = node("a", "4", "4Gi", &[]);
        sick.spec = Some(NodeSpec {
            taints: Some(vec![condition_taint(key)]),
            ..Default::default()
        });
        let nodes = snapshot(vec![sick]);
        let err = schedule(&pod("p", "1", "1Gi"), &nodes, &profile(), 0).expect_err(key);
        assert_eq!(
            err.to_string(),
            format!(
                "0/1 nodes are available: 1 node(s) had untolerated taint {{node.kubernetes.io/{key}: }}."
            )
        );
        let mut tolerating = pod("p", "1", "1Gi");
        tolerating.spec.as_mut().expect("spec").tolerations = Some(vec![Toleration {
            key: Some(format!("node.kubernetes.io/{key}")),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        }]);
        assert_eq!(
            schedule(&tolerating, &nodes, &profile(), 0).expect(key),
            "a"
        );
    }
    // A cordoned node carries both spec.unschedulable and its taint: one reason, as
    // upstream stops at the first failing filter.
    let mut cordoned = node("a", "1", "4Gi", &[]);
    cordoned.spec = Some(NodeSpec {
        unschedulable: Some(true),
        taints: Some(vec![condition_taint("unschedulable")]),
        ..Default::default()
    });
    let err = schedule(
        &pod("p", "2", "1Gi"),
        &snapshot(vec![cordoned]),
        &profile(),
        0,
    )
    .expect_err("cordoned");
    assert_eq!(
        err.to_string(),
        "0/1 nodes are available: 1 node(s) were unschedulable."
    );
}

#[test]
fn unschedulable_node_and_disabled_filter() {
    let mut cordoned = node("a", "4", "4Gi", &[]);
    cordoned.spec = Some(NodeSpec {
        unschedulable: Some(true),
        ..Default::default()
    });
    let nodes = snapshot(vec![cordoned]);
    let err = schedule(&pod("p", "1", "1Gi"), &nodes, &profile(), 0).expect_err("cordoned");
    assert_eq!(
        err.to_string(),
        "0/1 nodes are available: 1 node(s) were unschedulable."
    );
    let cfg = "profiles:\n- plugins:\n    filter:\n      disabled: [{name: NodeUnschedulable}]\n";
    let lenient = crate::config::from_yaml("x", cfg).expect("valid").remove(0);
    assert_eq!(
        schedule(&pod("p", "1", "1Gi"), &nodes, &lenient, 0).expect("fits when disabled"),
        "a"
    );
}

fn quantities(list: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    list.iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect()
}

fn with_allocatable(mut n: Node, extra: &[(&str, &str)]) -> Node {
    let alloc = n
        .status
        .as_mut()
        .and_then(|s| s.allocatable.as_mut())
        .expect("allocatable");
    alloc.extend(quantities(extra));
    n
}

fn container(name: &str, requests: &[(&str, &str)]) -> Container {
    Container {
        name: name.into(),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(requests)),
            limits: Some(quantities(
                &requests
                    .iter()
                    .copied()
                    .filter(|(k, _)| k.contains('/'))
                    .collect::<Vec<_>>(),
            )),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod_with(name: &str, containers: Vec<Container>) -> Pod {
    let mut p = pod(name, "0", "0");
    p.spec.as_mut().expect("spec").containers = containers;
    p
}

#[test]
fn extended_resources_are_counted_against_allocatable() {
    let nodes = snapshot(vec![
        with_allocatable(node("gpu", "8", "8Gi", &[]), &[("example.com/gpu", "2")]),
        node("plain", "8", "8Gi", &[]),
    ]);
    let one = pod_with("one", vec![container("c", &[("example.com/gpu", "1")])]);
    assert_eq!(schedule(&one, &nodes, &profile(), 0).expect("fits"), "gpu");
    let three = pod_with("three", vec![container("c", &[("example.com/gpu", "3")])]);
    assert_eq!(
        schedule(&three, &nodes, &profile(), 0)
            .expect_err("two GPUs only")
            .to_string(),
        "0/2 nodes are available: 2 Insufficient example.com/gpu."
    );
    // pods bound to the node hold their devices; one that goes gives them back
    let mut nodes = nodes;
    let held = pod_with("held", vec![container("c", &[("example.com/gpu", "2")])]);
    nodes.get_mut("gpu").expect("gpu").add_pod(&held);
    assert!(schedule(&one, &nodes, &profile(), 0).is_err());
    nodes.get_mut("gpu").expect("gpu").remove_pod(&held);
    assert_eq!(schedule(&one, &nodes, &profile(), 0).expect("freed"), "gpu");
    // hugepages and ephemeral storage are checked as well
    let huge = pod_with("huge", vec![container("c", &[("hugepages-2Mi", "4Mi")])]);
    assert_eq!(
        schedule(&huge, &nodes, &profile(), 0)
            .expect_err("no hugepages")
            .to_string(),
        "0/2 nodes are available: 2 Insufficient hugepages-2Mi."
    );
    let disk = pod_with(
        "disk",
        vec![container("c", &[("ephemeral-storage", "1Gi")])],
    );
    assert_eq!(
        schedule(&disk, &nodes, &profile(), 0)
            .expect_err("no storage reported")
            .to_string(),
        "0/2 nodes are available: 2 Insufficient ephemeral-storage."
    );
}

#[test]
fn sidecars_add_to_the_pod_and_to_later_init_containers() {
    use crate::framework::pod_requests;
    let mut p = pod_with("p", vec![container("app", &[("cpu", "1")])]);
    let mut sidecar = container("sidecar", &[("cpu", "500m")]);
    sidecar.restart_policy = Some("Always".into());
    p.spec.as_mut().expect("spec").init_containers = Some(vec![
        container("first", &[("cpu", "1200m")]),
        sidecar,
        container("after", &[("cpu", "1")]),
    ]);
    // containers 1 + sidecar 0.5 = 1.5; "after" runs beside the sidecar: 1.5; "first" 1.2
    assert_eq!(pod_requests(&p).cpu_milli, 1500);
    p.spec
        .as_mut()
        .expect("spec")
        .init_containers
        .as_mut()
        .expect("init")[2] = container("after", &[("cpu", "2")]);
    // "after" with the sidecar beside it: 2.5 > 1.5
    assert_eq!(pod_requests(&p).cpu_milli, 2500);
}

#[test]
fn pod_level_requests_and_resizes_count_as_upstream() {
    use crate::framework::pod_requests;
    use k8s_openapi::api::core::v1::{ContainerStatus, PodCondition, PodStatus};
    let mut p = pod_with(
        "p",
        vec![
            container("a", &[("cpu", "1"), ("memory", "1Gi")]),
            container("b", &[("cpu", "1")]),
        ],
    );
    p.spec.as_mut().expect("spec").resources = Some(ResourceRequirements {
        requests: Some(quantities(&[("cpu", "3")])),
        ..Default::default()
    });
    let r = pod_requests(&p);
    assert_eq!(
        (r.cpu_milli, r.memory),
        (3000, 1 << 30),
        "pod-level cpu, containers' memory"
    );
    p.spec.as_mut().expect("spec").resources = None;
    // a resize down not yet done: the running (larger) request counts
    p.status = Some(PodStatus {
        container_statuses: Some(vec![ContainerStatus {
            name: "a".into(),
            resources: Some(ResourceRequirements {
                requests: Some(quantities(&[("cpu", "2")])),
                ..Default::default()
            }),
            allocated_resources: Some(quantities(&[("cpu", "2")])),
            ..Default::default()
        }]),
        ..Default::default()
    });
    assert_eq!(pod_requests(&p).cpu_milli, 3000);
    // an infeasible resize up counts what the container has, not what its spec asks
    p.spec.as_mut().expect("spec").containers[0] = container("a", &[("cpu", "8")]);
    assert_eq!(pod_requests(&p).cpu_milli, 9000);
    p.status.as_mut().expect("status").conditions = Some(vec![PodCondition {
        type_: "PodResizePending".into(),
        reason: Some("Infeasible".into()),
        status: "True".into(),
        ..Default::default()
    }]);
    assert_eq!(pod_requests(&p).cpu_milli, 3000);
}
