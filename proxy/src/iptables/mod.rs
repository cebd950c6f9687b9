//! iptables mode: the same service semantics as the eBPF dataplane, as kube-proxy-style nat
//! chains restored atomically with `iptables-restore --noflush` (see [`rules`]).

pub mod rules;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use tracing::{debug, info, warn};

use crate::{
    config::IptablesBackend,
    desired::Desired,
    family::Family,
    services::{Protocol, ServiceKey},
};
use rules::ServiceRules;

/// Errors from driving iptables.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("no {wanted} found in PATH, /usr/sbin or /sbin")]
    NotInstalled { wanted: String },
    #[error("running {command}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// One iptables implementation's restore and save commands.
#[derive(Clone, Debug)]
pub struct Tools {
    /// `legacy` or `nft`.
    pub flavor: &'static str,
    pub restore: PathBuf,
    pub save: PathBuf,
}

fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl Tools {
    /// `flavor` of family `A`'s commands (`iptables-*` or `ip6tables-*`).
    fn flavor_of<A: Family>(flavor: &'static str) -> Option<Tools> {
        let cmd = A::IPTABLES;
        Some(Tools {
            flavor,
            restore: find(&format!("{cmd}-{flavor}-restore"))?,
            save: find(&format!("{cmd}-{flavor}-save"))?,
        })
    }

    /// The implementation `choice` asks for. `Auto` prefers legacy: restoring a 10,000
    /// service ruleset took ~1.5 s there against ~53 s with nf_tables (TOOLCHAIN.md).
    pub fn choose(choice: IptablesBackend) -> Result<Tools, IptablesError> {
        Tools::choose_for::<Ipv4Addr>(choice)
    }

    /// [`Tools::choose`] among family `A`'s commands.
    pub fn choose_for<A: Family>(choice: IptablesBackend) -> Result<Tools, IptablesError> {
        let cmd = A::IPTABLES;
        let found = match choice {
            IptablesBackend::Legacy => Tools::flavor_of::<A>("legacy"),
            IptablesBackend::Nft => Tools::flavor_of::<A>("nft"),
            IptablesBackend::Auto => Tools::flavor_of::<A>("legacy").or_else(|| {
                Some(Tools {
                    flavor: "default",
                    restore: find(&format!("{cmd}-restore"))?,
                    save: find(&format!("{cmd}-save"))?,
                })
            }),
        };
        found.ok_or_else(|| IptablesError::NotInstalled {
            wanted: format!("{cmd} restore/save for {choice:?}"),
        })
    }

    /// Every installed implementation, for cleaning them all.
    pub fn installed() -> Vec<Tools> {
        Tools::installed_for::<Ipv4Addr>()
    }

    /// [`Tools::installed`] of family `A`'s commands.
    pub fn installed_for<A: Family>() -> Vec<Tools> {
        let mut all: Vec<Tools> = ["legacy", "nft"]
            .into_iter()
            .filter_map(Tools::flavor_of::<A>)
            .collect();
        if all.is_empty() {
            all.extend(Tools::choose_for::<A>(IptablesBackend::Auto));
        }
        all
    }

    fn same_as(&self, other: &Tools) -> bool {
        self.restore == other.restore
    }

    /// `iptables-save` of `table`, or of every table when `None`.
    pub fn save(&self, table: Option<&str>) -> Result<String, IptablesError> {
        let mut cmd = Command::new(&self.save);
        if let Some(t) = table {
            cmd.args(["-t", t]);
        }
        let out = output(&mut cmd, None)?;
        Ok(out)
    }

    /// `iptables-restore --noflush` of `input`.
    pub fn restore(&self, input: &str) -> Result<(), IptablesError> {
        let mut cmd = Command::new(&self.restore);
        cmd.args(["--noflush", "-w", "5"]);
        output(&mut cmd, Some(input)).map(drop)
    }

    /// Removes every KAZE chain and every jump into one, in every table. Returns whether
    /// there was anything to remove.
    pub fn cleanup(&self) -> Result<bool, IptablesError> {
        self.cleanup_keeping(&[])
    }

    /// [`Self::cleanup`] except the chains in `keep`.
    pub fn cleanup_keeping(&self, keep: &[&str]) -> Result<bool, IptablesError> {
        let save = self.save(None)?;
        match rules::cleanup_input_keeping(&save, keep) {
            Some(input) => {
                self.restore(&input)?;
                info!(iptables = self.flavor, "removed kaze's iptables chains");
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

fn output(cmd: &mut Command, stdin: Option<&str>) -> Result<String, IptablesError> {
    let command = format!("{}", Path::new(cmd.get_program()).display());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| IptablesError::Spawn {
        command: command.clone(),
        source,
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|source| IptablesError::Spawn {
                command: command.clone(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| IptablesError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(IptablesError::Failed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes kaze's chains from every installed implementation except `keep`. Returns
/// whether any were found.
pub fn cleanup_all_except(keep: Option<&Tools>) -> bool {
    cleanup_family_except::<Ipv4Addr>(keep)
}

/// [`cleanup_all_except`] among family `A`'s implementations.
pub fn cleanup_family_except<A: Family>(keep: Option<&Tools>) -> bool {
    let mut found = false;
    for tools in Tools::installed_for::<A>() {
        if keep.is_some_and(|k| k.same_as(&tools)) {
            continue;
        }
        match tools.cleanup() {
            Ok(f) => found |= f,
            Err(e) => warn!(iptables = tools.flavor, error = %e, "removing kaze's iptables chains"),
        }
    }
    found
}

/// The chain eBPF mode keeps in the nat table: masquerade packets the tc program marked.
pub const EBPF_MASQ_CHAIN: &str = "KAZE-EBPF-MASQ";
/// The chain eBPF mode keeps in the raw table: netfilter's conntrack skips packets the tc
/// program translated (`MARK_NOTRACK`).
pub const EBPF_NOTRACK_CHAIN: &str = "KAZE-EBPF-NOTRACK";

/// eBPF mode's netfilter rules: (table, built-in chain jumping to the chain, chain, rule).
fn ebpf_rules() -> [(&'static str, &'static str, &'static str, String); 2] {
    let masq = dataplane_common::MARK_MASQ;
    let notrack = dataplane_common::MARK_NOTRACK;
    [
        (
            "nat",
            "POSTROUTING",
            EBPF_MASQ_CHAIN,
            format!(
                "-m mark --mark {masq:#x}/{masq:#x} -m comment --comment \"kaze eBPF: masquerade marked NodePort traffic\" -j MASQUERADE"
            ),
        ),
        (
            "raw",
            "PREROUTING",
            EBPF_NOTRACK_CHAIN,
            format!(
                "-m mark --mark {notrack:#x}/{notrack:#x} -m comment --comment \"kaze eBPF: flows the programs translate are tracked by them\" -j CT --notrack"
            ),
        ),
    ]
}

/// Installs (idempotently) the two rules eBPF mode needs from netfilter:
/// - `KAZE-EBPF-MASQ`, jumped to from nat `POSTROUTING`, masquerades packets carrying
///   `MARK_MASQ`: the programs DNAT NodePort traffic and mark it, and netfilter's masquerade
///   brings the replies of a backend on another node back through this node, where the
///   programs reverse the DNAT;
/// - `KAZE-EBPF-NOTRACK`, jumped to from raw `PREROUTING`, takes packets carrying
///   `MARK_NOTRACK` (every other packet the programs translate) out of netfilter's
///   conntrack, which would otherwise see each such flow as two unrelated half-open ones.
pub fn install_ebpf_rules(backend: IptablesBackend) -> Result<(), IptablesError> {
    let tools = Tools::choose(backend)?;
    for (table, hook, chain, rule) in ebpf_rules() {
        let mut input = format!("*{table}\n:{chain} - [0:0]\n-A {chain} {rule}\n");
        let jump = format!("-A {hook} -j {chain}");
        if !tools.save(Some(table))?.lines().any(|l| l == jump) {
            input.push_str(&jump);
            input.push('\n');
        }
        input.push_str("COMMIT\n");
        tools.restore(&input)?;
    }
    Ok(())
}

/// Removes eBPF mode's chains (and their jumps) from every iptables backend: iptables mode
/// marks and masquerades with its own chains.
pub fn remove_ebpf_rules() {
    for tools in Tools::installed() {
        for (table, hook, chain, _) in ebpf_rules() {
            let Ok(save) = tools.save(Some(table)) else {
                continue;
            };
            let declared = format!(":{chain} ");
            if !save.lines().any(|l| l.starts_with(&declared)) {
                continue;
            }
            let jump = format!("-A {hook} -j {chain}");
            let mut input = format!("*{table}\n");
            for _ in save.lines().filter(|l| *l == jump) {
                input.push_str(&format!("-D {hook} -j {chain}\n"));
            }
            input.push_str(&format!(":{chain} - [0:0]\n-X {chain}\nCOMMIT\n"));
            if let Err(e) = tools.restore(&input) {
                warn!(iptables = tools.flavor, error = %e, chain, "removing eBPF mode's chain");
            }
        }
    }
}

/// What eBPF mode removes from every iptables backend: iptables mode's chains, not the
/// two chains eBPF mode uses itself. Returns whether anything was there.
pub fn cleanup_for_ebpf() -> bool {
    let mut found = false;
    for tools in Tools::installed() {
        match tools.cleanup_keeping(&[EBPF_MASQ_CHAIN, EBPF_NOTRACK_CHAIN]) {
            Ok(f) => found |= f,
            Err(e) => warn!(iptables = tools.flavor, error = %e, "removing kaze's iptables chains"),
        }
    }
    found
}

/// Deletes the kernel conntrack entries of flows to `addresses`. After iptables mode, its
/// DNATed entries (TIME_WAIT ones included) would clash with new flows that the eBPF
/// dataplane sends to the same backend from a reused client port: netfilter would then
/// remap the client's port and the eBPF reverse NAT would not recognise the replies.
pub fn forget_kernel_flows(addresses: impl IntoIterator<Item = std::net::Ipv4Addr>) {
    let Some(conntrack) = find("conntrack") else {
        warn!("conntrack not installed: flows from iptables mode linger in the kernel's table");
        return;
    };
    for address in addresses {
        let _ = Command::new(&conntrack)
            .args(["-D", "--orig-dst"])
            .arg(address.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The iptables dataplane of family `A` (ip6tables for [`Ipv6Addr`]): what was last
/// restored, so a sync writes only changed chains.
pub struct Iptables<A: Family = Ipv4Addr> {
    tools: Tools,
    applied: BTreeMap<ServiceKey<A>, ServiceRules>,
    backends: BTreeMap<ServiceKey<A>, Vec<A::Sock>>,
    /// KAZE chains found at start that no sync has written yet (a previous run's).
    orphans: BTreeSet<String>,
    jumps_checked: bool,
}

impl Iptables {
    pub fn new(choice: IptablesBackend) -> Result<Self, IptablesError> {
        Iptables::start(choice)
    }
}

impl Iptables<Ipv6Addr> {
    /// The ip6tables dataplane of IPv6 services (kube-proxy's IPv6 proxier), run beside
    /// either mode's IPv4 dataplane.
    pub fn new_ipv6(choice: IptablesBackend) -> Result<Self, IptablesError> {
        Iptables::start(choice)
    }
}

impl<A: Family> Iptables<A> {
    fn start(choice: IptablesBackend) -> Result<Self, IptablesError> {
        let tools = Tools::choose_for::<A>(choice)?;
        let orphans: BTreeSet<String> = rules::chains_in(&tools.save(Some("nat"))?)
            .into_iter()
            .filter(|c| c.starts_with("KAZE-SVC-") || c.starts_with("KAZE-SEP-"))
            .collect();
        info!(
            iptables = tools.flavor,
            restore = %tools.restore.display(),
            chains = orphans.len(),
            family = A::ADDRESS_TYPE,
            "iptables mode"
        );
        Ok(Iptables {
            tools,
            applied: BTreeMap::new(),
            backends: BTreeMap::new(),
            orphans,
            jumps_checked: false,
        })
    }

    pub fn tools(&self) -> &Tools {
        &self.tools
    }

    /// Restores what changed between the last sync and `desired`; returns how many services
    /// changed.
    pub fn sync(&mut self, desired: &Desired<A>) -> Result<usize, IptablesError> {
        let jumps = if self.jumps_checked {
            Vec::new()
        } else {
            rules::missing_jumps(&self.tools.save(None)?)
        };
        let plan = rules::plan_family(desired, &self.applied, &self.orphans, &jumps);
        if let Err(e) = self.tools.restore(&plan.input) {
            // start over from scratch next time: the kernel's state is unknown now
            self.applied.clear();
            self.jumps_checked = false;
            self.orphans = rules::chains_in(&self.tools.save(Some("nat")).unwrap_or_default());
            return Err(e);
        }
        self.jumps_checked = true;
        self.orphans.clear();
        self.applied = plan.applied;

        // stale UDP conntrack entries would keep sending datagrams to a removed endpoint
        for (key, old) in &self.backends {
            if key.protocol != Protocol::Udp {
                continue;
            }
            let new = desired
                .get(key)
                .map(|s| s.backends.as_slice())
                .unwrap_or_default();
            for gone in old.iter().filter(|b| !new.contains(b)) {
                forget_udp_flows(key, gone);
            }
        }
        self.backends = desired
            .iter()
            .map(|(k, s)| (*k, s.backends.clone()))
            .collect();
        Ok(plan.changed)
    }
}

fn forget_udp_flows<A: Family>(key: &ServiceKey<A>, backend: &A::Sock) {
    let Some(conntrack) = find("conntrack") else {
        debug!("conntrack not installed; stale UDP flows expire on their own");
        return;
    };
    let res = Command::new(conntrack)
        .args(["-D", "-f", A::CONNTRACK_FAMILY, "-p", "udp", "--orig-dst"])
        .arg(key.address.to_string())
        .args(["--orig-port-dst", &key.port.to_string(), "--dst-nat"])
        .arg(A::ip_of(backend).to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    debug!(service = %key, %backend, ?res, "deleted UDP conntrack entries of a removed endpoint");
}
