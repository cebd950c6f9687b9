//! The garbage collector for ownerReferences, as upstream's: an object whose owners are all
//! gone is deleted (background cascading); an owner deleted with the `foregroundDeletion`
//! finalizer keeps it until its blocking dependents are gone; one with the `orphan`
//! finalizer has its dependents' references to it removed first.
//!
//! Event-driven like upstream's: a dependency graph ([`graph`]) is kept from the watches of
//! every deletable resource discovery finds ([`sources`], re-discovered every 30 s, custom
//! resources included), and only what an event touches is looked at. Nothing is swept
//! periodically: with no changes the collector does no work and sends no request
//! ([`objects_visited`] counts what it looks at). Before deleting, the collector confirms
//! with live GETs that the object is still there and its owners are not (upstream's
//! attemptToDeleteItem), because a watch can lag behind a freshly created owner.
//!
//! Up to `--concurrent-gc-syncs` items of each queue (default 20) are worked on at once, as
//! by upstream's workers, so a slow request holds up one worker, not the collection. One
//! loop owns the graph's changes and the queues; workers
//! ([`worker`]) only make the API calls, read the graph under its lock, and report back.
//! The queue ([`queue`]) never gives one uid to two workers at once. With 0 or fewer
//! workers the graph is kept and nothing is collected, as upstream's.
//!
//! Namespaces follow upstream: a namespaced owner is looked for in its dependent's
//! namespace only, so a reference into another namespace is an absent owner; a
//! cluster-scoped dependent naming a namespaced owner is never collected on its account.

pub mod graph;
mod queue;
mod sources;
mod worker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;

use crate::Ctx;
use graph::{Change, Graph, Work};
use queue::Queue;
use sources::{Event, Sources};
use worker::{Outcome, Report, Worker};

/// How often discovery is asked for new resources (upstream's controller-manager: 30 s).
const DISCOVERY_PERIOD: Duration = Duration::from_secs(30);
/// How long workers wait for newly followed resources' first lists before acting anyway.
const SYNC_WAIT: Duration = Duration::from_secs(30);

static VISITED: AtomicU64 = AtomicU64::new(0);

/// How many graph changes and work items the collectors of this process have looked at:
/// it stays put while nothing changes (there is no periodic sweep). Process-wide, for tests.
pub fn objects_visited() -> u64 {
    VISITED.load(Ordering::Relaxed)
}

