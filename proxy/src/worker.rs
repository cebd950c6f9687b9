//! The thread that owns the dataplane. Map updates and iptables-restore are blocking
//! syscalls and processes, and with `--netns` they must happen inside another network
//! namespace, which is a per-thread property: one dedicated thread does all of it, fed by
//! commands from the async side.

use std::{
    net::Ipv6Addr,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::{
    config::{Config, ProxyMode},
    engine::{chain, Engine, Programmer, SyncOutcome},
    ipv6::Ipv6Half,
    linkwatch::LinkEvents,
    services::{ServiceCounters, ServiceKey},
    tracker::Change,
    Error,
};

/// How often the dataplane thread checks for link events (`--pod-bridge`: the bridge's ports
/// are listed again after one). A pod's first packets leave before its veth is followed only
/// if it sends within about this time of its network being set up; its requests are still
/// balanced at the bridge's ingress then.
const PORT_CHECK: Duration = Duration::from_millis(50);
/// The ports are listed at least this often whatever the link events say.
const PORT_RESYNC: Duration = Duration::from_secs(10);
/// How often they are listed when the netlink socket could not be opened.
const PORT_POLL: Duration = Duration::from_millis(250);

enum Cmd {
    Sync(
        Vec<Change>,
        Vec<Change<Ipv6Addr>>,
        oneshot::Sender<SyncOutcome>,
    ),
    Counters(oneshot::Sender<Vec<(ServiceKey, ServiceCounters)>>),
    Switch(ProxyMode, oneshot::Sender<ProxyMode>),
}

/// Handle to the dataplane thread. Cheap to clone; the thread ends when every handle is
/// dropped, leaving the dataplane programmed (pins and chains outlive the proxy).
#[derive(Clone)]
pub struct Worker {
    tx: mpsc::Sender<Cmd>,
    /// The mode running now (it changes when the node asks for another).
    ebpf: Arc<AtomicBool>,
}

impl Worker {
    /// Starts the thread in `config.netns` (if any) and the dataplane for `mode` in it.
    /// Returns the handle and the thread, to join at shutdown.
    pub async fn start(
        config: &Config,
        mode: ProxyMode,
    ) -> Result<(Worker, JoinHandle<()>), Error> {
        let (tx, rx) = mpsc::channel::<Cmd>();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<ProxyMode, Error>>();
        let config = config.clone();
        let thread = std::thread::Builder::new()
            .name("proxy-dataplane".into())
            .spawn(move || {
                let engine = (|| {
                    if let Some(ns) = &config.netns {
                        enter_netns(ns)?;
                    }
                    Engine::start(&config, mode).map_err(Error::Iptables)
                })();
                let engine = match engine {
                    Ok(e) => {
                        let _ = ready_tx.send(Ok(e.mode()));
                        e
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                serve(&config, Programmer::new(engine), rx);
            })
            .map_err(|source| Error::Thread { source })?;
        let mode = ready_rx.await.map_err(|_| Error::WorkerGone)??;
        let ebpf = Arc::new(AtomicBool::new(mode == ProxyMode::Ebpf));
        Ok((Worker { tx, ebpf }, thread))
    }

    /// The mode actually running (iptables after a fallback).
    pub fn mode(&self) -> ProxyMode {
        if self.ebpf.load(Ordering::SeqCst) {
            ProxyMode::Ebpf
        } else {
            ProxyMode::Iptables
        }
    }

    /// Switches the running dataplane to `mode`: the new one is programmed with everything,
    /// then the old one's state is removed. Returns the mode running afterwards (iptables if
    /// eBPF was asked for and cannot be loaded).
    pub async fn switch(&self, mode: ProxyMode) -> Result<ProxyMode, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Switch(mode, tx))
            .map_err(|_| Error::WorkerGone)?;
        let now = rx.await.map_err(|_| Error::WorkerGone)?;
        self.ebpf.store(now == ProxyMode::Ebpf, Ordering::SeqCst);
        Ok(now)
    }

    /// Applies `changes` to the dataplane and `changes6` to the IPv6 half (empty lists retry
    /// what failed before).
    pub async fn sync(
        &self,
        changes: Vec<Change>,
        changes6: Vec<Change<Ipv6Addr>>,
    ) -> Result<SyncOutcome, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Sync(changes, changes6, tx))
            .map_err(|_| Error::WorkerGone)?;
        rx.await.map_err(|_| Error::WorkerGone)
    }

    pub async fn counters(&self) -> Result<Vec<(ServiceKey, ServiceCounters)>, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Counters(tx))
            .map_err(|_| Error::WorkerGone)?;
        rx.await.map_err(|_| Error::WorkerGone)
    }
}

