//! The embedded backend: a revisioned log in SQLite, modelled on k3s's kine.
//!
//! Every write is an INSERT into one table, so the table *is* the history:
//! `kv(revision PRIMARY KEY, key, value, create_revision, prev_revision, deleted)`. A key's
//! state at revision R is its newest row with `revision <= R` (absent if that row is a
//! tombstone). Compaction deletes rows nobody can read any more.
//!
//! One writer thread owns the write connection and commits whatever requests are queued in
//! one transaction (group commit: one fsync for many concurrent writers), then publishes the
//! resulting events on a broadcast channel in revision order. Watches read history from the
//! table, then follow the broadcast; a watcher that lags re-reads from the table, so no event
//! is ever lost. `journal_mode=WAL` + `synchronous=FULL`: a write is acknowledged only after
//! its commit is on disk, so kill -9 loses nothing acknowledged.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{broadcast, oneshot};

use crate::{
    check_size, prefix_end, Event, EventKind, KeyValue, ListOptions, ListResult, Revision, Store,
    StoreError, WatchStream,
};

/// Groups bigger than this are split: it bounds the latency one group adds to its last member.
const MAX_GROUP: usize = 512;
/// Events buffered for live watchers; a watcher further behind re-reads from the table.
const BROADCAST_CAPACITY: usize = 8192;
/// Rows read per query when replaying history to a watcher.
const HISTORY_PAGE: i64 = 1000;

/// SQLite-backed [`Store`]. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.readers.path)
            .field(
                "revision",
                &self.inner.readers.current.load(Ordering::SeqCst),
            )
            .finish()
    }
}

struct Inner {
    writes: Mutex<mpsc::Sender<WriteRequest>>,
    events: broadcast::Sender<Event>,
    readers: Arc<Readers>,
}

/// Read connections plus the revision counters; shared with watch tasks, which must not keep
/// the writer alive.
struct Readers {
    path: PathBuf,
    pool: Mutex<Vec<Connection>>,
    current: AtomicI64,
    compacted: AtomicI64,
}

enum WriteOp {
    Create {
        key: String,
        value: Bytes,
    },
    Update {
        key: String,
        value: Bytes,
        expected: Revision,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
    Compact {
        revision: Revision,
    },
}

enum WriteOutcome {
    Written(KeyValue),
    Deleted(KeyValue, Revision),
    Compacted,
}

struct WriteRequest {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteOutcome, StoreError>>,
}

fn sqlite(action: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { action, source }
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(sqlite("opening the database"))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(sqlite("setting the busy timeout"))?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         PRAGMA synchronous=FULL;
         PRAGMA foreign_keys=OFF;",
    )
    .map_err(sqlite("configuring the database"))?;
    Ok(conn)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    revision        INTEGER PRIMARY KEY,
    key             BLOB    NOT NULL,
    value           BLOB,
    create_revision INTEGER NOT NULL,
    prev_revision   INTEGER NOT NULL,
    deleted         INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS kv_key_revision ON kv (key, revision);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('compacted', 0);
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 1);
";

impl EmbeddedStore {
    /// Open (creating if needed) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Unavailable {
                reason: format!("creating {}: {e}", dir.display()),
            })?;
        }
        let writer = open_connection(&path)?;
        writer
            .execute_batch(SCHEMA)
            .map_err(sqlite("creating the schema"))?;
        // `meta.revision` remembers the revision even when compaction or deletes leave no row
        // carrying it, so revisions never go backwards across a reopen.
        let (current, compacted): (i64, i64) = writer
            .query_row(
                "SELECT MAX((SELECT value FROM meta WHERE name = 'revision'),
                            COALESCE((SELECT MAX(revision) FROM kv), 0)),
                        (SELECT value FROM meta WHERE name = 'compacted')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(sqlite("reading the current revision"))?;
        let readers = Arc::new(Readers {
            path: path.clone(),
            pool: Mutex::new(Vec::new()),
            current: AtomicI64::new(current),
            compacted: AtomicI64::new(compacted),
        });
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let (tx, rx) = mpsc::channel();
        let writer_state = Writer {
            conn: writer,
            revision: current,
            readers: readers.clone(),
            events: events.clone(),
        };
        std::thread::Builder::new()
            .name("kaze-store-writer".into())
            .spawn(move || writer_state.run(rx))
            .map_err(|e| StoreError::Unavailable {
                reason: format!("starting the writer thread: {e}"),
            })?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                writes: Mutex::new(tx),
                events,
                readers,
            }),
        })
    }

    async fn write(&self, op: WriteOp) -> Result<WriteOutcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        {
            let tx = self
                .inner
                .writes
                .lock()
                .map_err(|_| StoreError::Unavailable {
                    reason: "writer lock poisoned".into(),
                })?;
            tx.send(WriteRequest { op, reply })
                .map_err(|_| StoreError::Unavailable {
                    reason: "the writer thread has stopped".into(),
                })?;
        }
        rx.await.map_err(|_| StoreError::Unavailable {
            reason: "the writer thread dropped a request".into(),
        })?
    }
}

