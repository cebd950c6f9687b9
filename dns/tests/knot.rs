//! Tests with knotd (Debian package `knot`) as the other server: an upstream for
//! forwarding, and the reference for black-box conformance of the cluster zone.

mod common;

use common::*;
use dns::fixtures::*;
use dns::zonefile::ZoneFile;
use dns::ClusterState;
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::{Name, RecordType};

fn upstream_zone() -> ZoneFile {
    ZoneFile {
        origin: "example.test.".into(),
        text: "\
example.test. 60 IN SOA ns.example.test. hostmaster.example.test. 1 7200 1800 86400 60
example.test. 60 IN NS ns.example.test.
ns.example.test. 60 IN A 192.0.2.1
www.example.test. 300 IN A 192.0.2.10
www.example.test. 300 IN AAAA 2001:db8::10
alias.example.test. 300 IN CNAME www.example.test.
"
        .into(),
    }
}

fn empty_cluster() -> ClusterState {
    ClusterState::new(Name::from_ascii("cluster.local.").unwrap(), 5)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_outside_the_zone_are_forwarded_and_cached() {
    let state = empty_cluster();
    let knot = Knotd::start(&[upstream_zone()]);
    let kaze = Kaze::start(&state, vec![knot.addr]).await;

    for transport in ["+notcp", "+tcp"] {
        let r = kdig(kaze.addr, "www.example.test", "A", &[transport]).await;
        assert_eq!(r.status, "NOERROR");
        assert_eq!(r.answers, vec!["www.example.test. A 192.0.2.10"]);
        assert!(r.flags.split_whitespace().any(|f| f == "ra"), "{}", r.flags);
        // relayed, so not authoritative
        assert!(
            !r.flags.split_whitespace().any(|f| f == "aa"),
            "{}",
            r.flags
        );
    }
    let r = kdig(kaze.addr, "alias.example.test", "AAAA", &[]).await;
    assert_eq!(
        r.answers,
        vec![
            "alias.example.test. CNAME www.example.test.",
            "www.example.test. AAAA 2001:db8::10"
        ]
    );
    let r = kdig(kaze.addr, "missing.example.test", "A", &[]).await;
    assert_eq!(r.status, "NXDOMAIN");
    assert_eq!(r.authority.len(), 1);
    assert!(r.authority[0].starts_with("example.test. SOA ns.example.test."));
    let r = kdig(kaze.addr, "www.example.test", "TXT", &[]).await;
    assert_eq!(r.status, "NOERROR");
    assert!(r.answers.is_empty());

    // with the upstream gone, cached answers (positive and negative) are still served...
    drop(knot);
    let reply = udp(
        kaze.addr,
        &query_message("WWW.example.test.", RecordType::A, None),
    )
    .await;
    let o = outcome(&reply);
    assert_eq!(o.answers, vec!["www.example.test. A 192.0.2.10"]);
    assert!(reply.answers[0].ttl <= 300);
    let reply = udp(
        kaze.addr,
        &query_message("missing.example.test.", RecordType::A, None),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    // ...and what was never asked fails
    let reply = udp(
        kaze.addr,
        &query_message("ns.example.test.", RecordType::A, None),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forward_cache_is_bounded() {
    let knot = Knotd::start(&[upstream_zone()]);
    let metrics = std::sync::Arc::new(dns::Metrics::default());
    let forwarder = dns::forward::Forwarder::new(
        dns::ForwardConfig {
            upstreams: vec![knot.addr],
            timeout: std::time::Duration::from_millis(500),
            cache_size: 2,
            max_ttl: std::time::Duration::from_secs(3600),
            max_negative_ttl: std::time::Duration::from_secs(300),
        },
        metrics,
    );
    let name = |n: &str| Name::from_ascii(n).unwrap();
    let in_ = hickory_server::proto::rr::DNSClass::IN;
    for n in [
        "www.example.test.",
        "alias.example.test.",
        "ns.example.test.",
    ] {
        let a = forwarder
            .resolve(&name(n), RecordType::A, in_)
            .await
            .unwrap();
        assert_eq!(a.rcode, ResponseCode::NoError);
    }
    assert_eq!(forwarder.cached_entries(), 2);
    drop(knot);
    // the oldest entry was evicted, the newest is still there
    assert!(forwarder
        .resolve(&name("www.example.test."), RecordType::A, in_)
        .await
        .is_err());
    let a = forwarder
        .resolve(&name("ns.example.test."), RecordType::A, in_)
        .await
        .unwrap();
    assert_eq!(a.answers.len(), 1);
}

/// A cluster with every kind of record, for the conformance comparison.
fn conformance_cluster() -> ClusterState {
    let mut s = empty_cluster();
    s.apply_service(&cluster_ip_service(
        "default",
        "web",
        &["10.43.0.20", "fd00:43::20"],
        &[
            ("http", "TCP", 80),
            ("https", "TCP", 443),
            ("", "TCP", 8080),
        ],
    ))
    .unwrap();
    s.apply_service(&cluster_ip_service(
        "kube-system",
        "kube-dns",
        &["10.43.0.10"],
        &[
            ("dns", "UDP", 53),
            ("dns-tcp", "TCP", 53),
            ("metrics", "TCP", 9153),
        ],
    ))
    .unwrap();
    s.apply_service(&headless_service("db", "pg", &[("pg", "TCP", 5432)], false))
        .unwrap();
    s.apply_slice(&endpoint_slice(
        "db",
        "pg-v4",
        "pg",
        "IPv4",
        &[
            (&["10.42.0.5"], Some("pg-0"), true),
            (&["10.42.1.6"], None, true),
            (&["10.42.2.7"], Some("pg-2"), false),
        ],
        &[("pg", "TCP", 5432), ("metrics", "TCP", 9187)],
    ))
    .unwrap();
    s.apply_slice(&endpoint_slice(
        "db",
        "pg-v6",
        "pg",
        "IPv6",
        &[(&["fd00:42::5"], Some("pg-0"), true)],
        &[("pg", "TCP", 5432)],
    ))
    .unwrap();
    s.apply_service(&headless_service("db", "warm", &[], true))
        .unwrap();
    s.apply_slice(&endpoint_slice(
        "db",
        "warm-1",
        "warm",
        "IPv4",
        &[(&["10.42.3.3"], Some("warm-0"), false)],
        &[],
    ))
    .unwrap();
    s.apply_service(&headless_service("db", "empty", &[], false))
        .unwrap();
    s.apply_service(&external_name_service("default", "ext", "db.example.org"))
        .unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_with_knotd_serving_the_same_zone() {
    let state = conformance_cluster();
    let zones = dns::zonefile::export(&state.handle().load());
    let knot = Knotd::start(&zones);
    let kaze = Kaze::start(&state, vec![]).await;

    use RecordType::*;
    let queries: Vec<(&str, RecordType)> = vec![
        ("cluster.local.", SOA),
        ("cluster.local.", NS),
        ("cluster.local.", A),
        ("dns-version.cluster.local.", TXT),
        ("dns-version.cluster.local.", A),
        ("svc.cluster.local.", A),
        ("default.svc.cluster.local.", A),
        ("nosuchns.svc.cluster.local.", A),
        ("web.default.svc.cluster.local.", A),
        ("web.default.svc.cluster.local.", AAAA),
        ("web.default.svc.cluster.local.", TXT),
        ("Web.DEFAULT.svc.Cluster.Local.", A),
        ("_http._tcp.web.default.svc.cluster.local.", SRV),
        ("_https._tcp.web.default.svc.cluster.local.", SRV),
        ("_tcp.web.default.svc.cluster.local.", SRV),
        ("_8080._tcp.web.default.svc.cluster.local.", SRV),
        ("_http._udp.web.default.svc.cluster.local.", SRV),
        ("kube-dns.kube-system.svc.cluster.local.", A),
        ("_dns._udp.kube-dns.kube-system.svc.cluster.local.", SRV),
        ("_dns-tcp._tcp.kube-dns.kube-system.svc.cluster.local.", SRV),
        ("pg.db.svc.cluster.local.", A),
        ("pg.db.svc.cluster.local.", AAAA),
        ("pg-0.pg.db.svc.cluster.local.", A),
        ("pg-0.pg.db.svc.cluster.local.", AAAA),
        ("10-42-1-6.pg.db.svc.cluster.local.", A),
        ("pg-2.pg.db.svc.cluster.local.", A),
        ("_pg._tcp.pg.db.svc.cluster.local.", SRV),
        ("_metrics._tcp.pg.db.svc.cluster.local.", SRV),
        ("warm.db.svc.cluster.local.", A),
        ("warm-0.warm.db.svc.cluster.local.", A),
        ("empty.db.svc.cluster.local.", A),
        ("ext.default.svc.cluster.local.", CNAME),
        ("ext.default.svc.cluster.local.", A),
        ("missing.default.svc.cluster.local.", A),
        ("deep.missing.cluster.local.", A),
        ("20.0.43.10.in-addr.arpa.", PTR),
        ("10.0.43.10.in-addr.arpa.", PTR),
        ("5.0.42.10.in-addr.arpa.", PTR),
        ("6.1.42.10.in-addr.arpa.", PTR),
        ("3.3.42.10.in-addr.arpa.", PTR),
    ];
    let mut v6 = vec![];
    for ip in ["fd00:43::20", "fd00:42::5"] {
        let name = dns::records::reverse_name(&ip.parse().unwrap()).to_ascii();
        v6.push(name);
    }
    let mut all: Vec<(String, RecordType)> =
        queries.iter().map(|(n, t)| (n.to_string(), *t)).collect();
    all.extend(v6.into_iter().map(|n| (n, PTR)));

    let mut mismatches = Vec::new();
    for (name, qtype) in &all {
        for over_tcp in [false, true] {
            let msg = query_message(name, *qtype, Some(1232));
            let (ours, theirs) = if over_tcp {
                (tcp(kaze.addr, &msg).await, tcp(knot.addr, &msg).await)
            } else {
                (udp(kaze.addr, &msg).await, udp(knot.addr, &msg).await)
            };
            let (ours, theirs) = (outcome(&ours), outcome(&theirs));
            if ours != theirs {
                mismatches.push(format!(
                    "{name} {qtype} tcp={over_tcp}\n  kaze:  {ours:?}\n  knotd: {theirs:?}"
                ));
            }
        }
    }
    // guard against a vacuous comparison: knotd really answered with data
    let sample = outcome(
        &udp(
            knot.addr,
            &query_message("pg.db.svc.cluster.local.", A, None),
        )
        .await,
    );
    assert_eq!(sample.answers.len(), 2);
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
