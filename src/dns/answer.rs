//! One DNS query in, one DNS response out: the service domain from the registry's snapshots,
//! static zones from zone files, and everything else handed to the forwarder.
//!
//! Invariants:
//! - no answer names an instance past its deadline (snapshots are filtered at `now`);
//! - no record's TTL outlives the lease of an instance it names: a positive answer's TTL is
//!   `min(dns.ttl, whole seconds left on the soonest lease among the instances it names)`;
//! - every negative answer (NXDOMAIN, NODATA) carries its zone's SOA; in the service domain its
//!   TTL and MINIMUM are `dns.negative_ttl`;
//! - an answer cut to fit has TC set; only the additional section is dropped silently
//!   (RFC 2181 §9), the targets' TXT first. A cut set of instances is chosen per client by
//!   weighted rendezvous hashing, so each client keeps seeing the same subset while the set is
//!   unchanged, and a cut SRV answer keeps every target's address;
//! - records come in RFC 2782's weighted random order, drawn per answer (`order.rs`); an
//!   address RRset names each address once;
//! - a message that is not a query (QR set, or shorter than a header) is never answered.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};

use super::forward::Forwarder;
use super::order::weighted_order;
use super::statics::{StaticLookup, StaticZone, StaticZones};
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

/// The service domain's SOA REFRESH, RETRY and EXPIRE: nothing transfers the zone, so they
/// only have to be plausible. MINIMUM is `dns.negative_ttl`.
pub const SOA_TIMERS: [u32; 3] = [3600, 600, 86_400];

/// What to do with a received message.
#[derive(Debug)]
pub enum Outcome {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Ask the upstreams, then finish with [`Responder::finish_forward`].
    Forward(Box<PendingForward>),
    /// Send nothing: not a query (reflection must never be answered).
    Ignore,
}

/// A query waiting for the upstreams' answer.
#[derive(Debug)]
pub struct PendingForward {
    response: Message,
    /// The question to ask upstream.
    pub query: Query,
    /// The client's DNSSEC OK bit.
    pub dnssec_ok: bool,
    /// The client's CD bit.
    pub checking_disabled: bool,
    /// The client's transport.
    pub transport: Transport,
    limit: usize,
}

/// Answers queries. Immutable once built: a reload builds a new one (see [`super::Dns`]).
pub struct Responder {
    pub(super) registry: Registry,
    zone: Zone,
    apex_text: String,
    hostmaster: Name,
    pub(super) ttl: u32,
    pub(super) negative_ttl: u32,
    pub(super) max_udp_payload: u16,
    /// The apex's labels, lower case, for the fast path's name matching.
    pub(super) apex_labels: Vec<Vec<u8>>,
    /// A static zone overlaps the service domain: its records are merged with the registry's,
    /// which only the general path does (so the fast path is off), and only then is there
    /// anything to merge.
    pub(super) statics_overlap: bool,
    apex_addresses: Vec<IpAddr>,
    statics: StaticZones,
    forwarder: Forwarder,
}

/// A set of instances to answer with, rendered lazily so it can be cut to fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SetKind {
    /// A, AAAA (the set is already of that family) or ANY (both).
    Addresses,
    /// SRV records, targets' addresses in the additional section.
    Srv,
    /// DNS-SD PTR records naming `<id>._<service>._tcp`.
    DnsSdPtr,
}

/// The records of a set answer: the answer section, the additional records that must stay
/// with it when an SRV answer is cut (the targets' addresses), and the targets' metadata, which
/// goes first.
struct SetRecords {
    answers: Vec<Record>,
    additionals: Vec<Record>,
    texts: Vec<Record>,
}

