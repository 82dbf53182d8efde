//! Response rate limiting (RRL) for DNS over UDP, as Knot's `rrl` module and NSD do it.
//!
//! UDP answers go to whatever source address a datagram claims, so without a limit a 50-byte
//! query with a forged source draws a 1232-byte answer at its victim: a 25× amplifier. The
//! limiter counts responses per source prefix (/24 for IPv4, /56 for IPv6: one site, however
//! many hosts or NAT clients it has) and lets `dns.rate_limit.responses_per_second` of them
//! through, with bursts of that rate × `window`. Beyond it a response is withheld (counted
//! when the query arrives, so a withheld answer is never built nor forwarded); every
//! `slip`-th withheld response goes out instead as an empty truncated reply (header and
//! question, TC set, smaller than the query), so a real client behind a limited prefix retries
//! over TCP, which is never limited, while a flood with a forged source gets fewer bytes out
//! than it sends in.
//!
//! The state is a fixed table of buckets chosen by a keyed hash of the prefix (SipHash with a
//! key drawn per process, so nobody can aim a prefix at a given bucket): its memory is
//! `table_size` × 16 bytes however many sources write, and nothing is allocated per response.
//! Two prefixes that hash to one bucket share its limit (a collision merges them); with the
//! default 65 536 buckets that takes a flood from thousands of prefixes at once, and even then a
//! client sharing a flooded bucket still gets its slips, and TCP.
//!
//! Each bucket is one GCRA clock (the "theoretical arrival time" of the next response, in
//! nanoseconds since the limiter started) and a count of withheld responses for the slip: two
//! atomics, updated with a compare-and-swap, so every UDP thread shares the table without a lock.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ipnet::IpNet;

use crate::config::RateLimitConfig;

/// Bits of an IPv4 source that name its prefix: a /24.
pub const IPV4_PREFIX: u32 = 24;
/// Bits of an IPv6 source that name its prefix: a /56, a site (RFC 6177).
pub const IPV6_PREFIX: u32 = 56;

/// What to do with one UDP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it as it is.
    Send,
    /// Over the limit: send the empty truncated reply instead ([`slip_reply`]).
    Slip,
    /// Over the limit: send nothing.
    Drop,
}

/// How many responses the limiter withheld, for the metrics page. Created by `serve` and shared
/// with `metrics`, which only reads it.
#[derive(Debug, Default)]
pub struct RateLimitCounters {
    limited: AtomicU64,
    slipped: AtomicU64,
}

impl RateLimitCounters {
    /// Responses over the limit: dropped, or sent as a slip.
    pub fn limited(&self) -> u64 {
        self.limited.load(Ordering::Relaxed)
    }

    /// Responses over the limit sent as an empty truncated reply.
    pub fn slipped(&self) -> u64 {
        self.slipped.load(Ordering::Relaxed)
    }
}

/// One prefix's (or, after a collision, several prefixes') state.
#[derive(Default)]
struct Bucket {
    /// When the bucket's next response is due at the configured rate, in nanoseconds since
    /// [`RateLimiter::epoch`]; a response is allowed while this runs at most `window` ahead of
    /// now (GCRA). One number instead of a token count and a refill time, so one
    /// compare-and-swap updates it.
    due_ns: AtomicU64,
    /// Responses withheld so far: every `slip`-th of them slips.
    withheld: AtomicU32,
}

/// A point on the limiter's clock, read once per batch of datagrams.
#[derive(Debug, Clone, Copy)]
pub struct Tick(u64);

/// The rate limiter shared by every UDP thread of the DNS listener.
pub struct RateLimiter {
    buckets: Box<[Bucket]>,
    hasher: RandomState,
    epoch: Instant,
    /// Nanoseconds between two responses at the configured rate.
    interval_ns: u64,
    /// How far a bucket's due time may run ahead of now: the burst.
    window_ns: u64,
    slip: u32,
    exempt: Vec<IpNet>,
    counters: Arc<RateLimitCounters>,
}

