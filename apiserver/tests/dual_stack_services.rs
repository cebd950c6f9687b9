//! Dual-stack (IPv4 + IPv6) Services against a real apiserver on real etcd, through the real
//! kubectl 1.37 and kube-rs: `--service-cluster-ip-range` with two CIDRs makes the default
//! ServiceCIDR dual-stack; Services get an address of each family they ask for (from the
//! right range, an IPAddress each, IPv6 ones named canonically), upgrade and downgrade take
//! and release the secondary, deletes release both; an IPv6-only cluster works too; and the
//! flag's and families' refusals are upstream's.

mod common;

use common::{json, TestServer};
use serde_json::Value;

const DUAL: &str = "10.96.0.0/24,fd00:10:96::/112";

fn svc(name: &str, spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {spec}\n")
}

fn spec(s: &TestServer, name: &str) -> Value {
    json(s, &["get", "svc", name, "-o", "json"])["spec"].clone()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap_or_default().to_string())
        .collect()
}

/// `services/<ns>/<name>` of the IPAddress `ip`, and its family label.
fn holder(s: &TestServer, ip: &str) -> (String, String) {
    let a = json(s, &["get", "ipaddress", ip, "-o", "json"]);
    let p = &a["spec"]["parentRef"];
    (
        format!(
            "{}/{}/{}",
            p["resource"].as_str().unwrap_or_default(),
            p["namespace"].as_str().unwrap_or_default(),
            p["name"].as_str().unwrap_or_default()
        ),
        a["metadata"]["labels"]["ipaddress.kubernetes.io/ip-family"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

fn gone(s: &TestServer, ip: &str) -> bool {
    let (ok, _, err) = s.kubectl_result(&["get", "ipaddress", ip], None);
    !ok && (err.contains("NotFound") || err.contains("not found"))
}

/// The value `kubectl describe` shows for `label` (`IP Families`).
fn described(text: &str, label: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{label}:")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn in_v4(ip: &str) -> bool {
    ip.parse::<std::net::Ipv4Addr>()
        .is_ok_and(|a| a.octets()[..3] == [10, 96, 0] && a.octets()[3] != 0 && a.octets()[3] != 255)
}

fn in_v6(ip: &str) -> bool {
    ip.parse::<std::net::Ipv6Addr>().is_ok_and(|a| {
        let seg = a.segments();
        seg[..7] == [0xfd00, 0x10, 0x96, 0, 0, 0, 0] && seg[7] != 0
    })
}

#[test]
fn dual_stack_services_get_an_address_of_each_family_from_its_range() {
    let etcd = testkit::Etcd::start();
    let s = TestServer::start_with(|c| {
        c.storage.etcd_servers = vec![etcd.url()];
        c.service_cluster_ip_range = DUAL.into();
    });

    // the default ServiceCIDR holds both ranges; `kubernetes` stays single-stack, primary
    let table = s.kubectl(&["get", "servicecidrs", "kubernetes"]);
    assert!(table.contains("10.96.0.0/24,fd00:10:96::/112"), "{table}");
    let k = spec(&s, "kubernetes");
    assert_eq!(k["clusterIP"], "10.96.0.1");
    assert_eq!(k["ipFamilyPolicy"], "SingleStack");
    assert_eq!(strs(&k["ipFamilies"]), ["IPv4"]);

    // kubectl's own create: single-stack in the primary family
    s.kubectl(&["create", "service", "clusterip", "plain", "--tcp=80"]);
    let plain = spec(&s, "plain");
    assert_eq!(strs(&plain["ipFamilies"]), ["IPv4"]);
    assert_eq!(plain["clusterIPs"].as_array().map(Vec::len), Some(1));
    assert!(
        in_v4(plain["clusterIP"].as_str().unwrap_or_default()),
        "{plain}"
    );

    // PreferDualStack: one address of each family, each from its range, each an IPAddress
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&svc(
            "both",
            "{ipFamilyPolicy: PreferDualStack, selector: {app: web}, ports: [{port: 80}]}",
        )),
    );
    let both = spec(&s, "both");
    assert_eq!(strs(&both["ipFamilies"]), ["IPv4", "IPv6"], "{both}");
    let ips = strs(&both["clusterIPs"]);
    assert_eq!(ips.len(), 2, "{both}");
    assert_eq!(both["clusterIP"], ips[0].as_str());
    assert!(in_v4(&ips[0]) && in_v6(&ips[1]), "{ips:?}");
    assert_eq!(
        holder(&s, &ips[0]),
        ("services/default/both".into(), "IPv4".into())
    );
    assert_eq!(
        holder(&s, &ips[1]),
        ("services/default/both".into(), "IPv6".into())
    );
    // what kubectl shows: the primary under CLUSTER-IP, both families and IPs in describe
    let wide = s.kubectl(&["get", "svc", "both", "-o", "wide"]);
    let row: Vec<&str> = wide
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row[..3], ["both", "ClusterIP", ips[0].as_str()], "{wide}");
    let shown = s.kubectl(&["describe", "svc", "both"]);
    assert_eq!(
        described(&shown, "IP Family Policy"),
        "PreferDualStack",
        "{shown}"
    );
    assert_eq!(described(&shown, "IP Families"), "IPv4,IPv6", "{shown}");
    assert_eq!(described(&shown, "IP"), ips[0], "{shown}");
    assert_eq!(
        described(&shown, "IPs"),
        format!("{},{}", ips[0], ips[1]),
        "{shown}"
    );
    let addresses = s.kubectl(&["get", "ipaddresses"]);
    assert!(
        addresses.contains(&ips[1]) && addresses.contains("services/default/both"),
        "{addresses}"
    );

    // IPv6 first, asked for by family
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&svc(
            "six",
            "{ipFamilyPolicy: RequireDualStack, ipFamilies: [IPv6], ports: [{port: 80}]}",
        )),
    );
    let six = spec(&s, "six");
    assert_eq!(strs(&six["ipFamilies"]), ["IPv6", "IPv4"], "{six}");
    let six_ips = strs(&six["clusterIPs"]);
    assert!(in_v6(&six_ips[0]) && in_v4(&six_ips[1]), "{six_ips:?}");
    assert_eq!(six["clusterIP"], six_ips[0].as_str());

    // an IPv6 address asked for is honoured as written; its IPAddress is named canonically
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&svc(
            "pinned",
            "{clusterIP: 'fd00:10:96:0:0:0:0:abc', ports: [{port: 80}]}",
        )),
    );
    let pinned = spec(&s, "pinned");
    assert_eq!(pinned["clusterIP"], "fd00:10:96:0:0:0:0:abc");
    assert_eq!(strs(&pinned["ipFamilies"]), ["IPv6"]);
    assert_eq!(pinned["ipFamilyPolicy"], "SingleStack");
    assert_eq!(holder(&s, "fd00:10:96::abc").0, "services/default/pinned");
    let twin = s.kubectl_fails(
        &["create", "-f", "-"],
        Some(&svc(
            "twin",
            "{clusterIP: 'fd00:10:96::abc', ports: [{port: 80}]}",
        )),
    );
    assert!(
        twin.contains(
            r#"spec.clusterIPs: Invalid value: "fd00:10:96::abc": provided IP is already allocated"#
        ),
        "{twin}"
    );
    // both asked for, secondary IPv6
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&svc(
            "pair",
            "{clusterIP: 10.96.0.77, clusterIPs: [10.96.0.77, 'fd00:10:96::77'], ipFamilyPolicy: RequireDualStack, ports: [{port: 80}]}",
        )),
    );
    assert_eq!(
        strs(&spec(&s, "pair")["clusterIPs"]),
        ["10.96.0.77", "fd00:10:96::77"]
    );
    assert_eq!(holder(&s, "fd00:10:96::77").0, "services/default/pair");
    let far = s.kubectl_fails(
        &["create", "-f", "-"],
        Some(&svc(
            "far",
            "{clusterIP: 'fd00:99::1', ports: [{port: 80}]}",
        )),
    );
    assert!(
        far.contains(
            "provided IP is not in the valid range. The range of valid IPs is fd00:10:96::/112"
        ),
        "{far}"
    );

    // headless without a selector (kubectl's create sets one): both families on any
    // cluster, no address
    let before = s
        .kubectl(&["get", "ipaddresses", "-o", "name"])
        .lines()
        .count();
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&svc("manual", "{clusterIP: None, ports: [{port: 80}]}")),
    );
    let manual = spec(&s, "manual");
    assert_eq!(manual["ipFamilyPolicy"], "RequireDualStack");
    assert_eq!(strs(&manual["ipFamilies"]), ["IPv4", "IPv6"]);
    assert_eq!(strs(&manual["clusterIPs"]), ["None"]);
    assert_eq!(
        s.kubectl(&["get", "ipaddresses", "-o", "name"])
            .lines()
            .count(),
        before
    );

    // ExternalName holds none; becoming a dual-stack ClusterIP service takes both, going
    // back releases both
    s.kubectl(&[
        "create",
        "service",
        "externalname",
        "ext",
        "--external-name=db.example.com",
    ]);
    assert!(spec(&s, "ext").get("ipFamilies").is_none());
    s.kubectl(&[
        "patch", "svc", "ext", "--type=merge", "-p",
        r#"{"spec":{"type":"ClusterIP","externalName":null,"ipFamilyPolicy":"PreferDualStack","ports":[{"port":80}]}}"#,
    ]);
    let ext_ips = strs(&spec(&s, "ext")["clusterIPs"]);
    assert!(
        ext_ips.len() == 2 && in_v4(&ext_ips[0]) && in_v6(&ext_ips[1]),
        "{ext_ips:?}"
    );
    assert_eq!(holder(&s, &ext_ips[1]).0, "services/default/ext");
    s.kubectl(&[
        "patch",
        "svc",
        "ext",
        "--type=merge",
        "-p",
        r#"{"spec":{"type":"ExternalName","externalName":"db.example.com"}}"#,
    ]);
    let back = spec(&s, "ext");
    assert!(
        back.get("clusterIPs").is_none() && back.get("ipFamilies").is_none(),
        "{back}"
    );
    assert!(
        gone(&s, &ext_ips[0]) && gone(&s, &ext_ips[1]),
        "{ext_ips:?}"
    );

    // a deleted service releases the addresses of both families
    s.kubectl(&["delete", "svc", "both"]);
    for ip in &ips {
        assert!(gone(&s, ip), "{ip} still held");
    }
    s.kubectl(&["delete", "svc", "pinned"]);
    assert!(gone(&s, "fd00:10:96::abc"));
    drop(s);
}

