//! The thread that owns the dataplane. Map updates and iptables-restore are blocking
//! syscalls and processes, and with `--netns` they must happen inside another network
//! namespace, which is a per-thread property: one dedicated thread does all of it, fed by
//! commands from the async side.

use std::{fs::File, os::fd::AsFd, path::Path, sync::mpsc, thread::JoinHandle};

use tokio::sync::oneshot;
use tracing::info;

use crate::{
    config::{Config, ProxyMode},
    engine::{Engine, Programmer, SyncOutcome},
    services::{ServiceCounters, ServiceKey},
    tracker::Change,
    Error,
};

enum Cmd {
    Sync(Vec<Change>, oneshot::Sender<SyncOutcome>),
    Counters(oneshot::Sender<Vec<(ServiceKey, ServiceCounters)>>),
}

/// Handle to the dataplane thread. Cheap to clone; the thread ends when every handle is
/// dropped, leaving the dataplane programmed (pins and chains outlive the proxy).
#[derive(Clone)]
pub struct Worker {
    tx: mpsc::Sender<Cmd>,
    mode: ProxyMode,
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
        Ok((Worker { tx, mode }, thread))
    }

    /// The mode actually running (iptables after a fallback).
    pub fn mode(&self) -> ProxyMode {
        self.mode
    }

    /// Applies `changes` to the dataplane (an empty list retries what failed before).
    pub async fn sync(&self, changes: Vec<Change>) -> Result<SyncOutcome, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Sync(changes, tx))
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
    while let Ok(cmd) = rx.recv() {
        match cmd {
            Cmd::Sync(changes, reply) => {
                let outcome = programmer.apply(changes);
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
        }
    }
    info!(
        mode = programmer.engine.mode().as_str(),
        "dataplane thread stopped; the dataplane stays programmed"
    );
}

pub(crate) fn enter_netns(path: &Path) -> Result<(), Error> {
    let err = |source: std::io::Error| Error::Netns {
        path: path.to_path_buf(),
        source,
    };
    let f = File::open(path).map_err(err)?;
    rustix::thread::move_into_link_name_space(
        f.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(|e| err(e.into()))?;
    info!(netns = %path.display(), "dataplane thread entered network namespace");
    Ok(())
}