/// What a name lookup found.
enum Found {
    Records {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    Instances {
        service: String,
        set: Vec<Arc<Instance>>,
        kind: SetKind,
        /// Static records for the same name and type, always answered with the set.
        extra: Vec<Record>,
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
            Found::Records {
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
        statics: StaticZones,
        forwarder: Forwarder,
    ) -> Result<Self, String> {
        let zone = Zone::new(&config.domain)?;
        let hostmaster = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(&zone.apex))
            .map_err(|e| e.to_string())?;
        let apex_labels = zone.apex.iter().map(|l| l.to_ascii_lowercase()).collect();
        let statics_overlap = statics
            .zones()
            .iter()
            .any(|z| zone.lower.zone_of(&z.apex) || z.apex.zone_of(&zone.lower));
        Ok(Responder {
            registry,
            apex_labels,
            statics_overlap,
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
            statics,
            forwarder,
        })
    }
    /// The static zones.
    pub fn statics(&self) -> &StaticZones {
        &self.statics
    }

    /// The forwarder.
    pub fn forwarder(&self) -> &Forwarder {
        &self.forwarder
    }

    /// The service domain (for `crate::update`, which takes updates into it).
    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    /// Answers one message from `client`.
    pub fn respond(&self, query: &[u8], client: IpAddr, transport: Transport) -> Outcome {
        if let Some(bytes) = self.fast_answer(query, client, transport) {
            return Outcome::Reply(bytes);
        }
        self.respond_general(query, client, transport)
    }

    /// The general path: every query, built with hickory-proto. The fast path's reference.
    pub(super) fn respond_general(
        &self,
        query: &[u8],
        client: IpAddr,
        transport: Transport,
    ) -> Outcome {
        if query.len() < 12 || query[2] & 0x80 != 0 {
            return Outcome::Ignore;
        }
        let request = match Message::from_vec(query) {
            Ok(message) => message,
            Err(_) => return Outcome::Reply(format_error(query)),
        };
        if request.metadata.message_type == MessageType::Response {
            return Outcome::Ignore;
        }
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.checking_disabled = request.metadata.checking_disabled;
        let limit = self.size_limit(transport, request.edns.as_ref().map(Edns::max_payload));
        let reply = |mut response: Message, rcode: ResponseCode| {
            response.metadata.response_code = rcode;
            Outcome::Reply(encode_records(response, limit))
        };
        if let Some(client_edns) = &request.edns {
            let mut edns = Edns::new();
            edns.set_max_payload(self.max_udp_payload);
            edns.set_version(0);
            // RFC 3225 §3: the DO bit of the query is copied into the response.
            edns.set_dnssec_ok(client_edns.flags().dnssec_ok);
            response.set_edns(edns);
            if client_edns.version() > 0 {
                // RFC 6891 §6.1.3: an unknown version gets BADVERS and the version we speak.
                response.add_queries(request.queries.iter().cloned());
                return reply(response, ResponseCode::BADVERS);
            }
        }
        if request.metadata.op_code != OpCode::Query {
            return reply(response, ResponseCode::NotImp);
        }
        if request.queries.len() != 1 {
            return reply(response, ResponseCode::FormErr);
        }
        let query = request.queries[0].clone();
        response.add_query(query.clone());
        if query.query_class() != DNSClass::IN {
            return reply(response, ResponseCode::Refused);
        }
        if matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR) {
            // Zone transfers are not offered: the registry changes by the millisecond.
            return reply(response, ResponseCode::Refused);
        }
        let qname = query.name();
        let lower = LowerName::new(qname);

        if let Some(labels) = self.zone.relative_labels(qname) {
            response.metadata.authoritative = true;
            let found = self.lookup(&labels, qname, query.query_type());
            let found = self.merge_static(found, &lower, query.query_type());
            return Outcome::Reply(self.render(response, found, client, limit));
        }
        if query.query_type() == RecordType::PTR {
            if let Some(answers) = self.reverse(qname) {
                response.answers = answers;
                return Outcome::Reply(encode_records(response, limit));
            }
        }
        if let Some(zone) = self.statics.find(&lower) {
            response.metadata.authoritative = true;
            return Outcome::Reply(static_answer(
                response,
                zone,
                &lower,
                query.query_type(),
                limit,
            ));
        }
        if self.forwarder.upstreams().is_empty() || !self.forwarder.allows(client) {
            // Never an open resolver: only configured networks get recursion.
            return reply(response, ResponseCode::Refused);
        }
        let dnssec_ok = request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        Outcome::Forward(Box::new(PendingForward {
            response,
            query,
            dnssec_ok,
            checking_disabled: request.metadata.checking_disabled,
            transport,
            limit,
        }))
    }

    /// Completes a forwarded query with the upstream's answer (`None`: every upstream failed,
    /// which is SERVFAIL).
    pub fn finish_forward(&self, pending: PendingForward, answer: Option<Message>) -> Vec<u8> {
        let mut response = pending.response;
        response.metadata.recursion_available = true;
        match answer {
            Some(upstream) => {
                response.metadata.response_code = upstream.metadata.response_code;
                response.metadata.truncation = upstream.metadata.truncation;
                response.metadata.authentic_data = upstream.metadata.authentic_data;
                response.answers = upstream.answers;
                response.authorities = upstream.authorities;
                response.additionals = upstream.additionals;
            }
            None => response.metadata.response_code = ResponseCode::ServFail,
        }
        encode_records(response, pending.limit)
    }

