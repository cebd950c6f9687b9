//! The filter-table rules enforcing [`PodRules`], restored whole (under `--noflush`) on every
//! change. `FORWARD` jumps first to `KZNP-FORWARD` (prefix `KZNP-`, not `KAZE-`: the Service
//! proxy's mode switches remove every `KAZE-` chain, and the policies must not go with them):
//!
//! 1. replies of allowed connections go on (`ESTABLISHED,RELATED`; in eBPF mode the
//!    programs keep service flows out of netfilter's conntrack, and mark their replies with
//!    `MARK_REPLY` instead);
//! 2. a packet from an egress-isolated pod of this node goes through its `KZNP-E-<hash>`
//!    chain, which returns when a rule allows it and drops it otherwise;
//! 3. then a packet to an ingress-isolated pod of this node through its `KZNP-I-<hash>`.
//!
//! The node's own traffic to its pods (probes) does not pass `FORWARD`, so it is never
//! filtered, as upstream wants. Pure: rendering is unit-tested.

use std::{collections::BTreeSet, fmt::Write};

use super::policy::{Allow, Peer, PodRules, PortRange};
use crate::{iptables::rules::hash, services::Protocol};

pub const FORWARD_CHAIN: &str = "KZNP-FORWARD";
/// Every chain of the policy enforcement starts with this.
pub const CHAIN_PREFIX: &str = "KZNP-";
/// The jump from `FORWARD`, after `-A FORWARD `.
pub const JUMP: &str = "-m comment --comment \"kaze network policies\" -j KZNP-FORWARD";
/// The mark bit an ipBlock-with-except chain sets when it allows a packet.
const ALLOW_BIT: u32 = 0x800;

fn comment(s: &str) -> String {
    s.replace('"', "")
}

/// `-p tcp -m tcp --dport 80` / `--dport 9000:9010` / `-p udp` (every port).
fn port_args(p: &PortRange) -> String {
    let proto = match p.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    match p.ports {
        None => format!("-p {proto}"),
        Some((a, b)) if a == b => format!("-p {proto} -m {proto} --dport {a}"),
        Some((a, b)) => format!("-p {proto} -m {proto} --dport {a}:{b}"),
    }
}

/// The restore input for `pods` (`jump_missing`: also insert the `FORWARD` jump) and the
/// chains it leaves, given the `KZNP-` chains that exist now (`existing`).
pub fn render(pods: &[PodRules], existing: &BTreeSet<String>, jump_missing: bool) -> String {
    let mut chains: Vec<String> = vec![FORWARD_CHAIN.into()];
    let mut lines: Vec<String> = Vec::new();
    let reply = dataplane_common::MARK_REPLY;
    lines.push(format!(
        "-A {FORWARD_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
    ));
    lines.push(format!(
        "-A {FORWARD_CHAIN} -m mark --mark {reply:#x}/{reply:#x} -m comment --comment \"replies of service flows kaze's eBPF dataplane translated\" -j RETURN"
    ));
    for (direction, letter, addr_flag) in [("egress", "E", "-s"), ("ingress", "I", "-d")] {
        lines.push(format!(
            "-A {FORWARD_CHAIN} -j MARK --set-xmark 0x0/{ALLOW_BIT:#x}"
        ));
        for pod in pods {
            let allows = match direction {
                "egress" => pod.egress.as_ref(),
                _ => pod.ingress.as_ref(),
            };
            let Some(allows) = allows else { continue };
            let chain = format!("KZNP-{letter}-{}", hash(&pod.pod));
            lines.push(format!(
                "-A {FORWARD_CHAIN} {addr_flag} {}/32 -m comment --comment \"{} {direction}\" -j {chain}",
                pod.ip,
                comment(&pod.pod)
            ));
            // the peer is the other end: the source of ingress, the destination of egress
            let peer_flag = if direction == "egress" { "-d" } else { "-s" };
            pod_chain(&chain, &pod.pod, allows, peer_flag, &mut chains, &mut lines);
            chains.push(chain);
        }
    }

    let mut input = String::with_capacity(80 * lines.len() + 256);
    input.push_str("*filter\n");
    for c in &chains {
        let _ = writeln!(input, ":{c} - [0:0]");
    }
    let live: BTreeSet<&String> = chains.iter().collect();
    let stale: Vec<&String> = existing.iter().filter(|c| !live.contains(c)).collect();
    for c in &stale {
        let _ = writeln!(input, ":{c} - [0:0]");
    }
    if jump_missing {
        let _ = writeln!(input, "-I FORWARD 1 {JUMP}");
    }
    for l in &lines {
        input.push_str(l);
        input.push('\n');
    }
    for c in &stale {
        let _ = writeln!(input, "-X {c}");
    }
    input.push_str("COMMIT\n");
    input
}

