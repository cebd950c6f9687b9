//! `component::detect_node_ip` in a network namespace of the test's own (real interfaces and
//! routes): the default route's address wins over an interface listed before the uplink
//! (the pod bridge a previous run left), and without a default route the first global
//! address is taken.

use std::net::IpAddr;
use std::process::Command;

fn ip(args: &str) {
    let status = Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .expect("running ip");
    assert!(status.success(), "ip {args}: {status}");
}

#[test]
fn the_node_ip_is_the_default_routes_address() {
    let _netns = testkit::Netns::enter("kzt-nodeip");
    // a bridge first (it is listed first), then the uplink with the default route
    ip("link add kzb0 type bridge");
    ip("addr add 10.88.0.1/24 dev kzb0");
    ip("link set kzb0 up");
    ip("link add kzu0 type veth peer name kzu1");
    ip("addr add 192.168.77.5/24 dev kzu0");
    ip("link set kzu0 up");
    ip("link set kzu1 up");
    ip("route add default via 192.168.77.1 dev kzu0");
    let want: IpAddr = "192.168.77.5".parse().expect("ip");
    assert_eq!(component::detect_node_ip(), want);
    // no default route: the first global address
    ip("route del default");
    let want: IpAddr = "10.88.0.1".parse().expect("ip");
    assert_eq!(component::detect_node_ip(), want);
}