    fn lookup(&self, labels: &[String], qname: &Name, qtype: RecordType) -> Found {
        // Liveness is tested on the readers' clock, which self-preservation holds still; TTLs
        // count the time really left on a lease (none, for a preserved overdue instance).
        let now = self.registry.now_ms();
        let live_at = self.registry.live_at(now);
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        match labels.as_slice() {
            [] => self.apex(qtype),
            // Empty non-terminals above the RFC 2782 and DNS-SD names.
            ["_tcp"] | ["_udp"] | ["_dns-sd", "_udp"] => {
                if self.any_service_live(live_at) {
                    Found::NoData
                } else {
                    Found::NxDomain
                }
            }
            ["_services", "_dns-sd", "_udp"] => self.service_types(qname, qtype, live_at),
            // An empty non-terminal above `_<service>._<tag>`: a resolver minimising its query
            // names asks here first, and NXDOMAIN would tell it nothing exists below.
            [underscored] if underscored.starts_with('_') => {
                let tag = &underscored[1..];
                let tagged = self.registry.any_service(|view| {
                    view.live(live_at)
                        .any(|i| i.tags.iter().any(|t| &**t == tag))
                });
                if tagged {
                    Found::NoData
                } else {
                    Found::NxDomain
                }
            }
            [service] => match self.live(service, None, live_at) {
                Some(set) => self.set_answer(service, set, qtype, false),
                None => Found::NxDomain,
            },
            // RFC 2782: `_<service>._<proto>`; `_tcp` and `_udp` mean every instance, any other
            // second label a tag (Consul's form), so a tag called `tcp` or `udp` is reached only
            // as `<tag>.<service>`.
            [underscored, proto] if underscored.starts_with('_') && proto.starts_with('_') => {
                let service = &underscored[1..];
                let tag = match *proto {
                    "_tcp" | "_udp" => None,
                    tag => Some(&tag[1..]),
                };
                match self.live(service, tag, live_at) {
                    // DNS-SD's PTR lives at `_<service>._tcp` only.
                    Some(_) if qtype == RecordType::PTR && (tag.is_some() || *proto == "_udp") => {
                        Found::NoData
                    }
                    Some(set) => self.set_answer(service, set, qtype, true),
                    None => Found::NxDomain,
                }
            }
            [id, underscored, "_tcp"] if underscored.starts_with('_') => {
                let service = &underscored[1..];
                match self.registry.service(service) {
                    Some(view) => match view.instance(id, live_at) {
                        Some(instance) => {
                            self.dns_sd_instance(qname, service, instance, qtype, now)
                        }
                        None => Found::NxDomain,
                    },
                    None => Found::NxDomain,
                }
            }
            [first, service] => {
                let Some(view) = self.registry.service(service) else {
                    return Found::NxDomain;
                };
                // An instance id wins over a tag of the same spelling: the SRV targets must
                // always resolve to exactly their instance.
                if let Some(instance) = view.instance(first, live_at) {
                    return self.instance(qname, service, instance, qtype, now);
                }
                match self.live(service, Some(first), live_at) {
                    Some(set) => self.set_answer(service, set, qtype, false),
                    None => Found::NxDomain,
                }
            }
            _ => Found::NxDomain,
        }
    }

