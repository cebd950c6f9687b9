use super::*;
use serde_json::json;

pub(crate) fn node() -> NodeContext {
    NodeContext {
        node_name: "n1".into(),
        host_ip: Some("192.168.1.5".parse().unwrap()),
        cluster_dns: vec!["10.43.0.10".parse().unwrap()],
        cluster_domain: "cluster.local".into(),
        host_dns: DnsConfig {
            nameservers: vec!["1.1.1.1".parse().unwrap()],
            searches: vec!["corp".into()],
            options: vec![],
        },
    }
}

fn pod(spec: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web-1", "namespace": "team", "uid": "u-1", "labels": {"app": "web"}},
        "spec": spec,
    }))
    .unwrap()
}

#[test]
fn cluster_first_dns_and_dns_config_merge() {
    let p = pod(json!({
        "containers": [{"name": "a", "image": "x"}],
        "dnsConfig": {"nameservers": ["10.0.0.53"], "searches": ["extra.local"], "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}
    }));
    let s = sandbox_config(&p, &node()).unwrap();
    assert_eq!(s.hostname, "web-1");
    assert_eq!(
        s.dns.resolv_conf(),
        "search team.svc.cluster.local svc.cluster.local cluster.local extra.local\nnameserver 10.43.0.10\nnameserver 10.0.0.53\noptions ndots:2 edns0\n"
    );
}

#[test]
fn dns_policies_default_and_none() {
    let p = pod(
        json!({"containers": [{"name": "a", "image": "x"}], "dnsPolicy": "Default", "hostname": "h"}),
    );
    let s = sandbox_config(&p, &node()).unwrap();
    assert_eq!(s.dns, node().host_dns);
    assert_eq!(s.hostname, "h");
    let p = pod(
        json!({"containers": [{"name": "a", "image": "x"}], "dnsPolicy": "None", "dnsConfig": {"nameservers": ["9.9.9.9"]}}),
    );
    assert_eq!(
        sandbox_config(&p, &node()).unwrap().dns.resolv_conf(),
        "nameserver 9.9.9.9\n"
    );
    let p = pod(json!({"containers": [{"name": "a", "image": "x"}], "dnsPolicy": "Bogus"}));
    assert_eq!(
        sandbox_config(&p, &node()).unwrap_err(),
        SpecError::DnsPolicy("Bogus".into())
    );
}

#[test]
fn host_ports_become_port_mappings_and_clashes_are_errors() {
    let p = pod(json!({"containers": [
        {"name": "a", "image": "x", "ports": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81}]},
    ]}));
    let s = sandbox_config(&p, &node()).unwrap();
    assert_eq!(
        s.port_mappings,
        vec![PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "TCP".into(),
            host_ip: None
        }]
    );
    let p = pod(json!({"containers": [
        {"name": "a", "image": "x", "ports": [{"containerPort": 80, "hostPort": 8080}]},
        {"name": "b", "image": "x", "ports": [{"containerPort": 90, "hostPort": 8080}]},
    ]}));
    let err = sandbox_config(&p, &node()).unwrap_err().to_string();
    assert!(err.contains("hostPort is used twice"), "{err}");
}

#[test]
fn quantities_parse() {
    assert_eq!(parse_quantity("64Mi"), Some(64.0 * 1024.0 * 1024.0));
    assert_eq!(parse_quantity("1G"), Some(1e9));
    assert_eq!(parse_quantity("500m"), Some(0.5));
    assert_eq!(parse_quantity("2"), Some(2.0));
    assert_eq!(parse_quantity("1e3"), Some(1000.0));
    assert_eq!(
        parse_quantity("1.5Gi"),
        Some(1.5 * 1024.0 * 1024.0 * 1024.0)
    );
    assert_eq!(parse_quantity("12Q"), None);
    assert_eq!(parse_quantity("abc"), None);
}

#[test]
fn resources_default_the_cpu_request_to_the_limit() {
    let c: Container = serde_json::from_value(
        json!({"name": "a", "resources": {"limits": {"memory": "32Mi", "cpu": "500m"}}}),
    )
    .unwrap();
    let r = resources(&c).unwrap();
    assert_eq!(
        r,
        Resources {
            memory_limit: Some(32 << 20),
            cpu_request_milli: Some(500),
            cpu_limit_milli: Some(500)
        }
    );
    let c: Container =
        serde_json::from_value(json!({"name": "a", "resources": {"limits": {"memory": "lots"}}}))
            .unwrap();
    assert!(matches!(resources(&c), Err(SpecError::Quantity { .. })));
}

#[test]
fn env_expands_and_resolves_the_downward_api() {
    let p = pod(json!({"containers": [{
        "name": "a", "image": "x",
        "command": ["sh", "-c", "echo $(GREETING) $$(LITERAL) $(MISSING)"],
        "env": [
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "GREETING", "value": "hi-$(NAME)"},
        ],
    }]}));
    let spec = p.spec.clone().unwrap();
    let cfg = container_config(
        &p,
        &spec.containers[0],
        2,
        &["10.42.0.7".parse().unwrap()],
        &node(),
        &EnvObjects::new(),
        &BTreeMap::new(),
    )
    .unwrap();
    assert_eq!(
        cfg.env,
        vec![
            ("NAME".into(), "web-1".into()),
            ("NS".into(), "team".into()),
            ("IP".into(), "10.42.0.7".into()),
            ("APP".into(), "web".into()),
            ("GREETING".into(), "hi-web-1".into()),
        ]
    );
    assert_eq!(cfg.command[2], "echo hi-web-1 $(LITERAL) $(MISSING)");
    assert_eq!(cfg.attempt, 2);
}

