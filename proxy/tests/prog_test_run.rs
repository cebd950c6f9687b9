//! The programs run on crafted frames with `BPF_PROG_TEST_RUN` (root; real kernel).
//! Checksums of every rewritten frame are recomputed from scratch in `support`.

mod support;

use std::net::{Ipv4Addr, SocketAddrV4};

use proxy::{Dataplane, Protocol, ServiceKey};
use support::*;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 5);

fn backends() -> Vec<SocketAddrV4> {
    (1..=3)
        .map(|i| SocketAddrV4::new(Ipv4Addr::new(10, 42, i, 7), 8080))
        .collect()
}

fn tcp_svc() -> ServiceKey {
    ServiceKey {
        address: VIP,
        port: 80,
        protocol: Protocol::Tcp,
    }
}

fn udp_svc() -> ServiceKey {
    ServiceKey {
        address: VIP,
        port: 53,
        protocol: Protocol::Udp,
    }
}

fn setup(test: &str) -> (PinRoot, Dataplane) {
    let root = PinRoot::new(test);
    let mut dp = root.load();
    dp.upsert_service(tcp_svc(), &backends())
        .expect("upsert tcp");
    dp.upsert_service(udp_svc(), &backends())
        .expect("upsert udp");
    (root, dp)
}

/// Offsets of bytes that differ between two equally long frames.
fn changed(a: &[u8], b: &[u8]) -> Vec<usize> {
    assert_eq!(a.len(), b.len(), "frame length changed");
    (0..a.len()).filter(|i| a[*i] != b[*i]).collect()
}

/// Bytes a DNAT/rev-NAT rewrite may touch: IP checksum, one address, one port, L4 checksum.
fn allowed(proto: u8, dst_side: bool) -> Vec<usize> {
    let mut v: Vec<usize> = vec![24, 25];
    let (addr, port) = if dst_side { (30, 36) } else { (26, 34) };
    v.extend(addr..addr + 4);
    v.extend(port..port + 2);
    let csum = if proto == 6 { 50 } else { 40 };
    v.extend([csum, csum + 1]);
    v
}

fn assert_only_nat_bytes_changed(input: &[u8], output: &[u8], proto: u8, dst_side: bool) {
    let allowed = allowed(proto, dst_side);
    for off in changed(input, output) {
        assert!(
            allowed.contains(&off),
            "byte {off} changed but is not part of the rewrite"
        );
    }
}

type Runner = fn(&Dataplane, &[u8]) -> (u32, Vec<u8>);
type Builder = fn((Ipv4Addr, u16), (Ipv4Addr, u16)) -> Spec;

fn new_flows_round_robin(test: &str, run: Runner, pass: u32, proto: u8) {
    let (_root, dp) = setup(test);
    let (svc_port, spec): (u16, Builder) = if proto == 6 {
        (80, Spec::tcp)
    } else {
        (53, Spec::udp)
    };
    let bes = backends();
    for i in 0..7u16 {
        let frame = spec((CLIENT, 40000 + i), (VIP, svc_port)).build();
        let (ret, out) = run(&dp, &frame);
        assert_eq!(ret, pass, "verdict of new flow {i}");
        let seen = parse_and_verify(&out);
        let want = bes[usize::from(i) % 3];
        assert_eq!(
            seen,
            Seen {
                src: CLIENT,
                dst: *want.ip(),
                sport: 40000 + i,
                dport: want.port()
            },
            "new flow {i} must go to backend {} (round-robin)",
            usize::from(i) % 3
        );
        assert_only_nat_bytes_changed(&frame, &out, proto, true);
    }
}

#[test]
fn tc_tcp_new_flows_round_robin_with_correct_checksums() {
    new_flows_round_robin("tc-tcp-rr", run_tc, TC_ACT_OK, 6);
}

#[test]
fn tc_udp_new_flows_round_robin_with_correct_checksums() {
    new_flows_round_robin("tc-udp-rr", run_tc, TC_ACT_OK, 17);
}

#[test]
fn xdp_tcp_new_flows_round_robin_with_correct_checksums() {
    new_flows_round_robin("xdp-tcp-rr", run_xdp, XDP_PASS, 6);
}

#[test]
fn xdp_udp_new_flows_round_robin_with_correct_checksums() {
    new_flows_round_robin("xdp-udp-rr", run_xdp, XDP_PASS, 17);
}

