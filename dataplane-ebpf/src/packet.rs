//! Packet parsing and rewriting for the two attach points.

use dataplane_common::{MARK_MASQ, MARK_NOTRACK, MARK_REPLY, PROTO_TCP, PROTO_UDP};

use crate::lb::{self, Action, Counter, Tuple, Verdict};

pub enum Error {
    /// Not a packet we handle (or too short / inconsistent to trust): pass it untouched.
    Unparsed,
    /// A rewrite helper failed half-way.
    Rewrite,
}

// Offsets for Ethernet + an option-less IPv4 header; packets with IP options are passed
// untouched, which keeps every offset a constant the verifier can check.
const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IP_OFF: usize = ETH_HLEN;
const IP_HLEN: usize = 20;
const IP_TOT_LEN: usize = IP_OFF + 2;
const IP_FRAG: usize = IP_OFF + 6;
const IP_PROTO: usize = IP_OFF + 9;
const IP_CSUM: usize = IP_OFF + 10;
const IP_SADDR: usize = IP_OFF + 12;
const IP_DADDR: usize = IP_OFF + 16;
const L4_OFF: usize = IP_OFF + IP_HLEN;
const L4_SPORT: usize = L4_OFF;
const L4_DPORT: usize = L4_OFF + 2;
const TCP_FLAGS: usize = L4_OFF + 13;
const TCP_CSUM: usize = L4_OFF + 16;
const TCP_HLEN: u16 = 20;
const UDP_CSUM: usize = L4_OFF + 6;
const UDP_HLEN: u16 = 8;
/// More-fragments flag and fragment offset: any of them set means a fragment.
const IP_FRAG_MASK: u16 = 0x3fff;

/// Bounds-checked reads, the one thing parsing needs from an attach point.
pub trait Reader {
    fn read<T: Copy>(&self, off: usize) -> Result<T, Error>;
    /// Bytes from the Ethernet header to the end of the frame.
    fn frame_len(&self) -> usize;
}

pub struct Parsed {
    pub tuple: Tuple,
    /// IPv4 total length (host order): the byte count the counters use.
    pub ip_len: u16,
    pub csum_off: usize,
}

impl Parsed {
    fn is_udp(&self) -> bool {
        self.tuple.proto == PROTO_UDP
    }
}

#[inline(always)]
pub fn parse<R: Reader>(r: &R) -> Result<Parsed, Error> {
    let eth_type: u16 = r.read(12)?;
    if u16::from_be(eth_type) != ETH_P_IP {
        return Err(Error::Unparsed);
    }
    // version 4 and a 20-byte header; anything else (options, garbage) is not ours
    let ver_ihl: u8 = r.read(IP_OFF)?;
    if ver_ihl != 0x45 {
        return Err(Error::Unparsed);
    }
    let frag: u16 = r.read(IP_FRAG)?;
    if u16::from_be(frag) & IP_FRAG_MASK != 0 {
        // only the first fragment has ports; translating it alone would split the datagram
        return Err(Error::Unparsed);
    }
    let proto: u8 = r.read(IP_PROTO)?;
    let (l4_min, csum_off) = match proto {
        PROTO_TCP => (TCP_HLEN, TCP_CSUM),
        PROTO_UDP => (UDP_HLEN, UDP_CSUM),
        _ => return Err(Error::Unparsed),
    };
    let tot_len: u16 = r.read(IP_TOT_LEN)?;
    let ip_len = u16::from_be(tot_len);
    // the IP header must claim at least a full L4 header and no more than the frame holds
    if ip_len < IP_HLEN as u16 + l4_min || usize::from(ip_len) + ETH_HLEN > r.frame_len() {
        return Err(Error::Unparsed);
    }
    // the full L4 header must be there too (the checksum sits at its end for TCP)
    let _: u16 = r.read(csum_off)?;
    let tcp_flags: u8 = if proto == PROTO_TCP {
        r.read(TCP_FLAGS)?
    } else {
        0
    };
    Ok(Parsed {
        tuple: Tuple {
            saddr: r.read(IP_SADDR)?,
            daddr: r.read(IP_DADDR)?,
            sport: r.read(L4_SPORT)?,
            dport: r.read(L4_DPORT)?,
            proto,
            tcp_flags,
        },
        ip_len,
        csum_off,
    })
}

/// A rewrite of one address and its port: the destination for DNAT, the source for
/// reverse NAT.
struct Rewrite {
    addr_off: usize,
    port_off: usize,
    old_addr: u32,
    new_addr: u32,
    old_port: u16,
    new_port: u16,
}

