//! Topology-aware routing (`service.kubernetes.io/topology-mode: Auto`) as the EndpointSlice
//! controller does it upstream, against the real kaze apiserver (embedded store, in-process):
//! nodes in zones with allocatable CPU, ready pods on them (no kubelet runs: the test writes
//! the pods' status), and a Service with the annotation. The slices' `forZones` hints follow
//! the zones' CPU shares, move when a node joins, and go when there are too few endpoints or
//! the annotation goes; each change of state is told in an Event on the Service, as the real
//! kubectl 1.37 shows them.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::Client;
use serde_json::json;

/// A Ready node in `zone` (none: a control-plane node without a zone) with `cpu` allocatable.
async fn node(client: &Client, name: &str, zone: Option<&str>, cpu: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let labels = match zone {
        Some(z) => json!({"topology.kubernetes.io/zone": z}),
        None => json!({"node-role.kubernetes.io/control-plane": "true"}),
    };
    common::create(
        &nodes,
        json!({"metadata": {"name": name, "labels": labels}}),
    )
    .await;
    let status = json!({"status": {
        "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
        "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True"}],
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("node status");
}

/// A Running, Ready pod `app=web` on `node` with address `ip`.
async fn pod(pods: &Api<Pod>, name: &str, node: &str, ip: &str) {
    common::create(
        pods,
        json!({"metadata": {"name": name, "labels": {"app": "web"}},
               "spec": {"nodeName": node, "containers": [{"name": "c", "image": "kaze/busybox:1"}]}}),
    )
    .await;
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("pod status");
}

/// Per endpoint of the service's slices, by address: (its zone, the zones it is hinted for).
async fn hints(slices: &Api<EndpointSlice>) -> BTreeMap<String, (String, Vec<String>)> {
    let list = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .expect("slices");
    list.items
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .map(|e| {
            let zones = e
                .hints
                .iter()
                .flat_map(|h| h.for_zones.iter().flatten())
                .map(|z| z.name.clone())
                .collect();
            (
                e.addresses[0].clone(),
                (e.zone.clone().unwrap_or_default(), zones),
            )
        })
        .collect()
}

/// How many endpoints are hinted for each zone ("" counts endpoints without a hint).
fn per_zone(h: &BTreeMap<String, (String, Vec<String>)>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (_, zones) in h.values() {
        if zones.is_empty() {
            *out.entry(String::new()).or_default() += 1;
        }
        for z in zones {
            *out.entry(z.clone()).or_default() += 1;
        }
    }
    out
}

/// Waits until the slices' hints count `want` per zone; returns them (else fails showing the
/// last ones seen).
async fn hinted(
    slices: &Api<EndpointSlice>,
    what: &str,
    want: &[(&str, usize)],
) -> BTreeMap<String, (String, Vec<String>)> {
    let want: BTreeMap<String, usize> = want.iter().map(|(z, n)| (z.to_string(), *n)).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let h = hints(slices).await;
        if per_zone(&h) == want {
            return h;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: wanted {want:?}, the slices say {h:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_hints_follow_the_zones_cpu_and_events_say_why_not() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = common::control_plane(dir.path(), &["endpointslice"]).await;
    let (kc, client) = (cp.kubeconfig.clone(), cp.client.clone());

    // two zones of 4 cores each, and a control-plane node that counts for neither
    node(&client, "a1", Some("zone-a"), "4").await;
    node(&client, "b1", Some("zone-b"), "4").await;
    node(&client, "cp", None, "16").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for i in 1..=4 {
        pod(&pods, &format!("web-{i}"), "a1", &format!("10.42.0.{i}")).await;
    }
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    common::create(
        &services,
        json!({"metadata": {"name": "web", "annotations": {"service.kubernetes.io/topology-mode": "Auto"}},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
    )
    .await;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");

    // 1. All four endpoints are in zone-a; zone-b has half the CPU, so two are hinted for it.
    let h = hinted(
        &slices,
        "half the endpoints hinted for each zone",
        &[("zone-a", 2), ("zone-b", 2)],
    )
    .await;
    assert!(
        h.values().all(|(zone, _)| zone == "zone-a"),
        "every endpoint's own zone is zone-a: {h:?}"
    );
    let enabled = common::event(
        &client,
        "web",
        "TopologyAwareHintsEnabled",
        "Topology Aware Hints has been enabled, addressType: IPv4",
    )
    .await;
    assert_eq!(
        enabled,
        "Topology Aware Hints has been enabled, addressType: IPv4"
    );

    // 2. A node of 8 cores joins in zone-c: no pod changed, yet the shares move to 1/1/2.
    node(&client, "c1", Some("zone-c"), "8").await;
    hinted(
        &slices,
        "hints in proportion to 4, 4 and 8 cores",
        &[("zone-a", 1), ("zone-b", 1), ("zone-c", 2)],
    )
    .await;

    // 3. The annotation goes: the hints go, and an Event says so.
    services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"service.kubernetes.io/topology-mode": null}}}),
            ),
        )
        .await
        .expect("remove the annotation");
    hinted(&slices, "no hints without the annotation", &[("", 4)]).await;
    let disabled = common::event(
        &client,
        "web",
        "TopologyAwareHintsDisabled",
        "Topology Aware Hints has been disabled, addressType: IPv4",
    )
    .await;
    assert_eq!(
        disabled,
        "Topology Aware Hints has been disabled, addressType: IPv4"
    );

    // 4. Back on (the older annotation, lower case), with two endpoints for three zones:
    //    too few to give every zone one, so no hints, and a warning that says why.
    for i in 3..=4 {
        // at once: no kubelet runs to finish a graceful deletion
        pods.delete(
            &format!("web-{i}"),
            &DeleteParams::default().grace_period(0),
        )
        .await
        .expect("delete pod");
    }
    services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"service.kubernetes.io/topology-aware-hints": "auto"}}}),
            ),
        )
        .await
        .expect("annotate");
    let message =
        "Insufficient number of endpoints (2 endpoints, 3 zones), addressType: IPv4".to_string();
    let said = common::event(&client, "web", "TopologyAwareHintsDisabled", &message).await;
    assert_eq!(said, message);
    hinted(&slices, "no hints for too few endpoints", &[("", 2)]).await;

    // 5. kubectl describe shows the story.
    let describe = testkit::kubectl_ok(&kc, &["describe", "service", "web"], None);
    for line in [
        "TopologyAwareHintsEnabled",
        "Topology Aware Hints has been enabled, addressType: IPv4",
        "Insufficient number of endpoints (2 endpoints, 3 zones)",
    ] {
        assert!(describe.contains(line), "{line:?} in:\n{describe}");
    }

    // 6. A third endpoint, in zone-b: as many endpoints as zones, but zone-c's share (1.5 of
    //    3) needs 2 of them within the overload threshold, so still none.
    pod(&pods, "web-5", "b1", "10.42.1.5").await;
    let message = "Unable to allocate minimum required endpoints to each zone without exceeding overload threshold, addressType: IPv4".to_string();
    let said = common::event(&client, "web", "TopologyAwareHintsDisabled", &message).await;
    assert_eq!(said, message);
    // and a fourth makes it work: zone-c gets two of the four
    pod(&pods, "web-6", "c1", "10.42.2.6").await;
    let h = hinted(
        &slices,
        "hints again with four endpoints",
        &[("zone-a", 1), ("zone-b", 1), ("zone-c", 2)],
    )
    .await;
    // the zone-b and zone-c endpoints stay home
    assert_eq!(h["10.42.1.5"].1, ["zone-b"], "{h:?}");
    assert_eq!(h["10.42.2.6"].1, ["zone-c"], "{h:?}");

    cp.stop().await;
}