    /// A PTR query for the reverse name of a registered address (`in-addr.arpa`, `ip6.arpa`):
    /// the names of its live instances, `<id>.<service>.<domain>`, which resolve forward to that
    /// address (as Consul answers). `None` when no live instance has the address: the name is
    /// then asked of the static zones and the upstreams as before.
    ///
    /// There is no index by address (it would cost memory per instance); the services are
    /// scanned, which is proportional to the instances held.
    fn reverse(&self, qname: &Name) -> Option<Vec<Record>> {
        let address = reverse_address(&qname.to_ascii())?;
        let now = self.registry.now_ms();
        let live_at = self.registry.live_at(now);
        let instances: Vec<Arc<Instance>> = self
            .registry
            .services()
            .iter()
            .flat_map(|view| {
                view.live(live_at)
                    .filter(|i| i.address == address)
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        if instances.is_empty() {
            return None;
        }
        let ttl = self.ttl_for(instances.iter(), now);
        Some(
            instances
                .iter()
                .filter_map(|i| self.target(&i.service, &i.id))
                .map(|target| Record::from_rdata(qname.clone(), ttl, RData::PTR(PTR(target))))
                .collect(),
        )
    }

    /// Static records inside the service domain are answered together with the registry's.
    fn merge_static(&self, found: Found, name: &LowerName, qtype: RecordType) -> Found {
        if !self.statics_overlap {
            return found;
        }
        let Some(zone) = self.statics.find(name) else {
            return found;
        };
        match (zone.lookup(name, qtype), found) {
            (StaticLookup::NxDomain, found) => found,
            (StaticLookup::NoData, Found::NxDomain) => Found::NoData,
            (StaticLookup::NoData, found) => found,
            (
                StaticLookup::Records(records),
                Found::Instances {
                    service,
                    set,
                    kind,
                    mut extra,
                },
            ) => {
                extra.extend_from_slice(records);
                Found::Instances {
                    service,
                    set,
                    kind,
                    extra,
                }
            }
            (
                StaticLookup::Records(records),
                Found::Records {
                    mut answers,
                    additionals,
                },
            ) => {
                answers.extend_from_slice(records);
                Found::Records {
                    answers,
                    additionals,
                }
            }
            (StaticLookup::Records(records), Found::NoData | Found::NxDomain) => Found::Records {
                answers: records.to_vec(),
                additionals: Vec::new(),
            },
        }
    }

    fn any_service_live(&self, live_at: u64) -> bool {
        self.registry
            .any_service(|view| view.live(live_at).next().is_some())
    }

    /// The live instances of `service` (with `tag`, when given), sorted by id; `None` when there
    /// are none, which makes the name nonexistent.
    fn live(&self, service: &str, tag: Option<&str>, live_at: u64) -> Option<Vec<Arc<Instance>>> {
        let view = self.registry.service(service)?;
        let set: Vec<Arc<Instance>> = view
            .live(live_at)
            .filter(|i| tag.is_none_or(|t| i.tags.iter().any(|x| &**x == t)))
            .cloned()
            .collect();
        (!set.is_empty()).then_some(set)
    }

    fn set_answer(
        &self,
        service: &str,
        set: Vec<Arc<Instance>>,
        qtype: RecordType,
        rfc2782_name: bool,
    ) -> Found {
        let kind = match qtype {
            RecordType::SRV => SetKind::Srv,
            RecordType::PTR if rfc2782_name => SetKind::DnsSdPtr,
            // RFC 8482: one RRset answers ANY; at the RFC 2782 name that is the SRV set.
            RecordType::ANY if rfc2782_name => SetKind::Srv,
            _ if rfc2782_name => return Found::NoData,
            RecordType::A | RecordType::AAAA | RecordType::ANY => SetKind::Addresses,
            _ => return Found::NoData,
        };
        let set: Vec<Arc<Instance>> = match qtype {
            RecordType::A => set.into_iter().filter(|i| i.address.is_ipv4()).collect(),
            RecordType::AAAA => set.into_iter().filter(|i| i.address.is_ipv6()).collect(),
            _ => set,
        };
        if set.is_empty() {
            return Found::NoData;
        }
        Found::Instances {
            service: service.to_string(),
            set,
            kind,
            extra: Vec::new(),
        }
    }

    fn service_types(&self, qname: &Name, qtype: RecordType, live_at: u64) -> Found {
        if !matches!(qtype, RecordType::PTR | RecordType::ANY) {
            return if self.any_service_live(live_at) {
                Found::NoData
            } else {
                Found::NxDomain
            };
        }
        let answers: Vec<Record> = self
            .registry
            .services()
            .iter()
            .filter(|view| view.live(live_at).next().is_some())
            .filter_map(|view| self.name(&format!("_{}._tcp", view.name)))
            .map(|target| Record::from_rdata(qname.clone(), self.ttl, RData::PTR(PTR(target))))
            .collect();
        if answers.is_empty() {
            Found::NxDomain
        } else {
            Found::Records {
                answers,
                additionals: Vec::new(),
            }
        }
    }

    fn instance(
        &self,
        qname: &Name,
        service: &str,
        instance: &Arc<Instance>,
        qtype: RecordType,
        now: u64,
    ) -> Found {
        let ttl = self.ttl_for(std::iter::once(instance), now);
        let answers = match qtype {
            RecordType::A if instance.address.is_ipv4() => {
                vec![address_record(qname.clone(), ttl, instance.address)]
            }
            RecordType::AAAA if instance.address.is_ipv6() => {
                vec![address_record(qname.clone(), ttl, instance.address)]
            }
            RecordType::ANY => vec![address_record(qname.clone(), ttl, instance.address)],
            RecordType::SRV => return self.single_srv(qname, service, instance, ttl),
            RecordType::TXT => meta_records(qname, ttl, instance),
            _ => Vec::new(),
        };
        Found::answers_or_nodata(answers)
    }

    /// `<id>._<service>._tcp`: the DNS-SD service instance name (RFC 6763 §4.1), with SRV and
    /// TXT; its TXT always exists, empty when the instance has no metadata (§6.1).
    fn dns_sd_instance(
        &self,
        qname: &Name,
        service: &str,
        instance: &Arc<Instance>,
        qtype: RecordType,
        now: u64,
    ) -> Found {
        let ttl = self.ttl_for(std::iter::once(instance), now);
        match qtype {
            RecordType::SRV | RecordType::ANY => self.single_srv(qname, service, instance, ttl),
            RecordType::TXT => Found::answers_or_nodata(vec![Record::from_rdata(
                qname.clone(),
                ttl,
                RData::TXT(meta_txt(instance)),
            )]),
            _ => Found::NoData,
        }
    }

    fn single_srv(&self, qname: &Name, service: &str, instance: &Instance, ttl: u32) -> Found {
        match self.srv_record(qname, service, instance, ttl) {
            Some((srv, target)) => {
                // The target's address, then its metadata (dropped first if it does not fit).
                let mut additionals = vec![address_record(target.clone(), ttl, instance.address)];
                additionals.extend(meta_records(&target, ttl, instance));
                Found::Records {
                    answers: vec![srv],
                    additionals,
                }
            }
            None => Found::NoData,
        }
    }

    /// The SRV record of `instance` owned by `owner`, and its target `<id>.<service>.<apex>`.
    fn srv_record(
        &self,
        owner: &Name,
        service: &str,
        instance: &Instance,
        ttl: u32,
    ) -> Option<(Record, Name)> {
        let target = self.target(service, &instance.id)?;
        let srv = SRV::new(SRV_PRIORITY, instance.weight, instance.port, target.clone());
        Some((
            Record::from_rdata(owner.clone(), ttl, RData::SRV(srv)),
            target,
        ))
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

    /// Builds the records for `subset` of a set answer.
    fn set_records(
        &self,
        qname: &Name,
        service: &str,
        kind: SetKind,
        subset: &[Arc<Instance>],
        now: u64,
    ) -> SetRecords {
        let ttl = self.ttl_for(subset.iter(), now);
        let mut answers = Vec::with_capacity(subset.len());
        let mut additionals = Vec::new();
        let mut texts = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for instance in subset {
            match kind {
                // RFC 2181 §5: an RRset holds no duplicates. Instances that share an address
                // give one record, where the first of them comes in the weighted order; the
                // TTL still counts every instance's lease.
                SetKind::Addresses => {
                    if seen.insert(instance.address) {
                        answers.push(address_record(qname.clone(), ttl, instance.address))
                    }
                }
                SetKind::Srv => {
                    let Some((srv, target)) = self.srv_record(qname, service, instance, ttl) else {
                        continue;
                    };
                    answers.push(srv);
                    texts.extend(meta_records(&target, ttl, instance));
                    additionals.push(address_record(target, ttl, instance.address));
                }
                SetKind::DnsSdPtr => {
                    let Some(name) = self.name(&format!("{}._{service}._tcp", instance.id)) else {
                        continue;
                    };
                    answers.push(Record::from_rdata(
                        qname.clone(),
                        ttl,
                        RData::PTR(PTR(name.clone())),
                    ));
                    if let Some((srv, target)) = self.srv_record(&name, service, instance, ttl) {
                        additionals.push(srv);
                        additionals.push(Record::from_rdata(
                            name,
                            ttl,
                            RData::TXT(meta_txt(instance)),
                        ));
                        additionals.push(address_record(target, ttl, instance.address));
                    }
                }
            }
        }
        SetRecords {
            answers,
            additionals,
            texts,
        }
    }

    /// Encodes what was found. A set of instances that does not fit loses its additional
    /// section first; if it still does not fit, the client gets the largest subset that does,
    /// chosen by weighted rendezvous hashing on its address, with TC set.
    fn render(&self, mut response: Message, found: Found, client: IpAddr, limit: usize) -> Vec<u8> {
        let (service, set, kind, extra) = match found {
            Found::Records {
                answers,
                additionals,
            } => {
                response.answers = answers;
                response.additionals = additionals;
                return encode_records(response, limit);
            }
            Found::NoData | Found::NxDomain => {
                if matches!(found, Found::NxDomain) {
                    response.metadata.response_code = ResponseCode::NXDomain;
                }
                response.add_authority(self.soa_record());
                return encode_records(response, limit);
            }
            Found::Instances {
                service,
                set,
                kind,
                extra,
            } => (service, set, kind, extra),
        };
        // Every answer in its own weighted random order (RFC 2782), so clients that take the
        // first record follow the weights too.
        let ordered = |mut subset: Vec<Arc<Instance>>| {
            weighted_order(&mut subset, |i| i.weight);
            subset
        };
        let now = self.registry.now_ms();
        let qname = response.queries[0].name().clone();
        // Ranking for the client does not depend on the order it is given, so the ordered set
        // serves both.
        let set = ordered(set);
        let records = self.set_records(&qname, &service, kind, &set, now);
        response.answers = records.answers;
        response.answers.extend_from_slice(&extra);
        response.additionals = records.additionals.clone();
        response.additionals.extend(records.texts);
        if let Some(bytes) = fits(&response, limit) {
            return bytes;
        }
        // The targets' metadata goes first, then (for SRV) whole records rather than their
        // addresses: a client that ignores TC can still connect to every target it is given.
        response.additionals = records.additionals;
        if kind == SetKind::Srv {
            if let Some(bytes) = fits(&response, limit) {
                return bytes;
            }
        } else if let Some(bytes) = fits_whole(&mut response, limit) {
            return bytes;
        }
        response.metadata.truncation = true;
        let ranked = rank_for_client(set, client);
        let best = largest_fitting(ranked.len(), |count| {
            let subset = ordered(ranked[..count].to_vec());
            let records = self.set_records(&qname, &service, kind, &subset, now);
            response.answers = records.answers;
            response.answers.extend_from_slice(&extra);
            response.additionals = if kind == SetKind::Srv {
                records.additionals
            } else {
                Vec::new()
            };
            fits(&response, limit)
        });
        best.unwrap_or_else(|| {
            response.answers.clear();
            encode_or_servfail(&response)
        })
    }

    /// The largest response a client may get: 65535 bytes over TCP; over UDP 512, or the size
    /// its EDNS(0) OPT advertises, up to `dns.max_udp_payload`.
    pub(super) fn size_limit(&self, transport: Transport, edns_payload: Option<u16>) -> usize {
        match (transport, edns_payload) {
            (Transport::Tcp, _) => u16::MAX as usize,
            (Transport::Udp, Some(size)) => size.clamp(512, self.max_udp_payload) as usize,
            (Transport::Udp, None) => 512,
        }
    }

    /// The TTL for records naming `instances`: the configured TTL, lowered to the whole seconds
    /// left on the soonest lease so no cache keeps a record past its instance's deadline.
    /// `now` is the real clock, never the readers' frozen one: an instance kept past its
    /// deadline by self-preservation has no time left, so answers naming it carry TTL 0 and
    /// no cache holds it once preservation ends.
    pub(super) fn ttl_for<'a>(
        &self,
        instances: impl Iterator<Item = &'a Arc<Instance>>,
        now: u64,
    ) -> u32 {
        instances
            .map(|i| (i.remaining_ms(now) / 1000).min(u32::MAX as u64) as u32)
            .fold(self.ttl, u32::min)
    }

    /// `<relative>.<apex>` as a name.
    fn name(&self, relative: &str) -> Option<Name> {
        Name::from_ascii(format!("{relative}.{}", self.apex_text)).ok()
    }

    fn target(&self, service: &str, id: &str) -> Option<Name> {
        self.name(&format!("{id}.{service}"))
    }

    fn soa_record(&self) -> Record {
        let soa = SOA::new(
            self.zone.apex.clone(),
            self.hostmaster.clone(),
            // The serial is the registry's version; RFC 1982 arithmetic makes the wrap at 2^32
            // harmless.
            self.registry.version() as u32,
            SOA_TIMERS[0] as i32,
            SOA_TIMERS[1] as i32,
            SOA_TIMERS[2] as i32,
            self.negative_ttl,
        );
        Record::from_rdata(self.zone.apex.clone(), self.negative_ttl, RData::SOA(soa))
    }
}

/// Orders instances by weighted rendezvous (highest random weight) score for `client`: each
/// client gets its own stable order, so the subset it sees does not churn between queries, and
/// across clients every instance is picked in proportion to its weight.
pub(super) fn rank_for_client(set: Vec<Arc<Instance>>, client: IpAddr) -> Vec<Arc<Instance>> {
    let scores = rendezvous_scores(&set, client);
    let mut scored: Vec<(f64, Arc<Instance>)> = scores.into_iter().zip(set).collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
    scored.into_iter().map(|(_, i)| i).collect()
}

/// Each instance's weighted rendezvous score for `client` (higher ranks first). The hash is a
/// fixed multiply-xorshift mix, the same on every query and every node, cheap enough for the
/// fast path's cut answers; with equal weights the ranking is by the hash alone, so no
/// logarithm is needed.
pub(super) fn rendezvous_scores<I: AsRef<Instance>>(set: &[I], client: IpAddr) -> Vec<f64> {
    let client = match client.to_canonical() {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            (bits as u64) ^ ((bits >> 64) as u64).rotate_left(17)
        }
    };
    let equal = set
        .windows(2)
        .all(|w| w[0].as_ref().weight == w[1].as_ref().weight);
    set.iter()
        .map(|instance| {
            let instance = instance.as_ref();
            let mut h = mix(client ^ 0x9e37_79b9_7f4a_7c15);
            for bytes in [instance.service.as_bytes(), b"/", instance.id.as_bytes()] {
                for chunk in bytes.chunks(8) {
                    let mut word = [0u8; 8];
                    word[..chunk.len()].copy_from_slice(chunk);
                    h = mix(h ^ u64::from_le_bytes(word));
                }
            }
            // A uniform draw in (0, 1), then the logarithmic method: -w / ln(u).
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            if equal {
                u
            } else {
                -(instance.weight as f64) / u.ln()
            }
        })
        .collect()
}

/// SplitMix64's finaliser: every input bit moves every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The metadata as DNS-SD wants it (RFC 6763 §6): one TXT record, one `key=value`
/// character-string per entry, an empty string when there is none. An entry longer than one
/// character-string (255 bytes) cannot be written this way and is left out here; the
/// instance's `<id>.<service>` TXT carries it whole.
fn meta_txt(instance: &Instance) -> TXT {
    let strings: Vec<String> = instance
        .meta
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .filter(|entry| entry.len() <= MAX_CHARACTER_STRING)
        .collect();
    if strings.is_empty() {
        TXT::new(vec![String::new()])
    } else {
        TXT::new(strings)
    }
}

/// Longest DNS character-string (RFC 1035 §3.3).
const MAX_CHARACTER_STRING: usize = 255;

/// The metadata at `<id>.<service>`: one TXT record per entry, in key order, whose
/// character-strings joined give `key=value` exactly; an entry longer than 255 bytes is split
/// into several strings, as CoreDNS does. None when the instance has no metadata.
fn meta_records(name: &Name, ttl: u32, instance: &Instance) -> Vec<Record> {
    instance
        .meta
        .iter()
        .map(|(k, v)| {
            let entry = format!("{k}={v}");
            let chunks: Vec<&[u8]> = entry.as_bytes().chunks(MAX_CHARACTER_STRING).collect();
            Record::from_rdata(name.clone(), ttl, RData::TXT(TXT::from_bytes(chunks)))
        })
        .collect()
}

/// Answers from a static zone outside the service domain, following a CNAME inside the zone.
fn static_answer(
    mut response: Message,
    zone: &StaticZone,
    name: &LowerName,
    qtype: RecordType,
    limit: usize,
) -> Vec<u8> {
    match zone.lookup(name, qtype) {
        StaticLookup::Records(records) => {
            response.answers = records.to_vec();
            if let Some(RData::CNAME(target)) = records.first().map(|r| &r.data) {
                let target = LowerName::new(&target.0);
                if qtype != RecordType::CNAME && zone.apex.zone_of(&target) {
                    if let StaticLookup::Records(more) = zone.lookup(&target, qtype) {
                        response.answers.extend_from_slice(more);
                    }
                }
            }
        }
        found => {
            if found == StaticLookup::NxDomain {
                response.metadata.response_code = ResponseCode::NXDomain;
            }
            if let Some(soa) = &zone.soa {
                // RFC 2308 §3: negative answers are cached for min(SOA TTL, MINIMUM).
                let mut soa = soa.clone();
                if let RData::SOA(data) = &soa.data {
                    soa.ttl = soa.ttl.min(data.minimum);
                }
                response.add_authority(soa);
            }
        }
    }
    encode_records(response, limit)
}

/// The address a reverse name stands for: `d.c.b.a.in-addr.arpa.` or the 32 nibbles of
/// `….ip6.arpa.`, any case; `None` for anything else (a partial name included).
fn reverse_address(name: &str) -> Option<IpAddr> {
    let name = name.to_ascii_lowercase();
    let name = name.strip_suffix('.').unwrap_or(&name);
    if let Some(octets) = name.strip_suffix(".in-addr.arpa") {
        let mut parts: Vec<u8> = octets
            .split('.')
            .map(|p| {
                (!p.is_empty() && p.len() <= 3 && (p == "0" || !p.starts_with('0')))
                    .then(|| p.parse::<u8>().ok())
                    .flatten()
            })
            .collect::<Option<_>>()?;
        if parts.len() != 4 {
            return None;
        }
        parts.reverse();
        return Some(IpAddr::from([parts[0], parts[1], parts[2], parts[3]]));
    }
    let nibbles = name.strip_suffix(".ip6.arpa")?;
    let digits: Vec<u8> = nibbles
        .split('.')
        .map(|n| match n.as_bytes() {
            [d] => (*d as char).to_digit(16).map(|v| v as u8),
            _ => None,
        })
        .collect::<Option<_>>()?;
    if digits.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, pair) in digits.rchunks(2).enumerate() {
        // Reversed: the last nibble of the name is the first of the address.
        bytes[i] = (pair[1] << 4) | pair[0];
    }
    Some(IpAddr::from(bytes))
}

