//! ServiceCIDRs and IPAddresses (`networking.k8s.io/v1`, upstream's allocator since 1.33)
//! through the real kubectl 1.37: the default ServiceCIDR mirrors the flag, every ClusterIP is
//! an IPAddress naming its Service, a full range is extended by creating a ServiceCIDR, bad
//! objects are refused with upstream's messages, concurrent creates never share an address,
//! and a restarted apiserver gives a Service back the IPAddress someone deleted.

mod common;

use common::{json, TestServer};

fn parent_ref(s: &TestServer, ip: &str) -> String {
    s.kubectl(&[
        "get",
        "ipaddress",
        ip,
        "-o",
        "jsonpath={.spec.parentRef.resource}/{.spec.parentRef.namespace}/{.spec.parentRef.name}",
    ])
}

fn cluster_ip(s: &TestServer, svc: &str) -> String {
    s.kubectl(&["get", "service", svc, "-o", "jsonpath={.spec.clusterIP}"])
}

fn in_range(ip: &str, prefix: &str, low: u8, high: u8) -> bool {
    ip.strip_prefix(prefix)
        .and_then(|last| last.parse::<u8>().ok())
        .is_some_and(|n| (low..=high).contains(&n))
}

#[test]
fn cluster_ips_are_ip_addresses_from_service_cidrs() {
    // 14 usable addresses: .1 for `kubernetes`, 13 for the test's services
    let s = TestServer::start_with(|c| c.service_cluster_ip_range = "10.96.0.0/28".into());

    // the default ServiceCIDR, as `kubectl get` prints it
    let table = s.kubectl(&["get", "servicecidrs"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "CIDRS", "AGE"], "{table}");
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row[..2], ["kubernetes", "10.96.0.0/28"], "{table}");
    let explain = s.kubectl(&["explain", "servicecidrs.spec.cidrs"]);
    assert!(
        explain.contains("cidrs defines the IP blocks in CIDR notation"),
        "{explain}"
    );
    // `kubernetes` holds the first address
    assert_eq!(cluster_ip(&s, "kubernetes"), "10.96.0.1");
    assert_eq!(parent_ref(&s, "10.96.0.1"), "services/default/kubernetes");
    let table = s.kubectl(&["get", "ipaddresses", "10.96.0.1"]);
    assert!(
        table.starts_with("NAME") && table.contains("PARENTREF"),
        "{table}"
    );
    assert!(table.contains("services/default/kubernetes"), "{table}");
    let labels = json(&s, &["get", "ipaddress", "10.96.0.1", "-o", "json"]);
    assert_eq!(
        labels["metadata"]["labels"]["ipaddress.kubernetes.io/managed-by"],
        "ipallocator.k8s.io"
    );
    assert_eq!(
        labels["metadata"]["labels"]["ipaddress.kubernetes.io/ip-family"],
        "IPv4"
    );

    // thirteen services fill the range, each with its own address and IPAddress; automatic
    // addresses come from above the static band (.1-.7) while it lasts
    let mut ips = std::collections::BTreeSet::new();
    for i in 0..13 {
        let name = format!("s{i}");
        s.kubectl(&["create", "service", "clusterip", &name, "--tcp=80"]);
        let ip = cluster_ip(&s, &name);
        assert!(in_range(&ip, "10.96.0.", 2, 14), "{name}: {ip}");
        if i < 7 {
            assert!(in_range(&ip, "10.96.0.", 8, 14), "{name}: {ip}");
        }
        assert_eq!(parent_ref(&s, &ip), format!("services/default/{name}"));
        assert!(ips.insert(ip), "an address handed out twice");
    }
    let full = s.kubectl_fails(
        &["create", "service", "clusterip", "more", "--tcp=80"],
        None,
    );
    assert!(full.contains("range is full"), "{full}");

    // a second ServiceCIDR extends the ranges
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        Some("apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: extra}\nspec:\n  cidrs: [10.97.0.0/28]\n"),
    );
    s.kubectl(&["create", "service", "clusterip", "more", "--tcp=80"]);
    let more = cluster_ip(&s, "more");
    assert!(in_range(&more, "10.97.0.", 1, 14), "{more}");
    assert_eq!(parent_ref(&s, &more), "services/default/more");
    // a requested address: in any range, not taken
    s.kubectl(&[
        "create",
        "service",
        "clusterip",
        "pinned",
        "--tcp=80",
        "--clusterip=10.97.0.2",
    ]);
    assert_eq!(parent_ref(&s, "10.97.0.2"), "services/default/pinned");
    let taken = s.kubectl_fails(
        &[
            "create",
            "service",
            "clusterip",
            "twin",
            "--tcp=80",
            "--clusterip=10.97.0.2",
        ],
        None,
    );
    assert!(
        taken.contains(
            r#"spec.clusterIPs: Invalid value: "10.97.0.2": provided IP is already allocated"#
        ),
        "{taken}"
    );
    let outside = s.kubectl_fails(
        &[
            "create",
            "service",
            "clusterip",
            "far",
            "--tcp=80",
            "--clusterip=10.98.0.5",
        ],
        None,
    );
    assert!(
        outside.contains("provided IP is not in the valid range. The range of valid IPs is 10.96.0.0/28, 10.97.0.0/28"),
        "{outside}"
    );

    // a deleted service gives its address back: the IPAddress goes and the address is free
    let freed = cluster_ip(&s, "s3");
    s.kubectl(&["delete", "service", "s3"]);
    let gone = s.kubectl_fails(&["get", "ipaddress", &freed], None);
    assert!(
        gone.contains("NotFound") || gone.contains("not found"),
        "{gone}"
    );
    s.kubectl(&[
        "create",
        "service",
        "clusterip",
        "again",
        "--tcp=80",
        &format!("--clusterip={freed}"),
    ]);

    // a generated name is the one the IPAddress names
    let created = s.kubectl_stdin(
        &["create", "-f", "-", "-o", "jsonpath={.metadata.name} {.spec.clusterIP}"],
        Some("apiVersion: v1\nkind: Service\nmetadata: {generateName: gen-, namespace: default}\nspec:\n  ports: [{port: 80}]\n"),
    );
    let (name, ip) = created.split_once(' ').expect("name and address");
    assert!(name.starts_with("gen-"), "{created}");
    assert_eq!(parent_ref(&s, ip), format!("services/default/{name}"));
    // a ClusterIP set to None holds no address
    let before = s
        .kubectl(&["get", "ipaddresses", "-o", "name"])
        .lines()
        .count();
    s.kubectl(&[
        "create",
        "service",
        "clusterip",
        "headless",
        "--clusterip=None",
    ]);
    let after = s
        .kubectl(&["get", "ipaddresses", "-o", "name"])
        .lines()
        .count();
    assert_eq!(before, after);

    // upstream's validation
    let bad = s.kubectl_fails(
        &["apply", "-f", "-"],
        Some("apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: sloppy}\nspec:\n  cidrs: [10.99.0.1/24]\n"),
    );
    assert!(
        bad.contains(r#"spec.cidrs[0]: Invalid value: "10.99.0.1/24": must be in canonical form ("10.99.0.0/24")"#),
        "{bad}"
    );
    let two = s.kubectl_fails(
        &["apply", "-f", "-"],
        Some("apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: two}\nspec:\n  cidrs: [10.99.0.0/24, 10.100.0.0/24]\n"),
    );
    assert!(
        two.contains("may specify no more than one IP for each IP family"),
        "{two}"
    );
    let moved = s.kubectl_fails(
        &[
            "patch",
            "servicecidr",
            "extra",
            "--type=merge",
            "-p",
            r#"{"spec":{"cidrs":["10.101.0.0/28"]}}"#,
        ],
        None,
    );
    assert!(moved.contains("field is immutable"), "{moved}");
    let named = s.kubectl_fails(
        &["apply", "-f", "-"],
        Some("apiVersion: networking.k8s.io/v1\nkind: IPAddress\nmetadata: {name: not-an-ip}\nspec:\n  parentRef: {resource: services, namespace: default, name: x}\n"),
    );
    assert!(
        named.contains("must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"),
        "{named}"
    );
    let orphan = s.kubectl_fails(
        &["apply", "-f", "-"],
        Some("apiVersion: networking.k8s.io/v1\nkind: IPAddress\nmetadata: {name: 10.97.0.5}\nspec: {}\n"),
    );
    assert!(
        orphan.contains("spec.parentRef: Required value"),
        "{orphan}"
    );
    // an address reserved by hand is not handed out
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        Some("apiVersion: networking.k8s.io/v1\nkind: IPAddress\nmetadata: {name: 10.97.0.5}\nspec:\n  parentRef: {group: example.com, resource: gateways, namespace: default, name: gw}\n"),
    );
    let reserved = s.kubectl_fails(
        &[
            "create",
            "service",
            "clusterip",
            "thief",
            "--tcp=80",
            "--clusterip=10.97.0.5",
        ],
        None,
    );
    assert!(
        reserved.contains("provided IP is already allocated"),
        "{reserved}"
    );
}

