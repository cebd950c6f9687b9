//! Unit tests of the record model and the snapshot seam: no network, no server.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_server::proto::rr::{Name, RecordType};

use crate::fixtures::*;
use crate::snapshot::{Lookup, SPEC_VERSION};
use crate::state::ClusterState;
use crate::zonefile::rdata_text;

fn state() -> ClusterState {
    ClusterState::new(Name::from_ascii("cluster.local.").unwrap(), 5)
}

fn lookup(state: &ClusterState, name: &str, qtype: RecordType) -> Lookup {
    state
        .handle()
        .load()
        .lookup(&Name::from_ascii(name).unwrap(), qtype)
}

/// Sorted presentation of the answer data, or the outcome's name.
fn answer(state: &ClusterState, name: &str, qtype: RecordType) -> Vec<String> {
    match lookup(state, name, qtype) {
        Lookup::Answer { answers, .. } => {
            let mut v: Vec<String> = answers.iter().map(|r| rdata_text(&r.data)).collect();
            v.sort();
            v
        }
        other => vec![format!("{other:?}")],
    }
}

fn nx() -> Vec<String> {
    vec!["NxDomain".to_string()]
}

fn nodata() -> Vec<String> {
    vec!["NoData".to_string()]
}

fn web_state() -> ClusterState {
    let mut s = state();
    s.apply_service(&cluster_ip_service(
        "default",
        "web",
        &["10.43.0.20", "fd00:43::20"],
        &[("http", "TCP", 80), ("dns", "UDP", 53), ("", "TCP", 8080)],
    ))
    .unwrap();
    s
}

#[test]
fn cluster_ip_service_has_a_aaaa_srv_and_ptr() {
    let s = web_state();
    let name = "web.default.svc.cluster.local.";
    assert_eq!(answer(&s, name, RecordType::A), vec!["10.43.0.20"]);
    assert_eq!(answer(&s, name, RecordType::AAAA), vec!["fd00:43::20"]);
    assert_eq!(
        answer(
            &s,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV
        ),
        vec!["0 100 80 web.default.svc.cluster.local."]
    );
    assert_eq!(
        answer(
            &s,
            "_dns._udp.web.default.svc.cluster.local.",
            RecordType::SRV
        ),
        vec!["0 100 53 web.default.svc.cluster.local."]
    );
    assert_eq!(
        answer(&s, "20.0.43.10.in-addr.arpa.", RecordType::PTR),
        vec!["web.default.svc.cluster.local."]
    );
    let v6_ptr = crate::records::reverse_name(&"fd00:43::20".parse::<IpAddr>().unwrap());
    assert_eq!(
        answer(&s, &v6_ptr.to_ascii(), RecordType::PTR),
        vec!["web.default.svc.cluster.local."]
    );
}

#[test]
fn srv_answers_carry_target_addresses_in_additional() {
    let s = web_state();
    let Lookup::Answer { additionals, .. } = lookup(
        &s,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    ) else {
        panic!("expected an answer");
    };
    let mut add: Vec<String> = additionals.iter().map(|r| rdata_text(&r.data)).collect();
    add.sort();
    assert_eq!(add, vec!["10.43.0.20", "fd00:43::20"]);
}

#[test]
fn nxdomain_and_nodata_are_told_apart() {
    let s = web_state();
    // exists, other type
    assert_eq!(
        answer(&s, "web.default.svc.cluster.local.", RecordType::TXT),
        nodata()
    );
    // unnamed port: no SRV name at all
    assert_eq!(
        answer(
            &s,
            "_8080._tcp.web.default.svc.cluster.local.",
            RecordType::SRV
        ),
        nx()
    );
    // empty non-terminals: the protocol label, the namespace, `svc`
    assert_eq!(
        answer(&s, "_tcp.web.default.svc.cluster.local.", RecordType::A),
        nodata()
    );
    assert_eq!(
        answer(&s, "default.svc.cluster.local.", RecordType::A),
        nodata()
    );
    assert_eq!(answer(&s, "svc.cluster.local.", RecordType::A), nodata());
    // missing service, namespace, name below a service, and junk
    assert_eq!(
        answer(&s, "nope.default.svc.cluster.local.", RecordType::A),
        nx()
    );
    assert_eq!(
        answer(&s, "web.other.svc.cluster.local.", RecordType::A),
        nx()
    );
    assert_eq!(answer(&s, "other.svc.cluster.local.", RecordType::A), nx());
    assert_eq!(
        answer(&s, "x.web.default.svc.cluster.local.", RecordType::A),
        nx()
    );
    assert_eq!(answer(&s, "foo.cluster.local.", RecordType::A), nx());
    // outside the zone, and reverse names nobody owns, go upstream
    assert_eq!(
        lookup(&s, "example.com.", RecordType::A),
        Lookup::NotAuthoritative
    );
    assert_eq!(
        lookup(&s, "1.1.168.192.in-addr.arpa.", RecordType::PTR),
        Lookup::NotAuthoritative
    );
}