/// What to do with a parsed packet.
enum Plan {
    Pass,
    /// `new_flow`: the DNAT of a flow's first packet (only logged). `mark`: the skb mark
    /// bits to set (tc only; XDP has no skb to mark): `MARK_MASQ` for the node's masquerade
    /// rule, `MARK_NOTRACK` to keep the packet out of netfilter's conntrack, or none.
    Rewrite {
        rw: Rewrite,
        /// Hairpin flows rewrite the other address too.
        rw2: Option<Rewrite>,
        new_flow: bool,
        mark: u32,
    },
    /// A new flow to a service without backends: answer it (ICMP port unreachable, as
    /// kube-proxy's REJECT rules do) instead of letting the client time out.
    Reject {
        rev_nat_id: u16,
    },
    /// A new flow refused by a load-balancer's source ranges: dropped, as kube-proxy's
    /// firewall chains do.
    Drop,
}

/// Runs the decision for a parsed packet and bumps the counters.
#[inline(always)]
fn plan(p: &Parsed) -> Plan {
    let t = &p.tuple;
    let bytes = u64::from(p.ip_len);
    match lb::decide(t) {
        Action::None => Plan::Pass,
        Action::Dnat {
            addr,
            port,
            rev_nat_id,
            new_flow,
            masq,
            snat,
        } => {
            lb::count(rev_nat_id, Counter::Forward, bytes);
            let rw = Rewrite {
                addr_off: IP_DADDR,
                port_off: L4_DPORT,
                old_addr: t.daddr,
                new_addr: addr,
                old_port: t.dport,
                new_port: port,
            };
            let rw2 = snat.map(|a| Rewrite {
                addr_off: IP_SADDR,
                port_off: L4_SPORT,
                old_addr: t.saddr,
                new_addr: a,
                old_port: t.sport,
                new_port: t.sport,
            });
            Plan::Rewrite {
                rw,
                rw2,
                new_flow,
                mark: if masq { MARK_MASQ } else { MARK_NOTRACK },
            }
        }
        Action::RevNat {
            addr,
            port,
            rev_nat_id,
            dnat,
            masq,
        } => {
            lb::count(rev_nat_id, Counter::Reply, bytes);
            let rw = Rewrite {
                addr_off: IP_SADDR,
                port_off: L4_SPORT,
                old_addr: t.saddr,
                new_addr: addr,
                old_port: t.sport,
                new_port: port,
            };
            let rw2 = dnat.map(|a| Rewrite {
                addr_off: IP_DADDR,
                port_off: L4_DPORT,
                old_addr: t.daddr,
                new_addr: a,
                old_port: t.dport,
                new_port: t.dport,
            });
            Plan::Rewrite {
                rw,
                rw2,
                new_flow: false,
                // a masqueraded flow's replies are un-masqueraded by netfilter's conntrack;
                // every reply says it is one to the network policy rules
                mark: if masq {
                    MARK_REPLY
                } else {
                    MARK_NOTRACK | MARK_REPLY
                },
            }
        }
        Action::NoBackend { rev_nat_id, drop } => {
            lb::count(rev_nat_id, Counter::NoBackend, bytes);
            if drop {
                Plan::Drop
            } else {
                Plan::Reject { rev_nat_id }
            }
        }
        Action::Denied => Plan::Drop,
    }
}

/// ICMP header plus the quote of the offending packet (its IP header and 8 bytes).
const ICMP_HLEN: usize = 8;
const QUOTE_LEN: usize = IP_HLEN + 8;
const REJECT_LEN: usize = ETH_HLEN + IP_HLEN + ICMP_HLEN + QUOTE_LEN;

