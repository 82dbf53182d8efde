//! The fast path: the queries that make up nearly all of a discovery server's traffic — one
//! question, class IN, type A, AAAA or SRV, at `<service>.<domain>` or `_<service>._tcp.<domain>`,
//! with or without an EDNS(0) version 0 OPT — answered by writing the response bytes directly,
//! without building a hickory `Message`.
//!
//! The question is copied from the query as it came (so its case is kept, which 0x20-randomising
//! resolvers check), and every owner name is a compression pointer: to the question, or, for the
//! additional records, to their SRV target. SRV targets are written out in full (RFC 2782: no
//! compression in that field), exactly as the general path's encoder writes them, so both paths
//! produce answers of the same size and agree on what fits. Anything else — other names or types, EDNS versions above 0,
//! answers that would need cutting, service domains with static records — returns `None` and
//! takes the general path in `answer.rs`, which is the reference: the tests check that both
//! paths give the same answers.

use std::net::IpAddr;
use std::sync::Arc;

use super::answer::{Responder, Transport, SOA_TIMERS, SRV_PRIORITY};
use super::order::weighted_order;
use crate::registry::Instance;

const TYPE_A: u16 = 1;
const TYPE_SOA: u16 = 6;
const TYPE_AAAA: u16 = 28;
const TYPE_SRV: u16 = 33;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;

/// A query the fast path understood.
struct Parsed<'q> {
    /// Labels of the question name, in order.
    labels: [&'q [u8]; 8],
    label_count: usize,
    /// End of the question section (after QTYPE and QCLASS).
    question_end: usize,
    qtype: u16,
    /// The client's UDP payload size, when it sent an OPT.
    edns_payload: Option<u16>,
    /// The OPT's DO bit (RFC 3225), copied into the response's OPT.
    dnssec_ok: bool,
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// Parses the shapes the fast path answers; `None` for everything else.
fn parse(q: &[u8]) -> Option<Parsed<'_>> {
    // QR=0, OPCODE=0 (QUERY), TC=0; the rcode of a query is 0.
    if q.len() < 17 || q[2] & 0xfa != 0 || q[3] & 0x0f != 0 {
        return None;
    }
    let (qd, an, ns, ar) = (be16(q, 4)?, be16(q, 6)?, be16(q, 8)?, be16(q, 10)?);
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    let mut labels: [&[u8]; 8] = [&[]; 8];
    let mut label_count = 0;
    let mut at = 12;
    loop {
        let len = *q.get(at)? as usize;
        if len == 0 {
            at += 1;
            break;
        }
        // No compression in questions here, and at most 8 labels (ours have 2-4 plus the apex).
        if len > 63 || label_count == labels.len() {
            return None;
        }
        labels[label_count] = q.get(at + 1..at + 1 + len)?;
        label_count += 1;
        at += 1 + len;
    }
    if at - 12 > 255 {
        return None;
    }
    let qtype = be16(q, at)?;
    if be16(q, at + 2)? != CLASS_IN {
        return None;
    }
    let question_end = at + 4;
    let mut edns_payload = None;
    let mut dnssec_ok = false;
    if ar == 1 {
        // Exactly one OPT: root name, type 41, version 0, and nothing after its options.
        let opt = question_end;
        if *q.get(opt)? != 0 || be16(q, opt + 1)? != TYPE_OPT || *q.get(opt + 6)? != 0 {
            return None;
        }
        let rdlen = be16(q, opt + 9)? as usize;
        // No options, and no extended RCODE: hickory parses options strictly (a malformed one
        // is FORMERR there), so queries that carry any take the general path, which is the
        // reference (a difference found by fuzzing).
        if rdlen != 0 || opt + 11 != q.len() || *q.get(opt + 5)? != 0 {
            return None;
        }
        edns_payload = Some(be16(q, opt + 3)?);
        dnssec_ok = *q.get(opt + 7)? & 0x80 != 0;
    } else if question_end != q.len() {
        return None;
    }
    Some(Parsed {
        labels,
        label_count,
        question_end,
        qtype,
        edns_payload,
        dnssec_ok,
    })
}

