//! DNS UPDATE (RFC 2136) into the service domain: a second writer beside [`crate::protocol`],
//! through the same [`crate::auth`]. docs/UPDATE.md is the user's description.
//!
//! The DNS listener (`dns::server`, UDP and TCP) hands every message with opcode UPDATE to
//! [`Updater::handle`], which:
//!
//! 1. checks the TSIG ([`tsig`], hickory's `TSigner`) against the keys file's keys; a request
//!    seen before (same MAC) gets its first reply again and changes nothing;
//! 2. checks the zone section names beacon's domain;
//! 3. checks the prerequisites (RFC 2136 §3.2) against what DNS answers now, asked of the
//!    [`Responder`] like any client (readers never write; this module only reads through them);
//! 4. maps the update section onto registrations and deregistrations ([`map`]), with the lease
//!    of the Update Lease option ([`lease`]);
//! 5. asks [`Auth::check_verified`] for each service, then writes through the registry handle,
//!    as the protocol does; the registry learns the key's name (the owner), never the key.
//!
//! Each refusal has its rcode (and TSIG error), an EDE option (RFC 8914) saying why, and is
//! logged through [`auth::log_refusal`]. Updates are serialised among themselves (prerequisites
//! to last write under one lock); a protocol write may still land between an update's check and
//! its writes: see docs/UPDATE.md.

#[doc(hidden)]
pub mod fuzzing;
pub mod lease;
pub mod map;
pub mod tsig;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::rdata::tsig::TsigError;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::auth::{self, Auth};
use crate::dns::answer::{Outcome, Transport};
use crate::dns::Responder;
use crate::protocol::server::MAX_UDP_AMPLIFICATION;
use crate::registry::{Registry, RegistryError};
use map::ede;

/// A refused UPDATE: its rcode, the EDE info code and the EDE text (which never holds a
/// secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{rcode}: {text}")]
pub struct Refusal {
    /// The response code.
    pub rcode: ResponseCode,
    /// The EDE INFO-CODE.
    pub ede: u16,
    /// The EDE EXTRA-TEXT.
    pub text: String,
}

impl Refusal {
    /// A refusal with `rcode`, EDE `ede` and `text`.
    pub fn new(rcode: ResponseCode, ede: u16, text: impl Into<String>) -> Refusal {
        Refusal {
            rcode,
            ede,
            text: text.into(),
        }
    }
}

/// One UPDATE answered.
pub struct Handled {
    /// The reply.
    pub reply: Vec<u8>,
    /// Whether it changed the live set, which must be on disk (with `--data-dir`) before the
    /// reply leaves.
    pub changed: bool,
}

/// Whether `message` is an UPDATE request (QR 0, opcode 5), from its header alone.
pub fn is_update(message: &[u8]) -> bool {
    crate::dns::rrl::is_query(message) && (message[2] >> 3) & 0x0f == 5
}

/// Answers UPDATEs for the service domain (the responder's, so a reload that changes
/// `dns.domain` moves updates with the answers), writing through the registry.
pub struct Updater {
    registry: Registry,
    auth: Arc<Auth>,
    default_lease: Duration,
    seen: tsig::Seen,
    /// The last stamp given to a signed change (see [`Updater::next_stamp`]).
    last_stamp: AtomicU64,
    /// When this server started, Unix seconds: a request signed before is refused, as the
    /// protocol refuses stamps below its start (what an earlier run saw is not remembered).
    started_s: u64,
    /// Held from the prerequisite check to the last write of an update, so that two updates
    /// (on UDP and TCP tasks at once) never interleave: each sees the other whole or not at
    /// all, as RFC 2136 §3.7 asks. It covers no wait for the disk, only the registry's
    /// in-memory writes, so it costs microseconds per update.
    serial: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Updater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater")
            .field("default_lease", &self.default_lease)
            .finish()
    }
}

impl Updater {
    /// Updates with `default_lease` for an UPDATE without the Update Lease option;
    /// `started_ms`: when the server started (Unix ms).
    pub fn new(
        registry: Registry,
        auth: Arc<Auth>,
        default_lease: Duration,
        started_ms: u64,
    ) -> Updater {
        Updater {
            registry,
            auth,
            default_lease,
            seen: tsig::Seen::default(),
            last_stamp: AtomicU64::new(0),
            started_s: started_ms / 1000,
            serial: std::sync::Mutex::new(()),
        }
    }