/// Collect garbage with up to `workers` attempts to delete and as many attempts to orphan
/// at once (`--concurrent-gc-syncs`, upstream's meaning), until `shutdown`.
pub async fn run(ctx: Arc<Ctx>, workers: i32, shutdown: component::CancellationToken) {
    let (tx, mut rx) = futures::channel::mpsc::unbounded();
    let mut sources = Sources::new(
        ctx.client.clone(),
        ctx.informers.clone(),
        tx,
        shutdown.clone(),
    );
    let slots = usize::try_from(workers).unwrap_or(0);
    if slots == 0 {
        tracing::warn!(
            workers,
            "--concurrent-gc-syncs: no garbage collector workers; the dependency graph is kept but nothing is collected"
        );
    }
    let mut gc = Collector {
        client: ctx.client.clone(),
        graph: Arc::default(),
        deletes: Queue::default(),
        orphans: Queue::default(),
        slots,
        running: JoinSet::new(),
        held: HashMap::new(),
        unsynced: HashMap::new(),
    };
    let now = Instant::now();
    for k in sources.start_shared() {
        gc.unsynced.insert(k, now);
    }
    let mut next_discovery = Instant::now();
    loop {
        if Instant::now() >= next_discovery {
            next_discovery = Instant::now() + DISCOVERY_PERIOD;
            match sources.discover().await {
                Ok(started) if !started.is_empty() => {
                    let now = Instant::now();
                    for k in started {
                        gc.unsynced.insert(k, now);
                    }
                    // owners of kinds just learnt can be looked up now
                    let virtuals = gc.graph().virtual_nodes();
                    for uid in virtuals {
                        gc.deletes.retry_now(Work::Delete(uid));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "garbage collector discovery failed; retrying");
                    next_discovery = Instant::now() + Duration::from_secs(5);
                }
            }
        }
        // take in every change and every finished run that is there before handing out work
        while let Ok(ev) = rx.try_recv() {
            gc.event(ev);
        }
        while let Some(finished) = gc.running.try_join_next_with_id() {
            gc.finished(finished);
        }
        let now = Instant::now();
        gc.deletes.promote(now);
        gc.orphans.promote(now);
        if gc.ready() {
            gc.start_runs(&sources);
        }
        let mut wake = next_discovery;
        for due in [gc.deletes.next_due(), gc.orphans.next_due()]
            .into_iter()
            .flatten()
        {
            wake = wake.min(due);
        }
        if let Some(t) = gc.unsynced.values().min() {
            wake = wake.min(*t + SYNC_WAIT);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = rx.next() => match ev {
                Some(ev) => gc.event(ev),
                None => break,
            },
            Some(finished) = gc.running.join_next_with_id(), if !gc.running.is_empty() => {
                gc.finished(finished);
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    // the runs' requests are abandoned; what they did not finish is looked at by the next
    // leader from its own watches
    gc.running.shutdown().await;
}

struct Collector {
    client: kube::Client,
    /// Changed by this loop only; workers read it (and add to its absent-owner cache).
    graph: Arc<Mutex<Graph>>,
    /// upstream's attemptToDelete and attemptToOrphan queues, `slots` workers each.
    deletes: Queue,
    orphans: Queue,
    slots: usize,
    running: JoinSet<Report>,
    /// The item each running task works on.
    held: HashMap<Id, Work>,
    /// Followed resources whose first list has not arrived, since when.
    unsynced: HashMap<String, Instant>,
}

impl Collector {
    fn graph(&self) -> std::sync::MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn queue(&mut self, w: &Work) -> &mut Queue {
        match w {
            Work::Delete(_) => &mut self.deletes,
            Work::Orphan(_) => &mut self.orphans,
        }
    }

    fn add(&mut self, w: Work) {
        self.queue(&w).add(w);
    }

    fn apply(&mut self, c: Change) {
        let work = self.graph().apply(c);
        for w in work {
            self.add(w);
        }
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Synced(k) => {
                self.unsynced.remove(&k);
            }
            Event::Change(c) => {
                VISITED.fetch_add(1, Ordering::Relaxed);
                self.apply(c);
            }
        }
    }

    /// Workers act once the followed resources have listed (upstream waits for its
    /// monitors' caches), or after [`SYNC_WAIT`] for one that does not.
    fn ready(&self) -> bool {
        self.unsynced.values().all(|t| t.elapsed() >= SYNC_WAIT)
    }

    /// Hand ready items to workers while both queues have free workers.
    fn start_runs(&mut self, sources: &Sources) {
        for orphans in [false, true] {
            loop {
                let q = if orphans {
                    &mut self.orphans
                } else {
                    &mut self.deletes
                };
                if q.processing() >= self.slots {
                    break;
                }
                let Some(work) = q.pop() else {
                    break;
                };
                VISITED.fetch_add(1, Ordering::Relaxed);
                let worker = Worker {
                    client: self.client.clone(),
                    graph: self.graph.clone(),
                    kinds: sources.kinds(),
                };
                let task = self.running.spawn(worker.run(work.clone()));
                self.held.insert(task.id(), work);
            }
        }
    }

    /// A run ended: what it found goes into the graph and the queues, then the item is
    /// done (and handed out again if it was added meanwhile).
    fn finished(&mut self, finished: Result<(Id, Report), JoinError>) {
        let (id, report) = match finished {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %e, "garbage collector worker failed; retrying its item");
                (e.id(), Outcome::Retry.into())
            }
        };
        let Some(work) = self.held.remove(&id) else {
            return;
        };
        for w in report.enqueue {
            self.add(w);
        }
        if let Some(absent) = report.absent {
            self.apply(Change::VirtualDelete(absent));
        }
        let q = self.queue(&work);
        match report.outcome {
            Outcome::Done => q.forget(&work),
            Outcome::Retry => q.retry(work.clone(), Instant::now()),
        }
        q.done(&work);
    }
}