/// Datagrams shorter than an Ethernet + IPv4 + TCP header (an empty or tiny UDP payload)
/// are read through the tc program's shorter header copy; they must be translated too.
#[test]
fn short_udp_datagrams_are_translated() {
    let (_root, dp) = setup("udp-short");
    let bes = backends();
    for (i, len) in [0usize, 1, 11, 12].into_iter().enumerate() {
        let spec = Spec {
            payload: vec![7; len],
            ..Spec::udp((CLIENT, 41000 + i as u16), (VIP, 53))
        };
        let frame = spec.build();
        assert_eq!(frame.len(), 42 + len);
        for (name, run, pass) in [
            ("tc", run_tc as Runner, TC_ACT_OK),
            ("xdp", run_xdp, XDP_PASS),
        ] {
            let (ret, out) = run(&dp, &frame);
            assert_eq!(ret, pass, "{name} verdict for a {len}-byte payload");
            let seen = parse_and_verify(&out);
            assert!(
                bes.iter()
                    .any(|b| *b.ip() == seen.dst && b.port() == seen.dport),
                "{name}: a {len}-byte payload was not DNATed to a backend: {seen:?}"
            );
            assert_only_nat_bytes_changed(&frame, &out, 17, true);
        }
    }
}

#[test]
fn same_five_tuple_keeps_its_backend_across_other_flows() {
    let (_root, dp) = setup("same-tuple");
    let flow = Spec::tcp((CLIENT, 50000), (VIP, 80)).build();
    let first = parse_and_verify(&run_tc(&dp, &flow).1);
    for i in 0..5 {
        // other flows advance the round-robin cursor in between
        let other = Spec::tcp((CLIENT, 51000 + i), (VIP, 80)).build();
        run_tc(&dp, &other);
        let again = parse_and_verify(&run_tc(&dp, &flow).1);
        assert_eq!(again, first, "packet {i} of the flow changed backend");
        // the XDP program shares the conntrack map
        let via_xdp = parse_and_verify(&run_xdp(&dp, &flow).1);
        assert_eq!(via_xdp, first, "the XDP path chose differently from tc");
    }
}

fn reverse_nat(test: &str, run: Runner, proto: u8) {
    let (_root, dp) = setup(test);
    let (port, spec): (u16, Builder) = if proto == 6 {
        (80, Spec::tcp)
    } else {
        (53, Spec::udp)
    };
    let fwd = parse_and_verify(&run(&dp, &spec((CLIENT, 41000), (VIP, port)).build()).1);
    let reply = spec((fwd.dst, fwd.dport), (CLIENT, 41000)).build();
    let (_, out) = run(&dp, &reply);
    let seen = parse_and_verify(&out);
    assert_eq!(
        seen,
        Seen {
            src: VIP,
            dst: CLIENT,
            sport: port,
            dport: 41000
        },
        "the reply must come from the service address"
    );
    assert_only_nat_bytes_changed(&reply, &out, proto, false);

    // a packet from the backend to some other client port is not part of the flow
    let stray = spec((fwd.dst, fwd.dport), (CLIENT, 41001)).build();
    let (_, out) = run(&dp, &stray);
    assert_eq!(out, stray, "a packet outside any flow was rewritten");
}

#[test]
fn tc_reverse_nat_of_tcp_reply() {
    reverse_nat("tc-rnat-tcp", run_tc, 6);
}

#[test]
fn tc_reverse_nat_of_udp_reply() {
    reverse_nat("tc-rnat-udp", run_tc, 17);
}

#[test]
fn xdp_reverse_nat_of_tcp_reply() {
    reverse_nat("xdp-rnat-tcp", run_xdp, 6);
}

#[test]
fn udp_without_checksum_keeps_zero_checksum() {
    let (_root, dp) = setup("udp-zero-csum");
    for (name, run) in [("tc", run_tc as Runner), ("xdp", run_xdp as Runner)] {
        let mut spec = Spec::udp((CLIENT, 42000), (VIP, 53));
        spec.udp_no_csum = true;
        spec.sport += if name == "tc" { 0 } else { 1 };
        let frame = spec.build();
        let (_, out) = run(&dp, &frame);
        let seen = parse_and_verify(&out);
        assert_ne!(seen.dst, VIP, "{name}: the datagram was not translated");
        assert_eq!(
            &out[40..42],
            &[0, 0],
            "{name}: a zero UDP checksum must stay zero"
        );
    }
}