fn address_record(name: Name, ttl: u32, address: IpAddr) -> Record {
    let data = match address {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name, ttl, data)
}

/// The encoding of the largest `count` in `1..=most` for which `encode(count)` fits (returns
/// `Some`), found by bisection: a response's size grows with its record count.
fn largest_fitting(
    most: usize,
    mut encode: impl FnMut(usize) -> Option<Vec<u8>>,
) -> Option<Vec<u8>> {
    let (mut fitting, mut too_many) = (0, most);
    let mut best = None;
    while fitting < too_many {
        let mid = (fitting + too_many).div_ceil(2);
        match encode(mid) {
            Some(bytes) => {
                fitting = mid;
                best = Some(bytes);
            }
            None => too_many = mid - 1,
        }
    }
    best
}

/// The encoded message if it fits in `limit` bytes.
fn fits(response: &Message, limit: usize) -> Option<Vec<u8>> {
    response.to_vec().ok().filter(|bytes| bytes.len() <= limit)
}

fn encode_or_servfail(response: &Message) -> Vec<u8> {
    response
        .to_vec()
        .unwrap_or_else(|_| server_failure(response))
}

/// Encodes `response` within `limit` bytes: first without the additional section, then with
/// as many answers as fit and TC set, so a client never mistakes a cut answer for the whole.
/// The response whole, or without its additional section (which RFC 2181 §9 lets a server
/// drop without TC), if either fits.
fn fits_whole(response: &mut Message, limit: usize) -> Option<Vec<u8>> {
    if let Some(bytes) = fits(response, limit) {
        return Some(bytes);
    }
    response.additionals.clear();
    fits(response, limit)
}