    /// Waits until the registry's changes so far are on disk (with `--data-dir`).
    pub fn wait_durable(&self) {
        self.registry.wait_durable();
    }

    /// A stamp for a signed change, greater than every one given before and than the floor of
    /// the moment. TSIG's time has one-second resolution, too coarse to order two updates of the
    /// same second, so the order is the server's: the replay cache ([`tsig::Seen`]) is what
    /// keeps the same request from applying twice.
    fn next_stamp(&self) -> u64 {
        let floor = auth::sign::stamp_floor(auth::wall_clock_ms());
        let mut last = self.last_stamp.load(Ordering::Relaxed);
        loop {
            let next = floor.max(last + 1);
            match self.last_stamp.compare_exchange_weak(
                last,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(now) => last = now,
            }
        }
    }

    /// Answers one UPDATE (`bytes`, from `source`); `reader` answers the prerequisites' questions.
    /// `None`: nothing to send (a response, or too short to answer). Over UDP an unsigned
    /// reply is at most 3× the request, as the protocol's are, its EDE text cut to fit: a
    /// forged source gets no amplifier.
    pub fn handle(
        &self,
        bytes: &[u8],
        source: IpAddr,
        transport: Transport,
        reader: &Responder,
    ) -> Option<Handled> {
        let limit = (transport == Transport::Udp)
            .then(|| bytes.len().saturating_mul(MAX_UDP_AMPLIFICATION));
        let request = match Message::from_vec(bytes) {
            Ok(request) => request,
            Err(e) => return formerr(bytes, &e.to_string(), source, limit),
        };
        if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Update
        {
            return None;
        }
        let mut response = Message::response(request.metadata.id, OpCode::Update);
        response.add_queries(request.queries.iter().cloned());
        let now_s = auth::wall_clock_ms() / 1000;
        let window_s = self.auth.window_ms().div_ceil(1000);

        // 1. TSIG.
        let verified = match request.signature() {
            None => None,
            Some(_) => {
                match tsig::verify(&self.auth.key_ring(), bytes, &request, now_s, window_s) {
                    Ok(verified) => Some(verified),
                    Err(failure) => {
                        return self.tsig_failure(response, &request, failure, source, now_s, limit)
                    }
                }
            }
        };
        if let Some(v) = &verified {
            if let Some(reply) = self.seen.get(&v.mac) {
                return Some(Handled {
                    reply,
                    changed: false,
                });
            }
        }
        let key = verified.as_ref().map(|v| v.key.as_str());
        let outcome = match &verified {
            Some(v) if v.time < self.started_s => Err(Refusal::new(
                ResponseCode::Refused,
                ede::PROHIBITED,
                "signed before this server started; what an earlier run applied is not remembered, so a request from then could be a replay: sign it again",
            )),
            _ => {
                // A panic elsewhere while holding it leaves nothing half-written that matters
                // here (each write is the registry's own), so a poisoned lock is still usable.
                let _serial = self
                    .serial
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                self.carry_out(&request, key, source, reader)
            }
        };
        let (changed, granted, refusal) = match outcome {
            Ok((changed, granted)) => (changed, granted, None),
            Err(refusal) => {
                auth::log_refusal(source, key, &rcode_name(refusal.rcode), &refusal.text);
                response.metadata.response_code = refusal.rcode;
                (false, None, Some(refusal))
            }
        };
        if let Some(granted) = &granted {
            set_edns(&mut response, None, Some(granted));
        }
        let reply = match &verified {
            Some(v) => {
                if let Some(refusal) = &refusal {
                    set_edns(&mut response, Some(refusal), None);
                }
                let reply = tsig::sign_reply(
                    response,
                    request.metadata.id,
                    tsig::Reply::Signed {
                        verified: v,
                        error: None,
                    },
                    now_s,
                )?;
                // Kept for as long as the request could come again inside the window.
                self.seen
                    .put(v.mac.clone(), reply.clone(), now_s, v.time + window_s + 1);
                reply
            }
            None => match &refusal {
                Some(refusal) => encode_within(response, refusal, limit, |m| m.to_vec().ok())?,
                None => response.to_vec().ok()?,
            },
        };
        Some(Handled { reply, changed })
    }