#[test]
fn names_are_case_insensitive() {
    let s = web_state();
    assert_eq!(
        answer(&s, "WEB.Default.SVC.Cluster.LOCAL.", RecordType::A),
        vec!["10.43.0.20"]
    );
    assert_eq!(
        answer(
            &s,
            "_HTTP._Tcp.web.default.svc.cluster.local.",
            RecordType::SRV
        ),
        vec!["0 100 80 web.default.svc.cluster.local."]
    );
}

#[test]
fn zone_apex_and_dns_version() {
    let s = state();
    assert_eq!(
        answer(&s, "dns-version.cluster.local.", RecordType::TXT),
        vec![format!("\"{SPEC_VERSION}\"")]
    );
    let soa = answer(&s, "cluster.local.", RecordType::SOA);
    assert!(soa[0].starts_with("ns.dns.cluster.local. hostmaster.cluster.local. "));
    assert!(soa[0].ends_with(" 7200 1800 86400 5"), "{soa:?}");
    assert_eq!(
        answer(&s, "cluster.local.", RecordType::NS),
        vec!["ns.dns.cluster.local."]
    );
    // no services yet: `svc.<zone>` does not exist
    assert_eq!(answer(&s, "svc.cluster.local.", RecordType::A), nx());
}

#[test]
fn external_name_is_a_cname() {
    let mut s = state();
    s.apply_service(&external_name_service("default", "ext", "db.example.org"))
        .unwrap();
    let name = "ext.default.svc.cluster.local.";
    assert_eq!(answer(&s, name, RecordType::CNAME), vec!["db.example.org."]);
    // any other type answers with the alias, as RFC 1034 says
    assert_eq!(answer(&s, name, RecordType::A), vec!["db.example.org."]);
}

fn headless_state(publish_not_ready: bool) -> ClusterState {
    let mut s = state();
    s.apply_service(&headless_service(
        "db",
        "pg",
        &[("pg", "TCP", 5432)],
        publish_not_ready,
    ))
    .unwrap();
    s.apply_slice(&endpoint_slice(
        "db",
        "pg-abc",
        "pg",
        "IPv4",
        &[
            (&["10.42.0.5"], Some("pg-0"), true),
            (&["10.42.1.6"], None, true),
            (&["10.42.2.7"], Some("pg-2"), false),
        ],
        &[("pg", "TCP", 5432), ("", "TCP", 9187)],
    ))
    .unwrap();
    s
}

#[test]
fn headless_service_answers_ready_endpoints() {
    let s = headless_state(false);
    assert_eq!(
        answer(&s, "pg.db.svc.cluster.local.", RecordType::A),
        vec!["10.42.0.5", "10.42.1.6"]
    );
    assert_eq!(
        answer(&s, "pg-0.pg.db.svc.cluster.local.", RecordType::A),
        vec!["10.42.0.5"]
    );
    // no hostname: a name derived from the address
    assert_eq!(
        answer(&s, "10-42-1-6.pg.db.svc.cluster.local.", RecordType::A),
        vec!["10.42.1.6"]
    );
    // not ready: absent everywhere
    assert_eq!(
        answer(&s, "pg-2.pg.db.svc.cluster.local.", RecordType::A),
        nx()
    );
    assert_eq!(
        lookup(&s, "7.2.42.10.in-addr.arpa.", RecordType::PTR),
        Lookup::NotAuthoritative
    );
    assert_eq!(
        answer(&s, "_pg._tcp.pg.db.svc.cluster.local.", RecordType::SRV),
        vec![
            "0 50 5432 10-42-1-6.pg.db.svc.cluster.local.",
            "0 50 5432 pg-0.pg.db.svc.cluster.local."
        ]
    );
    assert_eq!(
        answer(&s, "5.0.42.10.in-addr.arpa.", RecordType::PTR),
        vec!["pg-0.pg.db.svc.cluster.local."]
    );
    assert_eq!(
        answer(&s, "6.1.42.10.in-addr.arpa.", RecordType::PTR),
        vec!["10-42-1-6.pg.db.svc.cluster.local."]
    );
}