fn eq_ignore_case(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.eq_ignore_ascii_case(y))
}

fn push16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn push32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}

/// How many label positions hickory's encoder keeps to compress names against
/// (`COMPRESSION_CANDIDATE_LIMIT` in hickory-proto 0.26's `BinEncoder`).
const HICKORY_COMPRESSION_CANDIDATES: usize = 64;

/// The largest offset a compression pointer can hold: 14 bits (RFC 1035 §4.1.4).
const MAX_POINTER_OFFSET: usize = 0x3fff;

fn pointer(offset: usize) -> u16 {
    debug_assert!(offset <= MAX_POINTER_OFFSET);
    0xc000 | offset as u16
}

impl Responder {
    /// Answers `query` on the fast path, or `None` when it is not one of its shapes.
    pub(super) fn fast_answer(
        &self,
        query: &[u8],
        client: IpAddr,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        if self.statics_overlap {
            return None;
        }
        let parsed = parse(query)?;
        let apex = &self.apex_labels;
        let relative = parsed.label_count.checked_sub(apex.len())?;
        if relative == 0 || relative > 2 {
            return None;
        }
        if !apex
            .iter()
            .zip(&parsed.labels[relative..parsed.label_count])
            .all(|(a, b)| eq_ignore_case(a, b))
        {
            return None;
        }
        let service_label = match (relative, parsed.qtype) {
            (1, TYPE_A | TYPE_AAAA | TYPE_SRV) if parsed.labels[0].first() != Some(&b'_') => {
                parsed.labels[0]
            }
            (2, TYPE_SRV)
                if parsed.labels[0].len() > 1
                    && parsed.labels[0][0] == b'_'
                    && eq_ignore_case(parsed.labels[1], b"_tcp") =>
            {
                &parsed.labels[0][1..]
            }
            _ => return None,
        };
        let mut lower = [0u8; 63];
        let service = &mut lower[..service_label.len()];
        service.copy_from_slice(service_label);
        service.make_ascii_lowercase();
        let service = std::str::from_utf8(service).ok()?;
        // Where the apex starts inside the copied question: SRV targets and the SOA point there.
        let apex_offset = 12
            + parsed.labels[..relative]
                .iter()
                .map(|l| l.len() + 1)
                .sum::<usize>();

        // As in the general path: liveness on the readers' clock (held still by
        // self-preservation), TTLs on the real one.
        let now = self.registry.now_ms();
        let live_at = self.registry.live_at(now);
        let view = self.registry.service(service);
        let wanted = |i: &&Arc<Instance>| match parsed.qtype {
            TYPE_A => i.address.is_ipv4(),
            TYPE_AAAA => i.address.is_ipv6(),
            _ => true,
        };
        // Sized for the whole service up front: collecting into an empty Vec grew it through
        // three reallocations for a service of ten, the costliest part of this path
        // (callgrind).
        let mut set: Vec<&Arc<Instance>> = match &view {
            Some(view) => {
                let mut set = Vec::with_capacity(view.instances.len());
                set.extend(view.live(live_at).filter(wanted));
                set
            }
            None => Vec::new(),
        };
        // The name exists when the service has a live instance of any family; only an empty
        // answer needs a second look to tell NODATA from NXDOMAIN.
        let exists = !set.is_empty()
            || view
                .as_ref()
                .is_some_and(|view| view.live(live_at).next().is_some());
        let limit = self.size_limit(transport, parsed.edns_payload);
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(&query[..2]);
        // QR, AA, RD as asked; CD as asked; RA=0, AD=0.
        out.push(0x84 | (query[2] & 0x01));
        out.push(query[3] & 0x10 | if exists { 0 } else { 3 }); // NXDOMAIN when the name is not there
        out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // counts, filled in below
        out.extend_from_slice(&query[12..parsed.question_end]);

        let (mut answers, mut additionals, mut authorities) = (0u16, 0u16, 0u16);
        if set.is_empty() {
            // NXDOMAIN, or NODATA for a family the service has no address of: the SOA.
            authorities = 1;
            let mut header = [0u8; 12];
            record_header(
                &mut header,
                pointer(apex_offset),
                TYPE_SOA,
                self.negative_ttl,
                2 + 1 + 10 + 2 + 20,
            );
            out.extend_from_slice(&header);
            push16(&mut out, pointer(apex_offset));
            out.push(10);
            out.extend_from_slice(b"hostmaster");
            push16(&mut out, pointer(apex_offset));
            push32(&mut out, self.registry.version() as u32);
            for value in SOA_TIMERS {
                push32(&mut out, value);
            }
            push32(&mut out, self.negative_ttl);
        } else {
            answers = set.len() as u16;
            if parsed.qtype == TYPE_SRV {
                // The general path's encoder keeps at most 64 label positions to compress
                // against: the question's, then each target's labels. Past that it writes the
                // additional records' names out in full and cuts sooner than this path would,
                // so such answers go its way and both always agree on what fits.
                let target_labels = 2 + apex.len();
                if parsed.label_count + set.len() * target_labels > HICKORY_COMPRESSION_CANDIDATES {
                    return None;
                }
                // The target `<id>.<service>.<apex>` written out in full: RFC 2782 forbids
                // compressing it.
                let apex_wire: usize = apex.iter().map(|l| 1 + l.len()).sum::<usize>() + 1;
                let target_len =
                    |instance: &Instance| 1 + instance.id.len() + 1 + service.len() + apex_wire;
                // Sizes as both paths encode them, to decide what fits before writing: the
                // whole answer; without the targets' TXT (additional data, dropped silently);
                // or, with TC, the largest subset of instances in the client's rendezvous
                // ranking that fits with each target's address, as the general path cuts.
                let address_len = |i: &Instance| 12 + if i.address.is_ipv4() { 4 } else { 16 };
                let pair = |i: &Instance| 12 + 6 + target_len(i) + address_len(i);
                let texts = |i: &Instance| -> usize {
                    i.meta
                        .iter()
                        .map(|(k, v)| {
                            let len = k.len() + 1 + v.len();
                            12 + len + len.div_ceil(255)
                        })
                        .sum()
                };
                let opt_len = if parsed.edns_payload.is_some() { 11 } else { 0 };
                let base = out.len() + opt_len;
                let pairs: usize = set.iter().map(|i| pair(i)).sum();
                let with_texts =
                    base + pairs + set.iter().map(|i| texts(i)).sum::<usize>() <= limit;
                if !with_texts && base + pairs > limit {
                    // The client's rendezvous ranking, as the general path ranks: scores on
                    // the set in place, no copies of it.
                    let scores = super::answer::rendezvous_scores(&set, client);
                    let mut ranked: Vec<usize> = (0..set.len()).collect();
                    ranked.sort_by(|&a, &b| {
                        scores[b]
                            .total_cmp(&scores[a])
                            .then_with(|| set[a].id.cmp(&set[b].id))
                    });
                    let mut size = base;
                    let fitting = ranked
                        .iter()
                        .take_while(|&&i| {
                            size += pair(set[i]);
                            size <= limit
                        })
                        .count();
                    if fitting == 0 {
                        return None;
                    }
                    let mut keep = vec![false; set.len()];
                    for &i in &ranked[..fitting] {
                        keep[i] = true;
                    }
                    let mut n = 0;
                    set.retain(|_| {
                        n += 1;
                        keep[n - 1]
                    });
                    answers = set.len() as u16;
                    out[2] |= 0x02; // TC: the client should ask again over TCP
                }
                // A fresh weighted random order per answer (RFC 2782), as the general path
                // draws, of what is sent; the TTL of what is sent.
                weighted_order(&mut set, |i| i.weight);
                let ttl = self.ttl_for(set.iter().copied(), now);
                // Each SRV record is the name pointer, type, class, TTL and length (12 bytes),
                // priority, weight and port (6), then its target, whose offset the additional
                // section points back to.
                let first_target = out.len() + 12 + 6;
                let mut last_target = first_target;
                for instance in &set {
                    // The fixed part written as one slice, as in `push_address`.
                    let rdlen = (6 + target_len(instance)) as u16;
                    let mut fixed = [0u8; 18];
                    record_header(&mut fixed, pointer(12), TYPE_SRV, ttl, rdlen);
                    fixed[12..14].copy_from_slice(&SRV_PRIORITY.to_be_bytes());
                    fixed[14..16].copy_from_slice(&instance.weight.to_be_bytes());
                    fixed[16..18].copy_from_slice(&instance.port.to_be_bytes());
                    out.extend_from_slice(&fixed);
                    last_target = out.len();
                    out.push(instance.id.len() as u8);
                    out.extend_from_slice(instance.id.as_bytes());
                    out.push(service.len() as u8);
                    out.extend_from_slice(service.as_bytes());
                    for label in apex {
                        out.push(label.len() as u8);
                        out.extend_from_slice(label);
                    }
                    out.push(0);
                }
                if last_target > MAX_POINTER_OFFSET {
                    // A target past 16 KiB cannot be pointed at (only on TCP, hundreds of
                    // instances): the general path writes those names out.
                    return None;
                }
                let mut target = first_target;
                for instance in &set {
                    push_address(&mut out, pointer(target), ttl, instance.address);
                    target += 12 + 6 + target_len(instance);
                }
                additionals = set.len() as u16;
                // Then each target's metadata, one TXT record per entry (as the general path
                // writes them), when the whole answer fits with them.
                if with_texts {
                    let mut target = first_target;
                    for instance in &set {
                        for (key, value) in instance.meta.iter() {
                            push_meta_txt(&mut out, pointer(target), ttl, key, value);
                            additionals += 1;
                        }
                        target += 12 + 6 + target_len(instance);
                    }
                }
            } else {
                weighted_order(&mut set, |i| i.weight);
                let ttl = self.ttl_for(set.iter().copied(), now);
                // One record per address (RFC 2181 §5), where its first instance comes.
                answers = 0;
                for (n, instance) in set.iter().enumerate() {
                    if !set[..n].iter().any(|i| i.address == instance.address) {
                        push_address(&mut out, pointer(12), ttl, instance.address);
                        answers += 1;
                    }
                }
            }
        }
        if parsed.edns_payload.is_some() {
            out.push(0);
            push16(&mut out, TYPE_OPT);
            push16(&mut out, self.max_udp_payload);
            // Extended RCODE 0, version 0, and the query's DO bit (RFC 3225 §3).
            push32(&mut out, if parsed.dnssec_ok { 0x8000 } else { 0 });
            push16(&mut out, 0);
            additionals += 1;
        }
        if out.len() > limit || out.len() > u16::MAX as usize {
            // Needs cutting: the general path chooses the client's subset and sets TC.
            return None;
        }
        out[6..8].copy_from_slice(&answers.to_be_bytes());
        out[8..10].copy_from_slice(&authorities.to_be_bytes());
        out[10..12].copy_from_slice(&additionals.to_be_bytes());
        Some(out)
    }
}