    /// The reply to a request whose TSIG failed, logged; nothing changes.
    fn tsig_failure(
        &self,
        mut response: Message,
        request: &Message,
        failure: tsig::Failure,
        source: IpAddr,
        now_s: u64,
        limit: Option<usize>,
    ) -> Option<Handled> {
        response.metadata.response_code = ResponseCode::NotAuth;
        let id = request.metadata.id;
        // BADKEY and BADSIG answer requests anyone can forge: unsigned, and held to the limit.
        let reply = match &failure {
            tsig::Failure::BadKey { name, reason } => {
                auth::log_refusal(source, Some(&name.to_ascii()), "BADKEY", reason);
                let refusal = Refusal::new(
                    ResponseCode::NotAuth,
                    ede::OTHER,
                    format!("BADKEY: {reason}"),
                );
                encode_within(response, &refusal, limit, |m| {
                    tsig::sign_reply(m, id, tsig::Reply::BadKey(name), now_s)
                })
            }
            tsig::Failure::BadSig { signer, key_name } => {
                let text = format!("BADSIG: the TSIG MAC does not verify under key {key_name:?}");
                auth::log_refusal(source, Some(key_name), "BADSIG", &text);
                let refusal = Refusal::new(ResponseCode::NotAuth, ede::OTHER, text);
                encode_within(response, &refusal, limit, |m| {
                    tsig::sign_reply(m, id, tsig::Reply::BadSig(signer), now_s)
                })
            }
            tsig::Failure::Malformed(text) => {
                auth::log_refusal(source, None, "FORMERR", text);
                response.metadata.response_code = ResponseCode::FormErr;
                let refusal = Refusal::new(ResponseCode::FormErr, ede::OTHER, text.clone());
                encode_within(response, &refusal, limit, |m| m.to_vec().ok())
            }
            tsig::Failure::BadTime { verified, skew } => {
                let text = format!(
                    "BADTIME: signed {}s {} this server's clock; at most {}s either way is accepted (auth.window)",
                    skew.unsigned_abs(),
                    if *skew > 0 { "behind" } else { "ahead of" },
                    self.auth.window_ms().div_ceil(1000)
                );
                auth::log_refusal(source, Some(&verified.key), "BADTIME", &text);
                set_edns(
                    &mut response,
                    Some(&Refusal::new(ResponseCode::NotAuth, ede::OTHER, text)),
                    None,
                );
                tsig::sign_reply(
                    response,
                    id,
                    tsig::Reply::Signed {
                        verified,
                        error: Some(TsigError::BadTime),
                    },
                    now_s,
                )
            }
        };
        Some(Handled {
            reply: reply?,
            changed: false,
        })
    }

