//! Forwarding of names outside beacon's zones to upstream resolvers, with hickory's DNS client
//! (hickory-net's UDP and TCP client streams, the transport hickory's own resolver uses).
//!
//! The upstream's answer is relayed as it came (rcode, every section, TTLs); only the message id
//! is the client's. Upstreams are tried in order: one that times out, fails, or answers
//! SERVFAIL/REFUSED passes the question to the next; when none answers, the client gets
//! SERVFAIL within `upstreams × dns.upstream_timeout`.
//!
//! Only clients inside `dns.recursion_allow` are forwarded for, so beacon is never an open
//! resolver.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use hickory_net::client::Client;
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_net::xfer::{DnsHandle, DnsRequestSender, FirstAnswer};
use hickory_proto::op::{DnsRequest, DnsRequestOptions, Edns, Message, Query, ResponseCode};
use ipnet::IpNet;

use super::answer::Transport;
use crate::config::DnsConfig;

/// Where and for whom names are forwarded.
#[derive(Debug, Clone)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    allow: Vec<IpNet>,
    timeout: Duration,
}

impl Forwarder {
    /// Forwards to `upstreams` (tried in order) for clients inside `allow`.
    /// The forwarder `dns.*` describes: `upstreams` if given, else `resolv_conf`'s
    /// nameservers, in both cases without `own`, the address beacon's DNS is bound to (known
    /// only once bound, with port 0).
    pub fn from_config(config: &DnsConfig, own: SocketAddr) -> Forwarder {
        let listed = if config.upstreams.is_empty() {
            resolv_conf_nameservers(&config.resolv_conf)
        } else {
            config.upstream_socket_addrs()
        };
        Forwarder::new(
            without_self(listed, own),
            config.recursion_networks(),
            config.upstream_timeout,
        )
    }

    pub fn new(upstreams: Vec<SocketAddr>, allow: Vec<IpNet>, timeout: Duration) -> Forwarder {
        Forwarder {
            upstreams,
            allow,
            timeout,
        }
    }

    /// The upstreams, in the order they are tried.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// Whether `client` may have names forwarded.
    pub fn allows(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        self.allow.iter().any(|net| net.contains(&client))
    }

    /// Asks the upstreams `query` and returns the first usable answer, or `None` when every
    /// upstream failed. `transport` is the client's: a TCP client gets a TCP upstream query, so
    /// large answers come back whole.
    pub async fn forward(
        &self,
        query: &Query,
        dnssec_ok: bool,
        checking_disabled: bool,
        transport: Transport,
    ) -> Option<Message> {
        let mut message = Message::query();
        message.add_query(query.clone());
        message.metadata.recursion_desired = true;
        message.metadata.checking_disabled = checking_disabled;
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        edns.set_dnssec_ok(dnssec_ok);
        message.set_edns(edns);
        for upstream in &self.upstreams {
            let request = DnsRequest::new(message.clone(), DnsRequestOptions::default());
            let answer = match transport {
                Transport::Udp => self.over_udp(*upstream, request).await,
                Transport::Tcp => self.over_tcp(*upstream, request).await,
            };
            match answer {
                Some(reply)
                    if !matches!(
                        reply.metadata.response_code,
                        ResponseCode::ServFail | ResponseCode::Refused
                    ) =>
                {
                    return Some(reply)
                }
                Some(reply) => {
                    tracing::debug!(%upstream, rcode = %reply.metadata.response_code, "upstream failed; trying the next")
                }
                None => tracing::debug!(%upstream, "upstream did not answer; trying the next"),
            }
        }
        None
    }

    async fn over_udp(&self, upstream: SocketAddr, request: DnsRequest) -> Option<Message> {
        let mut stream = UdpClientStream::builder(upstream, TokioRuntimeProvider::default())
            .with_timeout(Some(self.timeout))
            .with_max_retries(0)
            .build();
        let answer = stream.send_message(request).first_answer();
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(response)) => Some(response.into()),
            _ => None,
        }
    }

    async fn over_tcp(&self, upstream: SocketAddr, request: DnsRequest) -> Option<Message> {
        let exchange = async {
            let (connect, handle) = TcpClientStream::new(
                upstream,
                None,
                Some(self.timeout),
                TokioRuntimeProvider::default(),
            );
            let stream = connect.await.ok()?;
            let (client, background) =
                Client::<TokioRuntimeProvider>::with_timeout(stream, handle, self.timeout);
            // The background future drives the connection; it lives exactly as long as this
            // one exchange, so nothing outlives the query.
            tokio::select! {
                answer = client.send(request).first_answer() => answer.ok().map(Message::from),
                _ = background => None,
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .ok()
            .flatten()
    }
}

/// The nameservers of a resolv.conf, as socket addresses on port 53.
pub fn resolv_conf_nameservers(path: &Path) -> Vec<SocketAddr> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        // A link-local v6 server carries a zone (fe80::1%eth0), which SocketAddr cannot hold.
        .filter_map(|addr| addr.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Leaves out upstreams that are beacon itself (its DNS address, or any local address on its
/// port when it listens on all of them), so it never forwards to itself.
pub fn without_self(upstreams: Vec<SocketAddr>, own: SocketAddr) -> Vec<SocketAddr> {
    upstreams
        .into_iter()
        .filter(|u| {
            let same_port = u.port() == own.port();
            let same_ip = u.ip().to_canonical() == own.ip().to_canonical();
            let own_wildcard_local =
                own.ip().is_unspecified() && (u.ip().is_loopback() || u.ip().is_unspecified());
            !(same_port && (same_ip || own_wildcard_local))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nameservers_and_leaves_out_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(
            &path,
            "# comment\nsearch example.com\nnameserver 127.0.0.1\nnameserver 10.0.0.53\nnameserver fe80::1%eth0\nnameserver ::1\n",
        )
        .unwrap();
        let all = resolv_conf_nameservers(&path);
        assert_eq!(all.len(), 3);
        let own: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let kept = without_self(all.clone(), own);
        assert_eq!(
            kept,
            vec!["10.0.0.53:53".parse().unwrap(), "[::1]:53".parse().unwrap()]
        );
        let wildcard: SocketAddr = "0.0.0.0:53".parse().unwrap();
        assert_eq!(
            without_self(all.clone(), wildcard),
            vec!["10.0.0.53:53".parse().unwrap()]
        );
        let other_port: SocketAddr = "127.0.0.1:8600".parse().unwrap();
        assert_eq!(without_self(all, other_port).len(), 3);
    }

    #[test]
    fn acl_matches_networks_and_mapped_addresses() {
        let f = Forwarder::new(
            vec![],
            vec![
                "127.0.0.0/8".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap(),
            ],
            Duration::from_secs(1),
        );
        assert!(f.allows("127.0.0.1".parse().unwrap()));
        assert!(f.allows("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!f.allows("192.0.2.1".parse().unwrap()));
    }
}