// === impl Readers ===

impl Readers {
    /// Run `f` on a pooled read connection in the blocking pool.
    async fn with_conn<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match this.pool.lock().ok().and_then(|mut p| p.pop()) {
                Some(c) => c,
                None => open_connection(&this.path)?,
            };
            let out = f(&conn);
            if let Ok(mut p) = this.pool.lock() {
                p.push(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::Unavailable {
            reason: format!("read task failed: {e}"),
        })?
    }

    fn check_readable(&self, revision: Revision) -> Result<(), StoreError> {
        let compacted = self.compacted.load(Ordering::SeqCst);
        if revision < compacted {
            return Err(StoreError::Compacted {
                requested: revision,
                compacted,
            });
        }
        let current = self.current.load(Ordering::SeqCst);
        if revision > current {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current,
            });
        }
        Ok(())
    }
}

struct Row {
    revision: Revision,
    key: String,
    value: Option<Vec<u8>>,
    create_revision: Revision,
    prev_revision: Revision,
    deleted: bool,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let key: Vec<u8> = r.get(1)?;
    Ok(Row {
        revision: r.get(0)?,
        key: String::from_utf8_lossy(&key).into_owned(),
        value: r.get(2)?,
        create_revision: r.get(3)?,
        prev_revision: r.get(4)?,
        deleted: r.get::<_, i64>(5)? != 0,
    })
}

impl Row {
    fn into_kv(self) -> KeyValue {
        KeyValue {
            key: self.key,
            value: Bytes::from(self.value.unwrap_or_default()),
            create_revision: self.create_revision,
            mod_revision: self.revision,
        }
    }
}

const COLS: &str = "revision, key, value, create_revision, prev_revision, deleted";

fn latest(conn: &Connection, key: &str) -> rusqlite::Result<Option<Row>> {
    conn.prepare_cached(&format!(
        "SELECT {COLS} FROM kv WHERE key = ?1 ORDER BY revision DESC LIMIT 1"
    ))?
    .query_row(params![key.as_bytes()], row)
    .optional()
}

fn by_revision(conn: &Connection, revision: Revision) -> rusqlite::Result<Option<Row>> {
    conn.prepare_cached(&format!("SELECT {COLS} FROM kv WHERE revision = ?1"))?
        .query_row(params![revision], row)
        .optional()
}

/// Turn a history row into the event it records.
fn event_of(conn: &Connection, r: Row) -> rusqlite::Result<Event> {
    let prev = if r.prev_revision > 0 {
        by_revision(conn, r.prev_revision)?
            .filter(|p| !p.deleted)
            .map(Row::into_kv)
    } else {
        None
    };
    let kind = if r.deleted {
        EventKind::Delete
    } else {
        EventKind::Put
    };
    let mut kv = r.into_kv();
    if kind == EventKind::Delete {
        kv.value = Bytes::new();
    }
    Ok(Event { kind, kv, prev })
}

// === impl Writer ===