    /// Zone, prerequisites, mapping, access, then the writes. Returns whether the live set
    /// changed and the lease granted, if the reply carries one.
    fn carry_out(
        &self,
        request: &Message,
        key: Option<&str>,
        source: IpAddr,
        reader: &Responder,
    ) -> Result<(bool, Option<lease::Granted>), Refusal> {
        // An unsigned UPDATE is refused whatever it holds when keys are configured (or, in
        // protected mode, when it does not come from loopback): the same rule as the protocol's.
        if key.is_none() {
            self.auth.check_verified("", None, 0, source).map_err(|e| {
                let text = if self.auth.key_count() > 0 {
                    "this registry requires TSIG-signed updates (hmac-sha256, a key of its keys file: nsupdate -y hmac-sha256:NAME:SECRET)".to_string()
                } else {
                    e.to_string()
                };
                Refusal::new(ResponseCode::Refused, ede::PROHIBITED, text)
            })?;
        }
        // 2. The zone section: one SOA question, IN (RFC 2136 §3.1.1).
        let [zone] = request.queries.as_slice() else {
            return Err(Refusal::new(
                ResponseCode::FormErr,
                ede::OTHER,
                format!(
                    "the zone section has {} entries; an UPDATE names one zone",
                    request.queries.len()
                ),
            ));
        };
        if zone.query_type() != RecordType::SOA || zone.query_class() != DNSClass::IN {
            return Err(Refusal::new(
                ResponseCode::FormErr,
                ede::OTHER,
                format!(
                    "the zone section must be the zone's name, type SOA, class IN, not {} {}",
                    zone.query_type(),
                    zone.query_class()
                ),
            ));
        }
        if zone.name().to_lowercase() != reader.zone().apex {
            return Err(Refusal::new(
                ResponseCode::NotAuth,
                ede::NOT_AUTHORITATIVE,
                format!(
                    "beacon takes updates for {} only, not {}",
                    reader.zone().apex,
                    zone.name()
                ),
            ));
        }
        let requested = lease::read(request.edns.as_ref())
            .map_err(|e| Refusal::new(ResponseCode::FormErr, ede::OTHER, e.to_string()))?;
        // 3. Prerequisites (the answer section).
        self.check_prerequisites(&request.answers, source, reader)?;
        // 4. The update section.
        let plan = map::plan(reader.zone(), &request.authorities)?;
        // 5. Access, for every service before any write.
        let stamp = if key.is_some() { self.next_stamp() } else { 0 };
        let mut origins = Vec::new();
        for service in plan.services() {
            let origin = self
                .auth
                .check_verified(service, key, stamp, source)
                .map_err(|e| Refusal::new(ResponseCode::Refused, ede::PROHIBITED, e.to_string()))?;
            origins.push((service.to_string(), origin));
        }
        let origin_of = |service: &str| {
            origins
                .iter()
                .find(|(s, _)| s == service)
                .map(|(_, o)| o.clone())
                .unwrap_or_default()
        };
        let limits = self.registry.limits();
        let granted = lease::grant(
            requested,
            self.default_lease,
            limits.min_ttl,
            limits.max_ttl,
        );
        // Every registration validated before the first write, so a bad one changes nothing.
        let mut registrations = Vec::with_capacity(plan.register.len());
        for mut request in plan.register.iter().cloned() {
            request.ttl = Some(granted.lease);
            registrations.push(request.validate(limits).map_err(refused)?);
        }
        let mut changed = false;
        for reg in registrations {
            let origin = origin_of(&reg.service);
            let done = self.registry.register_from(reg, &origin).map_err(refused)?;
            changed |= done.changed;
        }
        for (service, id) in &plan.deregister {
            match self
                .registry
                .deregister_from(service, id, &origin_of(service))
            {
                Ok(_) => changed = true,
                // RFC 2136 §3.4.2: deleting what is not there is no error.
                Err(RegistryError::UnknownInstance { .. }) => {}
                Err(e) => return Err(refused(e)),
            }
        }
        let report = !plan.register.is_empty() || requested.is_some();
        Ok((changed, report.then_some(granted)))
    }

