//! beacon: service discovery with a DNS interface.
//!
//! Providers register over a small JSON protocol and keep heartbeating; consumers ask plain DNS
//! and get only the addresses whose leases still run. Data flows one way:
//! [`protocol`] → [`registry`] → [`dns`]. See `ARCHITECTURE.md` for the codemap.
//!
//! - [`config`]: the typed configuration, its defaults and its validation.
//! - [`name`]: validation of service names, instance ids and tags (each one DNS label).
//! - [`registry`]: the live set, leases, event-driven expiry, versions, read snapshots.
//! - [`protocol`]: the registration protocol's messages and its UDP/TCP listeners.
//! - [`auth`]: keys, signed requests, the replay window and protected mode, between
//!   [`protocol`] and [`registry`].
//! - [`update`]: DNS UPDATE (RFC 2136) with TSIG and the Update Lease option: a second writer
//!   beside [`protocol`], through the same [`auth`], handed UPDATEs by the DNS listener.
//! - [`dns`]: DNS answers from registry snapshots, and the DNS UDP/TCP listeners.
//! - [`net`]: datagram and connection loops shared by both listeners.
//! - [`client`]: the client library: one-off requests, providers kept registered with
//!   failover, watchers, and the sidecar's health checks.
//! - [`store`]: durable registrations (`--data-dir`) in redb, behind a group-commit journal.
//! - [`cluster`]: cluster mode (`--etcd`): nodes share one catalog through etcd, each writing
//!   the instances it holds under its own lease and watching the others'.
//! - [`http`]: the HTTP API, Consul's catalog API and `/metrics` on one listener (`--http`),
//!   read from the registry.
//! - [`metrics`]: Prometheus metrics over HTTP (`--metrics`), read from the registry.
//! - [`serve`]: wires the registry and both interfaces into one server.
//! - [`cli`]: the command line.

pub mod auth;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod dns;
pub mod http;
pub mod metrics;
pub mod name;
pub mod net;
pub mod protocol;
pub mod registry;
pub mod serve;
pub mod store;
pub mod update;

#[cfg(test)]
mod fuzz_replay;