#[test]
fn upgrades_take_and_downgrades_release_the_secondary_address() {
    let etcd = testkit::Etcd::start();
    let s = TestServer::start_with(|c| {
        c.storage.etcd_servers = vec![etcd.url()];
        c.service_cluster_ip_range = DUAL.into();
    });
    s.kubectl(&["create", "service", "clusterip", "web", "--tcp=80"]);
    let primary = spec(&s, "web")["clusterIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    // SingleStack → PreferDualStack: the IPv6 address is allocated, the primary kept
    s.kubectl(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"ipFamilyPolicy":"PreferDualStack"}}"#,
    ]);
    let up = spec(&s, "web");
    let ips = strs(&up["clusterIPs"]);
    assert_eq!(ips.len(), 2, "{up}");
    assert_eq!(ips[0], primary);
    assert!(in_v6(&ips[1]), "{ips:?}");
    assert_eq!(strs(&up["ipFamilies"]), ["IPv4", "IPv6"]);
    assert_eq!(
        holder(&s, &ips[1]),
        ("services/default/web".into(), "IPv6".into())
    );

    // the primary address and family are fixed; the secondary goes only with SingleStack
    let moved = s.kubectl_fails(
        &["patch", "svc", "web", "--type=merge", "-p",
          r#"{"spec":{"clusterIP":"10.96.0.200","clusterIPs":["10.96.0.200","fd00:10:96::200"]}}"#],
        None,
    );
    assert!(
        moved.contains(r#"spec.clusterIPs[0]: Invalid value: []string{"10.96.0.200", "fd00:10:96::200"}: may not change once set"#),
        "{moved}"
    );
    let reduced = s.kubectl_fails(
        &[
            "patch",
            "svc",
            "web",
            "--type=merge",
            "-p",
            &format!(r#"{{"spec":{{"clusterIPs":["{primary}"],"ipFamilies":["IPv4"]}}}}"#),
        ],
        None,
    );
    assert!(
        reduced.contains(r#"spec.ipFamilyPolicy: Invalid value: "PreferDualStack": must be 'SingleStack' to release the secondary cluster IP"#),
        "{reduced}"
    );
    assert!(!gone(&s, &ips[1]));

    // PreferDualStack → SingleStack: the secondary is dropped and its IPAddress released
    s.kubectl(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"ipFamilyPolicy":"SingleStack"}}"#,
    ]);
    let down = spec(&s, "web");
    assert_eq!(strs(&down["clusterIPs"]), std::slice::from_ref(&primary));
    assert_eq!(strs(&down["ipFamilies"]), ["IPv4"]);
    assert!(gone(&s, &ips[1]), "{} still held", ips[1]);
    assert_eq!(holder(&s, &primary).0, "services/default/web");

    // RequireDualStack naming the secondary: that one is taken
    s.kubectl(&[
        "patch", "svc", "web", "--type=merge", "-p",
        &format!(r#"{{"spec":{{"ipFamilyPolicy":"RequireDualStack","clusterIPs":["{primary}","fd00:10:96::42"]}}}}"#),
    ]);
    assert_eq!(
        strs(&spec(&s, "web")["clusterIPs"]),
        [primary.clone(), "fd00:10:96::42".into()]
    );
    assert_eq!(holder(&s, "fd00:10:96::42").0, "services/default/web");

    // kube-rs: typed fields as upstream's clients read them; a dry run takes nothing
    s.rt.block_on(async {
        use k8s_openapi::api::core::v1::Service;
        let client = common::kubers::client(s.server()).await;
        let api: kube::Api<Service> = kube::Api::namespaced(client, "default");
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "typed"},
            "spec": {"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6", "IPv4"],
                     "ports": [{"port": 443}]},
        }))
        .expect("service");
        let dry = api
            .create(
                &kube::api::PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &svc,
            )
            .await
            .expect("dry run");
        let dry_ips = dry.spec.and_then(|s| s.cluster_ips).unwrap_or_default();
        assert_eq!(
            dry_ips,
            ["fd00:10:96::", "10.96.0.0"],
            "a dry run shows the networks"
        );
        let made = api.create(&Default::default(), &svc).await.expect("create");
        let spec = made.spec.expect("spec");
        assert_eq!(
            spec.ip_families.as_deref(),
            Some(&["IPv6".to_string(), "IPv4".to_string()][..])
        );
        let got = spec.cluster_ips.unwrap_or_default();
        assert!(
            got.len() == 2 && in_v6(&got[0]) && in_v4(&got[1]),
            "{got:?}"
        );
        assert_eq!(spec.cluster_ip.as_deref(), Some(got[0].as_str()));
    });
    let typed = strs(&spec(&s, "typed")["clusterIPs"]);
    assert_eq!(holder(&s, &typed[0]).1, "IPv6");
    s.kubectl(&["delete", "svc", "typed", "web"]);
    for ip in typed
        .iter()
        .chain([&primary, &"fd00:10:96::42".to_string()])
    {
        assert!(gone(&s, ip), "{ip} still held");
    }
    drop(s);
}