    /// RFC 2136 §3.2, against what beacon answers now.
    fn check_prerequisites(
        &self,
        prerequisites: &[Record],
        source: IpAddr,
        reader: &Responder,
    ) -> Result<(), Refusal> {
        let formerr = |text: String| Refusal::new(ResponseCode::FormErr, ede::OTHER, text);
        // Value-dependent prerequisites (class IN), gathered by RRset and compared whole.
        let mut expected: Vec<(Name, RecordType, Vec<RData>)> = Vec::new();
        for record in prerequisites {
            let name = record.name.to_lowercase();
            let rtype = record.record_type();
            if record.ttl != 0 {
                return Err(formerr(format!(
                    "prerequisite {name} {rtype}: TTL must be 0 (RFC 2136 §2.4)"
                )));
            }
            if map::role(reader.zone(), &name).is_none() {
                return Err(Refusal::new(
                    ResponseCode::NotZone,
                    ede::NOT_AUTHORITATIVE,
                    format!(
                        "prerequisite {name} is outside the zone {}",
                        reader.zone().apex
                    ),
                ));
            }
            let unmet = |rcode, what: &str| {
                Err(Refusal::new(
                    rcode,
                    ede::OTHER,
                    format!("prerequisite not met: {what}"),
                ))
            };
            match (record.dns_class, rtype) {
                (DNSClass::ANY, RecordType::ANY) => {
                    if !self.name_in_use(&name, source, reader) {
                        return unmet(ResponseCode::NXDomain, &format!("{name} is not in use"));
                    }
                }
                (DNSClass::ANY, _) => {
                    if self.rrset(&name, rtype, source, reader).is_empty() {
                        return unmet(
                            ResponseCode::NXRRSet,
                            &format!("{name} has no {rtype} RRset"),
                        );
                    }
                }
                (DNSClass::NONE, RecordType::ANY) => {
                    if self.name_in_use(&name, source, reader) {
                        return unmet(ResponseCode::YXDomain, &format!("{name} is in use"));
                    }
                }
                (DNSClass::NONE, _) => {
                    if !self.rrset(&name, rtype, source, reader).is_empty() {
                        return unmet(
                            ResponseCode::YXRRSet,
                            &format!("{name} has a {rtype} RRset"),
                        );
                    }
                }
                (DNSClass::IN, _) => match expected
                    .iter_mut()
                    .find(|(n, t, _)| *n == name && *t == rtype)
                {
                    Some((_, _, data)) => data.push(record.data.clone()),
                    None => expected.push((name, rtype, vec![record.data.clone()])),
                },
                (class, _) => {
                    return Err(formerr(format!(
                        "prerequisite {name} {rtype}: class {class} is not IN, ANY or NONE"
                    )))
                }
            }
        }
        for (name, rtype, mut want) in expected {
            let mut have = self.rrset(&name, rtype, source, reader);
            want.sort_by_key(rdata_bytes);
            want.dedup();
            have.sort_by_key(rdata_bytes);
            have.dedup();
            if want != have {
                return Err(Refusal::new(
                    ResponseCode::NXRRSet,
                    ede::OTHER,
                    format!("prerequisite not met: {name} {rtype} is not the RRset given"),
                ));
            }
        }
        Ok(())
    }

    /// Whether beacon answers any record at `name`.
    fn name_in_use(&self, name: &Name, source: IpAddr, reader: &Responder) -> bool {
        const HELD: [RecordType; 7] = [
            RecordType::A,
            RecordType::AAAA,
            RecordType::SRV,
            RecordType::TXT,
            RecordType::PTR,
            RecordType::SOA,
            RecordType::NS,
        ];
        HELD.iter()
            .any(|t| !self.rrset(name, *t, source, reader).is_empty())
    }

    /// The RRset beacon answers at `name`, `rtype`: asked of the DNS reader as a client would,
    /// over "TCP" (never truncated).
    fn rrset(
        &self,
        name: &Name,
        rtype: RecordType,
        source: IpAddr,
        reader: &Responder,
    ) -> Vec<RData> {
        let mut query = Message::query();
        query.add_query(Query::query(name.clone(), rtype));
        let Ok(bytes) = query.to_vec() else {
            return Vec::new();
        };
        let Outcome::Reply(answer) = reader.respond(&bytes, source, Transport::Tcp) else {
            return Vec::new();
        };
        let Ok(answer) = Message::from_vec(&answer) else {
            return Vec::new();
        };
        answer
            .answers
            .into_iter()
            .filter(|r| r.record_type() == rtype && r.name.to_lowercase() == *name)
            .map(|r| r.data)
            .collect()
    }
}

/// The rcode as DNS tools print it: REFUSED, NXRRSET, NOTAUTH.
pub fn rcode_name(rcode: ResponseCode) -> String {
    format!("{rcode:?}").to_ascii_uppercase()
}

fn rdata_bytes(data: &RData) -> Vec<u8> {
    use hickory_proto::serialize::binary::BinEncodable;
    data.to_bytes().unwrap_or_default()
}

fn refused(e: RegistryError) -> Refusal {
    let code = match e {
        RegistryError::Owned { .. } | RegistryError::Replayed { .. } => ede::PROHIBITED,
        _ => ede::OTHER,
    };
    Refusal::new(ResponseCode::Refused, code, e.to_string())
}

