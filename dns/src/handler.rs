//! Answering one request: cluster names from the current snapshot, everything else through
//! the forwarder. Over TCP this is hickory's `RequestHandler`; over UDP `udp.rs` calls
//! `Handler::local_reply`/`Handler::reply` and `Handler::encode_udp`, which truncates
//! answers to the client's advertised EDNS size and sets TC exactly as hickory's encoder
//! does.

use std::sync::Arc;
use std::time::Instant;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::{DNSClass, Record, RecordType};
use hickory_server::proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};

use crate::forward::Forwarder;
use crate::metrics::Metrics;
use crate::snapshot::{Lookup, Snapshot};
use crate::state::ZoneHandle;

/// The largest UDP payload we agree to, whatever the client offers (RFC 9715's advice
/// against fragmentation); TCP is unaffected.
const MAX_UDP_PAYLOAD: u16 = 1232;

#[derive(Clone)]
pub struct Handler {
    zone: ZoneHandle,
    forwarder: Arc<Forwarder>,
    metrics: Arc<Metrics>,
}

/// A response ready to encode.
pub(crate) struct Reply {
    metadata: Metadata,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    /// Computed from the cluster zone alone: the same request bytes against the same
    /// snapshot give the same response bytes, so the UDP path may keep them.
    pub(crate) from_zone: bool,
}

impl Reply {
    fn new(request: &Request) -> Self {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;
        Self {
            metadata,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            from_zone: false,
        }
    }
}

impl Handler {
    pub fn new(zone: ZoneHandle, forwarder: Arc<Forwarder>, metrics: Arc<Metrics>) -> Self {
        Self {
            zone,
            forwarder,
            metrics,
        }
    }

    pub(crate) fn zone(&self) -> &ZoneHandle {
        &self.zone
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Everything answered without I/O: malformed or unsupported requests and the cluster
    /// zone, read from `snapshot`. `None`: the name is not ours, forward it upstream.
    pub(crate) fn local_reply(&self, request: &Request, snapshot: &Snapshot) -> Option<Reply> {
        let mut reply = Reply::new(request);
        if request.metadata.op_code != OpCode::Query {
            reply.metadata.response_code = ResponseCode::NotImp;
            return Some(reply);
        }
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            reply.metadata.response_code = ResponseCode::BADVERS;
            return Some(reply);
        }
        let [query] = request.queries.queries() else {
            reply.metadata.response_code = ResponseCode::FormErr;
            return Some(reply);
        };
        let qname = query.original().name();
        let qtype = query.query_type();
        let qclass = query.query_class();
        // the cluster zone is rebuilt from the API, never transferred; upstreams are not
        // ours to offer transfers of either
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            reply.metadata.response_code = ResponseCode::Refused;
            return Some(reply);
        }