#[test]
fn concurrent_creates_never_share_an_address() {
    let s = TestServer::start_with(|c| c.service_cluster_ip_range = "10.96.0.0/26".into());
    let kubeconfig = s.kubeconfig().to_path_buf();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let kubeconfig = kubeconfig.clone();
            std::thread::spawn(move || {
                let yaml: String = (0..8)
                    .map(|i| format!("apiVersion: v1\nkind: Service\nmetadata: {{name: w{w}-{i}, namespace: default}}\nspec:\n  ports: [{{port: 80}}]\n---\n"))
                    .collect();
                let out = testkit::kubectl_with(&kubeconfig, &["create", "-f", "-"], Some(&yaml));
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let list = json(&s, &["get", "services", "-o", "json"]);
    let ips: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["spec"]["clusterIP"].as_str())
        .collect();
    assert_eq!(ips.len(), 33);
    let distinct: std::collections::BTreeSet<&str> = ips.iter().copied().collect();
    assert_eq!(distinct.len(), 33, "{ips:?}");
    let addresses = s.kubectl(&["get", "ipaddresses", "-o", "name"]);
    assert_eq!(addresses.lines().count(), 33, "{addresses}");
}

#[test]
fn a_restarted_apiserver_gives_services_back_their_ip_addresses() {
    let data = tempfile::tempdir().expect("tmp");
    let dir = data.path().to_path_buf();
    let ip = {
        let s = TestServer::start_with(|c| c.data_dir = dir.clone());
        s.kubectl(&["create", "service", "clusterip", "web", "--tcp=80"]);
        let ip = cluster_ip(&s, "web");
        s.kubectl(&["delete", "ipaddress", &ip]);
        ip
    };
    let s = TestServer::start_with(|c| c.data_dir = dir.clone());
    assert_eq!(parent_ref(&s, &ip), "services/default/web");
}
