use super::*;

fn node(name: &str, labels: &[(&str, &str)]) -> Node {
    serde_json::from_value(json!({"metadata": {"name": name,
        "labels": labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>()}}))
    .unwrap()
}

fn claim(name: &str, spec: Value) -> PodClaim {
    let c: ResourceClaim = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "ns"}, "spec": spec.clone()}))
    .unwrap();
    PodClaim {
        claim: Arc::new(c),
        spec,
        allocation: None,
    }
}

fn gpu(name: &str, model: &str, numa: i64) -> Value {
    json!({"name": name, "attributes": {"model": {"string": model}, "numa": {"int": numa}},
        "capacity": {"memory": {"value": "40Gi"}}})
}

fn slice(driver: &str, pool: &str, reach: Value, devices: Vec<Value>) -> Value {
    let mut s = json!({"driver": driver, "pool": {"name": pool, "generation": 1, "resourceSliceCount": 1},
        "devices": devices});
    for (k, v) in reach.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

fn claims_with(claims: Vec<PodClaim>, slices: Vec<Value>) -> PodClaims {
    let mut pools_: Vec<Pool> = slices
        .into_iter()
        .map(|s| Pool {
            driver: text(&s, "driver").into(),
            name: s["pool"]["name"].as_str().unwrap().into(),
            slices: vec![s],
            incomplete: false,
        })
        .collect();
    pools_.sort_by(|a, b| (&a.driver, &a.name).cmp(&(&b.driver, &b.name)));
    PodClaims {
        ns: "ns".into(),
        claims,
        pools: pools_,
        classes: [
            ("gpu".to_string(), json!({"selectors": [{"cel": {"expression": "device.driver == 'gpu.example.com'"}}],
                "config": [{"opaque": {"driver": "gpu.example.com", "parameters": {"mode": "fast"}}}]})),
            ("any".to_string(), json!({})),
        ]
        .into_iter()
        .collect(),
        in_use: HashSet::new(),
    }
}

fn exact(name: &str, class: &str, count: u64, selectors: &[&str]) -> Value {
    json!({"name": name, "exactly": {"deviceClassName": class, "allocationMode": "ExactCount", "count": count,
        "selectors": selectors.iter().map(|s| json!({"cel": {"expression": s}})).collect::<Vec<_>>()}})
}

fn devices_of(a: &Value) -> Vec<String> {
    a["devices"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}:{}",
                r["request"].as_str().unwrap(),
                r["device"].as_str().unwrap()
            )
        })
        .collect()
}

fn local(n: &str) -> Value {
    json!({"nodeName": n})
}

#[test]
fn a_request_takes_matching_free_devices_of_the_nodes_slices() {
    let pc = claims_with(
        vec![claim(
            "c",
            json!({"devices": {"requests": [exact("gpu", "gpu", 2, &["device.attributes['gpu.example.com'].model == 'a100'"])]}}),
        )],
        vec![
            slice(
                "gpu.example.com",
                "n1",
                local("n1"),
                vec![
                    gpu("g0", "t4", 0),
                    gpu("g1", "a100", 0),
                    gpu("g2", "a100", 1),
                ],
            ),
            slice(
                "gpu.example.com",
                "n2",
                local("n2"),
                vec![gpu("g0", "a100", 0)],
            ),
            slice(
                "nic.example.com",
                "n1",
                local("n1"),
                vec![json!({"name": "nic0"})],
            ),
        ],
    );
    let out = pc.filter(&node("n1", &[])).unwrap();
    let a = out[0].as_ref().unwrap();
    assert_eq!(devices_of(a), ["gpu:g1", "gpu:g2"]);
    assert_eq!(a["devices"]["results"][0]["driver"], "gpu.example.com");
    assert_eq!(a["devices"]["results"][0]["pool"], "n1");
    // node-local devices pin the claim to the node
    assert_eq!(
        a["nodeSelector"],
        json!({"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]})
    );
    // the class's opaque configuration goes with the request
    assert_eq!(
        a["devices"]["config"],
        json!([{"source": "FromClass", "requests": ["gpu"], "opaque": {"driver": "gpu.example.com", "parameters": {"mode": "fast"}}}])
    );
    // n2 has one a100 only
    assert_eq!(pc.filter(&node("n2", &[])).unwrap_err(), CANNOT_ALLOCATE);
    // a node without slices
    assert_eq!(pc.filter(&node("n3", &[])).unwrap_err(), CANNOT_ALLOCATE);
}

#[test]
fn allocated_devices_are_not_handed_out_twice() {
    let mut pc = claims_with(
        vec![claim(
            "c",
            json!({"devices": {"requests": [exact("gpu", "gpu", 1, &[])]}}),
        )],
        vec![slice(
            "gpu.example.com",
            "n1",
            local("n1"),
            vec![gpu("g0", "a", 0), gpu("g1", "a", 0)],
        )],
    );
    pc.in_use
        .insert(("gpu.example.com".into(), "n1".into(), "g0".into()));
    let out = pc.filter(&node("n1", &[])).unwrap();
    assert_eq!(devices_of(out[0].as_ref().unwrap()), ["gpu:g1"]);
    pc.in_use
        .insert(("gpu.example.com".into(), "n1".into(), "g1".into()));
    assert_eq!(pc.filter(&node("n1", &[])).unwrap_err(), CANNOT_ALLOCATE);
    // admin access may take a device in use, and says so
    let admin = json!({"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu",
        "allocationMode": "ExactCount", "count": 1, "adminAccess": true}}]}});
    pc.claims = vec![claim("c", admin)];
    let out = pc.filter(&node("n1", &[])).unwrap();
    assert_eq!(
        out[0].as_ref().unwrap()["devices"]["results"][0]["adminAccess"],
        true
    );
}