fn serve(config: &Config, mut programmer: Programmer, rx: mpsc::Receiver<Cmd>) {
    let mut cleaned = false;
    // opened here: the socket sees the links of this thread's (the node's) namespace
    let links = match LinkEvents::open() {
        Ok(l) => Some(l),
        Err(e) => {
            warn!(error = %e, "no netlink link events: listing the pod bridge's ports every {PORT_POLL:?}");
            None
        }
    };
    let mut listed = Instant::now();
    // the IPv6 half runs beside either mode and is not switched with it
    let mut ipv6 = Ipv6Half::start(config);
    loop {
        // new pods' veths are picked up between commands, even when they keep coming
        let due = match &links {
            Some(links) => links.pending() || listed.elapsed() >= PORT_RESYNC,
            None => listed.elapsed() >= PORT_POLL,
        };
        if due {
            programmer.engine.refresh_ports();
            listed = Instant::now();
        }
        let cmd = match rx.recv_timeout(PORT_CHECK) {
            Ok(cmd) => cmd,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        match cmd {
            Cmd::Sync(changes, changes6, reply) => {
                let mut outcome = programmer.apply(changes);
                if let Some(ipv6) = &mut ipv6 {
                    ipv6.apply(changes6, &mut outcome);
                }
                if !cleaned && outcome.errors.is_empty() {
                    // only now that this mode serves every service is the other one removed
                    programmer
                        .engine
                        .clean_other_modes(config, programmer.desired());
                    cleaned = true;
                }
                let _ = reply.send(outcome);
            }
            Cmd::Counters(reply) => {
                let _ = reply.send(programmer.engine.counters());
            }
            Cmd::Switch(mode, reply) => {
                if programmer.engine.mode() != mode {
                    programmer = switch(config, programmer, mode);
                    cleaned = true;
                }
                let _ = reply.send(programmer.engine.mode());
            }
        }
    }
    info!(
        mode = programmer.engine.mode().as_str(),
        ipv6_services = ipv6.as_ref().map(|i| i.desired().len()),
        "dataplane thread stopped; the dataplane stays programmed"
    );
}

/// Starts `mode` beside the running engine, programs it with everything, then removes the
/// old mode's state. Flows established under the old mode break (their NAT state lived
/// there); new flows never find the node without a dataplane.
fn switch(config: &Config, old: Programmer, mode: ProxyMode) -> Programmer {
    let from = old.engine.mode();
    let engine = match Engine::start(config, mode) {
        Ok(e) if e.mode() != from => e,
        // eBPF failed to load (said loudly) and fell back to the mode already running
        Ok(_) => return old,
        Err(e) => {
            error!(error = %chain(&e), to = mode.as_str(), stays = from.as_str(), "switching proxy mode");
            return old;
        }
    };
    let mut next = Programmer::new(engine);
    let everything = old
        .desired()
        .iter()
        .map(|(k, v)| (*k, Some(v.clone())))
        .collect();
    let outcome = next.apply(everything);
    for e in &outcome.errors {
        warn!(
            error = e.as_str(),
            "programming after a mode switch; retrying"
        );
    }
    // the old engine's handles go first, so removing its pins frees its maps
    drop(old);
    next.engine.clean_other_modes(config, next.desired());
    warn!(
        from = from.as_str(),
        to = next.engine.mode().as_str(),
        services = outcome.services,
        "proxy mode switched; flows established before the switch break"
    );
    next
}

pub(crate) fn enter_netns(path: &Path) -> Result<(), Error> {
    let err = |source: std::io::Error| Error::Netns {
        path: path.to_path_buf(),
        source,
    };
    crate::netns::enter(path).map_err(err)?;
    info!(netns = %path.display(), "dataplane thread entered network namespace");
    Ok(())
}
