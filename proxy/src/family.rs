//! IP families. Upstream's proxier is family-agnostic code run once per family (a
//! MetaProxier in front of an IPv4 and an IPv6 proxier); here the desired state, the
//! iptables rules and the tracker are generic over [`Family`], instantiated for
//! [`Ipv4Addr`] (the eBPF or iptables dataplane) and [`Ipv6Addr`] (always ip6tables).

use std::{
    fmt::{Debug, Display},
    hash::Hash,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
    str::FromStr,
};

/// An address family: its address and socket address types, and what differs between them
/// in the API (EndpointSlice `addressType`) and in iptables (tool names, host masks).
pub trait Family: Copy + Ord + Hash + Debug + Display + FromStr + Send + Sync + 'static {
    /// The socket address of this family (an endpoint: address and port).
    type Sock: Copy + Ord + Hash + Debug + Display + Send + Sync + 'static;
    /// The EndpointSlice `addressType` of this family.
    const ADDRESS_TYPE: &'static str;
    /// Bits in an address: the prefix length of a single host.
    const BITS: u8;
    const UNSPECIFIED: Self;
    /// The iptables command family: `iptables` or `ip6tables`.
    const IPTABLES: &'static str;
    /// A host mask for `-m recent --mask`.
    const HOST_MASK: &'static str;
    /// What `REJECT --reject-with` sends for a closed port.
    const PORT_UNREACHABLE: &'static str;
    /// conntrack's `-f` for this family.
    const CONNTRACK_FAMILY: &'static str;

    fn sock(self, port: u16) -> Self::Sock;
    fn ip_of(sock: &Self::Sock) -> Self;
    /// `self` with the bits past `bits` cleared (a length over [`Family::BITS`] counts as it).
    fn network(self, bits: u8) -> Self;
    /// A CIDR range of this family as upstream parses them (`ParseCIDRSloppy`), host bits
    /// cleared; None for anything else, the other family included.
    fn parse_cidr(s: &str) -> Option<(Self, u8)>;
}

impl Family for Ipv4Addr {
    type Sock = SocketAddrV4;
    const ADDRESS_TYPE: &'static str = "IPv4";
    const BITS: u8 = 32;
    const UNSPECIFIED: Self = Ipv4Addr::UNSPECIFIED;
    const IPTABLES: &'static str = "iptables";
    const HOST_MASK: &'static str = "255.255.255.255";
    const PORT_UNREACHABLE: &'static str = "icmp-port-unreachable";
    const CONNTRACK_FAMILY: &'static str = "ipv4";

    fn sock(self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self, port)
    }

    fn ip_of(sock: &SocketAddrV4) -> Self {
        *sock.ip()
    }

    fn network(self, bits: u8) -> Self {
        crate::desired::network((self, bits)).0
    }

    fn parse_cidr(s: &str) -> Option<(Self, u8)> {
        crate::desired::parse_ipv4_cidr(s)
    }
}

impl Family for Ipv6Addr {
    type Sock = SocketAddrV6;
    const ADDRESS_TYPE: &'static str = "IPv6";
    const BITS: u8 = 128;
    const UNSPECIFIED: Self = Ipv6Addr::UNSPECIFIED;
    const IPTABLES: &'static str = "ip6tables";
    const HOST_MASK: &'static str = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    const PORT_UNREACHABLE: &'static str = "icmp6-port-unreachable";
    const CONNTRACK_FAMILY: &'static str = "ipv6";

    fn sock(self, port: u16) -> SocketAddrV6 {
        SocketAddrV6::new(self, port, 0, 0)
    }

    fn ip_of(sock: &SocketAddrV6) -> Self {
        *sock.ip()
    }

    fn network(self, bits: u8) -> Self {
        let bits = u32::from(bits.min(128));
        let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
        Ipv6Addr::from(u128::from(self) & mask)
    }

    fn parse_cidr(s: &str) -> Option<(Self, u8)> {
        let (addr, bits) = s.split_once('/')?;
        // Go's ParseCIDR: a decimal length without sign or leading zeros
        if bits.is_empty() || !bits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if bits.len() > 1 && bits.starts_with('0') {
            return None;
        }
        let bits: u8 = bits.parse().ok().filter(|b| *b <= 128)?;
        // an IPv4-mapped form (`::ffff:1.2.3.4`) is IPv4 to Go; not a range of this family
        let addr: Ipv6Addr = addr.parse().ok()?;
        if addr.to_ipv4_mapped().is_some() {
            return None;
        }
        Some((addr.network(bits), bits))
    }
}

/// Whether `addr` is in `range`.
pub fn contains<A: Family>(range: &(A, u8), addr: A) -> bool {
    addr.network(range.1) == range.0.network(range.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_ranges_parse_as_upstreams_and_clear_host_bits() {
        assert_eq!(
            Ipv6Addr::parse_cidr("fd00:42::7/56"),
            Some(("fd00:42::".parse().expect("ip"), 56))
        );
        assert_eq!(
            Ipv6Addr::parse_cidr("fd00:42:0:ff00::/55"),
            Some(("fd00:42:0:fe00::".parse().expect("ip"), 55))
        );
        assert_eq!(
            Ipv6Addr::parse_cidr("::/0"),
            Some((Ipv6Addr::UNSPECIFIED, 0))
        );
        for bad in [
            "fd00::/129",
            "fd00::",
            "fd00::/",
            "fd00::/+8",
            "fd00::/08",
            "10.0.0.0/8",
            "::ffff:10.0.0.0/104",
        ] {
            assert_eq!(Ipv6Addr::parse_cidr(bad), None, "{bad}");
        }
        assert_eq!(Ipv4Addr::parse_cidr("fd00::/8"), None);
    }

    #[test]
    fn ipv6_ranges_contain_their_addresses_only() {
        let range = Ipv6Addr::parse_cidr("fd00:42::/56").expect("range");
        assert!(contains(&range, "fd00:42:0:ff::1".parse().expect("ip")));
        assert!(!contains(&range, "fd00:42:0:100::1".parse().expect("ip")));
        let all = (Ipv6Addr::UNSPECIFIED, 0);
        assert!(contains(&all, "2001:db8::1".parse().expect("ip")));
        assert_eq!(
            "fd00::1"
                .parse::<Ipv6Addr>()
                .expect("ip")
                .sock(80)
                .to_string(),
            "[fd00::1]:80"
        );
    }
}
