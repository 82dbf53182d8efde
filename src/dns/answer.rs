//! One DNS query in, one DNS response out, from the registry's published snapshots.
//!
//! Invariants:
//! - no answer names an instance past its deadline (the snapshot is filtered at `now`);
//! - no record's TTL outlives the lease of an instance it names: a positive answer's TTL is
//!   `min(dns.ttl, whole seconds left on the soonest lease among the instances it names)`;
//! - every negative answer (NXDOMAIN, NODATA) carries the SOA, whose TTL and MINIMUM are
//!   `dns.negative_ttl`;
//! - an answer cut to fit a UDP payload has TC set; only the additional section is dropped
//!   silently (RFC 2181 §9).

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::Zone;
use crate::config::DnsConfig;
use crate::registry::{Instance, Registry};

/// The transport a query came over, which bounds the response size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP: 512 bytes, or the client's EDNS(0) payload size up to `dns.max_udp_payload`.
    Udp,
    /// TCP: up to 65535 bytes.
    Tcp,
}

/// SRV priority of every instance: beacon balances with weights, not priorities.
pub const SRV_PRIORITY: u16 = 1;

/// Answers queries for the service domain. Shared by every DNS task; all methods take `&self`.
pub struct Responder {
    registry: Registry,
    zone: Zone,
    apex_text: String,
    hostmaster: Name,
    ttl: u32,
    negative_ttl: u32,
    max_udp_payload: u16,
    apex_addresses: Vec<IpAddr>,
    /// Advances on every answer so consecutive answers start at different instances.
    rotation: AtomicUsize,
}

/// What a name lookup found.
enum Found {
    Answer {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    NoData,
    NxDomain,
}

impl Found {
    /// An answer without additional records, or NODATA when there is nothing to answer.
    fn answers_or_nodata(answers: Vec<Record>) -> Found {
        if answers.is_empty() {
            Found::NoData
        } else {
            Found::Answer {
                answers,
                additionals: Vec::new(),
            }
        }
    }
}

impl Responder {
    /// A responder for `config.domain`; `apex_addresses` are the addresses the apex's A/AAAA
    /// records give (the DNS listener's, when it is bound to a specific one).
    pub fn new(
        registry: Registry,
        config: &DnsConfig,
        apex_addresses: Vec<IpAddr>,
    ) -> Result<Self, String> {
        let zone = Zone::new(&config.domain)?;
        let hostmaster = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(&zone.apex))
            .map_err(|e| e.to_string())?;
        Ok(Responder {
            registry,
            apex_text: zone.apex.to_ascii(),
            zone,
            hostmaster,
            ttl: config.ttl.as_secs() as u32,
            negative_ttl: config.negative_ttl.as_secs() as u32,
            max_udp_payload: config.max_udp_payload,
            apex_addresses: apex_addresses
                .into_iter()
                .filter(|a| !a.is_unspecified())
                .collect(),
            rotation: AtomicUsize::new(0),
        })
    }