#[test]
fn config_map_and_secret_env_follow_upstream() {
    let p = pod(json!({"containers": [{"name": "a", "image": "x",
    "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}, {"secretRef": {"name": "gone", "optional": true}}],
    "env": [
        {"name": "K", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
        {"name": "S", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "pw"}}},
        {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "nope", "optional": true}}},
        {"name": "BOTH", "value": "$(CM_k)-$(S)"},
    ]}]}));
    let c = &p.spec.as_ref().unwrap().containers[0];
    assert_eq!(
        env_object_refs(c),
        vec![
            ("configmap", "cm".to_string()),
            ("secret", "gone".to_string()),
            ("secret", "sec".to_string())
        ]
    );
    let keys = |pairs: &[(&str, &str)]| {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    };
    let mut objects = EnvObjects::new();
    objects.insert(("configmap", "cm".into()), keys(&[("k", "v")]));
    objects.insert(("secret", "sec".into()), keys(&[("pw", "s3")]));
    objects.insert(("secret", "gone".into()), None);
    let env = container_env(&p, c, &[], &node(), &objects, &BTreeMap::new()).unwrap();
    assert_eq!(
        env,
        vec![
            ("CM_k".into(), "v".into()),
            ("K".into(), "v".into()),
            ("S".into(), "s3".into()),
            ("BOTH".into(), "v-s3".into()),
        ]
    );
    objects.insert(("secret", "sec".into()), None);
    let err = container_env(&p, c, &[], &node(), &objects, &BTreeMap::new()).unwrap_err();
    assert_eq!(err.to_string(), "secret \"sec\" not found");
    objects.insert(("secret", "sec".into()), keys(&[("other", "x")]));
    let err = container_env(&p, c, &[], &node(), &objects, &BTreeMap::new()).unwrap_err();
    assert_eq!(err.to_string(), "couldn't find key pw in Secret team/sec");
}

#[test]
fn grace_period_defaults_to_30s() {
    let p = pod(json!({"containers": []}));
    assert_eq!(grace_period(&p), std::time::Duration::from_secs(30));
    let p = pod(json!({"containers": [], "terminationGracePeriodSeconds": 3}));
    assert_eq!(grace_period(&p), std::time::Duration::from_secs(3));
}

#[test]
fn service_variables_follow_the_containers_own_and_can_be_referred_to() {
    let p = pod(json!({"containers": [{
        "name": "c", "image": "busybox",
        "env": [
            {"name": "API", "value": "https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"},
            {"name": "KUBERNETES_SERVICE_PORT", "value": "6443"},
        ],
    }]}));
    let services: BTreeMap<String, String> = [
        ("KUBERNETES_SERVICE_HOST", "10.43.0.1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let c = &p.spec.as_ref().unwrap().containers[0];
    let env = container_env(&p, c, &[], &node(), &EnvObjects::new(), &services).unwrap();
    assert_eq!(
        env,
        vec![
            // expanded before the container redefines the port: the Service's value
            ("API".into(), "https://10.43.0.1:443".into()),
            ("KUBERNETES_SERVICE_PORT".into(), "6443".into()),
            ("KUBERNETES_SERVICE_HOST".into(), "10.43.0.1".into()),
        ]
    );
}

#[test]
fn resource_field_env_applies_divisors_other_containers_and_node_defaults() {
    let p = pod(json!({"containers": [
        {"name": "app", "image": "x",
         "resources": {"limits": {"memory": "64Mi", "cpu": "1500m"}, "requests": {"memory": "32Mi"}},
         "env": [
            {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}},
            {"name": "REQ_MEM", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory", "divisor": "1Mi"}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "CPU_M", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
            {"name": "SIDE_MEM", "valueFrom": {"resourceFieldRef": {"containerName": "side", "resource": "limits.memory", "divisor": "1Mi"}}},
         ]},
        {"name": "side", "image": "x", "resources": {"limits": {"memory": "16Mi"}},
         "env": [{"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}]},
    ]}));
    let spec = p.spec.as_ref().unwrap();
    let env = container_env(
        &p,
        &spec.containers[0],
        &[],
        &node(),
        &EnvObjects::new(),
        &BTreeMap::new(),
    )
    .unwrap();
    let get = |env: &[(String, String)], k: &str| {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    };
    assert_eq!(get(&env, "MEM_MI").as_deref(), Some("64"));
    assert_eq!(get(&env, "MEM").as_deref(), Some("67108864"));
    assert_eq!(get(&env, "REQ_MEM").as_deref(), Some("32"));
    // whole cores rounded up, as upstream's
    assert_eq!(get(&env, "CPU").as_deref(), Some("2"));
    assert_eq!(get(&env, "CPU_M").as_deref(), Some("1500"));
    assert_eq!(get(&env, "SIDE_MEM").as_deref(), Some("16"));
    // no CPU limit: the node's allocatable cores
    let env = container_env(
        &p,
        &spec.containers[1],
        &[],
        &node(),
        &EnvObjects::new(),
        &BTreeMap::new(),
    )
    .unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(get(&env, "CPU"), Some(cores.to_string()));
}