/// One A or AAAA record, written as one slice: a field-by-field write (six capacity checks
/// and copies per record) was a fifth of this path's instructions for a ten-address answer.
fn push_address(out: &mut Vec<u8>, name: u16, ttl: u32, address: IpAddr) {
    let mut record = [0u8; 12 + 16];
    let len = match address {
        IpAddr::V4(v4) => {
            record_header(&mut record, name, TYPE_A, ttl, 4);
            record[12..16].copy_from_slice(&v4.octets());
            12 + 4
        }
        IpAddr::V6(v6) => {
            record_header(&mut record, name, TYPE_AAAA, ttl, 16);
            record[12..28].copy_from_slice(&v6.octets());
            12 + 16
        }
    };
    out.extend_from_slice(&record[..len]);
}

const TYPE_TXT: u16 = 16;

/// One TXT record holding `key=value`, split into character-strings of at most 255 bytes.
fn push_meta_txt(out: &mut Vec<u8>, name: u16, ttl: u32, key: &str, value: &str) {
    let len = key.len() + 1 + value.len();
    let strings = len.div_ceil(255);
    let mut header = [0u8; 12];
    record_header(&mut header, name, TYPE_TXT, ttl, (len + strings) as u16);
    out.extend_from_slice(&header);
    let entry = [key.as_bytes(), b"=", value.as_bytes()].concat();
    for chunk in entry.chunks(255) {
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
}

/// Writes the fixed part of a resource record at the start of `record`: a compressed owner
/// name, type, class IN, TTL and RDATA length (12 bytes).
fn record_header(record: &mut [u8], name: u16, rtype: u16, ttl: u32, rdata_len: u16) {
    record[0..2].copy_from_slice(&name.to_be_bytes());
    record[2..4].copy_from_slice(&rtype.to_be_bytes());
    record[4..6].copy_from_slice(&CLASS_IN.to_be_bytes());
    record[6..10].copy_from_slice(&ttl.to_be_bytes());
    record[10..12].copy_from_slice(&rdata_len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::op::{Edns, Message, Query};
    use hickory_proto::rr::{Name, RecordType};

    use super::*;
    use crate::config::{DnsConfig, RegistryConfig};
    use crate::dns::answer::Outcome;
    use crate::dns::forward::Forwarder;
    use crate::dns::statics::StaticZones;
    use crate::registry::{Limits, RegistrationRequest, Registry};

    const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn responder() -> Responder {
        let registry = Registry::new(Limits::from(&RegistryConfig::default()));
        let add = |service: &str, id: &str, address: &str, port: u16, weight: u16| {
            let reg = RegistrationRequest {
                service: service.into(),
                id: Some(id.into()),
                address: Some(address.parse().unwrap()),
                port,
                weight: Some(weight),
                ttl: Some(std::time::Duration::from_secs(30)),
                ..Default::default()
            }
            .validate(registry.limits())
            .unwrap();
            registry.register(reg).unwrap();
        };
        for i in 0..10 {
            add(
                "web",
                &format!("i{i}"),
                &format!("10.0.0.{i}"),
                8000 + i,
                1 + i,
            );
        }
        add("v6", "a", "fd00::1", 80, 1);
        // Metadata, one entry longer than a TXT character-string: TXT beside the SRV targets.
        let reg = RegistrationRequest {
            service: "meta".into(),
            id: Some("m1".into()),
            address: Some("10.3.0.1".parse().unwrap()),
            port: 80,
            meta: vec![
                ("zone".into(), "eu-1".into()),
                ("long".into(), "x".repeat(300)),
            ],
            ttl: Some(std::time::Duration::from_secs(30)),
            ..Default::default()
        }
        .validate(registry.limits())
        .unwrap();
        registry.register(reg).unwrap();
        add("meta", "m2", "10.3.0.1", 81, 3);
        add("dual", "a", "10.1.0.1", 80, 1);
        add("dual", "b", "fd00::2", 81, 2);
        for i in 0..60 {
            add(
                "big",
                &format!("instance-with-a-long-name-{i}"),
                "10.2.0.1",
                80,
                1,
            );
        }
        Responder::new(
            registry,
            &DnsConfig::default(),
            vec!["127.0.0.1".parse().unwrap()],
            StaticZones::empty(),
            Forwarder::new(vec![], vec![], std::time::Duration::from_secs(1)),
        )
        .unwrap()
    }

    fn query(name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = 0x1234;
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_str(name).unwrap(), rtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            message.set_edns(e);
        }
        message.to_vec().unwrap()
    }

    use crate::dns::fuzzing::observable;

    #[tokio::test]
    async fn fast_answers_equal_the_general_paths() {
        let r = responder();
        let client: IpAddr = "127.0.0.1".parse().unwrap();
        let names = [
            ("web.service.local.", RecordType::A),
            ("WEB.Service.LOCAL.", RecordType::A),
            ("web.service.local.", RecordType::AAAA),
            ("web.service.local.", RecordType::SRV),
            ("_web._tcp.service.local.", RecordType::SRV),
            ("_WEB._TCP.service.local.", RecordType::SRV),
            ("v6.service.local.", RecordType::AAAA),
            ("v6.service.local.", RecordType::A),
            ("dual.service.local.", RecordType::SRV),
            ("dual.service.local.", RecordType::AAAA),
            ("missing.service.local.", RecordType::A),
            ("missing.service.local.", RecordType::SRV),
            ("_missing._tcp.service.local.", RecordType::SRV),
            ("meta.service.local.", RecordType::SRV),
            ("meta.service.local.", RecordType::A),
            ("_meta._tcp.service.local.", RecordType::SRV),
        ];
        let mut fast_hits = 0;
        for (name, rtype) in names {
            for edns in [None, Some(4096), Some(512), Some(100)] {
                for transport in [Transport::Udp, Transport::Tcp] {
                    let q = query(name, rtype, edns);
                    let general = match r.respond_general(&q, client, transport) {
                        Outcome::Reply(bytes) => bytes,
                        other => panic!("{other:?}"),
                    };
                    if let Some(fast) = r.fast_answer(&q, client, transport) {
                        fast_hits += 1;
                        let (fast_main, fast_extra) = observable(&fast);
                        let (general_main, general_extra) = observable(&general);
                        assert_eq!(
                            fast_main, general_main,
                            "{name} {rtype} {edns:?} {transport:?}"
                        );
                        // The fast path compresses better, so it may keep an additional section
                        // the general path had to drop (RFC 2181 §9 allows either): then it must
                        // be the general path's uncut one.
                        let whole = match r.respond_general(&q, client, Transport::Tcp) {
                            Outcome::Reply(bytes) => observable(&bytes).1,
                            other => panic!("{other:?}"),
                        };
                        assert!(
                            fast_extra == general_extra || fast_extra == whole,
                            "{name} {rtype} {edns:?} {transport:?}: {fast_extra:?} vs {general_extra:?}"
                        );
                        assert_eq!(&fast[..2], &q[..2], "id");
                    }
                }
            }
        }
        assert!(
            fast_hits >= 90,
            "the fast path must take these shapes ({fast_hits})"
        );
    }

    #[tokio::test]
    async fn other_shapes_take_the_general_path() {
        let r = responder();
        for (name, rtype) in [
            ("service.local.", RecordType::SOA),
            ("i1.web.service.local.", RecordType::A),
            ("web.service.local.", RecordType::TXT),
            ("_web._tcp.service.local.", RecordType::PTR),
            ("example.com.", RecordType::A),
        ] {
            assert!(
                r.fast_answer(&query(name, rtype, None), LOCALHOST, Transport::Udp)
                    .is_none(),
                "{name} {rtype}"
            );
        }
        // Too big for 512 bytes: the general path cuts it and sets TC.
        assert!(r
            .fast_answer(
                &query("big.service.local.", RecordType::SRV, None),
                LOCALHOST,
                Transport::Udp
            )
            .is_none());
        let mut badvers = query("web.service.local.", RecordType::A, Some(1232));
        let opt = badvers.len() - 11;
        badvers[opt + 6] = 1;
        assert!(r.fast_answer(&badvers, LOCALHOST, Transport::Udp).is_none());
        let mut response = query("web.service.local.", RecordType::A, None);
        response[2] |= 0x80;
        assert!(r
            .fast_answer(&response, LOCALHOST, Transport::Udp)
            .is_none());
        assert!(r
            .fast_answer(&response[..20], LOCALHOST, Transport::Udp)
            .is_none());
    }

    /// An UPDATE is the writer's (`crate::update`): the fast path must never answer one, not
    /// even one whose bytes otherwise look like a question it answers (opcode bits aside).
    #[test]
    fn never_answers_an_update() {
        let r = responder();
        for (name, rtype) in [
            ("web.service.local.", RecordType::A),
            ("_web._tcp.service.local.", RecordType::SRV),
        ] {
            let mut q = query(name, rtype, None);
            assert!(r.fast_answer(&q, LOCALHOST, Transport::Udp).is_some());
            q[2] = (q[2] & !0x78) | (5 << 3);
            assert!(crate::update::is_update(&q));
            assert!(r.fast_answer(&q, LOCALHOST, Transport::Udp).is_none());
            assert!(r.fast_answer(&q, LOCALHOST, Transport::Tcp).is_none());
        }
    }
}