#[test]
fn publish_not_ready_addresses_is_honoured() {
    let s = headless_state(true);
    assert_eq!(
        answer(&s, "pg.db.svc.cluster.local.", RecordType::A),
        vec!["10.42.0.5", "10.42.1.6", "10.42.2.7"]
    );
    assert_eq!(
        answer(&s, "pg-2.pg.db.svc.cluster.local.", RecordType::A),
        vec!["10.42.2.7"]
    );
}

#[test]
fn headless_service_without_ready_endpoints_is_nxdomain() {
    let mut s = state();
    s.apply_service(&headless_service("db", "pg", &[], false))
        .unwrap();
    assert_eq!(answer(&s, "pg.db.svc.cluster.local.", RecordType::A), nx());
    s.apply_slice(&endpoint_slice(
        "db",
        "pg-1",
        "pg",
        "IPv4",
        &[(&["10.42.0.5"], None, false)],
        &[],
    ))
    .unwrap();
    assert_eq!(answer(&s, "pg.db.svc.cluster.local.", RecordType::A), nx());
    // becoming ready makes it appear
    s.apply_slice(&endpoint_slice(
        "db",
        "pg-1",
        "pg",
        "IPv4",
        &[(&["10.42.0.5"], None, true)],
        &[],
    ))
    .unwrap();
    assert_eq!(
        answer(&s, "pg.db.svc.cluster.local.", RecordType::A),
        vec!["10.42.0.5"]
    );
}

#[test]
fn headless_dual_stack_slices_combine() {
    let mut s = headless_state(false);
    s.apply_slice(&endpoint_slice(
        "db",
        "pg-v6",
        "pg",
        "IPv6",
        &[(&["fd00:42::5"], Some("pg-0"), true)],
        &[("pg", "TCP", 5432)],
    ))
    .unwrap();
    assert_eq!(
        answer(&s, "pg-0.pg.db.svc.cluster.local.", RecordType::AAAA),
        vec!["fd00:42::5"]
    );
    assert_eq!(
        answer(&s, "pg-0.pg.db.svc.cluster.local.", RecordType::A),
        vec!["10.42.0.5"]
    );
}

#[test]
fn pod_records_come_from_the_name() {
    let s = state();
    assert_eq!(
        answer(&s, "10-42-0-5.default.pod.cluster.local.", RecordType::A),
        vec!["10.42.0.5"]
    );
    assert_eq!(
        answer(&s, "fd00--5.default.pod.cluster.local.", RecordType::AAAA),
        vec!["fd00::5"]
    );
    assert_eq!(
        answer(&s, "10-42-0-5.default.pod.cluster.local.", RecordType::AAAA),
        nodata()
    );
    assert_eq!(
        answer(&s, "not-an-ip.default.pod.cluster.local.", RecordType::A),
        nx()
    );
    assert_eq!(
        answer(&s, "default.pod.cluster.local.", RecordType::A),
        nodata()
    );
}

#[test]
fn deletes_remove_records_and_ptrs() {
    let mut s = headless_state(false);
    s.delete_slice("db", "pg-abc");
    assert_eq!(answer(&s, "pg.db.svc.cluster.local.", RecordType::A), nx());
    assert_eq!(
        lookup(&s, "5.0.42.10.in-addr.arpa.", RecordType::PTR),
        Lookup::NotAuthoritative
    );
    assert_eq!(answer(&s, "db.svc.cluster.local.", RecordType::A), nx());

    let mut s = web_state();
    s.delete_service("default", "web");
    assert_eq!(
        answer(&s, "web.default.svc.cluster.local.", RecordType::A),
        nx()
    );
    assert_eq!(
        lookup(&s, "20.0.43.10.in-addr.arpa.", RecordType::PTR),
        Lookup::NotAuthoritative
    );
    assert_eq!(answer(&s, "svc.cluster.local.", RecordType::A), nx());
}

#[test]
fn a_slice_moved_to_another_service_leaves_the_old_one() {
    let mut s = headless_state(false);
    s.apply_service(&headless_service("db", "other", &[], false))
        .unwrap();
    s.apply_slice(&endpoint_slice(
        "db",
        "pg-abc",
        "other",
        "IPv4",
        &[(&["10.42.0.5"], None, true)],
        &[],
    ))
    .unwrap();
    assert_eq!(answer(&s, "pg.db.svc.cluster.local.", RecordType::A), nx());
    assert_eq!(
        answer(&s, "other.db.svc.cluster.local.", RecordType::A),
        vec!["10.42.0.5"]
    );
}