    /// The zone served.
    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    /// Answers one query. `None` means send nothing: the bytes were not a query at all (too
    /// short for a header, or a response), which must never be answered (reflection).
    pub fn respond(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        if query.len() < 12 || query[2] & 0x80 != 0 {
            return None;
        }
        let request = match Message::from_vec(query) {
            Ok(message) => message,
            Err(_) => return Some(format_error(query)),
        };
        if request.metadata.message_type == MessageType::Response {
            return None;
        }
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.checking_disabled = request.metadata.checking_disabled;
        let limit = match transport {
            Transport::Tcp => u16::MAX as usize,
            Transport::Udp => match &request.edns {
                Some(edns) => edns.max_payload().clamp(512, self.max_udp_payload) as usize,
                None => 512,
            },
        };
        if request.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(self.max_udp_payload);
            edns.set_version(0);
            response.set_edns(edns);
        }
        if request.metadata.op_code != OpCode::Query {
            response.metadata.response_code = ResponseCode::NotImp;
            return Some(self.encode(response, limit));
        }
        if request.queries.len() != 1 {
            response.metadata.response_code = ResponseCode::FormErr;
            return Some(self.encode(response, limit));
        }
        let query = &request.queries[0];
        response.add_query(query.clone());
        if query.query_class() != DNSClass::IN {
            response.metadata.response_code = ResponseCode::Refused;
            return Some(self.encode(response, limit));
        }
        let Some(labels) = self.zone.relative_labels(query.name()) else {
            // Outside the zone: not ours to answer (forwarding is not configured).
            response.metadata.response_code = ResponseCode::Refused;
            return Some(self.encode(response, limit));
        };
        response.metadata.authoritative = true;
        match self.lookup(&labels, query.name(), query.query_type()) {
            Found::Answer {
                answers,
                additionals,
            } => {
                response.answers = answers;
                response.additionals = additionals;
            }
            Found::NoData => {
                response.add_authority(self.soa_record());
            }
            Found::NxDomain => {
                response.add_authority(self.soa_record());
                response.metadata.response_code = ResponseCode::NXDomain;
            }
        }
        Some(self.encode(response, limit))
    }

    fn lookup(&self, labels: &[String], qname: &Name, qtype: RecordType) -> Found {
        let now = self.registry.now_ms();
        match labels {
            [] => self.apex(qtype),
            // An empty non-terminal above every `_<service>._tcp` name.
            [tcp] if tcp == "_tcp" => {
                if self.registry.services().is_empty() {
                    Found::NxDomain
                } else {
                    Found::NoData
                }
            }
            [service] => match self.live(service, None, now) {
                Some(set) => self.answer_set(qname, service, set, qtype, now, false),
                None => Found::NxDomain,
            },
            [underscored, tcp] if tcp == "_tcp" && underscored.starts_with('_') => {
                let service = &underscored[1..];
                match self.live(service, None, now) {
                    Some(set) => self.answer_set(qname, service, set, qtype, now, true),
                    None => Found::NxDomain,
                }
            }
            [first, service] => {
                let Some(view) = self.registry.service(service) else {
                    return Found::NxDomain;
                };
                // An instance id wins over a tag of the same spelling: the SRV targets must
                // always resolve to exactly their instance.
                if let Some(instance) = view.instance(first, now) {
                    return self.instance(qname, service, instance.clone(), qtype, now);
                }
                match self.live(service, Some(first), now) {
                    Some(set) => self.answer_set(qname, service, set, qtype, now, false),
                    None => Found::NxDomain,
                }
            }
            _ => Found::NxDomain,
        }
    }

    /// The live instances of `service` (with `tag`, when given), rotated; `None` when there are
    /// none, which makes the name nonexistent.
    fn live(&self, service: &str, tag: Option<&str>, now: u64) -> Option<Vec<Arc<Instance>>> {
        let view = self.registry.service(service)?;
        let mut set: Vec<Arc<Instance>> = view
            .live(now)
            .filter(|i| tag.is_none_or(|t| i.tags.iter().any(|x| &**x == t)))
            .cloned()
            .collect();
        if set.is_empty() {
            return None;
        }
        let start = self.rotation.fetch_add(1, Ordering::Relaxed) % set.len();
        set.rotate_left(start);
        Some(set)
    }

    fn answer_set(
        &self,
        qname: &Name,
        service: &str,
        set: Vec<Arc<Instance>>,
        qtype: RecordType,
        now: u64,
        srv_only: bool,
    ) -> Found {
        match qtype {
            RecordType::SRV => {
                let ttl = self.ttl_for(set.iter(), now);
                let mut answers = Vec::with_capacity(set.len());
                let mut additionals = Vec::with_capacity(set.len());
                for instance in &set {
                    let Some(target) = self.target(service, &instance.id) else {
                        continue;
                    };
                    answers.push(Record::from_rdata(
                        qname.clone(),
                        ttl,
                        RData::SRV(SRV::new(
                            SRV_PRIORITY,
                            instance.weight,
                            instance.port,
                            target.clone(),
                        )),
                    ));
                    additionals.push(address_record(target, ttl, instance.address));
                }
                Found::Answer {
                    answers,
                    additionals,
                }
            }
            _ if srv_only => Found::NoData,
            RecordType::A | RecordType::AAAA | RecordType::ANY => {
                let wanted: Vec<&Arc<Instance>> = set
                    .iter()
                    .filter(|i| match qtype {
                        RecordType::A => i.address.is_ipv4(),
                        RecordType::AAAA => i.address.is_ipv6(),
                        _ => true,
                    })
                    .collect();
                if wanted.is_empty() {
                    return Found::NoData;
                }
                let ttl = self.ttl_for(wanted.iter().copied(), now);
                Found::Answer {
                    answers: wanted
                        .iter()
                        .map(|i| address_record(qname.clone(), ttl, i.address))
                        .collect(),
                    additionals: Vec::new(),
                }
            }
            _ => Found::NoData,
        }
    }

    fn instance(
        &self,
        qname: &Name,
        service: &str,
        instance: Arc<Instance>,
        qtype: RecordType,
        now: u64,
    ) -> Found {
        let ttl = self.ttl_for(std::iter::once(&instance), now);
        let record = |data: RData| Record::from_rdata(qname.clone(), ttl, data);
        let answers = match qtype {
            RecordType::A if instance.address.is_ipv4() => {
                vec![address_record(qname.clone(), ttl, instance.address)]
            }
            RecordType::AAAA if instance.address.is_ipv6() => {
                vec![address_record(qname.clone(), ttl, instance.address)]
            }
            RecordType::ANY => vec![address_record(qname.clone(), ttl, instance.address)],
            RecordType::SRV => match self.target(service, &instance.id) {
                Some(target) => {
                    return Found::Answer {
                        answers: vec![record(RData::SRV(SRV::new(
                            SRV_PRIORITY,
                            instance.weight,
                            instance.port,
                            target.clone(),
                        )))],
                        additionals: vec![address_record(target, ttl, instance.address)],
                    }
                }
                None => Vec::new(),
            },
            RecordType::TXT if !instance.meta.is_empty() => vec![record(RData::TXT(TXT::new(
                instance
                    .meta
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect(),
            )))],
            _ => Vec::new(),
        };
        Found::answers_or_nodata(answers)
    }

    fn apex(&self, qtype: RecordType) -> Found {
        let apex = self.zone.apex.clone();
        let answers: Vec<Record> = match qtype {
            RecordType::SOA | RecordType::ANY => vec![self.soa_record()],
            RecordType::NS => vec![Record::from_rdata(
                apex.clone(),
                self.negative_ttl,
                RData::NS(NS(apex)),
            )],
            RecordType::A | RecordType::AAAA => self
                .apex_addresses
                .iter()
                .filter(|a| a.is_ipv4() == (qtype == RecordType::A))
                .map(|a| address_record(apex.clone(), self.negative_ttl, *a))
                .collect(),
            _ => Vec::new(),
        };
        Found::answers_or_nodata(answers)
    }

    /// The TTL for records naming `instances`: the configured TTL, lowered to the whole seconds
    /// left on the soonest lease so no cache keeps a record past its instance's deadline.
    fn ttl_for<'a>(&self, instances: impl Iterator<Item = &'a Arc<Instance>>, now: u64) -> u32 {
        instances
            .map(|i| (i.remaining_ms(now) / 1000).min(u32::MAX as u64) as u32)
            .fold(self.ttl, u32::min)
    }

    fn target(&self, service: &str, id: &str) -> Option<Name> {
        Name::from_ascii(format!("{id}.{service}.{}", self.apex_text)).ok()
    }

    fn soa_record(&self) -> Record {
        let soa = SOA::new(
            self.zone.apex.clone(),
            self.hostmaster.clone(),
            // The serial is the registry's version; RFC 1982 arithmetic makes the wrap at 2^32
            // harmless.
            self.registry.version() as u32,
            3600,
            600,
            86_400,
            self.negative_ttl,
        );
        Record::from_rdata(self.zone.apex.clone(), self.negative_ttl, RData::SOA(soa))
    }

    /// Encodes `response` within `limit` bytes: first without the additional section, then with
    /// as many answers as fit and TC set, so a client never mistakes a cut answer for the whole.
    fn encode(&self, mut response: Message, limit: usize) -> Vec<u8> {
        match response.to_vec() {
            Ok(bytes) if bytes.len() <= limit => return bytes,
            Ok(_) => {}
            Err(_) => return server_failure(&response),
        }
        response.additionals.clear();
        match response.to_vec() {
            Ok(bytes) if bytes.len() <= limit => return bytes,
            Ok(_) => {}
            Err(_) => return server_failure(&response),
        }
        response.metadata.truncation = true;
        let answers = std::mem::take(&mut response.answers);
        let (mut fits, mut too_many) = (0, answers.len());
        let mut best = None;
        while fits < too_many {
            let mid = (fits + too_many).div_ceil(2);
            response.answers = answers[..mid].to_vec();
            match response.to_vec() {
                Ok(bytes) if bytes.len() <= limit => {
                    fits = mid;
                    best = Some(bytes);
                }
                Ok(_) => too_many = mid - 1,
                Err(_) => return server_failure(&response),
            }
        }
        match best {
            Some(bytes) => bytes,
            None => {
                response.answers.clear();
                response
                    .to_vec()
                    .unwrap_or_else(|_| server_failure(&response))
            }
        }
    }
}

fn address_record(name: Name, ttl: u32, address: IpAddr) -> Record {
    let data = match address {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name, ttl, data)
}

/// FORMERR for a query whose header could be read but whose body could not: the header with
/// QR set, the rcode, and every count zero.
fn format_error(query: &[u8]) -> Vec<u8> {
    let mut header = query[..12].to_vec();
    header[2] = 0x80 | (query[2] & 0x78) | (query[2] & 0x01); // QR, opcode, RD
    header[3] = ResponseCode::FormErr.low();
    header[4..12].fill(0);
    header
}

fn server_failure(response: &Message) -> Vec<u8> {
    let mut failure = Message::response(response.metadata.id, response.metadata.op_code);
    failure.metadata.response_code = ResponseCode::ServFail;
    failure.to_vec().unwrap_or_default()
}