/// Puts an OPT on `response` with the EDE of `refusal` and the granted lease, as present.
fn set_edns(response: &mut Message, refusal: Option<&Refusal>, granted: Option<&lease::Granted>) {
    let mut edns = response.edns.take().unwrap_or_else(|| {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        e.set_version(0);
        e
    });
    if let Some(refusal) = refusal {
        let mut data = refusal.ede.to_be_bytes().to_vec();
        data.extend_from_slice(refusal.text.as_bytes());
        edns.options_mut().insert(EdnsOption::Unknown(EDE, data));
    }
    if let Some(granted) = granted {
        edns.options_mut().insert(lease::option(granted));
    }
    response.set_edns(edns);
}

/// Encodes `response` with `encode` after putting `refusal`'s EDE on it; with a `limit`,
/// shortens the EDE text until the reply fits (the info code stays).
fn encode_within(
    response: Message,
    refusal: &Refusal,
    limit: Option<usize>,
    encode: impl Fn(Message) -> Option<Vec<u8>>,
) -> Option<Vec<u8>> {
    let mut refusal = refusal.clone();
    loop {
        let mut message = response.clone();
        set_edns(&mut message, Some(&refusal), None);
        let bytes = encode(message)?;
        match limit {
            Some(limit) if bytes.len() > limit && !refusal.text.is_empty() => {
                let mut keep = refusal.text.len().saturating_sub(bytes.len() - limit);
                while !refusal.text.is_char_boundary(keep) {
                    keep -= 1;
                }
                refusal.text.truncate(keep);
            }
            _ => return Some(bytes),
        }
    }
}

/// The EDE option's code (RFC 8914).
pub const EDE: u16 = 15;