/// Frames the programs must not touch: wrong family, malformed or unusual headers, and
/// traffic that is not for a service. Each one is addressed to the service where it can be,
/// so passing it untouched is a decision, not an accident.
fn untouched_frames() -> Vec<(&'static str, Vec<u8>)> {
    let good = Spec::tcp((CLIENT, 43000), (VIP, 80));
    let frame = good.build();
    let mut v = Vec::new();

    v.push(("empty ethernet payload", ethernet(0x0800)));
    v.push(("truncated IPv4 header", frame[..ETH_HLEN + 12].to_vec()));
    v.push(("truncated TCP header", frame[..ETH_HLEN + 20 + 10].to_vec()));

    let mut arp = ethernet(0x0806);
    arp.extend_from_slice(&[0u8; 28]);
    v.push(("ARP", arp));

    let mut v6 = ethernet(0x86dd);
    v6.extend_from_slice(&[0x60; 60]);
    v.push(("IPv6", v6));

    let mut opts = good.clone();
    opts.ip_options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    v.push(("IPv4 with options", opts.build()));

    let mut first_frag = good.clone();
    first_frag.frag = 0x2000; // MF, offset 0
    v.push(("first fragment", first_frag.build()));
    let mut later_frag = good.clone();
    later_frag.frag = 0x0010; // offset 128
    v.push(("later fragment", later_frag.build()));

    let mut too_long = frame.clone();
    too_long[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&2000u16.to_be_bytes());
    v.push(("total length beyond the frame", too_long));

    let mut too_short = frame.clone();
    too_short[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&30u16.to_be_bytes());
    v.push(("total length shorter than a TCP header", too_short));

    let mut v5 = frame.clone();
    v5[ETH_HLEN] = 0x55; // version 5
    v.push(("not version 4", v5));

    let mut icmp = frame.clone();
    icmp[ETH_HLEN + 9] = 1;
    v.push(("ICMP to the service address", icmp));

    v.push((
        "other port on the service address",
        Spec::tcp((CLIENT, 43000), (VIP, 81)).build(),
    ));
    v.push((
        "UDP to a TCP-only port",
        Spec::udp((CLIENT, 43000), (VIP, 80)).build(),
    ));
    v.push((
        "not a service address",
        Spec::tcp((CLIENT, 43000), (Ipv4Addr::new(10, 43, 0, 11), 80)).build(),
    ));
    v
}

#[test]
fn packets_the_balancer_does_not_handle_pass_untouched() {
    let (_root, dp) = setup("untouched");
    for (name, frame) in untouched_frames() {
        // BPF_PROG_TEST_RUN refuses (EINVAL) to build an skb claiming IPv4 without a full
        // IPv4 header, so the shortest frames reach only the XDP program here
        if frame.len() >= ETH_HLEN + 20 {
            let (ret, out) = run_tc(&dp, &frame);
            assert_eq!(ret, TC_ACT_OK, "tc verdict for {name}");
            assert_eq!(
                out, frame,
                "tc changed a frame it must pass untouched: {name}"
            );
        }
        let (ret, out) = run_xdp(&dp, &frame);
        assert_eq!(ret, XDP_PASS, "xdp verdict for {name}");
        assert_eq!(
            out, frame,
            "xdp changed a frame it must pass untouched: {name}"
        );
    }
    assert_eq!(
        dp.conntrack_entries().expect("conntrack"),
        0,
        "no flow may be created for frames that were not translated"
    );
}

/// Checks that `out` is an ICMP port unreachable answering `input`, with checksums
/// recomputed here.
fn assert_port_unreachable(input: &[u8], out: &[u8]) {
    assert_eq!(out.len(), ETH_HLEN + 20 + 8 + 28, "ICMP answer length");
    assert_eq!(
        &out[..6],
        &input[6..12],
        "the answer goes back to the sender's MAC"
    );
    assert_eq!(
        &out[6..12],
        &input[..6],
        "the answer comes from the receiver's MAC"
    );
    let ip = &out[ETH_HLEN..];
    assert_eq!(ip[0], 0x45);
    assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 56, "IPv4 total length");
    assert_eq!(ip[9], 1, "protocol must be ICMP");
    assert_eq!(ip_checksum(&ip[..20]), 0, "IPv4 header checksum is wrong");
    assert_eq!(
        &ip[12..16],
        &input[ETH_HLEN + 16..ETH_HLEN + 20],
        "from the service"
    );
    assert_eq!(
        &ip[16..20],
        &input[ETH_HLEN + 12..ETH_HLEN + 16],
        "to the client"
    );
    let icmp = &ip[20..];
    assert_eq!(
        (icmp[0], icmp[1]),
        (3, 3),
        "type/code must be port unreachable"
    );
    assert_eq!(ip_checksum(icmp), 0, "ICMP checksum is wrong");
    assert_eq!(
        &icmp[8..],
        &input[ETH_HLEN..ETH_HLEN + 28],
        "the quote must be the original IP header and 8 bytes"
    );
}