struct Writer {
    conn: Connection,
    revision: Revision,
    readers: Arc<Readers>,
    events: broadcast::Sender<Event>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<WriteRequest>) {
        // Ends when every EmbeddedStore clone is dropped.
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(req) => group.push(req),
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
    }

    fn commit_group(&mut self, group: Vec<WriteRequest>) {
        let start_revision = self.revision;
        let mut results = Vec::with_capacity(group.len());
        let mut events = Vec::new();
        let outcome = (|| -> rusqlite::Result<()> {
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for req in &group {
                let res = apply(&tx, &mut self.revision, &self.readers, &req.op, &mut events)?;
                results.push(res);
            }
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE name = 'revision'",
                params![self.revision],
            )?;
            tx.commit()
        })();
        match outcome {
            Ok(()) => {
                self.readers.current.store(self.revision, Ordering::SeqCst);
                for ev in events {
                    // No receivers is fine: nobody is watching.
                    let _ = self.events.send(ev);
                }
                for (req, res) in group.into_iter().zip(results) {
                    let _ = req.reply.send(res);
                }
            }
            Err(e) => {
                // The transaction rolled back: nothing of this group is visible, so every
                // member fails and the revision counter goes back.
                self.revision = start_revision;
                if let Ok(c) =
                    self.conn
                        .query_row("SELECT value FROM meta WHERE name='compacted'", [], |r| {
                            r.get::<_, i64>(0)
                        })
                {
                    self.readers.compacted.store(c, Ordering::SeqCst);
                }
                let msg = e.to_string();
                for req in group {
                    let _ = req.reply.send(Err(StoreError::Unavailable {
                        reason: format!("committing a write: {msg}"),
                    }));
                }
            }
        }
    }
}

/// Apply one op inside the group's transaction. `Err` aborts the whole group (database
/// failure); semantic failures (conflicts, not found) are `Ok(Err(..))` and write nothing.
fn apply(
    tx: &rusqlite::Transaction<'_>,
    revision: &mut Revision,
    readers: &Readers,
    op: &WriteOp,
    events: &mut Vec<Event>,
) -> rusqlite::Result<Result<WriteOutcome, StoreError>> {
    let mut insert = |key: &str,
                      value: Option<&[u8]>,
                      create: Option<Revision>,
                      prev: Revision,
                      deleted: bool|
     -> rusqlite::Result<Revision> {
        *revision += 1;
        let rev = *revision;
        tx.prepare_cached(
            "INSERT INTO kv (revision, key, value, create_revision, prev_revision, deleted)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            rev,
            key.as_bytes(),
            value,
            create.unwrap_or(rev),
            prev,
            deleted as i64
        ])?;
        Ok(rev)
    };
    match op {
        WriteOp::Create { key, value } => {
            let cur = latest(tx, key)?;
            let prev_rev = match &cur {
                Some(r) if !r.deleted => {
                    return Ok(Err(StoreError::AlreadyExists { key: key.clone() }))
                }
                Some(r) => r.revision,
                None => 0,
            };
            let rev = insert(key, Some(value), None, prev_rev, false)?;
            let kv = KeyValue {
                key: key.clone(),
                value: value.clone(),
                create_revision: rev,
                mod_revision: rev,
            };
            events.push(Event {
                kind: EventKind::Put,
                kv: kv.clone(),
                prev: None,
            });
            Ok(Ok(WriteOutcome::Written(kv)))
        }
        WriteOp::Update {
            key,
            value,
            expected,
        } => {
            let cur = match latest(tx, key)? {
                Some(r) if !r.deleted => r,
                _ => return Ok(Err(StoreError::NotFound { key: key.clone() })),
            };
            if cur.revision != *expected {
                return Ok(Err(StoreError::Conflict {
                    key: key.clone(),
                    expected: *expected,
                    current: Some(Box::new(cur.into_kv())),
                }));
            }
            let create = cur.create_revision;
            let prev_kv = cur.into_kv();
            let rev = insert(key, Some(value), Some(create), prev_kv.mod_revision, false)?;
            let kv = KeyValue {
                key: key.clone(),
                value: value.clone(),
                create_revision: create,
                mod_revision: rev,
            };
            events.push(Event {
                kind: EventKind::Put,
                kv: kv.clone(),
                prev: Some(prev_kv),
            });
            Ok(Ok(WriteOutcome::Written(kv)))
        }
        WriteOp::Delete { key, expected } => {
            let cur = match latest(tx, key)? {
                Some(r) if !r.deleted => r,
                _ => return Ok(Err(StoreError::NotFound { key: key.clone() })),
            };
            if let Some(expected) = expected {
                if cur.revision != *expected {
                    return Ok(Err(StoreError::Conflict {
                        key: key.clone(),
                        expected: *expected,
                        current: Some(Box::new(cur.into_kv())),
                    }));
                }
            }
            let create = cur.create_revision;
            let prev_kv = cur.into_kv();
            let rev = insert(key, None, Some(create), prev_kv.mod_revision, true)?;
            events.push(Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: key.clone(),
                    value: Bytes::new(),
                    create_revision: create,
                    mod_revision: rev,
                },
                prev: Some(prev_kv.clone()),
            });
            Ok(Ok(WriteOutcome::Deleted(prev_kv, rev)))
        }
        WriteOp::Compact { revision: target } => {
            let target = *target;
            if target > *revision {
                return Ok(Err(StoreError::FutureRevision {
                    requested: target,
                    current: *revision,
                }));
            }
            let compacted = readers.compacted.load(Ordering::SeqCst);
            if target <= compacted {
                return Ok(Ok(WriteOutcome::Compacted));
            }
            // A row below the target that a newer row (also below the target) supersedes can
            // never be read again: reads at >= target see the newer one, and watches from >=
            // target-1 only need rows >= target and their immediate predecessors (kept: their
            // successor is not below the target). Tombstones below the target go too.
            tx.execute(
                "DELETE FROM kv WHERE revision < ?1 AND (deleted = 1 OR EXISTS (
                     SELECT 1 FROM kv AS newer
                     WHERE newer.key = kv.key AND newer.revision > kv.revision
                       AND newer.revision < ?1))",
                params![target],
            )?;
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE name = 'compacted'",
                params![target],
            )?;
            readers.compacted.store(target, Ordering::SeqCst);
            Ok(Ok(WriteOutcome::Compacted))
        }
    }
}

