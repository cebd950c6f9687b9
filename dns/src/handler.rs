//! The hickory `RequestHandler`: cluster names from the current snapshot, everything else
//! through the forwarder. One handler serves UDP and TCP; hickory's encoder truncates UDP
//! answers to the client's advertised EDNS size and sets TC.

use std::sync::Arc;
use std::time::Instant;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::{DNSClass, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::forward::Forwarder;
use crate::metrics::Metrics;
use crate::snapshot::Lookup;
use crate::state::ZoneHandle;

/// The largest UDP payload we agree to, whatever the client offers (RFC 9715's advice
/// against fragmentation); TCP is unaffected.
const MAX_UDP_PAYLOAD: u16 = 1232;

pub struct Handler {
    zone: ZoneHandle,
    forwarder: Arc<Forwarder>,
    metrics: Arc<Metrics>,
}

/// A response ready to encode.
struct Reply {
    metadata: Metadata,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

impl Handler {
    pub fn new(zone: ZoneHandle, forwarder: Arc<Forwarder>, metrics: Arc<Metrics>) -> Self {
        Self {
            zone,
            forwarder,
            metrics,
        }
    }

    async fn reply(&self, request: &Request) -> Reply {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;
        let mut reply = Reply {
            metadata,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        };
        if request.metadata.op_code != OpCode::Query {
            reply.metadata.response_code = ResponseCode::NotImp;
            return reply;
        }
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            reply.metadata.response_code = ResponseCode::BADVERS;
            return reply;
        }
        let [query] = request.queries.queries() else {
            reply.metadata.response_code = ResponseCode::FormErr;
            return reply;
        };
        let qname = query.original().name();
        let qtype = query.query_type();
        let qclass = query.query_class();
        // the cluster zone is rebuilt from the API, never transferred; upstreams are not
        // ours to offer transfers of either
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            reply.metadata.response_code = ResponseCode::Refused;
            return reply;
        }

        let snapshot = self.zone.load();
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
            Lookup::NotAuthoritative => {
                drop(snapshot);
                match self.forwarder.resolve(qname, qtype, qclass).await {
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
            }
        }
        reply
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
        let response_edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(req.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            edns.set_version(0);
            edns
        });
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