#[test]
fn a_loaded_snapshot_never_changes_under_a_reader() {
    let mut s = web_state();
    let before = s.handle().load();
    s.delete_service("default", "web");
    let name = Name::from_ascii("web.default.svc.cluster.local.").unwrap();
    assert!(matches!(
        before.lookup(&name, RecordType::A),
        Lookup::Answer { .. }
    ));
    assert_eq!(
        s.handle().load().lookup(&name, RecordType::A),
        Lookup::NxDomain
    );
    assert_ne!(before.serial(), s.handle().load().serial());
}

#[test]
fn one_change_among_10000_services_copies_one_shard() {
    let mut s = state();
    let services: Vec<_> = (0..10_000)
        .map(|i| {
            let ip = format!("10.43.{}.{}", i / 250, i % 250 + 1);
            cluster_ip_service("bench", &format!("svc-{i}"), &[&ip], &[("http", "TCP", 80)])
        })
        .collect();
    s.replace_all(&services, &[]);
    let before = s.handle().load();
    s.apply_service(&cluster_ip_service(
        "bench",
        "svc-77",
        &["10.43.99.99"],
        &[],
    ))
    .unwrap();
    let after = s.handle().load();
    fn changed<T>(a: &[Arc<T>], b: &[Arc<T>]) -> usize {
        a.iter().zip(b).filter(|(x, y)| !Arc::ptr_eq(x, y)).count()
    }
    assert_eq!(changed(&before.services, &after.services), 1);
    // the old address's reverse shard and the new one's (which may coincide)
    assert!(changed(&before.ptrs, &after.ptrs) <= 2);
    assert_eq!(
        answer(&s, "svc-77.bench.svc.cluster.local.", RecordType::A),
        vec!["10.43.99.99"]
    );
    assert_eq!(
        answer(&s, "svc-9999.bench.svc.cluster.local.", RecordType::A),
        vec!["10.43.39.250"]
    );

    let started = std::time::Instant::now();
    for i in 0..200 {
        let ip = format!("10.43.200.{}", i + 1);
        s.apply_service(&cluster_ip_service(
            "bench",
            &format!("svc-{i}"),
            &[&ip],
            &[],
        ))
        .unwrap();
    }
    let per_apply = started.elapsed() / 200;
    // a full copy of 10,000 services per change would be tens of times slower than this
    assert!(
        per_apply < std::time::Duration::from_millis(2),
        "{per_apply:?}"
    );
}

#[test]
fn resolv_conf_nameservers_are_parsed() {
    let text = "# generated\nsearch example.com\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver ::1\noptions ndots:5\n";
    assert_eq!(
        crate::parse_resolv_conf(text),
        vec!["10.0.0.2:53".parse().unwrap(), "[::1]:53".parse().unwrap()]
    );
    assert_eq!(
        crate::parse_upstream("127.0.0.1:5353").unwrap().port(),
        5353
    );
    assert_eq!(crate::parse_upstream("10.1.1.1").unwrap().port(), 53);
    assert!(crate::parse_upstream("resolver.example").is_err());
}

#[test]
fn zone_file_export_lists_every_record() {
    let s = headless_state(false);
    let zones = crate::zonefile::export(&s.handle().load());
    let cluster = &zones[0];
    assert_eq!(cluster.origin, "cluster.local.");
    for line in [
        "dns-version.cluster.local. 5 IN TXT \"1.0.1\"",
        "pg.db.svc.cluster.local. 5 IN A 10.42.0.5",
        "pg.db.svc.cluster.local. 5 IN A 10.42.1.6",
        "pg-0.pg.db.svc.cluster.local. 5 IN A 10.42.0.5",
        "_pg._tcp.pg.db.svc.cluster.local. 5 IN SRV 0 50 5432 pg-0.pg.db.svc.cluster.local.",
    ] {
        assert!(
            cluster.text.lines().any(|l| l == line),
            "{line} missing from\n{}",
            cluster.text
        );
    }
    assert!(
        !cluster.text.contains("10.42.2.7"),
        "not-ready endpoint exported"
    );
    let reverse = &zones[1];
    assert_eq!(reverse.origin, "in-addr.arpa.");
    assert!(reverse
        .text
        .lines()
        .any(|l| l == "5.0.42.10.in-addr.arpa. 5 IN PTR pg-0.pg.db.svc.cluster.local."));
}