fn pod_chain(
    chain: &str,
    pod: &str,
    allows: &[Allow],
    peer_flag: &str,
    chains: &mut Vec<String>,
    lines: &mut Vec<String>,
) {
    let c = comment(pod);
    for (i, allow) in allows.iter().enumerate() {
        let peer = match &allow.peer {
            Peer::Any => String::new(),
            Peer::Pod(ip) => format!(" {peer_flag} {ip}/32"),
            Peer::Block { cidr, except } if except.is_empty() => {
                format!(" {peer_flag} {}/{}", cidr.0, cidr.1)
            }
            Peer::Block { cidr, except } => {
                // an except cannot be said in the same rule: a chain returns for each
                // except and marks what is left, then the pod's chain checks the mark
                let sub = format!("KZNP-X-{}", hash(&format!("{chain}/{i}")));
                for e in except {
                    lines.push(format!("-A {sub} {peer_flag} {}/{} -j RETURN", e.0, e.1));
                }
                for ports in port_list(allow) {
                    lines.push(format!(
                        "-A {sub}{ports} -j MARK --set-xmark {ALLOW_BIT:#x}/{ALLOW_BIT:#x}"
                    ));
                }
                lines.push(format!(
                    "-A {chain} {peer_flag} {}/{} -m comment --comment \"{c}\" -j {sub}",
                    cidr.0, cidr.1
                ));
                lines.push(format!(
                    "-A {chain} -m mark --mark {ALLOW_BIT:#x}/{ALLOW_BIT:#x} -j RETURN"
                ));
                chains.push(sub);
                continue;
            }
        };
        for ports in port_list(allow) {
            lines.push(format!(
                "-A {chain}{peer}{ports} -m comment --comment \"{c}\" -j RETURN"
            ));
        }
    }
    lines.push(format!(
        "-A {chain} -m comment --comment \"{c}: not allowed by any network policy\" -j DROP"
    ));
}

/// The port matches of an allow, each with a leading space; one empty string for all ports.
fn port_list(allow: &Allow) -> Vec<String> {
    match &allow.ports {
        None => vec![String::new()],
        Some(list) => list.iter().map(|p| format!(" {}", port_args(p))).collect(),
    }
}

