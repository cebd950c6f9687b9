//! Forwarding of names outside the cluster zone to upstream resolvers, with a bounded cache
//! of their answers (positive and negative). Cluster answers never pass through here, so
//! they are never served stale.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream servers configured")]
    NoUpstreams,
    #[error("forwarding to {upstream}: {source}")]
    Io {
        upstream: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("forwarding to {upstream}: timed out after {timeout:?}")]
    Timeout {
        upstream: SocketAddr,
        timeout: Duration,
    },
    #[error("forwarding to {upstream}: bad response: {reason}")]
    BadResponse {
        upstream: SocketAddr,
        reason: String,
    },
}

/// An upstream answer, stripped to what is relayed to the client.
#[derive(Debug, Clone)]
pub struct Forwarded {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
}

#[derive(Debug, Clone)]
pub struct ForwardConfig {
    pub upstreams: Vec<SocketAddr>,
    pub timeout: Duration,
    /// Entries, not bytes: answers are small and bounded by the UDP size anyway.
    pub cache_size: usize,
    pub max_ttl: Duration,
    pub max_negative_ttl: Duration,
}

type CacheKey = (String, u16, u16);

struct CacheEntry {
    answer: Forwarded,
    stored: Instant,
    ttl: Duration,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<CacheKey, CacheEntry>,
    /// Insertion order, for evicting the oldest entry when full.
    order: VecDeque<CacheKey>,
}

pub struct Forwarder {
    config: ForwardConfig,
    cache: Mutex<Cache>,
    metrics: Arc<Metrics>,
    ids: RandomState,
    counter: AtomicU64,
}