#[test]
fn service_without_backends_rejects_new_flows_and_counts_them() {
    let root = PinRoot::new("no-backends");
    let mut dp = root.load();
    dp.upsert_service(tcp_svc(), &[]).expect("upsert tcp");
    dp.upsert_service(udp_svc(), &[]).expect("upsert udp");
    for frame in [
        Spec::tcp((CLIENT, 44000), (VIP, 80)).build(),
        Spec::udp((CLIENT, 44000), (VIP, 53)).build(),
    ] {
        let (ret, out) = run_tc(&dp, &frame);
        assert_eq!(ret, TC_ACT_REDIRECT, "tc must bounce an answer");
        assert_port_unreachable(&frame, &out);
        let (ret, out) = run_xdp(&dp, &frame);
        assert_eq!(ret, XDP_TX, "xdp must send the answer back out");
        assert_port_unreachable(&frame, &out);
    }
    let c = dp
        .counters(tcp_svc())
        .expect("counters")
        .expect("programmed");
    assert_eq!(
        c.no_backend, 2,
        "the TCP packet, through tc and through XDP"
    );
    assert_eq!(c.fwd_packets, 0);
    assert_eq!(dp.conntrack_entries().expect("conntrack"), 0);
}

/// A `Local` policy's view without local endpoints (`SVC_FLAG_DROP_EMPTY`): new flows are
/// dropped, not answered, and counted; without the flag the same empty service refuses.
#[test]
fn local_view_without_local_endpoints_drops_new_flows() {
    let root = PinRoot::new("drop-empty");
    let mut dp = root.load();
    dp.upsert_service_with(tcp_svc(), &[], dataplane_common::SVC_FLAG_DROP_EMPTY, 0)
        .expect("upsert");
    let frame = Spec::tcp((CLIENT, 44100), (VIP, 80)).build();
    let (ret, _) = run_tc(&dp, &frame);
    assert_eq!(ret, TC_ACT_SHOT, "tc drops");
    let (ret, _) = run_xdp(&dp, &frame);
    assert_eq!(ret, XDP_DROP, "xdp drops");
    let c = dp
        .counters(tcp_svc())
        .expect("counters")
        .expect("programmed");
    assert_eq!(c.no_backend, 2);
    dp.upsert_service(tcp_svc(), &[]).expect("no flag");
    let (ret, out) = run_tc(&dp, &frame);
    assert_eq!(ret, TC_ACT_REDIRECT, "without the flag: refused");
    assert_port_unreachable(&frame, &out);
}

#[test]
fn source_ranges_drop_new_flows_from_other_clients_and_follow_updates_and_reloads() {
    let root = PinRoot::new("src-ranges");
    let lb = ServiceKey {
        address: Ipv4Addr::new(198, 51, 100, 1),
        port: 80,
        protocol: Protocol::Tcp,
    };
    let inside = Ipv4Addr::new(203, 0, 113, 77);
    let outside = Ipv4Addr::new(203, 0, 114, 77);
    // a second frontend with a range that would let `outside` in: ranges are per frontend
    let other = ServiceKey { port: 81, ..lb };
    let flags = dataplane_common::SVC_FLAG_SOURCE_RANGES;
    {
        let mut dp = root.load();
        dp.upsert_frontend(
            lb,
            &backends(),
            0,
            0,
            &[(Ipv4Addr::new(203, 0, 113, 9), 24)],
            None,
        )
        .expect("upsert with ranges");
        dp.upsert_frontend(other, &backends(), 0, 0, &[(outside, 32)], None)
            .expect("upsert the other frontend");
        let listed = dp.services().expect("list");
        let programmed = listed.iter().find(|s| s.key == lb).expect("programmed");
        assert_eq!(programmed.flags & flags, flags);
        assert_eq!(
            programmed.source_ranges,
            vec![(Ipv4Addr::new(203, 0, 113, 0), 24)],
            "read back from the map, host bits cleared"
        );
    } // dropped, as a proxy restart would: the next load reads the ranges back

    let mut dp = root.load();
    let allowed = Spec::tcp((inside, 40000), (lb.address, 80)).build();
    let denied = Spec::tcp((outside, 40000), (lb.address, 80)).build();
    for (hook, run, pass, drop) in [
        ("tc", run_tc as Runner, TC_ACT_OK, TC_ACT_SHOT),
        ("xdp", run_xdp as Runner, XDP_PASS, XDP_DROP),
    ] {
        let (ret, out) = run(&dp, &allowed);
        assert_eq!(ret, pass, "{hook}: a client in range");
        assert!(
            backends()
                .iter()
                .any(|b| *b.ip() == parse_and_verify(&out).dst),
            "{hook}: a client in range is sent to a backend"
        );
        let (ret, _) = run(&dp, &denied);
        assert_eq!(ret, drop, "{hook}: a client outside every range is dropped");
    }
    let (ret, out) = run_tc(
        &dp,
        &Spec::tcp((outside, 40001), (other.address, 81)).build(),
    );
    assert_eq!(ret, TC_ACT_OK, "the other frontend's range lets it in");
    assert!(backends()
        .iter()
        .any(|b| *b.ip() == parse_and_verify(&out).dst));

    // the established flow of the client in range keeps going when the ranges change
    dp.upsert_frontend(lb, &backends(), 0, 0, &[(outside, 32)], None)
        .expect("new ranges");
    assert_eq!(
        run_tc(&dp, &allowed).0,
        TC_ACT_OK,
        "established flows are not re-checked"
    );
    let (ret, _) = run_tc(&dp, &Spec::tcp((inside, 40002), (lb.address, 80)).build());
    assert_eq!(ret, TC_ACT_SHOT, "a new flow from the old range is dropped");
    let (ret, out) = run_tc(&dp, &Spec::tcp((outside, 40002), (lb.address, 80)).build());
    assert_eq!(ret, TC_ACT_OK, "the new range is let in");
    assert!(backends()
        .iter()
        .any(|b| *b.ip() == parse_and_verify(&out).dst));

    // no ranges: everyone; and the map holds only the other frontend's entry
    dp.upsert_service(lb, &backends()).expect("ranges removed");
    let (ret, _) = run_tc(&dp, &Spec::tcp((inside, 40003), (lb.address, 80)).build());
    assert_eq!(ret, TC_ACT_OK);
    let listed = dp.services().expect("list");
    let programmed = listed.iter().find(|s| s.key == lb).expect("programmed");
    assert_eq!(programmed.flags & flags, 0);
    assert!(programmed.source_ranges.is_empty());
    dp.remove_service(other).expect("remove");
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(root.path().join(dataplane_common::names::SOURCE_RANGES4))
        .output()
        .expect("running bpftool");
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "[]",
        "a removed frontend's ranges are removed"
    );
}

