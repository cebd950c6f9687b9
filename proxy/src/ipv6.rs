//! The IPv6 half of services: upstream's dual-stack kube-proxy runs one proxier per family;
//! kaze runs its IPv4 dataplane (eBPF or iptables, [`crate::engine`]) and beside it, in
//! either mode, an ip6tables dataplane for the IPv6 frontends ([`Iptables<Ipv6Addr>`]: the
//! same chains as iptables mode, restored with `ip6tables-restore --noflush`). The eBPF
//! programs are IPv4-only, so a node in eBPF mode serves IPv6 services through ip6tables
//! too, and a mode switch leaves this half alone.

use std::net::Ipv6Addr;

use tracing::{info, warn};

use crate::{
    config::Config,
    desired::Desired,
    engine::{chain, SyncOutcome},
    iptables::{self, Iptables},
    tracker::Change,
};

/// The ip6tables dataplane and the IPv6 desired state it was last given.
pub struct Ipv6Half {
    iptables: Iptables<Ipv6Addr>,
    desired: Desired<Ipv6Addr>,
    /// Whether the other ip6tables implementations were cleaned of kaze's chains (once,
    /// after the first sync that programmed everything).
    cleaned: bool,
    /// Whether ip6tables may differ from `desired` (at start, after a failed restore): a
    /// sync without IPv6 changes restores only then, so an IPv4-only change in eBPF mode
    /// does not run ip6tables-restore.
    stale: bool,
}

impl Ipv6Half {
    /// Starts the ip6tables dataplane in the calling thread's network namespace; None (said
    /// once, loudly) where there is no ip6tables nat table (no ip6tables installed, IPv6
    /// disabled): kube-proxy runs single-stack then too.
    pub fn start(config: &Config) -> Option<Ipv6Half> {
        match Iptables::new_ipv6(config.iptables_backend) {
            Ok(iptables) => Some(Ipv6Half {
                iptables,
                desired: Desired::new(),
                cleaned: false,
                stale: true,
            }),
            Err(e) => {
                warn!(error = %chain(&e), "no ip6tables on this node: IPv6 services are not served");
                None
            }
        }
    }

    pub fn desired(&self) -> &Desired<Ipv6Addr> {
        &self.desired
    }

    /// Applies `changes`; a failure is added to `outcome.errors`, so the sync is retried
    /// (with no changes: the whole state is restored again). Without changes and after a
    /// good sync there is nothing to do.
    pub fn apply(&mut self, changes: Vec<Change<Ipv6Addr>>, outcome: &mut SyncOutcome) {
        if changes.is_empty() && !self.stale {
            return;
        }
        for (key, entry) in changes {
            match entry {
                Some(e) => self.desired.insert(key, e),
                None => self.desired.remove(&key),
            };
        }
        self.stale = true;
        match self.iptables.sync(&self.desired) {
            Ok(changed) => {
                self.stale = false;
                outcome.changed += changed;
                if !self.cleaned {
                    // a backend switch (`--iptables-backend`) leaves the other's chains
                    if iptables::cleanup_family_except::<Ipv6Addr>(Some(self.iptables.tools())) {
                        info!("removed kaze's chains from the other ip6tables implementation");
                    }
                    self.cleaned = true;
                }
            }
            Err(e) => outcome
                .errors
                .push(format!("programming IPv6 services: {}", chain(&e))),
        }
    }
}
