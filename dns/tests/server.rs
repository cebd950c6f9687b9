//! kaze dns as a client sees it: real sockets on 127.0.0.1, kdig and raw hickory-proto
//! messages, state injected through `ClusterState`.

mod common;

use std::time::Duration;

use common::*;
use dns::fixtures::*;
use dns::ClusterState;
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn cluster() -> ClusterState {
    let mut s = ClusterState::new(Name::from_ascii("cluster.local.").unwrap(), 5);
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
    s.apply_service(&headless_service("db", "pg", &[("pg", "TCP", 5432)], false))
        .unwrap();
    s.apply_slice(&endpoint_slice(
        "db",
        "pg-1",
        "pg",
        "IPv4",
        &[
            (&["10.42.0.5"], Some("pg-0"), true),
            (&["10.42.1.6"], None, true),
            (&["10.42.2.7"], Some("pg-2"), false),
        ],
        &[("pg", "TCP", 5432)],
    ))
    .unwrap();
    s.apply_service(&external_name_service("default", "ext", "db.example.org"))
        .unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_type_answers_over_udp_and_tcp_with_kdig() {
    let state = cluster();
    let kaze = Kaze::start(&state, vec![]).await;
    let transports: [&'static [&'static str]; 2] = [&["+notcp"], &["+tcp"]];
    for transport in transports {
        let q = |name: &'static str, t: &'static str| kdig(kaze.addr, name, t, transport);

        let r = q("web.default.svc.cluster.local", "A").await;
        assert_eq!(r.status, "NOERROR");
        assert!(r.flags.contains("aa"), "{}", r.flags);
        assert_eq!(
            r.answers,
            vec!["web.default.svc.cluster.local. A 10.43.0.20"]
        );

        let r = q("web.default.svc.cluster.local", "AAAA").await;
        assert_eq!(
            r.answers,
            vec!["web.default.svc.cluster.local. AAAA fd00:43::20"]
        );

        let r = q("_https._tcp.web.default.svc.cluster.local", "SRV").await;
        assert_eq!(
            r.answers,
            vec!["_https._tcp.web.default.svc.cluster.local. SRV 0 100 443 web.default.svc.cluster.local."]
        );

        let r = q("20.0.43.10.in-addr.arpa", "PTR").await;
        assert_eq!(
            r.answers,
            vec!["20.0.43.10.in-addr.arpa. PTR web.default.svc.cluster.local."]
        );

        let r = q("pg.db.svc.cluster.local", "A").await;
        assert_eq!(
            r.answers,
            vec![
                "pg.db.svc.cluster.local. A 10.42.0.5",
                "pg.db.svc.cluster.local. A 10.42.1.6"
            ]
        );

        let r = q("pg-0.pg.db.svc.cluster.local", "A").await;
        assert_eq!(r.answers, vec!["pg-0.pg.db.svc.cluster.local. A 10.42.0.5"]);

        let r = q("_pg._tcp.pg.db.svc.cluster.local", "SRV").await;
        assert_eq!(
            r.answers,
            vec![
                "_pg._tcp.pg.db.svc.cluster.local. SRV 0 50 5432 10-42-1-6.pg.db.svc.cluster.local.",
                "_pg._tcp.pg.db.svc.cluster.local. SRV 0 50 5432 pg-0.pg.db.svc.cluster.local."
            ]
        );

        let r = q("6.1.42.10.in-addr.arpa", "PTR").await;
        assert_eq!(
            r.answers,
            vec!["6.1.42.10.in-addr.arpa. PTR 10-42-1-6.pg.db.svc.cluster.local."]
        );

        let r = q("ext.default.svc.cluster.local", "CNAME").await;
        assert_eq!(
            r.answers,
            vec!["ext.default.svc.cluster.local. CNAME db.example.org."]
        );

        let r = q("10-42-3-4.default.pod.cluster.local", "A").await;
        assert_eq!(
            r.answers,
            vec!["10-42-3-4.default.pod.cluster.local. A 10.42.3.4"]
        );

        let r = q("dns-version.cluster.local", "TXT").await;
        assert_eq!(r.answers, vec!["dns-version.cluster.local. TXT \"1.0.1\""]);

        // mixed case in, answers found all the same
        let r = q("WEB.Default.Svc.CLUSTER.local", "A").await;
        assert_eq!(
            r.answers,
            vec!["web.default.svc.cluster.local. A 10.43.0.20"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_names_get_nxdomain_and_empty_types_nodata_both_with_soa() {
    let state = cluster();
    let kaze = Kaze::start(&state, vec![]).await;

    let r = kdig(kaze.addr, "missing.default.svc.cluster.local", "A", &[]).await;
    assert_eq!(r.status, "NXDOMAIN");
    assert!(r.answers.is_empty());
    assert_eq!(r.authority.len(), 1, "{:?}", r.authority);
    assert!(r.authority[0]
        .starts_with("cluster.local. SOA ns.dns.cluster.local. hostmaster.cluster.local. "));

    // NODATA: the name exists, the type does not
    let reply = udp(
        kaze.addr,
        &query_message("pg.db.svc.cluster.local.", RecordType::AAAA, None),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.metadata.authoritative);
    assert!(reply.answers.is_empty());
    assert_eq!(reply.authorities.len(), 1);
    let soa = &reply.authorities[0];
    assert_eq!(soa.record_type(), RecordType::SOA);
    // the negative TTL is the record TTL (5 s): a service created now is seen soon
    assert_eq!(soa.ttl, 5);

    // the not-ready endpoint has no name
    let reply = tcp(
        kaze.addr,
        &query_message("pg-2.pg.db.svc.cluster.local.", RecordType::A, None),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_endpoint_headless_service_truncates_over_udp_and_answers_fully_over_tcp() {
    let mut state = ClusterState::new(Name::from_ascii("cluster.local.").unwrap(), 5);
    state
        .apply_service(&headless_service("big", "many", &[], false))
        .unwrap();
    let addrs: Vec<String> = (0..300)
        .map(|i| format!("10.42.{}.{}", i / 200, i % 200 + 1))
        .collect();
    let addr_refs: Vec<[&str; 1]> = addrs.iter().map(|a| [a.as_str()]).collect();
    let endpoints: Vec<EndpointSpec<'_>> = addr_refs.iter().map(|a| (&a[..], None, true)).collect();
    state
        .apply_slice(&endpoint_slice(
            "big",
            "many-1",
            "many",
            "IPv4",
            &endpoints,
            &[],
        ))
        .unwrap();
    let kaze = Kaze::start(&state, vec![]).await;
    let name = "many.big.svc.cluster.local.";

    // without EDNS: 512 bytes
    let reply = udp(kaze.addr, &query_message(name, RecordType::A, None)).await;
    assert!(reply.metadata.truncation, "TC not set");
    assert!(reply.answers.len() < 300);

    // with EDNS, the client's buffer bounds the reply
    let raw = udp_raw(
        kaze.addr,
        &query_message(name, RecordType::A, Some(1232))
            .to_vec()
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(
        raw.len() <= 1232,
        "reply of {} bytes exceeds the buffer",
        raw.len()
    );
    let reply = hickory_server::proto::op::Message::from_vec(&raw).unwrap();
    assert!(reply.metadata.truncation);

    // kdig, told not to fall back, sees TC; over TCP it gets all 300
    let r = kdig(
        kaze.addr,
        name,
        "A",
        &["+notcp", "+ignore", "+bufsize=1232"],
    )
    .await;
    assert!(
        r.flags.split_whitespace().any(|f| f == "tc"),
        "flags {}",
        r.flags
    );
    let r = kdig(kaze.addr, name, "A", &["+tcp"]).await;
    assert_eq!(r.status, "NOERROR");
    assert_eq!(r.answers.len(), 300);
    let reply = tcp(kaze.addr, &query_message(name, RecordType::A, None)).await;
    assert!(!reply.metadata.truncation);
    assert_eq!(reply.answers.len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_queries_get_formerr_or_are_dropped_and_the_server_keeps_serving() {
    let state = cluster();
    let kaze = Kaze::start(&state, vec![]).await;

    // shorter than a header: dropped
    assert!(udp_raw(kaze.addr, &[0x12, 0x34, 0x01]).await.is_none());
    // a header announcing a question that is not there
    let reply = udp_raw(
        kaze.addr,
        &[0xab, 0xcd, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0],
    )
    .await
    .expect("header-bearing garbage gets an answer");
    let reply = hickory_server::proto::op::Message::from_vec(&reply).unwrap();
    assert_eq!(reply.metadata.id, 0xabcd);
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    // two questions in one message
    let mut two = query_message("web.default.svc.cluster.local.", RecordType::A, None);
    two.add_query(hickory_server::proto::op::Query::query(
        Name::from_ascii("pg.db.svc.cluster.local.").unwrap(),
        RecordType::A,
    ));
    assert_eq!(
        udp(kaze.addr, &two).await.metadata.response_code,
        ResponseCode::FormErr
    );
    // garbage over TCP: a length prefix then noise
    let mut s = tokio::net::TcpStream::connect(kaze.addr).await.unwrap();
    s.write_all(&[
        0, 20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
    ])
    .await
    .unwrap();
    let mut buf = [0u8; 512];
    let _ = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await;

    // zone transfers are refused, unknown EDNS versions get BADVERS
    let reply = tcp(
        kaze.addr,
        &query_message("cluster.local.", RecordType::AXFR, None),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    let r = kdig(
        kaze.addr,
        "web.default.svc.cluster.local",
        "A",
        &["+edns=1"],
    )
    .await;
    assert_eq!(r.status, "BADVERS");

    // still alive and correct
    let r = kdig(kaze.addr, "web.default.svc.cluster.local", "A", &[]).await;
    assert_eq!(
        r.answers,
        vec!["web.default.svc.cluster.local. A 10.43.0.20"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_through_the_seam_are_served_immediately() {
    let mut state = cluster();
    let kaze = Kaze::start(&state, vec![]).await;
    let q = || query_message("late.default.svc.cluster.local.", RecordType::A, None);
    assert_eq!(
        udp(kaze.addr, &q()).await.metadata.response_code,
        ResponseCode::NXDomain
    );
    state
        .apply_service(&cluster_ip_service("default", "late", &["10.43.9.9"], &[]))
        .unwrap();
    let reply = udp(kaze.addr, &q()).await;
    assert_eq!(
        outcome(&reply).answers,
        vec!["late.default.svc.cluster.local. A 10.43.9.9"]
    );
    state.delete_service("default", "late");
    assert_eq!(
        udp(kaze.addr, &q()).await.metadata.response_code,
        ResponseCode::NXDomain
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_udp_questions_get_the_same_bytes_from_the_answer_cache_until_a_change() {
    let mut state = cluster();
    let kaze = Kaze::start(&state, vec![]).await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let questions = [
        ("web.default.svc.cluster.local.", RecordType::A, None),
        // the client's spelling is echoed, so another spelling is another entry
        ("WeB.DeFault.svc.cluster.local.", RecordType::A, None),
        (
            "web.default.svc.cluster.local.",
            RecordType::AAAA,
            Some(1232),
        ),
        (
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
            Some(4096),
        ),
        ("pg.db.svc.cluster.local.", RecordType::A, Some(600)),
        ("nope.default.svc.cluster.local.", RecordType::A, None),
        (
            "web.default.svc.cluster.local.",
            RecordType::TXT,
            Some(1232),
        ),
    ];
    for (name, qtype, edns) in questions {
        let mut msg = query_message(name, qtype, edns);
        let mut replies = Vec::new();
        for id in [0x1111u16, 0x2222, 0x3333] {
            msg.metadata.id = id;
            let reply = udp_exchange(&sock, kaze.addr, &msg.to_vec().unwrap()).await;
            assert_eq!(
                reply[..2],
                id.to_be_bytes(),
                "{name} {qtype}: id not patched"
            );
            replies.push(reply);
        }
        assert_eq!(replies[0][2..], replies[1][2..], "{name} {qtype}");
        assert_eq!(replies[0][2..], replies[2][2..], "{name} {qtype}");
        // TCP never uses the cache; these answers are small enough to be the same message
        let over_tcp = tcp_raw(kaze.addr, &msg.to_vec().unwrap()).await;
        assert_eq!(over_tcp, replies[2], "{name} {qtype}: udp and tcp differ");
    }
    let (hits, misses) = kaze.metrics.answer_cache();
    assert!(hits >= 2 * questions.len() as u64, "hits {hits}");
    assert!(misses >= questions.len() as u64, "misses {misses}");
    // every answer is counted, cached or not: three over UDP, one over TCP
    assert_eq!(kaze.metrics.queries("A", "NXDOMAIN"), 4);

    // a cached answer never outlives a change: the next question sees it
    let ask = |id: u16| {
        let mut q = query_message("web.default.svc.cluster.local.", RecordType::A, None);
        q.metadata.id = id;
        q.to_vec().unwrap()
    };
    let before = udp_exchange(&sock, kaze.addr, &ask(7)).await;
    let before = hickory_server::proto::op::Message::from_vec(&before).unwrap();
    assert_eq!(
        outcome(&before).answers,
        vec!["web.default.svc.cluster.local. A 10.43.0.20"]
    );
    state
        .apply_service(&cluster_ip_service(
            "default",
            "web",
            &["10.43.0.21"],
            &[("http", "TCP", 80)],
        ))
        .unwrap();
    let after = udp_exchange(&sock, kaze.addr, &ask(8)).await;
    let after = hickory_server::proto::op::Message::from_vec(&after).unwrap();
    assert_eq!(
        outcome(&after).answers,
        vec!["web.default.svc.cluster.local. A 10.43.0.21"]
    );
    state.delete_service("default", "web");
    let gone = udp_exchange(&sock, kaze.addr, &ask(9)).await;
    let gone = hickory_server::proto::op::Message::from_vec(&gone).unwrap();
    assert_eq!(gone.metadata.response_code, ResponseCode::NXDomain);
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_health_and_metrics_endpoints() {
    let state = cluster();
    let kaze = Kaze::start(&state, vec![]).await;
    assert_eq!(
        http_get(kaze.http, "/ready").await.0,
        503,
        "ready before initial sync"
    );
    assert_eq!(http_get(kaze.http, "/health").await.0, 200);
    kaze.status.set_ready();
    assert_eq!(http_get(kaze.http, "/ready").await.0, 200);

    kdig(kaze.addr, "web.default.svc.cluster.local", "A", &[]).await;
    kdig(kaze.addr, "nope.default.svc.cluster.local", "AAAA", &[]).await;
    let (code, body) = http_get(kaze.http, "/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains("\nprocess_open_fds "), "{body}");
    assert!(
        body.contains("kaze_dns_queries_total{type=\"A\",rcode=\"NOERROR\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("kaze_dns_queries_total{type=\"AAAA\",rcode=\"NXDOMAIN\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("kaze_dns_query_duration_seconds_count 2"),
        "{body}"
    );
    assert!(
        body.contains("kaze_dns_query_duration_seconds_bucket{le=\"+Inf\"} 2"),
        "{body}"
    );
}

/// Does the server at `addr` answer for the zone only this test serves? Other tests run in
/// parallel and may bind a port this test's server released, so "something answers" is
/// not enough to call a listener still open.
async fn serves_unique_zone(addr: std::net::SocketAddr, over_tcp: bool) -> bool {
    let q = query_message("probe.only.svc.shutdown.test.", RecordType::A, None);
    let reply = if over_tcp {
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
                .await
        else {
            return false;
        };
        let bytes = q.to_vec().unwrap();
        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        if s.write_all(&framed).await.is_err() {
            return false;
        }
        let mut len = [0u8; 2];
        match tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return false,
        }
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        if s.read_exact(&mut buf).await.is_err() {
            return false;
        }
        buf
    } else {
        match udp_raw(addr, &q.to_vec().unwrap()).await {
            Some(b) => b,
            None => return false,
        }
    };
    hickory_server::proto::op::Message::from_vec(&reply)
        .map(|m| outcome(&m).answers == vec!["probe.only.svc.shutdown.test. A 10.43.7.7"])
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_stops_every_listener() {
    let mut state = ClusterState::new(Name::from_ascii("shutdown.test.").unwrap(), 5);
    state
        .apply_service(&cluster_ip_service("only", "probe", &["10.43.7.7"], &[]))
        .unwrap();
    let mut kaze = Kaze::start(&state, vec![]).await;
    // the probe really tells our server apart
    assert!(serves_unique_zone(kaze.addr, false).await);
    assert!(serves_unique_zone(kaze.addr, true).await);
    // an idle TCP client must not hold shutdown up
    let _idle = tokio::net::TcpStream::connect(kaze.addr).await.unwrap();

    kaze.shutdown.cancel();
    let task = kaze.task.take().unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("serve() did not return after cancellation")
        .expect("serve task panicked");
    assert!(result.is_ok(), "{result:?}");
    assert!(
        !serves_unique_zone(kaze.addr, false).await,
        "udp still served"
    );
    assert!(
        !serves_unique_zone(kaze.addr, true).await,
        "tcp still served"
    );
    // the HTTP port: refused, or (if a parallel test took the port) not our server
    match std::net::TcpStream::connect_timeout(&kaze.http, Duration::from_secs(1)) {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused),
        Ok(_) => assert!(
            !http_get(kaze.http, "/metrics")
                .await
                .1
                .contains("kaze_dns_queries_total{type=\"A\",rcode=\"NOERROR\"} 2"),
            "http still served"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_answers_reach_ipv6_clients() {
    let state = cluster();
    let options = dns::ServerOptions {
        bind: vec!["[::1]:0".parse().unwrap()],
        http_bind: None,
        forward: dns::ForwardConfig {
            upstreams: vec![],
            timeout: Duration::from_millis(500),
            cache_size: 0,
            max_ttl: Duration::ZERO,
            max_negative_ttl: Duration::ZERO,
        },
        lameduck: Duration::ZERO,
    };
    let server = dns::DnsServer::bind(
        options,
        state.handle(),
        Default::default(),
        Default::default(),
    )
    .await
    .unwrap();
    let addr = server.dns_addrs()[0];
    let shutdown = tokio_util::sync::CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let serving = tokio::spawn(server.serve(shutdown.clone()));
    let sock = tokio::net::UdpSocket::bind("[::1]:0").await.unwrap();
    let q = query_message("web.default.svc.cluster.local.", RecordType::A, None);
    // twice: the computed answer and the cached one both find their way back
    for _ in 0..2 {
        let reply = udp_exchange(&sock, addr, &q.to_vec().unwrap()).await;
        let reply = hickory_server::proto::op::Message::from_vec(&reply).unwrap();
        assert_eq!(
            outcome(&reply).answers,
            vec!["web.default.svc.cluster.local. A 10.43.0.20"]
        );
    }
    shutdown.cancel();
    serving.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborting_serve_also_stops_the_udp_threads() {
    let mut state = ClusterState::new(Name::from_ascii("abort.test.").unwrap(), 5);
    state
        .apply_service(&cluster_ip_service("only", "probe", &["10.43.8.8"], &[]))
        .unwrap();
    let mut kaze = Kaze::start(&state, vec![]).await;
    let probe = || async {
        let q = query_message("probe.only.svc.abort.test.", RecordType::A, None);
        match udp_raw(kaze.addr, &q.to_vec().unwrap()).await {
            Some(reply) => hickory_server::proto::op::Message::from_vec(&reply)
                .map(|m| outcome(&m).answers == vec!["probe.only.svc.abort.test. A 10.43.8.8"])
                .unwrap_or(false),
            None => false,
        }
    };
    assert!(probe().await);
    // the task is dropped mid-serve, without the shutdown token: threads cannot be
    // aborted, so they must notice on their own
    let task = kaze.task.take().unwrap();
    task.abort();
    let _ = task.await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!probe().await, "udp still served after serve() was dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lameduck_keeps_answering_while_health_fails_then_stops() {
    let state = cluster();
    let mut kaze = Kaze::start_with_lameduck(&state, vec![], Duration::from_millis(1500)).await;
    kaze.status.set_ready();
    kaze.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(http_get(kaze.http, "/health").await.0, 503);
    assert_eq!(http_get(kaze.http, "/ready").await.0, 503);
    let r = kdig(kaze.addr, "web.default.svc.cluster.local", "A", &[]).await;
    assert_eq!(
        r.answers,
        vec!["web.default.svc.cluster.local. A 10.43.0.20"]
    );
    let task = kaze.task.take().unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("serve() did not return after the lameduck period")
        .expect("serve task panicked");
    assert!(result.is_ok(), "{result:?}");
}