/// The restore input removing every `KZNP-` chain and the jump (from `iptables-save -t
/// filter`); `None` when there is nothing of ours.
pub fn cleanup_input(save: &str) -> Option<String> {
    let chains = chains_in(save);
    let jump = save.lines().any(|l| {
        l.strip_prefix("-A FORWARD ")
            .is_some_and(|r| r.trim() == JUMP)
    });
    if chains.is_empty() && !jump {
        return None;
    }
    let mut out = String::from("*filter\n");
    for c in &chains {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    if jump {
        let _ = writeln!(out, "-D FORWARD {JUMP}");
    }
    for c in &chains {
        let _ = writeln!(out, "-X {c}");
    }
    out.push_str("COMMIT\n");
    Some(out)
}

/// `KZNP-` chains declared in `save`.
pub fn chains_in(save: &str) -> BTreeSet<String> {
    crate::iptables::rules::chains_named(save, CHAIN_PREFIX)
}

/// Whether `save` has the `FORWARD` jump.
pub fn has_jump(save: &str) -> bool {
    save.lines().any(|l| {
        l.strip_prefix("-A FORWARD ")
            .is_some_and(|r| r.trim() == JUMP)
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn web(ingress: Option<Vec<Allow>>, egress: Option<Vec<Allow>>) -> PodRules {
        PodRules {
            pod: "default/web".into(),
            ip: Ipv4Addr::new(10, 42, 0, 2),
            ingress,
            egress,
        }
    }

    #[test]
    fn each_isolated_direction_gets_a_chain_of_returns_ending_in_a_drop() {
        let rules = web(
            Some(vec![
                Allow {
                    peer: Peer::Pod(Ipv4Addr::new(10, 42, 0, 3)),
                    ports: Some(vec![
                        PortRange {
                            protocol: Protocol::Tcp,
                            ports: Some((80, 80)),
                        },
                        PortRange {
                            protocol: Protocol::Udp,
                            ports: Some((9000, 9010)),
                        },
                    ]),
                },
                Allow {
                    peer: Peer::Block {
                        cidr: (Ipv4Addr::new(192, 168, 0, 0), 16),
                        except: vec![(Ipv4Addr::new(192, 168, 1, 0), 24)],
                    },
                    ports: None,
                },
            ]),
            Some(vec![]),
        );
        let input = render(&[rules], &BTreeSet::new(), true);
        let i = format!("KZNP-I-{}", hash("default/web"));
        let e = format!("KZNP-E-{}", hash("default/web"));
        for want in [
            "-I FORWARD 1 -m comment --comment \"kaze network policies\" -j KZNP-FORWARD\n".to_string(),
            "-A KZNP-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n".to_string(),
            format!("-A KZNP-FORWARD -s 10.42.0.2/32 -m comment --comment \"default/web egress\" -j {e}\n"),
            format!("-A KZNP-FORWARD -d 10.42.0.2/32 -m comment --comment \"default/web ingress\" -j {i}\n"),
            format!("-A {i} -s 10.42.0.3/32 -p tcp -m tcp --dport 80 -m comment --comment \"default/web\" -j RETURN\n"),
            format!("-A {i} -s 10.42.0.3/32 -p udp -m udp --dport 9000:9010 -m comment --comment \"default/web\" -j RETURN\n"),
            format!("-A {e} -m comment --comment \"default/web: not allowed by any network policy\" -j DROP\n"),
        ] {
            assert!(input.contains(&want), "missing {want:?} in\n{input}");
        }
        // egress before ingress, the allow bit cleared before each
        let egress_jump = input.find(&format!("-j {e}\n")).expect("egress jump");
        let ingress_jump = input.find(&format!("-j {i}\n")).expect("ingress jump");
        assert!(egress_jump < ingress_jump);
        // the except: its own chain returns for the except and marks the rest
        let x = format!("KZNP-X-{}", hash(&format!("{i}/1")));
        assert!(
            input.contains(&format!("-A {x} -s 192.168.1.0/24 -j RETURN\n")),
            "{input}"
        );
        assert!(
            input.contains(&format!("-A {x} -j MARK --set-xmark 0x800/0x800\n")),
            "{input}"
        );
        let jump = input
            .find(&format!(
                "-A {i} -s 192.168.0.0/16 -m comment --comment \"default/web\" -j {x}\n"
            ))
            .expect(&input);
        let check = input
            .find(&format!("-A {i} -m mark --mark 0x800/0x800 -j RETURN\n"))
            .expect(&input);
        let drop = input
            .find(&format!(
                "-A {i} -m comment --comment \"default/web: not allowed"
            ))
            .expect(&input);
        assert!(jump < check && check < drop, "{input}");
        assert!(input.ends_with("COMMIT\n"));
    }

    #[test]
    fn stale_chains_are_deleted_and_cleanup_removes_everything() {
        let existing: BTreeSet<String> = ["KZNP-FORWARD".to_string(), "KZNP-I-OLD".to_string()]
            .into_iter()
            .collect();
        let input = render(&[], &existing, false);
        assert!(input.contains(":KZNP-I-OLD - [0:0]\n"));
        assert!(input.contains("-X KZNP-I-OLD\n"));
        assert!(!input.contains("-X KZNP-FORWARD"));
        assert!(!input.contains("-I FORWARD"), "the jump exists already");

        let save = "*filter\n:FORWARD ACCEPT [0:0]\n:KZNP-FORWARD - [0:0]\n:KZNP-I-A - [0:0]\n:KAZE-SERVICES - [0:0]\n-A FORWARD -m comment --comment \"kaze network policies\" -j KZNP-FORWARD\nCOMMIT\n";
        assert!(has_jump(save));
        let clean = cleanup_input(save).expect("something to remove");
        assert!(clean.contains(
            "-D FORWARD -m comment --comment \"kaze network policies\" -j KZNP-FORWARD\n"
        ));
        assert!(clean.contains("-X KZNP-I-A\n"));
        assert!(
            !clean.contains("KAZE-SERVICES"),
            "the Service proxy's chains stay"
        );
        assert_eq!(cleanup_input("*filter\nCOMMIT\n"), None);
    }
}