#[test]
fn concurrent_ipv6_creates_never_share_an_address() {
    let etcd = testkit::Etcd::start();
    // 63 usable IPv6 addresses, 62 IPv4: 32 dual-stack services from 4 clients at once
    let s = TestServer::start_with(|c| {
        c.storage.etcd_servers = vec![etcd.url()];
        c.service_cluster_ip_range = "fd00:10:96::/122,10.96.0.0/26".into();
        // (the `kubernetes` Service's endpoint is of the primary family)
        c.advertise_address = Some("::1".parse().expect("ip"));
    });
    let kubeconfig = s.kubeconfig().to_path_buf();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let kubeconfig = kubeconfig.clone();
            std::thread::spawn(move || {
                let yaml: String = (0..8)
                    .map(|i| {
                        svc(
                            &format!("w{w}-{i}"),
                            "{ipFamilyPolicy: PreferDualStack, ports: [{port: 80}]}",
                        ) + "---\n"
                    })
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
    let mut v6 = std::collections::BTreeSet::new();
    let mut v4 = std::collections::BTreeSet::new();
    for item in list["items"].as_array().expect("items") {
        if item["metadata"]["name"] == "kubernetes" {
            continue;
        }
        let ips = strs(&item["spec"]["clusterIPs"]);
        assert_eq!(
            strs(&item["spec"]["ipFamilies"]),
            ["IPv6", "IPv4"],
            "{item}"
        );
        assert!(v6.insert(ips[0].clone()), "{} handed out twice", ips[0]);
        assert!(v4.insert(ips[1].clone()), "{} handed out twice", ips[1]);
    }
    assert_eq!((v6.len(), v4.len()), (32, 32));
    let six = s.kubectl(&[
        "get",
        "ipaddresses",
        "-l",
        "ipaddress.kubernetes.io/ip-family=IPv6",
        "-o",
        "name",
    ]);
    // the services' 32 and `kubernetes`'s
    assert_eq!(six.lines().count(), 33, "{six}");
    drop(s);
}

#[test]
fn an_ipv6_only_cluster_and_upstreams_refusals() {
    // IPv6 only: `kubernetes` takes the range's first address, everything is IPv6
    let s = TestServer::start_with(|c| {
        c.service_cluster_ip_range = "fd00:10:96::/112".into();
        c.advertise_address = Some("::1".parse().expect("ip"));
    });
    let k = spec(&s, "kubernetes");
    assert_eq!(k["clusterIP"], "fd00:10:96::1");
    assert_eq!(strs(&k["ipFamilies"]), ["IPv6"]);
    assert_eq!(
        holder(&s, "fd00:10:96::1"),
        ("services/default/kubernetes".into(), "IPv6".into())
    );
    let slice = json(&s, &["get", "endpointslice", "kubernetes", "-o", "json"]);
    assert_eq!(slice["addressType"], "IPv6");
    s.kubectl(&["create", "service", "clusterip", "web", "--tcp=80"]);
    let web = spec(&s, "web");
    assert!(
        in_v6(web["clusterIP"].as_str().unwrap_or_default()),
        "{web}"
    );
    assert_eq!(strs(&web["ipFamilies"]), ["IPv6"]);
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&svc(
            "prefer",
            "{ipFamilyPolicy: PreferDualStack, ports: [{port: 80}]}",
        )),
    );
    assert_eq!(strs(&spec(&s, "prefer")["ipFamilies"]), ["IPv6"]);
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&svc("manual", "{clusterIP: None, ports: [{port: 80}]}")),
    );
    assert_eq!(strs(&spec(&s, "manual")["ipFamilies"]), ["IPv6", "IPv4"]);
    let refused = [
        (
            "{ipFamilyPolicy: RequireDualStack, ports: [{port: 80}]}",
            r#"spec.ipFamilyPolicy: Invalid value: "RequireDualStack": this cluster is not configured for dual-stack services"#,
        ),
        (
            "{ipFamilies: [IPv4], ports: [{port: 80}]}",
            r#"spec.ipFamilies[0]: Invalid value: "IPv4": not configured on this cluster"#,
        ),
        (
            "{clusterIP: 10.96.0.9, ports: [{port: 80}]}",
            r#"spec.clusterIPs[0]: Invalid value: []string{"10.96.0.9"}: IPv4 is not configured on this cluster"#,
        ),
    ];
    for (spec, want) in refused {
        let err = s.kubectl_fails(&["create", "-f", "-"], Some(&svc("bad", spec)));
        assert!(
            err.contains(&format!("The Service \"bad\" is invalid: {want}")),
            "{spec}: {err}"
        );
    }
    drop(s);

    // on an IPv4 single-stack cluster the secondary family is the one missing
    let s = TestServer::start();
    let err = s.kubectl_fails(
        &["create", "-f", "-"],
        Some(&svc(
            "bad",
            "{ipFamilyPolicy: PreferDualStack, ipFamilies: [IPv4, IPv6], ports: [{port: 80}]}",
        )),
    );
    assert!(
        err.contains(
            r#"spec.ipFamilies[1]: Invalid value: "IPv6": not configured on this cluster"#
        ),
        "{err}"
    );
    drop(s);

    // the flag's refusals, and the advertised address of the primary family
    let refused = [
        ("10.96.0.0/24,10.97.0.0/24", "--service-cluster-ip-range[0] and --service-cluster-ip-range[1] must be of different IP family", None),
        ("10.96.0.0/24,fd00::/112,fd01::/112", "--service-cluster-ip-range must not contain more than two entries", None),
        ("10.96.0.0/24,fd00::/48", "--service-cluster-ip-range[1]: shortest allowed prefix length for service CIDR is 64, got 48", None),
        ("10.96.0.0/24,nope", "secondary service cluster IP range specified is invalid: invalid CIDR address: nope", None),
        ("fd00:10:96::/112", r#"service IP family "fd00:10:96::/112" must match public address family "127.0.0.1""#, Some("127.0.0.1")),
    ];
    for (flag, want, advertise) in refused {
        let dir = tempfile::tempdir().expect("tmp");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let mut config = apiserver::Config::for_tests(dir.path());
        config.service_cluster_ip_range = flag.into();
        config.advertise_address = advertise.map(|a| a.parse().expect("ip"));
        let err = match rt.block_on(apiserver::start(config)) {
            Ok(_) => panic!("{flag}: started"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(want), "{flag}: {err}");
    }
}

#[test]
fn a_restart_with_a_second_range_makes_the_cluster_dual_stack_and_repairs_ipv6_addresses() {
    let data = tempfile::tempdir().expect("tmp");
    let dir = data.path().to_path_buf();
    {
        let s = TestServer::start_with(|c| {
            c.data_dir = dir.clone();
            c.service_cluster_ip_range = "10.96.0.0/24".into();
        });
        s.kubectl(&["create", "service", "clusterip", "old", "--tcp=80"]);
        let refused = s.kubectl_fails(
            &["create", "-f", "-"],
            Some(&svc(
                "dual",
                "{ipFamilyPolicy: RequireDualStack, ports: [{port: 80}]}",
            )),
        );
        assert!(
            refused.contains("this cluster is not configured for dual-stack services"),
            "{refused}"
        );
    }
    // the same store with a second range: the default ServiceCIDR gains it
    let ip = {
        let s = TestServer::start_with(|c| {
            c.data_dir = dir.clone();
            c.service_cluster_ip_range = DUAL.into();
        });
        let cidrs = json(&s, &["get", "servicecidr", "kubernetes", "-o", "json"]);
        assert_eq!(
            strs(&cidrs["spec"]["cidrs"]),
            ["10.96.0.0/24", "fd00:10:96::/112"]
        );
        // a service made single-stack stays so; new ones may be dual-stack
        assert_eq!(strs(&spec(&s, "old")["ipFamilies"]), ["IPv4"]);
        s.kubectl_stdin(
            &["create", "-f", "-"],
            Some(&svc(
                "dual",
                "{ipFamilyPolicy: RequireDualStack, ports: [{port: 80}]}",
            )),
        );
        let ips = strs(&spec(&s, "dual")["clusterIPs"]);
        assert!(in_v6(&ips[1]), "{ips:?}");
        // an IPv6 address's IPAddress deleted by hand...
        s.kubectl(&["delete", "ipaddress", &ips[1]]);
        ips[1].clone()
    };
    // ...is given back to its Service by the next apiserver's repair
    let s = TestServer::start_with(|c| {
        c.data_dir = dir.clone();
        c.service_cluster_ip_range = DUAL.into();
    });
    assert_eq!(
        holder(&s, &ip),
        ("services/default/dual".into(), "IPv6".into())
    );
}