#[test]
fn all_claims_of_a_pod_are_allocated_together_with_backtracking() {
    // c1 would take g0 first, but c2's constraint needs two devices on one NUMA node: g0 and
    // g1 are on 0, g2 alone on 1, so c1 must end up with g2
    let c1 = claim(
        "c1",
        json!({"devices": {"requests": [exact("one", "gpu", 1, &[])]}}),
    );
    let c2 = claim(
        "c2",
        json!({"devices": {
        "requests": [exact("two", "gpu", 2, &[])],
        "constraints": [{"matchAttribute": "gpu.example.com/numa"}]}}),
    );
    let pc = claims_with(
        vec![c1, c2],
        vec![slice(
            "gpu.example.com",
            "n1",
            local("n1"),
            vec![gpu("g0", "a", 0), gpu("g1", "a", 0), gpu("g2", "a", 1)],
        )],
    );
    let out = pc.filter(&node("n1", &[])).unwrap();
    assert_eq!(devices_of(out[0].as_ref().unwrap()), ["one:g2"]);
    assert_eq!(devices_of(out[1].as_ref().unwrap()), ["two:g0", "two:g1"]);
}

#[test]
fn first_available_takes_the_first_subrequest_that_fits() {
    let spec = json!({"devices": {"requests": [{"name": "gpu", "firstAvailable": [
        {"name": "big", "deviceClassName": "gpu", "allocationMode": "ExactCount", "count": 1,
         "selectors": [{"cel": {"expression": "device.attributes['gpu.example.com'].model == 'h100'"}}]},
        {"name": "small", "deviceClassName": "gpu", "allocationMode": "ExactCount", "count": 2}]}]}});
    let pc = claims_with(
        vec![claim("c", spec)],
        vec![slice(
            "gpu.example.com",
            "n1",
            local("n1"),
            vec![gpu("g0", "t4", 0), gpu("g1", "t4", 0)],
        )],
    );
    let out = pc.filter(&node("n1", &[])).unwrap();
    assert_eq!(
        devices_of(out[0].as_ref().unwrap()),
        ["gpu/small:g0", "gpu/small:g1"]
    );
}

#[test]
fn all_mode_takes_every_matching_device_or_none() {
    let spec = json!({"devices": {"requests": [{"name": "nics", "exactly": {"deviceClassName": "any", "allocationMode": "All"}}]}});
    let mut pc = claims_with(
        vec![claim("c", spec)],
        vec![slice(
            "nic.example.com",
            "n1",
            local("n1"),
            vec![json!({"name": "a"}), json!({"name": "b"})],
        )],
    );
    let out = pc.filter(&node("n1", &[])).unwrap();
    assert_eq!(devices_of(out[0].as_ref().unwrap()), ["nics:a", "nics:b"]);
    pc.in_use
        .insert(("nic.example.com".into(), "n1".into(), "b".into()));
    assert_eq!(pc.filter(&node("n1", &[])).unwrap_err(), CANNOT_ALLOCATE);
}

