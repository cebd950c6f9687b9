//! The UDP server: one thread per SO_REUSEPORT socket, moving datagrams in batches
//! (`recvmmsg`/`sendmmsg`, see [`crate::sys`]) and answering repeated cluster questions from
//! a per-socket cache of encoded responses. A dedicated thread blocked in `recvmmsg` is
//! woken by the kernel itself when a query lands (knotd's UDP workers work the same way),
//! and a busy runtime elsewhere in the process (`kaze server` runs the whole control plane
//! on one) cannot delay DNS answers.
//!
//! Why a cache is safe: a cluster answer is a pure function of the request bytes (id aside)
//! and the zone snapshot. The cache key is the whole datagram after the id, the value the
//! encoded response the full path produced for it; a hit copies it and patches in the
//! query's id, so it is byte-for-byte what the full path would send. The cache belongs to
//! one snapshot: every batch first compares the published snapshot with the one the cache
//! was filled from and empties the cache on any difference, so an API change is served by
//! the first batch received after it is published. Forwarded answers never enter it (they
//! have their own TTL-bound cache in [`crate::forward`]).
//!
//! Everything that is not a cache hit goes through hickory's parser and
//! [`Handler`]: malformed requests get FORMERR or are dropped as hickory's own UDP loop
//! does, cluster questions are answered inline, and names outside the zone are forwarded
//! from a spawned task so a slow upstream never stalls the socket.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Header, MessageType, ResponseCode};
use hickory_server::proto::rr::RecordType;
use hickory_server::proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_server::server::Request;
use hickory_server::zone_handler::{MessageResponseBuilder, Queries};
use std::net::UdpSocket;

use tokio_util::sync::CancellationToken;

use crate::handler::{encode_udp_response, qtype_name, rcode_name, Handler};
use crate::metrics::{slot, Tally};
use crate::snapshot::Snapshot;
use crate::sys::Batch;

/// Bytes of cached responses (with keys and bookkeeping) one socket may hold before it
/// starts over: enough for every A/AAAA/SRV name of tens of thousands of services, small
/// enough that a flood of distinct names costs little memory.
pub const CACHE_BUDGET: usize = 8 << 20;
/// Rough per-entry overhead (two boxes, the map slot) counted against the budget.
const ENTRY_OVERHEAD: usize = 64;

/// Encoded responses keyed by request bytes after the id, valid for one snapshot.
#[derive(Default)]
pub(crate) struct AnswerCache {
    snapshot: Option<Arc<Snapshot>>,
    entries: HashMap<Box<[u8]>, Cached>,
    bytes: usize,
    budget: usize,
}

pub(crate) struct Cached {
    response: Box<[u8]>,
    /// Metrics counter of the response's query type and rcode.
    slot: usize,
}

impl AnswerCache {
    pub(crate) fn with_budget(budget: usize) -> Self {
        Self {
            budget,
            ..Self::default()
        }
    }

    /// Empties the cache unless it was filled from `current`.
    pub(crate) fn follow(&mut self, current: &Arc<Snapshot>) {
        if self
            .snapshot
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, current))
        {
            return;
        }
        self.clear();
        self.snapshot = Some(current.clone());
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// `key`: a request without its first two bytes.
    pub(crate) fn get(&self, key: &[u8]) -> Option<&Cached> {
        self.entries.get(key)
    }

    pub(crate) fn insert(&mut self, key: &[u8], response: &[u8], slot: usize) {
        if self.entries.contains_key(key) {
            // same request, same snapshot: the same response is already there
            return;
        }
        let size = key.len() + response.len() + ENTRY_OVERHEAD;
        if self.bytes + size > self.budget {
            // starting over is simpler than LRU and as good for a working set that fits;
            // one that does not fit gets the uncached path, as before this cache existed
            self.clear();
            if size > self.budget {
                return;
            }
        }
        self.entries.insert(
            key.into(),
            Cached {
                response: response.into(),
                slot,
            },
        );
        self.bytes += size;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// How often a blocked receive loop looks at its stop token.
const STOP_POLL: Duration = Duration::from_millis(100);

/// Serves one socket on the calling (dedicated) thread until `stop` is cancelled: blocking
/// `recvmmsg` wakes this thread directly when a datagram lands, with no runtime in
/// between, as knotd's UDP workers do. Forwarded queries run as tasks on `runtime`.
pub(crate) fn serve_blocking(
    socket: UdpSocket,
    handler: Handler,
    stop: CancellationToken,
    runtime: tokio::runtime::Handle,
) -> io::Result<()> {
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(STOP_POLL))?;
    let socket = Arc::new(socket);
    let mut batch = Batch::new();
    let mut cache = AnswerCache::with_budget(CACHE_BUDGET);
    let mut tally = Tally::default();
    while !stop.is_cancelled() {
        match batch.recv(socket.as_fd(), true) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) if unrecoverable(&e) => return Err(e),
            Err(error) => {
                tracing::warn!(%error, "receiving udp queries");
                continue;
            }
        }
        let started = Instant::now();
        let snapshot = handler.zone().load();
        cache.follow(&snapshot);
        for i in 0..batch.len() {
            if let Some(request) =
                answer(&handler, &snapshot, &mut batch, &mut cache, &mut tally, i)
            {
                runtime.spawn(forward(handler.clone(), socket.clone(), request));
            }
        }
        drop(snapshot);
        // counted before sending, so a client that has its answer also sees it counted
        handler
            .metrics()
            .record_tally(&mut tally, started.elapsed());
        // blocking sends wait for buffer room and drop what the kernel refuses; an error
        // here would be a socket we can no longer use
        if let Err(error) = batch.send(socket.as_fd(), true) {
            tracing::warn!(%error, "sending udp answers");
        }
    }
    Ok(())
}