impl RateLimiter {
    /// The limiter `config` describes, counting into `counters`; `None` when rate limiting is
    /// off (`responses_per_second = 0`). `config` was validated ([`crate::config::Config::validate`]).
    pub fn new(config: &RateLimitConfig, counters: Arc<RateLimitCounters>) -> Option<RateLimiter> {
        if config.responses_per_second == 0 {
            return None;
        }
        let buckets = (0..config.table_size.max(1))
            .map(|_| Bucket::default())
            .collect();
        Some(RateLimiter {
            buckets,
            hasher: RandomState::new(),
            epoch: Instant::now(),
            interval_ns: 1_000_000_000 / u64::from(config.responses_per_second),
            window_ns: u64::try_from(config.window.as_nanos()).unwrap_or(u64::MAX),
            slip: config.slip,
            exempt: config.exempt_networks(),
            counters,
        })
    }

    /// Now, on the limiter's clock. The UDP loop reads it once per batch: the datagrams of one
    /// batch arrived together.
    pub fn now(&self) -> Tick {
        Tick(self.elapsed_ns(Instant::now()))
    }

    fn elapsed_ns(&self, at: Instant) -> u64 {
        u64::try_from(at.duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Counts one UDP response to `client` at `now` and says whether it may go out.
    pub fn check(&self, client: IpAddr, now: Tick) -> Verdict {
        let client = client.to_canonical();
        if self.exempt.iter().any(|net| net.contains(&client)) {
            return Verdict::Send;
        }
        let bucket = &self.buckets[self.index(prefix_key(client))];
        let now = now.0;
        let mut due = bucket.due_ns.load(Ordering::Relaxed);
        loop {
            let next = due.max(now).saturating_add(self.interval_ns);
            if next - now > self.window_ns {
                break;
            }
            match bucket.due_ns.compare_exchange_weak(
                due,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Verdict::Send,
                Err(current) => due = current,
            }
        }
        // Over the limit. A withheld response leaves the clock alone, so a prefix that keeps
        // flooding is answered again at the configured rate, not starved for good.
        self.counters.limited.fetch_add(1, Ordering::Relaxed);
        let withheld = bucket
            .withheld
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        if self.slip != 0 && withheld.is_multiple_of(self.slip) {
            self.counters.slipped.fetch_add(1, Ordering::Relaxed);
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }

    /// The bucket of a prefix: the keyed hash mapped onto the table by a multiply-shift, which
    /// needs no power-of-two size.
    fn index(&self, key: u64) -> usize {
        let hash = self.hasher.hash_one(key);
        ((u128::from(hash) * self.buckets.len() as u128) >> 64) as usize
    }

    /// The memory the table holds, in bytes.
    pub fn table_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.buckets)
    }
}

/// The prefix of `client` as a number: IPv6 /56s below 2^56, IPv4 /24s above it, so the two
/// families never share a key.
fn prefix_key(client: IpAddr) -> u64 {
    match client {
        IpAddr::V4(v4) => (1 << 56) | u64::from(u32::from(v4) >> (32 - IPV4_PREFIX)),
        IpAddr::V6(v6) => (u128::from(v6) >> (128 - IPV6_PREFIX)) as u64,
    }
}

/// Whether `message` gets a response at all: a header's worth of bytes with QR clear, the test
/// `Responder::respond` applies before anything else. Only those are counted.
pub fn is_query(message: &[u8]) -> bool {
    message.len() >= 12 && message[2] & 0x80 == 0
}

/// The slip answering `query`: its header and first question, QR and TC set, no records (no OPT
/// either), so it is never larger than the query. Built from the query, not from an answer, so
/// a limited query costs no answer. `None` when the question cannot be cut out (too short, a
/// label type that does not exist); then nothing is sent.
pub fn slip_reply(query: &[u8]) -> Option<Vec<u8>> {
    const HEADER: usize = 12;
    if query.len() < HEADER {
        return None;
    }
    let questions = u16::from_be_bytes([query[4], query[5]]);
    let mut end = HEADER;
    if questions > 0 {
        // The question's name, label by label; a compression pointer (meaningless this early
        // in a message, but harmless) ends it.
        loop {
            let len = *query.get(end)?;
            match len {
                0 => {
                    end += 1;
                    break;
                }
                l if l & 0xC0 == 0xC0 => {
                    end += 2;
                    break;
                }
                l if l & 0xC0 != 0 => return None,
                l => end += 1 + l as usize,
            }
        }
        end += 4; // type and class
        if end > query.len() {
            return None;
        }
    }
    let mut slip = query[..end].to_vec();
    // QR and TC; the opcode and RD stay as asked. AA, RA, CD and the rcode are clear.
    slip[2] = (slip[2] & 0x79) | 0x82;
    slip[3] = 0;
    slip[4..6].copy_from_slice(&questions.min(1).to_be_bytes());
    slip[6..12].fill(0); // no answer, authority or additional records
    Some(slip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limiter(rate: u32, window_ms: u64, slip: u32, exempt: &[&str]) -> RateLimiter {
        let config = RateLimitConfig {
            responses_per_second: rate,
            window: Duration::from_millis(window_ms),
            slip,
            table_size: 1024,
            exempt: exempt.iter().map(|s| s.to_string()).collect(),
        };
        RateLimiter::new(&config, Arc::default()).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_burst_of_rate_times_window_then_the_rate() {
        let rrl = limiter(10, 1000, 0, &[]);
        let start = Tick(5_000_000_000);
        let sent = (0..100)
            .filter(|_| rrl.check(ip("192.0.2.1"), start) == Verdict::Send)
            .count();
        assert_eq!(sent, 10, "rate × window at once");
        // A tenth of a second later one more response is due, and only one.
        let later = Tick(start.0 + 100_000_000);
        let sent = (0..100)
            .filter(|_| rrl.check(ip("192.0.2.1"), later) == Verdict::Send)
            .count();
        assert_eq!(sent, 1);
        assert_eq!(rrl.counters.limited(), 90 + 99);
        assert_eq!(rrl.counters.slipped(), 0, "slip 0 never slips");
        // After a quiet window the whole burst is back.
        let quiet = Tick(later.0 + 1_000_000_000);
        let sent = (0..100)
            .filter(|_| rrl.check(ip("192.0.2.1"), quiet) == Verdict::Send)
            .count();
        assert_eq!(sent, 10);
    }

    #[test]
    fn the_limit_is_per_prefix() {
        let rrl = limiter(5, 1000, 2, &[]);
        let now = Tick(1_000_000_000);
        // One /24 shares a bucket, whatever the host.
        for host in 1..=5 {
            assert_eq!(
                rrl.check(ip(&format!("198.51.100.{host}")), now),
                Verdict::Send
            );
        }
        assert_ne!(rrl.check(ip("198.51.100.200"), now), Verdict::Send);
        // The next /24 (unless the keyed hash put both in one bucket of 1024: checked on the
        // next prefixes until one is apart) is answered.
        let apart = (101..=120)
            .map(|third| format!("198.51.{third}.1"))
            .find(|other| {
                rrl.index(prefix_key(ip(other))) != rrl.index(prefix_key(ip("198.51.100.1")))
            })
            .unwrap();
        assert_eq!(rrl.check(ip(&apart), now), Verdict::Send);
        // IPv6: one /56 (again one apart from the IPv4 prefix's bucket), and an IPv4-mapped
        // address counts as its IPv4 prefix.
        let site = (0..20)
            .map(|n| format!("2001:db8:{n:x}:ff"))
            .find(|site| {
                rrl.index(prefix_key(ip(&format!("{site}00::1"))))
                    != rrl.index(prefix_key(ip("198.51.100.1")))
            })
            .unwrap();
        for n in 0..5 {
            assert_eq!(
                rrl.check(ip(&format!("{site}{n:02x}::1")), now),
                Verdict::Send
            );
        }
        assert_ne!(rrl.check(ip(&format!("{site}ab::9")), now), Verdict::Send);
        assert_ne!(rrl.check(ip("::ffff:198.51.100.7"), now), Verdict::Send);
    }

    #[test]
    fn every_slip_th_withheld_response_slips() {
        let rrl = limiter(1, 1000, 3, &[]);
        let now = Tick(1_000_000_000);
        assert_eq!(rrl.check(ip("203.0.113.9"), now), Verdict::Send);
        let verdicts: Vec<Verdict> = (0..9).map(|_| rrl.check(ip("203.0.113.9"), now)).collect();
        use Verdict::{Drop, Slip};
        assert_eq!(
            verdicts,
            [Drop, Drop, Slip, Drop, Drop, Slip, Drop, Drop, Slip]
        );
        assert_eq!((rrl.counters.limited(), rrl.counters.slipped()), (9, 3));
        let every = limiter(1, 1000, 1, &[]);
        every.check(ip("203.0.113.9"), now);
        assert_eq!(every.check(ip("203.0.113.9"), now), Verdict::Slip);
    }

    #[test]
    fn exempt_networks_and_off_are_never_limited() {
        let rrl = limiter(1, 1000, 2, &["127.0.0.0/8", "::1/128"]);
        let now = Tick(1_000_000_000);
        for _ in 0..100 {
            assert_eq!(rrl.check(ip("127.0.0.1"), now), Verdict::Send);
            assert_eq!(rrl.check(ip("::1"), now), Verdict::Send);
            assert_eq!(rrl.check(ip("::ffff:127.0.0.1"), now), Verdict::Send);
        }
        let off = RateLimitConfig {
            responses_per_second: 0,
            ..RateLimitConfig::default()
        };
        assert!(RateLimiter::new(&off, Arc::default()).is_none());
    }

    #[test]
    fn threads_share_the_limit() {
        let rrl = Arc::new(limiter(1000, 1000, 0, &[]));
        let now = Tick(1_000_000_000);
        let sent: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let rrl = rrl.clone();
                    s.spawn(move || {
                        (0..1000)
                            .filter(|_| rrl.check(ip("192.0.2.77"), now) == Verdict::Send)
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(sent, 1000, "no more than the burst, across threads");
        assert_eq!(rrl.counters.limited(), 3000);
    }

    #[test]
    fn the_table_is_fixed() {
        let rrl = limiter(10, 1000, 2, &[]);
        let before = rrl.table_bytes();
        let now = Tick(1_000_000_000);
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                rrl.check(IpAddr::from([10, a, b, 1]), now);
            }
        }
        assert_eq!(rrl.table_bytes(), before);
        assert_eq!(before, 1024 * 16);
    }

    #[test]
    fn a_slip_is_header_and_question_with_tc() {
        use hickory_proto::op::{Edns, Message, MessageType, Query};
        use hickory_proto::rr::{Name, RecordType};
        use std::str::FromStr;
        let mut query = Message::query();
        query.metadata.id = 4711;
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(
            Name::from_str("_web._tcp.service.local.").unwrap(),
            RecordType::SRV,
        ));
        query.set_edns(Edns::new());
        let bytes = query.to_vec().unwrap();
        assert!(is_query(&bytes));
        let slip = slip_reply(&bytes).unwrap();
        assert!(slip.len() < bytes.len(), "no OPT: smaller than the query");
        let slip = Message::from_vec(&slip).unwrap();
        assert!(slip.metadata.truncation);
        assert!(slip.metadata.recursion_desired);
        assert_eq!(slip.metadata.id, 4711);
        assert_eq!(slip.metadata.message_type, MessageType::Response);
        assert_eq!(slip.queries, query.queries);
        assert!(slip.answers.is_empty() && slip.additionals.is_empty() && slip.edns.is_none());

        assert!(slip_reply(&bytes[..11]).is_none());
        let cut = &bytes[..12 + 20];
        assert!(slip_reply(cut).is_none(), "a question cut short");
        let mut response = bytes.clone();
        response[2] |= 0x80;
        assert!(!is_query(&response) && !is_query(&bytes[..11]));
    }
}