/// The `Svc4Key.scope` of every `KAZE_SVC4` entry, as bpftool prints them.
fn scopes_in_services_map(root: &PinRoot) -> Vec<u64> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(root.path().join(dataplane_common::names::SERVICES4))
        .output()
        .expect("running bpftool");
    assert!(out.status.success(), "bpftool failed");
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool's JSON");
    dump.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["formatted"]["key"]["scope"].as_u64())
        .collect()
}

/// externalTrafficPolicy Local's short-circuit: new flows from a client in the pod ranges
/// to a frontend with one go to its backends (every endpoint), with replies from the
/// frontend's address; other clients get the frontend's own (this node's) backends; a
/// reload keeps both; without the short-circuit pods get the frontend's backends again and
/// no short-circuit entry is left in the map.
#[test]
fn short_circuit_sends_pods_to_every_endpoint_and_other_clients_to_the_local_ones() {
    let root = PinRoot::new("short-circuit");
    let lb = ServiceKey {
        address: Ipv4Addr::new(198, 51, 100, 2),
        port: 80,
        protocol: Protocol::Tcp,
    };
    let local = vec![backends()[0]];
    let every: std::collections::BTreeSet<Ipv4Addr> = backends().iter().map(|b| *b.ip()).collect();
    let pod = Ipv4Addr::new(10, 42, 9, 7);
    let outsider = Ipv4Addr::new(203, 0, 113, 5);
    {
        let mut dp = root.load();
        dp.set_pod_nets(&[(Ipv4Addr::new(10, 42, 3, 3), 16)])
            .expect("pod ranges");
        dp.upsert_frontend(lb, &local, 0, 0, &[], Some(&backends()))
            .expect("upsert with a short-circuit");
    } // dropped, as a proxy restart would: the next load reads both views back
    let mut dp = root.load();
    assert_eq!(dp.pod_nets(), vec![(Ipv4Addr::new(10, 42, 0, 0), 16)]);
    let listed = dp.services().expect("list");
    assert_eq!(
        listed.len(),
        1,
        "one frontend, however many views: {listed:?}"
    );
    assert_eq!(listed[0].backends, local);
    assert_eq!(listed[0].short_circuit, Some(backends()));
    assert_ne!(
        listed[0].flags & dataplane_common::SVC_FLAG_SHORT_CIRCUIT,
        0
    );
    let mut port = 42000;
    let mut dsts = |dp: &Dataplane, run: Runner, client: Ipv4Addr| {
        (0..6)
            .map(|_| {
                port += 1;
                let (_, out) = run(dp, &Spec::tcp((client, port), (lb.address, 80)).build());
                parse_and_verify(&out).dst
            })
            .collect::<std::collections::BTreeSet<Ipv4Addr>>()
    };
    for (hook, run) in [("tc", run_tc as Runner), ("xdp", run_xdp as Runner)] {
        assert_eq!(
            dsts(&dp, run, pod),
            every,
            "{hook}: a pod's new flows go round the short-circuit's backends"
        );
        assert_eq!(
            dsts(&dp, run, outsider),
            [*local[0].ip()].into(),
            "{hook}: other clients get this node's backend only"
        );
    }
    // a pod's reply comes from the frontend's address
    let fwd = parse_and_verify(&run_tc(&dp, &Spec::tcp((pod, 43000), (lb.address, 80)).build()).1);
    let reply = Spec::tcp((fwd.dst, fwd.dport), (pod, 43000)).build();
    assert_eq!(
        parse_and_verify(&run_tc(&dp, &reply).1),
        Seen {
            src: lb.address,
            dst: pod,
            sport: 80,
            dport: 43000
        }
    );
    let c = dp.counters(lb).expect("counters").expect("programmed");
    assert!(
        c.fwd_packets >= 25 && c.rev_packets == 1,
        "the frontend's counters include its short-circuit's: {c:?}"
    );
    assert!(scopes_in_services_map(&root).contains(&1));

    // no short-circuit any more: pods are clients like any other, nothing of it is left
    dp.upsert_frontend(lb, &local, 0, 0, &[], None)
        .expect("short-circuit removed");
    assert_eq!(dsts(&dp, run_tc, pod), [*local[0].ip()].into());
    assert_eq!(dp.services().expect("list")[0].short_circuit, None);
    assert!(
        !scopes_in_services_map(&root).contains(&1),
        "no short-circuit entry left behind"
    );
    // back, then the whole frontend removed: no entry of either view
    dp.upsert_frontend(lb, &local, 0, 0, &[], Some(&backends()))
        .expect("short-circuit again");
    assert!(dp.remove_service(lb).expect("remove"));
    assert!(scopes_in_services_map(&root).is_empty());
    dp.set_pod_nets(&[]).expect("no pod ranges");
    assert!(dp.pod_nets().is_empty());
}