#[test]
fn slices_reach_nodes_by_name_selector_or_all() {
    let spec = json!({"devices": {"requests": [exact("d", "any", 1, &[])]}});
    let by_label = json!({"nodeSelector": {"nodeSelectorTerms": [{"matchExpressions": [
        {"key": "rack", "operator": "In", "values": ["r1"]}]}]}});
    let pc = claims_with(
        vec![claim("c", spec.clone())],
        vec![slice(
            "net.example.com",
            "rack1",
            by_label.clone(),
            vec![json!({"name": "x"})],
        )],
    );
    let out = pc.filter(&node("n1", &[("rack", "r1")])).unwrap();
    assert_eq!(
        out[0].as_ref().unwrap()["nodeSelector"],
        by_label["nodeSelector"]
    );
    assert_eq!(
        pc.filter(&node("n2", &[("rack", "r2")])).unwrap_err(),
        CANNOT_ALLOCATE
    );
    let pc = claims_with(
        vec![claim("c", spec)],
        vec![slice(
            "net.example.com",
            "global",
            json!({"allNodes": true}),
            vec![json!({"name": "x"})],
        )],
    );
    let out = pc.filter(&node("n9", &[])).unwrap();
    assert!(out[0].as_ref().unwrap().get("nodeSelector").is_none());
}

#[test]
fn an_allocated_claim_fits_only_its_nodes() {
    let mut c = claim(
        "c",
        json!({"devices": {"requests": [exact("gpu", "gpu", 1, &[])]}}),
    );
    c.allocation = Some(
        json!({"devices": {"results": []}, "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
        {"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}}),
    );
    let pc = claims_with(vec![c], vec![]);
    assert_eq!(pc.filter(&node("n1", &[])).unwrap(), vec![None]);
    assert_eq!(pc.filter(&node("n2", &[])).unwrap_err(), NOT_ON_NODE);
}

#[test]
fn tainted_devices_need_a_toleration_and_cel_errors_are_reported() {
    let mut tainted = gpu("g0", "a", 0);
    tainted["taints"] = json!([{"key": "broken", "value": "true", "effect": "NoSchedule"}]);
    let pc = claims_with(
        vec![claim(
            "c",
            json!({"devices": {"requests": [exact("gpu", "gpu", 1, &[])]}}),
        )],
        vec![slice(
            "gpu.example.com",
            "n1",
            local("n1"),
            vec![tainted.clone()],
        )],
    );
    assert_eq!(pc.filter(&node("n1", &[])).unwrap_err(), CANNOT_ALLOCATE);
    let tolerating = json!({"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu",
        "allocationMode": "ExactCount", "count": 1, "tolerations": [{"key": "broken", "operator": "Exists"}]}}]}});
    let pc = claims_with(
        vec![claim("c", tolerating)],
        vec![slice("gpu.example.com", "n1", local("n1"), vec![tainted])],
    );
    assert!(pc.filter(&node("n1", &[])).is_ok());
    let pc = claims_with(
        vec![claim(
            "c",
            json!({"devices": {"requests": [exact("gpu", "gpu", 1, &["device.attributes['gpu.example.com'].missing == 1"])]}}),
        )],
        vec![slice(
            "gpu.example.com",
            "n1",
            local("n1"),
            vec![gpu("g0", "a", 0)],
        )],
    );
    let e = pc.filter(&node("n1", &[])).unwrap_err();
    assert!(
        e.starts_with("claim ns/c, request gpu: selector #0: CEL runtime error:"),
        "{e}"
    );
}

#[test]
fn pools_use_their_newest_generation() {
    let mk = |generation: i64, count: i64, device: &str| -> Arc<ResourceSlice> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": format!("s{generation}{device}")}, "spec": {
                "driver": "d.example.com", "nodeName": "n1",
                "pool": {"name": "p", "generation": generation, "resourceSliceCount": count},
                "devices": [{"name": device}]}}),
            )
            .unwrap(),
        )
    };
    let p = pools(&[mk(1, 1, "old"), mk(2, 2, "new")]);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].slices.len(), 1);
    assert_eq!(p[0].slices[0]["devices"][0]["name"], "new");
    assert!(p[0].incomplete);
}