/// Answers datagram `i` of `batch` into its slot, or hands back the parsed request when it
/// must be forwarded upstream.
pub(crate) fn answer(
    handler: &Handler,
    snapshot: &Snapshot,
    batch: &mut Batch,
    cache: &mut AnswerCache,
    tally: &mut Tally,
    i: usize,
) -> Option<Request> {
    let datagram = batch.datagram(i);
    // hickory drops what has no header: not a DNS message
    if datagram.len() < 12 {
        return None;
    }
    let src = batch.source(i).filter(|src| can_answer(*src))?;
    if let Some(hit) = cache.get(&datagram[2..]) {
        tally.add(hit.slot);
        tally.cache_hit(true);
        batch.set_reply_with_id(i, &hit.response);
        return None;
    }

    // the rest is hickory's request handling (hickory_server::server::ServerContext)
    let header = Header::read(&mut BinDecoder::new(datagram)).ok()?;
    let request = match Request::from_bytes(datagram.to_vec(), src, Protocol::Udp) {
        Ok(request) => request,
        Err(error) => {
            tracing::debug!(%error, %src, id = header.metadata.id, "malformed udp query");
            let queries = Queries::read(&mut BinDecoder::new(&[]), 0).ok()?;
            let response = MessageResponseBuilder::new(&queries, None)
                .error_msg(&header.metadata, ResponseCode::FormErr);
            let (rcode, bytes) = encode_udp_response(response, None);
            tally.add(slot(qtype_name(RecordType::NULL), rcode_name(rcode)));
            batch.set_reply(i, &bytes);
            return None;
        }
    };
    // never answer answers: that is how reflection loops start
    if request.metadata.message_type == MessageType::Response {
        return None;
    }
    let Some(reply) = handler.local_reply(&request, snapshot) else {
        return Some(request);
    };
    let (rcode, bytes) = Handler::encode_udp(&request, &reply);
    let counter = slot(qtype_name(query_type(&request)), rcode_name(rcode));
    tally.add(counter);
    batch.set_reply(i, &bytes);
    if reply.from_zone {
        tally.cache_hit(false);
        cache.insert(&request.as_slice()[2..], &bytes, counter);
    }
    None
}

/// Answers a name outside the zone; runs as a task so a slow upstream never stalls the
/// receive loop.
async fn forward(handler: Handler, socket: Arc<UdpSocket>, request: Request) {
    let started = Instant::now();
    let reply = handler.reply(&request).await;
    let (rcode, bytes) = Handler::encode_udp(&request, &reply);
    handler.metrics().record_query(
        qtype_name(query_type(&request)),
        rcode_name(rcode),
        started.elapsed(),
    );
    // a UDP send does not wait for the peer, at worst briefly for buffer room
    if let Err(error) = socket.send_to(&bytes, request.src()) {
        tracing::debug!(%error, dst = %request.src(), "sending a forwarded answer");
    }
}

fn query_type(request: &Request) -> RecordType {
    request
        .queries
        .queries()
        .first()
        .map(|q| q.query_type())
        .unwrap_or(RecordType::NULL)
}

/// hickory's `sanitize_src_address`: no replies to port 0, unspecified or broadcast sources.
fn can_answer(src: SocketAddr) -> bool {
    src.port() != 0
        && match src.ip() {
            IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_broadcast(),
            IpAddr::V6(v6) => !v6.is_unspecified(),
        }
}

/// hickory's `is_unrecoverable_socket_error`.
fn unrecoverable(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::NotConnected | io::ErrorKind::ConnectionAborted
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_server::proto::rr::Name;

    fn snapshot() -> Arc<Snapshot> {
        Arc::new(Snapshot::empty(
            Name::from_ascii("cluster.local.").unwrap(),
            5,
            1,
        ))
    }

    #[test]
    fn the_cache_belongs_to_one_snapshot() {
        let (first, second) = (snapshot(), snapshot());
        let mut cache = AnswerCache::with_budget(CACHE_BUDGET);
        cache.follow(&first);
        cache.insert(b"question", b"answer", 3);
        cache.follow(&first);
        let hit = cache.get(b"question").expect("kept for the same snapshot");
        assert_eq!((&*hit.response, hit.slot), (&b"answer"[..], 3));
        // an equal-looking but newly published snapshot empties it
        cache.follow(&second);
        assert!(cache.get(b"question").is_none());
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn the_cache_starts_over_when_its_budget_is_spent() {
        let entry = 4 + 6 + ENTRY_OVERHEAD;
        let mut cache = AnswerCache::with_budget(3 * entry);
        cache.follow(&snapshot());
        for key in [b"key1", b"key2", b"key3"] {
            cache.insert(key, b"answer", 0);
        }
        assert_eq!(cache.len(), 3);
        // the same key again costs nothing
        cache.insert(b"key3", b"answer", 0);
        assert_eq!(cache.len(), 3);
        cache.insert(b"key4", b"answer", 0);
        assert_eq!(cache.len(), 1);
        assert!(cache.get(b"key4").is_some());
        // an entry larger than the whole budget is never kept
        cache.insert(b"key5", &[0u8; 4096], 0);
        assert!(cache.get(b"key5").is_none());
    }

    #[test]
    fn unanswerable_sources_are_skipped() {
        assert!(can_answer("127.0.0.1:5353".parse().unwrap()));
        assert!(can_answer("[::1]:5353".parse().unwrap()));
        assert!(!can_answer("127.0.0.1:0".parse().unwrap()));
        assert!(!can_answer("0.0.0.0:53".parse().unwrap()));
        assert!(!can_answer("255.255.255.255:53".parse().unwrap()));
        assert!(!can_answer("[::]:53".parse().unwrap()));
    }
}