fn encode_records(mut response: Message, limit: usize) -> Vec<u8> {
    if let Some(bytes) = fits_whole(&mut response, limit) {
        return bytes;
    }
    response.metadata.truncation = true;
    let answers = std::mem::take(&mut response.answers);
    let authorities = std::mem::take(&mut response.authorities);
    let best = largest_fitting(answers.len(), |count| {
        response.answers = answers[..count].to_vec();
        fits(&response, limit)
    });
    best.unwrap_or_else(|| {
        response.answers.clear();
        response.authorities = authorities;
        fits(&response, limit).unwrap_or_else(|| {
            response.authorities.clear();
            encode_or_servfail(&response)
        })
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Limits, RegistrationRequest};

    fn instance(registry: &Registry, id: &str, weight: u16) -> Arc<Instance> {
        let reg = RegistrationRequest {
            service: "web".into(),
            id: Some(id.into()),
            address: Some("10.0.0.1".parse().unwrap()),
            port: 80,
            weight: Some(weight),
            ..Default::default()
        }
        .validate(registry.limits())
        .unwrap();
        registry.register(reg).unwrap().instance
    }

    #[test]
    fn reverse_names_give_their_addresses() {
        let v4: IpAddr = "10.4.0.1".parse().unwrap();
        assert_eq!(reverse_address("1.0.4.10.in-addr.arpa."), Some(v4));
        assert_eq!(reverse_address("1.0.4.10.IN-ADDR.ARPA"), Some(v4));
        let v6: IpAddr = "fd00::1:2".parse().unwrap();
        let name = "2.0.0.0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.";
        assert_eq!(reverse_address(name), Some(v6));
        for bad in [
            "0.4.10.in-addr.arpa.",
            "256.0.4.10.in-addr.arpa.",
            "01.0.4.10.in-addr.arpa.",
            "x.0.4.10.in-addr.arpa.",
            "1.0.0.d.f.ip6.arpa.",
            "web.service.local.",
        ] {
            assert_eq!(reverse_address(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn rendezvous_ranking_is_stable_per_client_and_follows_weights() {
        let registry = Registry::new(Limits::from(&crate::config::RegistryConfig::default()));
        let set: Vec<Arc<Instance>> = (0..20)
            .map(|i| instance(&registry, &format!("i{i}"), if i < 10 { 1 } else { 3 }))
            .collect();
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let first = rank_for_client(set.clone(), client);
        let mut shuffled = set.clone();
        shuffled.reverse();
        assert!(
            first
                .iter()
                .zip(rank_for_client(shuffled, client))
                .all(|(a, b)| a.id == b.id),
            "order must not depend on input order"
        );
        // Over many clients, the heavy instances land in the top 5 about three times as often.
        let (mut heavy, mut light) = (0, 0);
        for c in 0..2000u32 {
            let client = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + c));
            for i in &rank_for_client(set.clone(), client)[..5] {
                if i.weight == 3 {
                    heavy += 1
                } else {
                    light += 1
                }
            }
        }
        let ratio = heavy as f64 / light as f64;
        assert!(ratio > 2.0 && ratio < 4.5, "heavy/light = {ratio}");
    }
}
