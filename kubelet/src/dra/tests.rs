use super::*;
use serde_json::json;

fn pod(v: serde_json::Value) -> Pod {
    serde_json::from_value(v).expect("pod")
}

fn gpu_pod() -> Pod {
    pod(json!({
        "metadata": {"name": "p", "namespace": "ns", "uid": "pod-1"},
        "spec": {
            "resourceClaims": [
                {"name": "gpu", "resourceClaimName": "c1"},
                {"name": "tmpl", "resourceClaimTemplateName": "t"},
            ],
            "containers": [
                {"name": "a", "resources": {"claims": [{"name": "gpu"}]}},
                {"name": "b", "resources": {"claims": [{"name": "gpu", "request": "r2"}]}},
                {"name": "c", "resources": {"claims": [{"name": "nope"}]}},
            ],
        },
        "status": {"resourceClaimStatuses": [{"name": "tmpl"}]},
    }))
}

#[test]
fn pod_claims_resolve_to_claim_names() {
    let p = gpu_pod();
    let claims = pod_claims(&p);
    assert_eq!(claim_name(&p, &claims[0]).expect("name"), Some("c1".into()));
    // a template whose status entry has no name: no claim was needed
    assert_eq!(claim_name(&p, &claims[1]).expect("none"), None);
    let mut waiting = p.clone();
    waiting.status = None;
    let err = claim_name(&waiting, &claims[1]).expect_err("not yet");
    assert_eq!(err.to_string(), "pod \"p\": ResourceClaim not created yet");
}

#[test]
fn claims_must_be_reserved_for_the_pod_and_allocated() {
    let claim: ResourceClaim = serde_json::from_value(json!({
        "metadata": {"name": "c1", "namespace": "ns", "uid": "claim-1"},
        "spec": {},
        "status": {
            "allocation": {"devices": {"results": [
                {"request": "gpu", "driver": "b.example.com", "pool": "n", "device": "d0"},
                {"request": "gpu", "driver": "a.example.com", "pool": "n", "device": "d1"},
                {"request": "gpu", "driver": "a.example.com", "pool": "n", "device": "d2"},
            ]}},
            "reservedFor": [{"resource": "pods", "name": "p", "uid": "pod-1"}],
        },
    }))
    .expect("claim");
    assert!(reserved_for(&claim, "pod-1"));
    assert!(!reserved_for(&claim, "pod-2"));
    assert_eq!(
        allocated_drivers(&claim).expect("allocated"),
        BTreeSet::from(["a.example.com".to_string(), "b.example.com".to_string()])
    );
    let mut bare = claim.clone();
    bare.status = None;
    assert!(allocated_drivers(&bare).is_none());
}

fn manager(dir: &Path) -> Manager {
    Manager::new(Config::under_root(dir, vec![dir.join("cdi")]), None)
}

fn prepared_claim() -> ClaimState {
    let dev = |name: &str, requests: &[&str]| PreparedDevice {
        request_names: requests.iter().map(|r| r.to_string()).collect(),
        pool_name: "n".into(),
        device_name: name.into(),
        cdi_device_ids: vec![format!("example.com/gpu={name}")],
    };
    ClaimState {
        uid: "claim-1".into(),
        name: "c1".into(),
        namespace: "ns".into(),
        pods: BTreeSet::from(["pod-1".to_string()]),
        drivers: BTreeMap::from([(
            "gpu.example.com".to_string(),
            Some(vec![dev("g1", &["r1"]), dev("g2", &["r2"]), dev("g3", &[])]),
        )]),
    }
}

#[test]
fn containers_get_the_cdi_edits_of_their_claims_and_requests() {
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(tmp.path().join("cdi")).expect("cdi dir");
    std::fs::write(
        tmp.path().join("cdi/gpu.json"),
        r#"{"cdiVersion": "0.6.0", "kind": "example.com/gpu", "devices": [
            {"name": "g1", "containerEdits": {"env": ["G1=1"]}},
            {"name": "g2", "containerEdits": {"env": ["G2=1"]}},
            {"name": "g3", "containerEdits": {"env": ["G3=1"]}}]}"#,
    )
    .expect("spec");
    let m = manager(tmp.path());
    let p = gpu_pod();
    let containers = &p.spec.as_ref().expect("spec").containers;
    // not prepared yet
    let err = m
        .container_edits(&p, &containers[0])
        .expect_err("unprepared");
    assert_eq!(err.to_string(), "ResourceClaim c1 is not prepared");
    m.lock().insert("claim-1".into(), prepared_claim());
    assert!(m.prepared_for(&p));
    let all = m.container_edits(&p, &containers[0]).expect("a");
    assert_eq!(all.env, ["G1=1", "G2=1", "G3=1"]);
    let r2 = m.container_edits(&p, &containers[1]).expect("b");
    assert_eq!(r2.env, ["G2=1", "G3=1"]);
    assert!(m.container_edits(&p, &containers[2]).is_err());
    // a device the spec dirs do not define fails the container
    std::fs::remove_file(tmp.path().join("cdi/gpu.json")).expect("rm");
    let err = m.container_edits(&p, &containers[0]).expect_err("gone");
    assert!(err.to_string().contains("unresolvable"), "{err}");
}

#[tokio::test]
async fn the_checkpoint_survives_a_restart_and_unused_unprepared_claims_go() {
    let tmp = tempfile::tempdir().expect("tmp");
    {
        let m = manager(tmp.path());
        let mut claims = m.lock();
        claims.insert("claim-1".into(), prepared_claim());
        let mut pending = prepared_claim();
        pending.uid = "claim-2".into();
        pending.name = "c2".into();
        pending.drivers.insert("gpu.example.com".into(), None);
        claims.insert("claim-2".into(), pending);
        m.save(&claims).expect("save");
    }
    let m = manager(tmp.path());
    assert_eq!(m.claims().len(), 2);
    assert_eq!(m.claims()[0], prepared_claim());
    // claim-2 was never prepared: dropped at once; claim-1's driver is not registered: kept
    let err = m.unprepare("pod-1").await.expect_err("no driver");
    assert_eq!(
        err.to_string(),
        "DRA driver gpu.example.com is not registered"
    );
    let left = m.claims();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].uid, "claim-1");
    assert!(left[0].pods.is_empty());
}

#[test]
fn requests_select_devices() {
    let d = |r: &[&str]| PreparedDevice {
        request_names: r.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    assert!(serves(&d(&["a"]), None));
    assert!(serves(&d(&["a"]), Some("a")));
    assert!(!serves(&d(&["a"]), Some("b")));
    assert!(serves(&d(&[]), Some("b")));
    assert!(serves(&d(&["a/sub"]), Some("a")));
}