/// One's-complement checksum of big-endian 16-bit words.
#[inline(always)]
fn csum_be(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for part in parts {
        let mut i = 0;
        while i + 1 < part.len() {
            sum += (u32::from(part[i]) << 8) | u32::from(part[i + 1]);
            i += 2;
        }
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The Ethernet addresses (swapped) and the IPv4 + ICMP headers of a port unreachable
/// answering a packet whose first 12 bytes are `macs` and whose IP header and first 8 L4
/// bytes are `quote`. The quote follows the headers unchanged.
#[inline(always)]
fn port_unreachable(
    macs: &[u8; 12],
    quote: &[u8; QUOTE_LEN],
) -> ([u8; 12], [u8; IP_HLEN + ICMP_HLEN]) {
    let mut hdr = [0u8; IP_HLEN + ICMP_HLEN];
    hdr[0] = 0x45;
    hdr[1] = 0xc0; // precedence "internetwork control", as the kernel's own ICMP
    let tot = (IP_HLEN + ICMP_HLEN + QUOTE_LEN) as u16;
    hdr[2..4].copy_from_slice(&tot.to_be_bytes());
    hdr[8] = 64; // TTL
    hdr[9] = 1; // ICMP
    hdr[12..16].copy_from_slice(&quote[16..20]); // from the service address
    hdr[16..20].copy_from_slice(&quote[12..16]); // to the client
    let ip_csum = csum_be(&[&hdr[..IP_HLEN]]);
    hdr[10..12].copy_from_slice(&ip_csum.to_be_bytes());
    hdr[IP_HLEN] = 3; // destination unreachable
    hdr[IP_HLEN + 1] = 3; // port unreachable
    let icmp_csum = csum_be(&[&hdr[IP_HLEN..], quote]);
    hdr[IP_HLEN + 2..IP_HLEN + 4].copy_from_slice(&icmp_csum.to_be_bytes());

    let mut eth = [0u8; 12];
    eth[..6].copy_from_slice(&macs[6..12]);
    eth[6..].copy_from_slice(&macs[..6]);
    (eth, hdr)
}

pub mod tc {
    use aya_ebpf::{
        bindings::{BPF_CSUM_LEVEL_RESET, BPF_F_INGRESS, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
        helpers::{bpf_csum_level, bpf_redirect, bpf_skb_change_tail},
        programs::TcContext,
    };
    use aya_log_ebpf::debug;

    use super::*;

    /// Bytes up to the end of an option-less TCP header: everything `parse` reads.
    const HDR_LEN: usize = L4_OFF + TCP_HLEN as usize;
    /// Bytes up to the end of a UDP header: the shortest frame `parse` accepts.
    const MIN_LEN: usize = L4_OFF + UDP_HLEN as usize;

    /// The skb and a copy of its first `HDR_LEN` bytes (`MIN_LEN` of a shorter frame; the
    /// length copied is the second field) taken with one helper call: a
    /// `bpf_skb_load_bytes` per field made the program cost 2.5x as much on a packet it
    /// passes. Reads past the copy fail, which `parse` treats as a frame too short for it.
    struct Skb<'a>(&'a TcContext, usize, [u8; HDR_LEN]);

    impl<'a> Skb<'a> {
        #[inline(always)]
        fn new(ctx: &'a TcContext) -> Self {
            // fixed-size loads: the verifier rejects a length that might be zero
            match ctx.load::<[u8; HDR_LEN]>(0) {
                Ok(hdr) => Skb(ctx, HDR_LEN, hdr),
                Err(_) => match ctx.load::<[u8; MIN_LEN]>(0) {
                    Ok(short) => {
                        let mut hdr = [0u8; HDR_LEN];
                        hdr[..MIN_LEN].copy_from_slice(&short);
                        Skb(ctx, MIN_LEN, hdr)
                    }
                    Err(_) => Skb(ctx, 0, [0u8; HDR_LEN]),
                },
            }
        }
    }

    impl Reader for Skb<'_> {
        #[inline(always)]
        fn read<T: Copy>(&self, off: usize) -> Result<T, Error> {
            if off + core::mem::size_of::<T>() > self.1 || self.1 > HDR_LEN {
                return Err(Error::Unparsed);
            }
            // SAFETY: in bounds of the copy (checked just above); unaligned because IP fields
            // after a 14-byte Ethernet header are not naturally aligned.
            Ok(unsafe { self.2.as_ptr().add(off).cast::<T>().read_unaligned() })
        }

        #[inline(always)]
        fn frame_len(&self) -> usize {
            self.0.len() as usize
        }
    }

    #[inline(always)]
    pub fn try_tc(ctx: &TcContext) -> Result<Verdict, Error> {
        let p = parse(&Skb::new(ctx))?;
        match plan(&p) {
            Plan::Pass => Ok(Verdict::Pass),
            Plan::Rewrite {
                rw,
                rw2,
                new_flow,
                mark,
            } => {
                if new_flow {
                    // off unless the proxy enables it (AYA_LOG_LEVEL is patched at load)
                    debug!(
                        ctx,
                        "new flow {:i}:{} -> {:i}:{}",
                        u32::from_be(p.tuple.saddr),
                        u16::from_be(p.tuple.sport),
                        u32::from_be(rw.new_addr),
                        u16::from_be(rw.new_port)
                    );
                }
                apply(ctx, &p, &rw).map_err(|_| Error::Rewrite)?;
                if let Some(rw2) = rw2 {
                    apply(ctx, &p, &rw2).map_err(|_| Error::Rewrite)?;
                }
                if mark != 0 {
                    // SAFETY: tc programs may write `mark` of their own skb; the pointer is
                    // the context the kernel passed in.
                    unsafe { (*ctx.skb.skb).mark |= mark };
                }
                Ok(Verdict::Pass)
            }
            Plan::Reject { rev_nat_id } => {
                debug!(
                    ctx,
                    "rejecting a new flow: service {} has no backend", rev_nat_id
                );
                match reject(ctx) {
                    Ok(()) => Ok(Verdict::Redirect),
                    // could not build the answer: dropping is the fallback
                    Err(_) => Ok(Verdict::Drop),
                }
            }
            Plan::Drop => Ok(Verdict::Drop),
        }
    }

    /// Turns the packet into an ICMP port unreachable from the service address back to the
    /// client, and sends it out where it came from.
    #[inline(always)]
    fn reject(ctx: &TcContext) -> Result<(), i64> {
        // a fixed-size load: load_bytes() clamps its length to the packet, and the verifier
        // rejects the possible zero-length read
        let quote: [u8; QUOTE_LEN] = ctx.load(IP_OFF)?;
        let macs: [u8; 12] = ctx.load(0)?;
        let skb = ctx.skb.skb;
        // SAFETY: reading plain fields of the program's own context.
        let (ifindex, iif) = unsafe { ((*skb).ifindex, (*skb).ingress_ifindex) };

        // SAFETY: resizing the program's own skb; the packet is rewritten in full below.
        if unsafe { bpf_skb_change_tail(skb, REJECT_LEN as u32, 0) } != 0 {
            return Err(-1);
        }

        let (eth, hdr) = port_unreachable(&macs, &quote);
        ctx.store(0, &eth, 0)?;
        ctx.store(IP_OFF, &hdr, 0)?;
        ctx.store(IP_OFF + IP_HLEN + ICMP_HLEN, &quote, 0)?;
        // The checksums above are complete; an skb still marked CHECKSUM_PARTIAL (a SYN
        // from a local socket) would have its "L4 checksum" patched again on the way out.
        // SAFETY: as above.
        unsafe { bpf_csum_level(skb, u64::from(BPF_CSUM_LEVEL_RESET)) };
        // At ingress the answer leaves through the same device; at egress it must be
        // received by it instead.
        let flags = if iif == ifindex {
            0
        } else {
            u64::from(BPF_F_INGRESS)
        };
        // SAFETY: bpf_redirect only records the target; TC_ACT_REDIRECT makes it happen.
        unsafe { bpf_redirect(ifindex, flags) };
        Ok(())
    }

    #[inline(always)]
    fn apply(ctx: &TcContext, p: &Parsed, rw: &Rewrite) -> Result<(), i64> {
        // UDP: a zero checksum means "none" and must stay zero; a result of zero must be
        // written as 0xffff. BPF_F_MARK_MANGLED_0 does both.
        let l4 = if p.is_udp() {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        };
        // the address is part of the L4 pseudo-header
        ctx.l4_csum_replace(
            p.csum_off,
            u64::from(rw.old_addr),
            u64::from(rw.new_addr),
            l4 | u64::from(BPF_F_PSEUDO_HDR) | 4,
        )?;
        ctx.l4_csum_replace(
            p.csum_off,
            u64::from(rw.old_port),
            u64::from(rw.new_port),
            l4 | 2,
        )?;
        ctx.l3_csum_replace(IP_CSUM, u64::from(rw.old_addr), u64::from(rw.new_addr), 4)?;
        ctx.store(rw.addr_off, &rw.new_addr, 0)?;
        ctx.store(rw.port_off, &rw.new_port, 0)?;
        Ok(())
    }
}

pub mod xdp {
    use aya_ebpf::{helpers::bpf_xdp_adjust_tail, programs::XdpContext};

    use super::*;

    struct Frame<'a>(&'a XdpContext);

    impl Frame<'_> {
        /// A pointer to a `T` at `off`, or an error if any byte of it is past the end.
        #[inline(always)]
        fn ptr_at<T>(&self, off: usize) -> Result<*mut T, Error> {
            let start = self.0.data();
            let end = self.0.data_end();
            if start + off + core::mem::size_of::<T>() > end {
                return Err(Error::Unparsed);
            }
            Ok((start + off) as *mut T)
        }
    }

    impl Reader for Frame<'_> {
        #[inline(always)]
        fn read<T: Copy>(&self, off: usize) -> Result<T, Error> {
            let ptr = self.ptr_at::<T>(off)?;
            // SAFETY: bounds-checked just above; unaligned because IP fields after a 14-byte
            // Ethernet header are not naturally aligned.
            Ok(unsafe { ptr.read_unaligned() })
        }

        #[inline(always)]
        fn frame_len(&self) -> usize {
            self.0.data_end() - self.0.data()
        }
    }

    #[inline(always)]
    pub fn try_xdp(ctx: &XdpContext) -> Result<Verdict, Error> {
        let frame = Frame(ctx);
        let p = parse(&frame)?;
        match plan(&p) {
            Plan::Pass => Ok(Verdict::Pass),
            Plan::Rewrite { rw, rw2, .. } => {
                apply(&frame, &p, &rw)?;
                if let Some(rw2) = rw2 {
                    apply(&frame, &p, &rw2)?;
                }
                Ok(Verdict::Pass)
            }
            Plan::Reject { .. } => match reject(ctx) {
                Ok(()) => Ok(Verdict::Redirect),
                Err(_) => Ok(Verdict::Drop),
            },
            Plan::Drop => Ok(Verdict::Drop),
        }
    }

    /// Turns the frame into an ICMP port unreachable back to the client (sent with XDP_TX).
    #[inline(always)]
    fn reject(ctx: &XdpContext) -> Result<(), Error> {
        let (quote, macs) = {
            let f = Frame(ctx);
            let quote: [u8; QUOTE_LEN] = f.read(IP_OFF)?;
            let macs: [u8; 12] = f.read(0)?;
            (quote, macs)
        };
        let delta = REJECT_LEN as i32 - (ctx.data_end() - ctx.data()) as i32;
        // SAFETY: resizing the program's own frame; every pointer is re-derived below.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
            return Err(Error::Rewrite);
        }
        let (eth, hdr) = port_unreachable(&macs, &quote);
        let f = Frame(ctx);
        let eth_ptr = f.ptr_at::<[u8; 12]>(0)?;
        let hdr_ptr = f.ptr_at::<[u8; IP_HLEN + ICMP_HLEN]>(IP_OFF)?;
        let quote_ptr = f.ptr_at::<[u8; QUOTE_LEN]>(IP_OFF + IP_HLEN + ICMP_HLEN)?;
        // SAFETY: bounds-checked just above, after the resize.
        unsafe {
            eth_ptr.write_unaligned(eth);
            hdr_ptr.write_unaligned(hdr);
            quote_ptr.write_unaligned(quote);
        }
        Ok(())
    }

    /// Folds a 32-bit one's-complement sum to 16 bits.
    #[inline(always)]
    fn fold(mut sum: u32) -> u16 {
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        sum as u16
    }

    /// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), over the 16-bit words of the changed
    /// field. Words are taken in memory order on both sides, so byte order cancels out.
    #[inline(always)]
    fn csum_replace(csum: u16, old: u32, new: u32, words: u32) -> u16 {
        let mut sum = u32::from(!csum);
        sum += u32::from(!(old as u16)) + u32::from(new as u16);
        if words == 2 {
            sum += u32::from(!((old >> 16) as u16)) + u32::from((new >> 16) as u16);
        }
        !fold(sum)
    }

    #[inline(always)]
    fn apply(f: &Frame, p: &Parsed, rw: &Rewrite) -> Result<(), Error> {
        let ip_csum = f.ptr_at::<u16>(IP_CSUM)?;
        let l4_csum = f.ptr_at::<u16>(p.csum_off)?;
        let addr = f.ptr_at::<u32>(rw.addr_off)?;
        let port = f.ptr_at::<u16>(rw.port_off)?;
        // SAFETY: all four pointers were bounds-checked above and lie in the frame.
        unsafe {
            let c = ip_csum.read_unaligned();
            ip_csum.write_unaligned(csum_replace(c, rw.old_addr, rw.new_addr, 2));

            let c = l4_csum.read_unaligned();
            // UDP checksum 0 = "no checksum": leave it so
            if !(p.is_udp() && c == 0) {
                let c = csum_replace(c, rw.old_addr, rw.new_addr, 2);
                let mut c = csum_replace(c, u32::from(rw.old_port), u32::from(rw.new_port), 1);
                if p.is_udp() && c == 0 {
                    c = 0xffff;
                }
                l4_csum.write_unaligned(c);
            }

            addr.write_unaligned(rw.new_addr);
            port.write_unaligned(rw.new_port);
        }
        Ok(())
    }
}