        let lookup = if matches!(qclass, DNSClass::IN | DNSClass::ANY) {
            snapshot.lookup(qname, qtype)
        } else {
            Lookup::NotAuthoritative
        };
        match lookup {
            Lookup::Answer {
                answers,
                additionals,
            } => {
                reply.metadata.authoritative = true;
                // echo the client's spelling of the name (0x20 case randomisation)
                reply.answers = answers
                    .into_iter()
                    .map(|mut r| {
                        if r.name == *qname {
                            r.name = qname.clone();
                        }
                        r
                    })
                    .collect();
                reply.additionals = additionals;
            }
            Lookup::NoData | Lookup::NxDomain => {
                reply.metadata.authoritative = true;
                if lookup == Lookup::NxDomain {
                    reply.metadata.response_code = ResponseCode::NXDomain;
                }
                reply.authorities.push(snapshot.soa());
            }
            Lookup::NotAuthoritative => return None,
        }
        reply.from_zone = true;
        Some(reply)
    }

    pub(crate) async fn reply(&self, request: &Request) -> Reply {
        if let Some(reply) = self.local_reply(request, &self.zone.load()) {
            return reply;
        }
        let mut reply = Reply::new(request);
        let Some(query) = request.queries.queries().first() else {
            // local_reply answers every request without exactly one question
            reply.metadata.response_code = ResponseCode::FormErr;
            return reply;
        };
        let qname = query.original().name();
        match self
            .forwarder
            .resolve(qname, query.query_type(), query.query_class())
            .await
        {
            Ok(fwd) => {
                reply.metadata.response_code = fwd.rcode;
                reply.answers = fwd.answers;
                reply.authorities = fwd.authorities;
                reply.additionals = fwd.additionals;
            }
            Err(error) => {
                tracing::debug!(%error, name = %qname, "forwarding failed");
                reply.metadata.response_code = ResponseCode::ServFail;
            }
        }
        reply
    }

    /// Encodes `reply` for UDP the way hickory's own response handle does: bounded by the
    /// response's EDNS size (512 bytes without EDNS) with TC set when records were cut, and
    /// a bare SERVFAIL if encoding fails.
    pub(crate) fn encode_udp(request: &Request, reply: &Reply) -> (ResponseCode, Vec<u8>) {
        let edns = response_edns(request);
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let response = builder.build(
            reply.metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty(),
            reply.additionals.iter(),
        );
        encode_udp_response(response, edns.as_ref())
    }
}

/// The OPT record of a response: version 0 and our payload size, never above
/// [`MAX_UDP_PAYLOAD`].
fn response_edns(request: &Request) -> Option<Edns> {
    request.edns.as_ref().map(|req| {
        let mut edns = Edns::new();
        edns.set_max_payload(req.max_payload().clamp(512, MAX_UDP_PAYLOAD));
        edns.set_version(0);
        edns
    })
}

/// hickory's `MessageResponse::encode` for UDP, which it keeps crate-private.
pub(crate) fn encode_udp_response<'a>(
    response: MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    edns: Option<&Edns>,
) -> (ResponseCode, Vec<u8>) {
    let id = response.metadata().id;
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(edns.map_or(512, Edns::max_payload));
    match response.destructive_emit(&mut encoder) {
        Ok(info) => (info.response_code, bytes),
        Err(error) => {
            tracing::error!(%error, "error encoding message");
            bytes.clear();
            let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
            metadata.response_code = ResponseCode::ServFail;
            let header = Header {
                metadata,
                counts: HeaderCounts::default(),
            };
            let mut encoder = BinEncoder::new(&mut bytes);
            encoder.set_max_size(512);
            if header.emit(&mut encoder).is_err() {
                bytes.clear();
            }
            (ResponseCode::ServFail, bytes)
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let qtype = request
            .queries
            .queries()
            .first()
            .map(|q| q.query_type())
            .unwrap_or(RecordType::NULL);

        let reply = self.reply(request).await;
        let response_edns = response_edns(request);
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(edns) = &response_edns {
            builder.edns(edns);
        }
        let metadata = reply.metadata;
        let response = builder.build(
            metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty(),
            reply.additionals.iter(),
        );
        let info = match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, "sending response failed");
                let mut metadata = metadata;
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        };
        self.metrics.record_query(
            qtype_name(qtype),
            rcode_name(info.response_code),
            started.elapsed(),
        );
        info
    }
}

/// Metric label for a query type; rare types share `OTHER` so the table stays fixed.
pub fn qtype_name(qtype: RecordType) -> &'static str {
    match qtype {
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::SRV => "SRV",
        RecordType::PTR => "PTR",
        RecordType::CNAME => "CNAME",
        RecordType::TXT => "TXT",
        RecordType::SOA => "SOA",
        RecordType::NS => "NS",
        RecordType::MX => "MX",
        RecordType::ANY => "ANY",
        _ => "OTHER",
    }
}

/// Metric label for a response code, as `dig` prints it.
pub fn rcode_name(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::BADVERS => "BADVERS",
        _ => "OTHER",
    }
}