#[test]
fn counters_count_forward_and_reply_packets_and_bytes() {
    let (_root, dp) = setup("counters");
    let spec = Spec::tcp((CLIENT, 45000), (VIP, 80));
    let frame = spec.build();
    let ip_len = (frame.len() - ETH_HLEN) as u64;
    let mut be = None;
    for _ in 0..3 {
        be = Some(parse_and_verify(&run_tc(&dp, &frame).1));
    }
    let be = be.expect("ran");
    let reply = Spec::tcp((be.dst, be.dport), (CLIENT, 45000)).build();
    run_tc(&dp, &reply);
    let c = dp
        .counters(tcp_svc())
        .expect("counters")
        .expect("programmed");
    assert_eq!((c.fwd_packets, c.fwd_bytes), (3, 3 * ip_len));
    assert_eq!(
        (c.rev_packets, c.rev_bytes),
        (1, (reply.len() - ETH_HLEN) as u64)
    );
    let udp = dp
        .counters(udp_svc())
        .expect("counters")
        .expect("programmed");
    assert_eq!(udp.fwd_packets, 0, "another service's traffic was counted");
}

#[test]
fn removed_service_keeps_established_flows_and_takes_no_new_ones() {
    let (_root, mut dp) = setup("remove-drains");
    let flow = Spec::tcp((CLIENT, 46000), (VIP, 80)).build();
    let before = parse_and_verify(&run_tc(&dp, &flow).1);
    assert!(dp.remove_service(tcp_svc()).expect("remove"));
    assert!(!dp.remove_service(tcp_svc()).expect("remove again"));

    let after = parse_and_verify(&run_tc(&dp, &flow).1);
    assert_eq!(after, before, "the established flow lost its backend");
    let reply = Spec::tcp((before.dst, before.dport), (CLIENT, 46000)).build();
    let back = parse_and_verify(&run_tc(&dp, &reply).1);
    assert_eq!(
        (back.src, back.sport),
        (VIP, 80),
        "the established flow lost reverse NAT"
    );

    let new = Spec::tcp((CLIENT, 46001), (VIP, 80)).build();
    assert_eq!(
        run_tc(&dp, &new).1,
        new,
        "a new flow to a removed service was translated"
    );
    let listed = dp.services().expect("list");
    assert_eq!(listed.len(), 1, "only the UDP service remains: {listed:?}");
    assert_eq!(listed[0].key, udp_svc());
}

#[test]
fn upsert_lists_backends_in_slot_order_and_shrinks_cleanly() {
    let (_root, mut dp) = setup("upsert-shrink");
    let listed = dp.services().expect("list");
    assert_eq!(listed.len(), 2);
    for s in &listed {
        assert_eq!(s.backends, backends(), "{}", s.key);
    }
    assert_ne!(listed[0].rev_nat_id, listed[1].rev_nat_id);

    let fewer = vec![backends()[2], backends()[0]];
    dp.upsert_service(tcp_svc(), &fewer).expect("shrink");
    let tcp = dp
        .services()
        .expect("list")
        .into_iter()
        .find(|s| s.key == tcp_svc())
        .expect("tcp service");
    assert_eq!(tcp.backends, fewer);

    // only the two remaining backends are chosen from now on, alternating
    let mut chosen = Vec::new();
    for i in 0..4 {
        let f = Spec::tcp((CLIENT, 47000 + i), (VIP, 80)).build();
        let s = parse_and_verify(&run_tc(&dp, &f).1);
        chosen.push(SocketAddrV4::new(s.dst, s.dport));
    }
    assert!(chosen.iter().all(|b| fewer.contains(b)), "{chosen:?}");
    assert_ne!(chosen[0], chosen[1], "{chosen:?}");
    assert_eq!(chosen[0], chosen[2], "{chosen:?}");
}