impl Forwarder {
    pub fn new(config: ForwardConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            config,
            cache: Mutex::default(),
            metrics,
            ids: RandomState::new(),
            counter: AtomicU64::new(0),
        }
    }

    pub fn cached_entries(&self) -> usize {
        self.lock().entries.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub async fn resolve(
        &self,
        name: &Name,
        qtype: RecordType,
        qclass: DNSClass,
    ) -> Result<Forwarded, ForwardError> {
        let key: CacheKey = (
            name.to_lowercase().to_ascii(),
            u16::from(qtype),
            u16::from(qclass),
        );
        if let Some(hit) = self.cached(&key) {
            self.metrics.cache_hit(true);
            return Ok(hit);
        }
        self.metrics.cache_hit(false);
        if self.config.upstreams.is_empty() {
            return Err(ForwardError::NoUpstreams);
        }
        let mut last_err = None;
        for upstream in &self.config.upstreams {
            match self.exchange(*upstream, name, qtype, qclass).await {
                Ok(answer) => {
                    self.store(key, &answer);
                    return Ok(answer);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "upstream failed, trying the next");
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or(ForwardError::NoUpstreams))
    }

    fn cached(&self, key: &CacheKey) -> Option<Forwarded> {
        let mut cache = self.lock();
        let entry = cache.entries.get(key)?;
        let age = entry.stored.elapsed();
        if age >= entry.ttl {
            cache.entries.remove(key);
            return None;
        }
        let age_secs = age.as_secs() as u32;
        let mut answer = entry.answer.clone();
        // clients must see the time left, not the time the upstream gave
        for rr in answer
            .answers
            .iter_mut()
            .chain(answer.authorities.iter_mut())
            .chain(answer.additionals.iter_mut())
        {
            rr.ttl = rr.ttl.saturating_sub(age_secs);
        }
        Some(answer)
    }

    fn store(&self, key: CacheKey, answer: &Forwarded) {
        let Some(ttl) = self.cache_ttl(answer) else {
            return;
        };
        if self.config.cache_size == 0 || ttl.is_zero() {
            return;
        }
        let mut cache = self.lock();
        while cache.entries.len() >= self.config.cache_size {
            let Some(oldest) = cache.order.pop_front() else {
                break;
            };
            cache.entries.remove(&oldest);
        }
        if cache
            .entries
            .insert(
                key.clone(),
                CacheEntry {
                    answer: answer.clone(),
                    stored: Instant::now(),
                    ttl,
                },
            )
            .is_none()
        {
            cache.order.push_back(key);
        }
        // the order queue may hold keys already expired out of the map; keep it bounded
        if cache.order.len() > self.config.cache_size.saturating_mul(2) {
            let Cache { entries, order } = &mut *cache;
            order.retain(|k| entries.contains_key(k));
        }
    }

    /// How long an answer may be cached: the smallest record TTL for data, the SOA's
    /// negative TTL for NXDOMAIN/NODATA, nothing for failures.
    fn cache_ttl(&self, answer: &Forwarded) -> Option<Duration> {
        match answer.rcode {
            ResponseCode::NoError if !answer.answers.is_empty() => {
                let min = answer.answers.iter().map(|r| r.ttl).min()?;
                Some(Duration::from_secs(min.into()).min(self.config.max_ttl))
            }
            ResponseCode::NoError | ResponseCode::NXDomain => {
                let soa = answer.authorities.iter().find_map(|r| match &r.data {
                    RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                    _ => None,
                })?;
                Some(Duration::from_secs(soa.into()).min(self.config.max_negative_ttl))
            }
            _ => None,
        }
    }

    fn next_id(&self) -> u16 {
        // SipHash of a counter under a random key: unpredictable to anyone off the host
        let mut h = self.ids.build_hasher();
        h.write_u64(self.counter.fetch_add(1, Ordering::Relaxed));
        h.finish() as u16
    }

    async fn exchange(
        &self,
        upstream: SocketAddr,
        name: &Name,
        qtype: RecordType,
        qclass: DNSClass,
    ) -> Result<Forwarded, ForwardError> {
        let id = self.next_id();
        let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = true;
        let mut query = Query::query(name.clone(), qtype);
        query.set_query_class(qclass);
        msg.add_query(query.clone());
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        msg.set_edns(edns);
        let bytes = msg.to_vec().map_err(|e| ForwardError::BadResponse {
            upstream,
            reason: format!("encoding query: {e}"),
        })?;
        let timeout = self.config.timeout;
        let io = |source| ForwardError::Io { upstream, source };

        let reply = tokio::time::timeout(timeout, udp_exchange(upstream, &bytes, id))
            .await
            .map_err(|_| ForwardError::Timeout { upstream, timeout })?
            .map_err(io)?;
        let mut response = parse_reply(upstream, &reply, id, &query)?;
        if response.metadata.truncation {
            let reply = tokio::time::timeout(timeout, tcp_exchange(upstream, &bytes))
                .await
                .map_err(|_| ForwardError::Timeout { upstream, timeout })?
                .map_err(io)?;
            response = parse_reply(upstream, &reply, id, &query)?;
        }
        Ok(Forwarded {
            rcode: response.metadata.response_code,
            answers: response.answers,
            authorities: response.authorities,
            additionals: response.additionals,
        })
    }
}

fn parse_reply(
    upstream: SocketAddr,
    reply: &[u8],
    id: u16,
    query: &Query,
) -> Result<Message, ForwardError> {
    let bad = |reason: String| ForwardError::BadResponse { upstream, reason };
    let msg = Message::from_vec(reply).map_err(|e| bad(format!("decoding: {e}")))?;
    if msg.metadata.id != id || msg.metadata.message_type != MessageType::Response {
        return Err(bad("id or type mismatch".into()));
    }
    if msg
        .queries
        .first()
        .map(|q| (q.name().to_lowercase(), q.query_type()))
        != Some((query.name().to_lowercase(), query.query_type()))
    {
        return Err(bad("question mismatch".into()));
    }
    Ok(msg)
}

async fn udp_exchange(upstream: SocketAddr, query: &[u8], id: u16) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal address")
    } else {
        "[::]:0".parse().expect("literal address")
    };
    // a fresh socket per query gives a random source port, and connect() filters
    // datagrams from anyone but the upstream
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = socket.recv(&mut buf).await?;
        // skip stray datagrams with another id instead of failing the query
        if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn tcp_exchange(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut buf = vec![0u8; len as usize];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}
