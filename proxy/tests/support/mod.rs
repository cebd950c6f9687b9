//! Test support for the privileged dataplane tests: unique pin roots, packet building, and
//! checksums computed from scratch (never with the code under test).
#![allow(dead_code)] // each test file uses a different part of this module

pub mod netns;

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::programs::{TestRun, TestRunOptions};
use proxy::{Dataplane, DataplaneConfig};

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// A short id unique to one test in one process, for names with tight length limits
/// (interface names: 15 bytes).
pub fn unique_id(test: &str) -> String {
    let mut h = DefaultHasher::new();
    test.hash(&mut h);
    std::process::id().hash(&mut h);
    format!("{:06x}", h.finish() & 0xff_ffff)
}

/// Mounts bpffs if it is not mounted yet (a fresh machine has none).
pub fn ensure_bpffs() {
    let mounted = std::process::Command::new("mountpoint")
        .args(["-q", "/sys/fs/bpf"])
        .status()
        .expect("running mountpoint")
        .success();
    if !mounted {
        let ok = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .status()
            .expect("running mount")
            .success();
        assert!(ok, "mounting bpffs on /sys/fs/bpf");
    }
}

/// A pin root of its own for one test, removed (with every pin in it) on drop.
pub struct PinRoot(PathBuf);

impl PinRoot {
    pub fn new(test: &str) -> Self {
        ensure_bpffs();
        let path = PathBuf::from(format!(
            "/sys/fs/bpf/kaze-test-{test}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        PinRoot(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn config(&self) -> DataplaneConfig {
        DataplaneConfig {
            pin_root: self.0.clone(),
            // small, so parallel tests do not each preallocate the production size
            conntrack_max: Some(4096),
            object: None,
            kernel_log: None,
            udp_timeout: proxy::DEFAULT_UDP_TIMEOUT,
        }
    }

    pub fn load(&self) -> Dataplane {
        Dataplane::load(&self.config()).expect("loading the dataplane")
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// === packets ===

pub const ETH_HLEN: usize = 14;

/// Fields of a crafted IPv4 TCP/UDP frame.
#[derive(Clone, Debug)]
pub struct Spec {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub payload: Vec<u8>,
    /// Extra IPv4 option bytes (multiple of 4).
    pub ip_options: Vec<u8>,
    /// Raw flags+fragment-offset field.
    pub frag: u16,
    /// UDP only: send a zero ("none") checksum.
    pub udp_no_csum: bool,
    /// TCP flags byte.
    pub tcp_flags: u8,
}

impl Spec {
    pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Self {
        Spec {
            src: src.0,
            dst: dst.0,
            sport: src.1,
            dport: dst.1,
            proto: 6,
            payload: b"hello over tcp".to_vec(),
            ip_options: Vec::new(),
            frag: 0x4000, // DF
            udp_no_csum: false,
            tcp_flags: 0x18, // PSH|ACK
        }
    }

    pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Self {
        Spec {
            proto: 17,
            payload: b"hello over udp!".to_vec(),
            ..Spec::tcp(src, dst)
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend_from_slice(&self.sport.to_be_bytes());
        l4.extend_from_slice(&self.dport.to_be_bytes());
        if self.proto == 6 {
            l4.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // seq
            l4.extend_from_slice(&0x0a0b_0c0du32.to_be_bytes()); // ack
            l4.push(5 << 4); // data offset
            l4.push(self.tcp_flags);
            l4.extend_from_slice(&64240u16.to_be_bytes()); // window
            l4.extend_from_slice(&[0, 0]); // checksum
            l4.extend_from_slice(&[0, 0]); // urgent
        } else {
            l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
        }
        l4.extend_from_slice(&self.payload);
        let csum_at = if self.proto == 6 { 16 } else { 6 };
        if !(self.proto == 17 && self.udp_no_csum) {
            let mut c = l4_checksum(self.src, self.dst, self.proto, &l4);
            if self.proto == 17 && c == 0 {
                c = 0xffff;
            }
            l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        }

        let ihl = 20 + self.ip_options.len();
        let mut ip = Vec::new();
        ip.push(0x40 | (ihl / 4) as u8);
        ip.push(0);
        ip.extend_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&0x1234u16.to_be_bytes());
        ip.extend_from_slice(&self.frag.to_be_bytes());
        ip.push(64);
        ip.push(self.proto);
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        ip.extend_from_slice(&self.ip_options);
        let c = ip_checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());

        let mut frame = ethernet(0x0800);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&l4);
        frame
    }
}

pub fn ethernet(ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// RFC 1071 one's-complement sum, written out here rather than shared with the programs.
fn ones_sum(data: &[u8]) -> u32 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

pub fn ip_checksum(header: &[u8]) -> u16 {
    !fold(ones_sum(header))
}

pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.push(0);
    pseudo.push(proto);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    !fold(ones_sum(&pseudo) + ones_sum(segment))
}

/// A parsed view of an output frame, for assertions.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

/// Parses an option-less IPv4 TCP/UDP frame and checks both checksums from scratch.
pub fn parse_and_verify(frame: &[u8]) -> Seen {
    assert!(
        frame.len() >= ETH_HLEN + 20,
        "frame too short: {frame:02x?}"
    );
    let ip = &frame[ETH_HLEN..];
    assert_eq!(ip[0], 0x45, "expected an option-less IPv4 header");
    let tot = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let ip = &ip[..tot];
    assert_eq!(
        fold(ones_sum(&ip[..20])),
        0xffff,
        "IPv4 header checksum is wrong in {frame:02x?}"
    );
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let proto = ip[9];
    let l4 = &ip[20..];
    let csum_at = if proto == 6 { 16 } else { 6 };
    let wire = u16::from_be_bytes([l4[csum_at], l4[csum_at + 1]]);
    if !(proto == 17 && wire == 0) {
        let mut zeroed = l4.to_vec();
        zeroed[csum_at..csum_at + 2].copy_from_slice(&[0, 0]);
        let mut want = l4_checksum(src, dst, proto, &zeroed);
        if proto == 17 && want == 0 {
            want = 0xffff;
        }
        assert_eq!(
            wire, want,
            "L4 checksum is wrong (got {wire:#06x}, want {want:#06x}) in {frame:02x?}"
        );
    }
    Seen {
        src,
        dst,
        sport: u16::from_be_bytes([l4[0], l4[1]]),
        dport: u16::from_be_bytes([l4[2], l4[3]]),
    }
}

/// Runs the tc program once on `frame`: (return value, output frame).
pub fn run_tc(dp: &Dataplane, frame: &[u8]) -> (u32, Vec<u8>) {
    let prog = dp.tc_program().expect("tc program");
    let mut out = vec![0u8; frame.len() + 256];
    let res = prog
        .test_run(opts(frame, &mut out))
        .expect("BPF_PROG_TEST_RUN of the tc program");
    out.truncate(res.data_size_out as usize);
    (res.return_value, out)
}

/// Runs the XDP program once on `frame`: (return value, output frame).
pub fn run_xdp(dp: &Dataplane, frame: &[u8]) -> (u32, Vec<u8>) {
    let prog = dp.xdp_program().expect("xdp program");
    let mut out = vec![0u8; frame.len() + 256];
    let res = prog
        .test_run(opts(frame, &mut out))
        .expect("BPF_PROG_TEST_RUN of the xdp program");
    out.truncate(res.data_size_out as usize);
    (res.return_value, out)
}

fn opts<'a>(frame: &'a [u8], out: &'a mut [u8]) -> TestRunOptions<'a> {
    TestRunOptions {
        data_in: Some(frame),
        data_out: Some(out),
        ..TestRunOptions::default()
    }
}