#[test]
fn udp_backend_removal_forgets_its_flows_but_tcp_flows_drain() {
    let (_root, mut dp) = setup("backend-removal");
    let bes = backends();
    // flows 0,1,2 land on backends 0,1,2 (round-robin from a fresh cursor)
    let udp: Vec<Vec<u8>> = (0..3)
        .map(|i| Spec::udp((CLIENT, 48000 + i), (VIP, 53)).build())
        .collect();
    let tcp: Vec<Vec<u8>> = (0..3)
        .map(|i| Spec::tcp((CLIENT, 48000 + i), (VIP, 80)).build())
        .collect();
    for f in udp.iter().chain(&tcp) {
        run_tc(&dp, f);
    }
    let keep = vec![bes[1], bes[2]];
    dp.upsert_service(udp_svc(), &keep)
        .expect("udp without backend 0");
    dp.upsert_service(tcp_svc(), &keep)
        .expect("tcp without backend 0");

    let u = parse_and_verify(&run_tc(&dp, &udp[0]).1);
    assert!(
        keep.contains(&SocketAddrV4::new(u.dst, u.dport)),
        "the UDP flow still goes to the removed backend: {u:?}"
    );
    let t = parse_and_verify(&run_tc(&dp, &tcp[0]).1);
    assert_eq!(
        SocketAddrV4::new(t.dst, t.dport),
        bes[0],
        "the established TCP flow must drain on its old backend"
    );
    let u1 = parse_and_verify(&run_tc(&dp, &udp[1]).1);
    assert_eq!(
        SocketAddrV4::new(u1.dst, u1.dport),
        bes[1],
        "a UDP flow on a kept backend must not move"
    );
}

#[test]
fn reload_reuses_pinned_maps_and_flows() {
    let root = PinRoot::new("reload");
    let flow = Spec::tcp((CLIENT, 49000), (VIP, 80)).build();
    let (first, listed) = {
        let mut dp = root.load();
        dp.upsert_service(tcp_svc(), &backends()).expect("upsert");
        let first = parse_and_verify(&run_tc(&dp, &flow).1);
        (first, dp.services().expect("list"))
    }; // the first dataplane is dropped here, as a proxy restart would

    let mut dp = root.load();
    assert_eq!(
        dp.services().expect("list"),
        listed,
        "programmed services were lost"
    );
    assert_eq!(
        parse_and_verify(&run_tc(&dp, &flow).1),
        first,
        "the established flow changed backend across a reload"
    );
    // the round-robin cursor survived too: the next new flow goes to backend 1
    let next = parse_and_verify(&run_tc(&dp, &Spec::tcp((CLIENT, 49001), (VIP, 80)).build()).1);
    assert_eq!(SocketAddrV4::new(next.dst, next.dport), backends()[1]);

    // the reloaded state is usable: ids are not handed out twice
    dp.upsert_service(udp_svc(), &backends())
        .expect("upsert after reload");
    let ids: Vec<u16> = dp
        .services()
        .expect("list")
        .iter()
        .map(|s| s.rev_nat_id)
        .collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1], "a rev-NAT id was reused while in use");
}

#[test]
fn maps_are_pinned_with_btf_under_the_pin_root() {
    let (root, _dp) = setup("pins");
    for name in dataplane_common::names::ALL {
        let path = root.path().join(name);
        assert!(path.exists(), "{} is not pinned", path.display());
    }
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(root.path().join(dataplane_common::names::SERVICES4))
        .output()
        .expect("running bpftool");
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // with BTF, bpftool prints named fields instead of hex bytes
    for field in ["\"backend_slot\"", "\"rev_nat_id\"", "\"count\""] {
        assert!(text.contains(field), "bpftool output lacks {field}: {text}");
    }
}

/// Collects aya-log records.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl log::Log for Captured {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0.lock().expect("lock").push(record.args().to_string());
    }
    fn flush(&self) {}
}