/// FORMERR to a message hickory cannot parse, built from its header (its ID and opcode), with
/// an EDE saying why; nothing when there is no header.
fn formerr(bytes: &[u8], why: &str, source: IpAddr, limit: Option<usize>) -> Option<Handled> {
    if bytes.len() < 12 {
        return None;
    }
    let id = u16::from_be_bytes([bytes[0], bytes[1]]);
    let mut response = Message::response(id, OpCode::Update);
    response.metadata.response_code = ResponseCode::FormErr;
    let refusal = Refusal::new(
        ResponseCode::FormErr,
        ede::OTHER,
        format!("the UPDATE does not parse: {why}"),
    );
    auth::log_refusal(source, None, "FORMERR", &refusal.text);
    Some(Handled {
        reply: encode_within(response, &refusal, limit, |m| m.to_vec().ok())?,
        changed: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn updater() -> (Updater, Responder) {
        super::fuzzing::updater(Auth::open_loopback())
    }

    /// The smallest UPDATE: the zone section alone.
    fn empty_update(zone: &str) -> Vec<u8> {
        let mut m = Message::new(7, MessageType::Query, OpCode::Update);
        m.add_query(Query::query(zone.parse().unwrap(), RecordType::SOA));
        m.to_vec().unwrap()
    }

    #[test]
    fn an_unsigned_refusal_over_udp_is_at_most_three_times_the_request() {
        let (updater, reader) = updater();
        let request = empty_update("service.local.");
        let outside: IpAddr = "192.0.2.1".parse().unwrap();
        let udp = updater
            .handle(&request, outside, Transport::Udp, &reader)
            .unwrap();
        assert!(
            udp.reply.len() <= 3 * request.len(),
            "{} bytes",
            udp.reply.len()
        );
        let reply = Message::from_vec(&udp.reply).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
        let edns = reply.edns.unwrap();
        let Some(EdnsOption::Unknown(EDE, data)) = edns.option(EDE.into()) else {
            panic!("no EDE");
        };
        assert_eq!(u16::from_be_bytes([data[0], data[1]]), ede::PROHIBITED);
        // Over TCP the whole text.
        let tcp = updater
            .handle(&request, outside, Transport::Tcp, &reader)
            .unwrap();
        let reply = Message::from_vec(&tcp.reply).unwrap();
        let edns = reply.edns.unwrap();
        let Some(EdnsOption::Unknown(_, data)) = edns.option(EDE.into()) else {
            panic!("no EDE");
        };
        assert!(String::from_utf8_lossy(&data[2..]).contains("protected mode"));
        assert!(!tcp.changed);
    }

    #[test]
    fn from_loopback_unsigned_an_empty_update_succeeds_and_another_zone_is_notauth() {
        let (updater, reader) = updater();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let ok = updater
            .handle(
                &empty_update("service.local."),
                local,
                Transport::Udp,
                &reader,
            )
            .unwrap();
        let reply = Message::from_vec(&ok.reply).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(reply.metadata.op_code, OpCode::Update);
        assert_eq!(reply.queries.len(), 1, "the zone section is echoed");
        let other = updater
            .handle(
                &empty_update("example.com."),
                local,
                Transport::Tcp,
                &reader,
            )
            .unwrap();
        let reply = Message::from_vec(&other.reply).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::NotAuth);
    }

    #[test]
    fn recognises_updates_by_their_header() {
        let mut header = [0u8; 12];
        assert!(!is_update(&header));
        header[2] = 5 << 3;
        assert!(is_update(&header));
        header[2] |= 0x80;
        assert!(!is_update(&header), "a response is not handled");
        assert!(!is_update(&header[..11]));
    }

    /// Hostile input: every one-bit change and every truncation of a signed UPDATE is answered
    /// (or ignored) without a panic and changes nothing; the message ID aside, which TSIG leaves
    /// out of the MAC on purpose (RFC 8945 §4.3.1: Original ID), any change breaks the MAC.
    #[test]
    fn altered_signed_updates_never_panic_and_change_nothing() {
        use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
        use hickory_proto::rr::rdata::{A, SRV};
        use hickory_proto::rr::TSigner;

        const SECRET: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, format!("web-key {SECRET} web\n")).unwrap();
        let auth = Auth::from_config(&crate::config::AuthConfig {
            keys_file: Some(path),
            ..Default::default()
        })
        .unwrap();
        let secret = auth
            .key_ring()
            .get("web-key")
            .unwrap()
            .secret()
            .expose_bytes()
            .to_vec();
        let (updater, reader) = super::fuzzing::updater(auth);
        let signer = TSigner::new(
            secret,
            TsigAlgorithm::HmacSha256,
            Name::from_ascii("web-key").unwrap(),
            300,
        )
        .unwrap();
        let mut m = Message::new(9, MessageType::Query, OpCode::Update);
        m.add_query(Query::query(
            "service.local.".parse().unwrap(),
            RecordType::SOA,
        ));
        let host: Name = "h.service.local.".parse().unwrap();
        m.add_authority(Record::from_rdata(
            "w1._web._tcp.service.local.".parse().unwrap(),
            60,
            RData::SRV(SRV::new(0, 1, 8080, host.clone())),
        ));
        m.add_authority(Record::from_rdata(host, 60, RData::A(A::new(10, 0, 0, 1))));
        let mut edns = Edns::new();
        edns.options_mut().insert(EdnsOption::Unknown(
            lease::CODE,
            600u32.to_be_bytes().to_vec(),
        ));
        m.set_edns(edns);
        m.finalize(&signer, auth::wall_clock_ms() / 1000).unwrap();
        let bytes = m.to_vec().unwrap();

        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let version = updater.registry.version();
        for at in 2..bytes.len() {
            for bit in [0x01, 0x10, 0x80] {
                let mut altered = bytes.clone();
                altered[at] ^= bit;
                let handled = updater.handle(&altered, local, Transport::Udp, &reader);
                assert!(handled.is_none_or(|h| !h.changed), "byte {at} bit {bit:#x}");
                assert_eq!(
                    updater.registry.version(),
                    version,
                    "byte {at} bit {bit:#x}"
                );
            }
        }
        for len in 0..bytes.len() {
            let _ = updater.handle(&bytes[..len], local, Transport::Tcp, &reader);
            assert_eq!(updater.registry.version(), version, "cut at {len}");
        }
        let first = updater
            .handle(&bytes, local, Transport::Udp, &reader)
            .unwrap();
        assert!(first.changed);
        assert_eq!(updater.registry.service("web").unwrap().live(0).count(), 1);
        // The same request with another message ID is the same signed request: its first
        // reply again, nothing applied.
        let mut other_id = bytes.clone();
        other_id[1] ^= 1;
        let again = updater
            .handle(&other_id, local, Transport::Udp, &reader)
            .unwrap();
        assert!(!again.changed);
        assert_eq!(again.reply, first.reply);
    }
}
