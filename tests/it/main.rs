//! Integration tests: the real `beacon` binary on ephemeral loopback ports, driven through its
//! wire protocol, its command line and real DNS clients. One test binary with modules, so the
//! crate is linked once.

mod auth;
mod cli;
mod cluster;
mod dns;
mod dns_details;
mod durability;
mod examples;
mod http;
mod lifecycle;
mod metrics;
mod preservation;
mod protocol;
mod rate_limit;
mod resolver;
mod sidecar;
mod support;
mod system_resolver;
mod update;
mod watch;
mod web_view;