fn logged_lines(kernel_log: Option<aya_log::Level>, test: &str) -> Vec<String> {
    let root = PinRoot::new(test);
    let mut dp = Dataplane::load(&proxy::DataplaneConfig {
        kernel_log,
        ..root.config()
    })
    .expect("loading the dataplane");
    dp.upsert_service(tcp_svc(), &backends()).expect("upsert");
    let captured = Captured::default();
    let mut logger = dp.kernel_logger(captured.clone()).expect("logger");
    run_tc(&dp, &Spec::tcp((CLIENT, 40000), (VIP, 80)).build());
    logger.flush();
    let lines = captured.0.lock().expect("lock").clone();
    lines
}

#[test]
fn kernel_logging_is_off_by_default_and_reports_new_flows_when_asked() {
    assert_eq!(logged_lines(None, "log-off"), Vec::<String>::new());
    let lines = logged_lines(Some(aya_log::Level::Debug), "log-on");
    assert_eq!(
        lines,
        vec!["new flow 10.42.0.5:40000 -> 10.42.1.7:8080".to_string()]
    );
}

#[test]
fn syn_reusing_a_tuple_whose_backend_was_removed_picks_a_live_backend() {
    let (_root, mut dp) = setup("stale-syn");
    let bes = backends();
    let data = Spec::tcp((CLIENT, 52000), (VIP, 80)).build();
    let first = parse_and_verify(&run_tc(&dp, &data).1);
    assert_eq!(SocketAddrV4::new(first.dst, first.dport), bes[0]);

    let live = vec![bes[1], bes[2]];
    dp.upsert_service(tcp_svc(), &live)
        .expect("removing backend 0");
    let drain = parse_and_verify(&run_tc(&dp, &data).1);
    assert_eq!(
        drain, first,
        "a data packet of the old connection must still drain"
    );

    let mut syn = Spec::tcp((CLIENT, 52000), (VIP, 80));
    syn.tcp_flags = 0x02;
    syn.payload.clear();
    let syn = syn.build();
    let moved = parse_and_verify(&run_tc(&dp, &syn).1);
    let moved_to = SocketAddrV4::new(moved.dst, moved.dport);
    assert!(
        live.contains(&moved_to),
        "a new SYN went to a removed backend: {moved:?}"
    );
    // retransmissions of that SYN, and the rest of the new connection, stay put
    assert_eq!(parse_and_verify(&run_tc(&dp, &syn).1), moved);
    assert_eq!(parse_and_verify(&run_tc(&dp, &data).1), moved);
    let reply = Spec::tcp((moved.dst, moved.dport), (CLIENT, 52000)).build();
    let back = parse_and_verify(&run_tc(&dp, &reply).1);
    assert_eq!((back.src, back.sport), (VIP, 80));
    // the old backend's reply mapping was dropped with the old connection
    let old_reply = Spec::tcp((first.dst, first.dport), (CLIENT, 52000)).build();
    assert_eq!(run_tc(&dp, &old_reply).1, old_reply);
}

/// A backend calling its own service and picked for it (hairpin): the packet to it gets the
/// service address as source (its kernel drops packets from its own address), its reply
/// gets its own address back as destination; checksums recomputed independently.
fn hairpin(test: &str, run: Runner, proto: u8) {
    let root = PinRoot::new(test);
    let mut dp = root.load();
    // one backend: every new flow is a hairpin for it
    let me = SocketAddrV4::new(Ipv4Addr::new(10, 42, 1, 7), 8080);
    let (svc, spec): (ServiceKey, Builder) = if proto == 6 {
        (tcp_svc(), Spec::tcp)
    } else {
        (udp_svc(), Spec::udp)
    };
    dp.upsert_service(svc, &[me]).expect("upsert");
    let out = run(&dp, &spec((*me.ip(), 42000), (VIP, svc.port)).build()).1;
    assert_eq!(
        parse_and_verify(&out),
        Seen {
            src: VIP,
            dst: *me.ip(),
            sport: 42000,
            dport: 8080
        },
        "to the backend, from the service address"
    );
    let reply = spec((*me.ip(), 8080), (VIP, 42000)).build();
    let out = run(&dp, &reply).1;
    assert_eq!(
        parse_and_verify(&out),
        Seen {
            src: VIP,
            dst: *me.ip(),
            sport: svc.port,
            dport: 42000
        },
        "the reply comes from the service, to the backend itself"
    );
    // a later packet of the flow is rewritten the same way
    let out = run(&dp, &spec((*me.ip(), 42000), (VIP, svc.port)).build()).1;
    assert_eq!(parse_and_verify(&out).src, VIP);
}

#[test]
fn tc_hairpin_tcp_is_source_natted_to_the_service() {
    hairpin("ptr-hairpin-tcp", run_tc, 6);
}

#[test]
fn tc_hairpin_udp_is_source_natted_to_the_service() {
    hairpin("ptr-hairpin-udp", run_tc, 17);
}

#[test]
fn xdp_hairpin_tcp_is_source_natted_to_the_service() {
    hairpin("ptr-hairpin-xdp", run_xdp, 6);
}