// === impl Store ===

fn unexpected(outcome: &'static str) -> StoreError {
    StoreError::Unavailable {
        reason: format!("writer returned an unexpected outcome for {outcome}"),
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_string();
        self.inner
            .readers
            .with_conn(move |conn| {
                Ok(latest(conn, &key)
                    .map_err(sqlite("reading a key"))?
                    .filter(|r| !r.deleted)
                    .map(Row::into_kv))
            })
            .await
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StoreError> {
        let readers = &self.inner.readers;
        let revision = match opts.revision {
            Some(r) if r > 0 => {
                readers.check_readable(r)?;
                r
            }
            _ => readers.current.load(Ordering::SeqCst),
        };
        let start = opts
            .start_key
            .filter(|s| s.as_str() > prefix)
            .unwrap_or_else(|| prefix.to_string());
        let end = prefix_end(prefix);
        let limit = opts.limit.filter(|l| *l > 0);
        let items = readers
            .with_conn(move |conn| {
                // The correlated subquery picks each key's newest row at `revision`; walking the
                // (key, revision) index in key order lets LIMIT stop the scan early.
                let sql = format!(
                    "SELECT {COLS} FROM kv AS a
                     WHERE a.key >= ?1 AND (?2 IS NULL OR a.key < ?2) AND a.deleted = 0
                       AND a.revision = (SELECT MAX(b.revision) FROM kv AS b
                                         WHERE b.key = a.key AND b.revision <= ?3)
                     ORDER BY a.key LIMIT ?4"
                );
                let fetch = limit.map_or(-1, |l| l as i64 + 1);
                let mut stmt = conn.prepare_cached(&sql).map_err(sqlite("listing"))?;
                let rows = stmt
                    .query_map(params![start.as_bytes(), end, revision, fetch], row)
                    .map_err(sqlite("listing"))?;
                let mut out = Vec::new();
                for r in rows {
                    out.push(r.map_err(sqlite("listing"))?.into_kv());
                }
                Ok(out)
            })
            .await?;
        let mut items = items;
        let continue_key = match limit {
            Some(l) if items.len() > l => {
                let next = items.remove(l);
                items.truncate(l);
                Some(next.key)
            }
            _ => None,
        };
        // A compaction may have raced the read; a page read below the compaction point could
        // miss rows, so report it as compacted rather than return a wrong answer.
        if opts.revision.is_some_and(|r| r > 0) {
            readers.check_readable(revision)?;
        }
        Ok(ListResult {
            items,
            revision,
            continue_key,
        })
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue, StoreError> {
        check_size(key, &value)?;
        match self
            .write(WriteOp::Create {
                key: key.to_string(),
                value,
            })
            .await?
        {
            WriteOutcome::Written(kv) => Ok(kv),
            _ => Err(unexpected("create")),
        }
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected: Revision,
    ) -> Result<KeyValue, StoreError> {
        check_size(key, &value)?;
        match self
            .write(WriteOp::Update {
                key: key.to_string(),
                value,
                expected,
            })
            .await?
        {
            WriteOutcome::Written(kv) => Ok(kv),
            _ => Err(unexpected("update")),
        }
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<(KeyValue, Revision), StoreError> {
        match self
            .write(WriteOp::Delete {
                key: key.to_string(),
                expected,
            })
            .await?
        {
            WriteOutcome::Deleted(kv, rev) => Ok((kv, rev)),
            _ => Err(unexpected("delete")),
        }
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let readers = self.inner.readers.clone();
        let compacted = readers.compacted.load(Ordering::SeqCst);
        // Watching from `after` needs revision after+1 onwards.
        if after + 1 < compacted {
            return Err(StoreError::Compacted {
                requested: after + 1,
                compacted,
            });
        }
        // Subscribe before reading history: anything committed after this point is in the
        // channel, anything before it is in the table; duplicates are skipped by revision.
        let live = self.inner.events.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(follow(readers, prefix.to_string(), after, live, tx));
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.inner.readers.current.load(Ordering::SeqCst))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        match self.write(WriteOp::Compact { revision }).await? {
            WriteOutcome::Compacted => Ok(()),
            _ => Err(unexpected("compact")),
        }
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.inner.readers.compacted.load(Ordering::SeqCst))
    }
}

fn matches(prefix: &str, key: &str) -> bool {
    key.starts_with(prefix)
}

/// Feed one watcher: history after `last`, then live events; re-read history on lag.
async fn follow(
    readers: Arc<Readers>,
    prefix: String,
    mut last: Revision,
    mut live: broadcast::Receiver<Event>,
    tx: tokio::sync::mpsc::Sender<Result<Event, StoreError>>,
) {
    'catch_up: loop {
        // Replay the table from `last` up to whatever is committed now.
        loop {
            let p = prefix.clone();
            let after = last;
            let page = readers
                .with_conn(move |conn| read_history(conn, &p, after))
                .await;
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let n = page.len();
            for ev in page {
                last = ev.revision();
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
            if (n as i64) < HISTORY_PAGE {
                break;
            }
        }
        let compacted = readers.compacted.load(Ordering::SeqCst);
        if last + 1 < compacted {
            // Fell behind a compaction while catching up: some history is gone.
            let _ = tx
                .send(Err(StoreError::Compacted {
                    requested: last + 1,
                    compacted,
                }))
                .await;
            return;
        }
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                msg = live.recv() => match msg {
                    Ok(ev) => {
                        if ev.revision() <= last {
                            continue;
                        }
                        last = ev.revision();
                        if matches(&prefix, &ev.kv.key) && tx.send(Ok(ev)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue 'catch_up,
                    // The store was dropped: end the stream.
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    }
}

fn read_history(
    conn: &Connection,
    prefix: &str,
    after: Revision,
) -> Result<Vec<Event>, StoreError> {
    let end = prefix_end(prefix);
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {COLS} FROM kv
             WHERE revision > ?1 AND key >= ?2 AND (?3 IS NULL OR key < ?3)
             ORDER BY revision LIMIT ?4"
        ))
        .map_err(sqlite("reading history"))?;
    let rows = stmt
        .query_map(params![after, prefix.as_bytes(), end, HISTORY_PAGE], row)
        .map_err(sqlite("reading history"))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(sqlite("reading history"))?;
    rows.into_iter()
        .map(|r| event_of(conn, r).map_err(sqlite("reading history")))
        .collect()
}
