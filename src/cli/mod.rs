//! The command line: flag definitions and the commands behind them. `main.rs` only calls
//! [`main`]; every error ends here as one line on standard error and a non-zero exit.
//! The client commands are thin layers over [`crate::client`]; `announce` (the sidecar) and
//! `watch` have modules of their own.

mod announce;
mod watch;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::auth::keys::ClientKey;
use crate::client::{send_to_any, ProviderBuilder};
use crate::config::Config;
use crate::protocol::{InstanceInfo, Reply, WireRequest};
use crate::serve::{self, Sockets};

pub use crate::client::DEFAULT_REGISTRY;

/// beacon: service discovery with a DNS interface.
///
/// Providers register over a small UDP/TCP protocol and keep heartbeating; consumers ask plain
/// DNS (`<service>.service.local` A/AAAA/SRV) and get only the live addresses.
#[derive(Debug, Parser)]
#[command(name = "beacon", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the registry and its DNS interface.
    Serve(ServeArgs),
    /// Register a provider and keep it registered with heartbeats until stopped; deregisters on
    /// SIGINT or SIGTERM. With checks, registered only while they pass; with `-- COMMAND`, runs
    /// the provider as a child and exits with its status.
    Announce(announce::AnnounceArgs),
    /// Register (or renew) an instance once.
    Register(RegistrationArgs),
    /// Remove an instance now.
    Deregister(DeregisterArgs),
    /// Show the live instances, with their time to expiry.
    List(ListArgs),
    /// Print the live set of services at every change, as it happens (push, not polling).
    Watch(watch::WatchArgs),
    /// Show the registry's size and whether self-preservation has stopped expiry.
    Status(StatusArgs),
    /// Print a new key line `NAME SECRET SERVICES` for the server's keys file (and, as it is,
    /// for a client's --key-file).
    Keygen(KeygenArgs),
}

#[derive(Debug, Args)]
struct KeygenArgs {
    /// The key's name: lower-case letters, digits, '-', '_' and '.'.
    name: String,
    /// The services it may change, comma-separated: names, prefix patterns such as `web-*`,
    /// or `*` for all.
    services: String,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML configuration file (see beacon.example.toml); flags override it.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// DNS address, UDP and TCP [config: dns.listen, default 127.0.0.1:8600].
    #[arg(long, value_name = "ADDR:PORT")]
    dns: Option<SocketAddr>,
    /// Registration protocol address, UDP and TCP [config: registry.listen, default 127.0.0.1:8601].
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// Domain served [config: dns.domain, default service.local].
    #[arg(long, value_name = "DOMAIN")]
    domain: Option<String>,
    /// Worker threads, 0 for one per core [config: threads].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Keys file: with keys, every change must be signed by a key that covers its service;
    /// re-read on SIGHUP [config: auth.keys_file].
    #[arg(long, value_name = "FILE")]
    keys: Option<PathBuf>,
    /// Keep registrations on disk in DIR, so a restart or crash loses none [config: data_dir].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Cluster mode: share one catalog with other nodes through these etcd endpoints,
    /// comma-separated (http://HOST:PORT; https:// with the config's cluster.ca_file)
    /// [config: cluster.etcd; needs the `etcd` feature].
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    etcd: Vec<String>,
    /// The HTTP API, web view, Consul catalog API and /metrics on ADDR:PORT, or `off`
    /// [config: http.listen; default 127.0.0.1:8500 when it is free].
    #[arg(long, value_name = "ADDR:PORT|off")]
    http: Option<String>,
    /// Serve Prometheus metrics on GET /metrics at this address [config: metrics.listen].
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<SocketAddr>,
    /// This node's name in the cluster [config: cluster.node; default: the host name].
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// Log filter such as info or debug [config: log_level; env RUST_LOG wins].
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Upstream resolver for names outside beacon's zones, IP or IP:PORT; repeatable
    /// [config: dns.upstreams; default: the nameservers of /etc/resolv.conf].
    #[arg(long = "upstream", value_name = "ADDR[:PORT]")]
    upstreams: Vec<String>,
    /// Directory of zone files to serve [config: dns.zones].
    #[arg(long, value_name = "DIR")]
    zones: Option<PathBuf>,
    /// The resolv.conf whose nameservers are the default upstreams [config: dns.resolv_conf].
    #[arg(long, value_name = "FILE")]
    resolv_conf: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RegistryArg {
    /// Registry address; several separated by commas are tried in order, the next one taking
    /// over when one stops answering.
    #[arg(long, env = "BEACON_REGISTRY", default_value = DEFAULT_REGISTRY, value_name = "HOST:PORT[,...]")]
    registry: String,
    /// Sign requests with the key in FILE (`NAME SECRET`, or a line of the server's keys file
    /// as it is).
    #[arg(long, env = "BEACON_KEY_FILE", value_name = "FILE")]
    key_file: Option<PathBuf>,
}

impl RegistryArg {
    fn list(&self) -> anyhow::Result<Vec<String>> {
        Ok(crate::client::parse_registries(&self.registry)?)
    }

    /// The key to sign with, if one was given.
    fn key(&self) -> anyhow::Result<Option<ClientKey>> {
        Ok(self.key_file.as_deref().map(ClientKey::load).transpose()?)
    }
}

#[derive(Debug, Args)]
struct RegistrationArgs {
    /// Service name: one DNS label (letters, digits, '-').
    #[arg(long, short = 's')]
    service: String,
    /// Port the provider listens on.
    #[arg(long, short = 'p')]
    port: u16,
    /// Address consumers connect to [default: the address the registry sees the request from].
    #[arg(long, short = 'a')]
    address: Option<IpAddr>,
    /// Instance id, one DNS label, unique within the service [default: address and port, e.g. 10-0-0-2-8080].
    #[arg(long)]
    id: Option<String>,
    /// A tag, usable as <tag>.<service>.service.local; repeatable.
    #[arg(long = "tag", short = 't', value_name = "TAG")]
    tags: Vec<String>,
    /// Metadata published as TXT key=value; repeatable.
    #[arg(long = "meta", short = 'm', value_name = "KEY=VALUE", value_parser = parse_meta)]
    meta: Vec<(String, String)>,
    /// SRV weight [default: 1].
    #[arg(long)]
    weight: Option<u16>,
    /// Lease: the instance leaves the answers this long after its last heartbeat, e.g. 500ms, 10s, 2m [default: registry.default_ttl].
    #[arg(long, value_parser = parse_duration)]
    ttl: Option<Duration>,
    #[command(flatten)]
    registry: RegistryArg,
}

#[derive(Debug, Args)]
struct DeregisterArgs {
    /// Service name.
    #[arg(long, short = 's')]
    service: String,
    /// Instance id.
    #[arg(long)]
    id: String,
    #[command(flatten)]
    registry: RegistryArg,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Only this service.
    service: Option<String>,
    /// Print the registry's JSON reply instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    registry: RegistryArg,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// Print the registry's JSON reply instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    registry: RegistryArg,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{e} (write durations like 500ms, 10s, 2m)"))
}

fn parse_meta(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve_command(args).map(|()| 0),
        other => {
            init_logging("warn");
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(client_command(other)),
                Err(e) => Err(e.into()),
            }
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("beacon: {}", one_line(&e));
            1
        }
    }
}

/// The error and its causes on one line, each cause once: the library's errors already name
/// their source in their message (`data directory /x: No such file…`), and anyhow's `{:#}`
/// would repeat it.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

fn init_logging(default: &str) {
    // RUST_LOG wins when it is a filter, as before; `default` (log_level) was validated with
    // the same function, so "info" is only a last resort.
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|text| crate::config::log_filter(&text))
        .or_else(|| crate::config::log_filter(default))
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in a journal or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// The configuration file (if any) with the command line's overrides applied, validated.
/// Read again on every SIGHUP.
fn serve_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(dns) = args.dns {
        config.dns.listen = dns;
    }
    if let Some(listen) = args.listen {
        config.registry.listen = listen;
    }
    if let Some(domain) = &args.domain {
        config.dns.domain = domain.clone();
    }
    if let Some(keys) = &args.keys {
        config.auth.keys_file = Some(keys.clone());
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = Some(dir.clone());
    }
    if let Some(threads) = args.threads {
        config.threads = threads;
    }
    if !args.etcd.is_empty() {
        config.cluster.etcd = args.etcd.clone();
    }
    if let Some(node) = &args.node {
        config.cluster.node = node.clone();
    }
    if let Some(http) = &args.http {
        config.http.listen = Some(http.clone());
    }
    if let Some(metrics) = args.metrics {
        config.metrics.listen = Some(metrics);
    }
    if let Some(level) = &args.log_level {
        config.log_level = level.clone();
    }
    if !args.upstreams.is_empty() {
        config.dns.upstreams = args.upstreams.clone();
    }
    if let Some(zones) = &args.zones {
        config.dns.zones = Some(zones.clone());
    }
    if let Some(resolv_conf) = &args.resolv_conf {
        config.dns.resolv_conf = resolv_conf.clone();
    }
    config.validate()?;
    Ok(config)
}

fn serve_command(args: ServeArgs) -> anyhow::Result<()> {
    let config = serve_config(&args)?;
    init_logging(&config.log_level);

    let sockets = Sockets::bind(config.dns.listen, config.registry.listen)?
        .with_metrics(config.metrics.listen)?
        .with_http(config.http.listen())?;
    let dns = sockets.dns_addr()?;
    let registry = sockets.registry_addr()?;
    let mut metrics = match sockets.metrics_addr()? {
        Some(addr) => format!(" metrics={addr}"),
        None => String::new(),
    };
    if let Some(addr) = sockets.http_addr()? {
        metrics.push_str(&format!(" http={addr}"));
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.threads > 0 {
        runtime.worker_threads(config.threads);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        // Every handler is in place before the listening line tells the world we are up.
        let stop = StopSignals::install()?;
        let hangups = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        let shutdown = CancellationToken::new();
        tokio::spawn(stop.cancel(shutdown.clone()));
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(reload_on_sighup(args, hangups, reload_tx));
        // One line on stdout with the bound addresses: with port 0 this is how callers (tests,
        // scripts) learn the real ports.
        println!(
            "beacon listening: dns={dns} registry={registry} domain={}{metrics}",
            config.dns.domain
        );
        tracing::info!(%dns, %registry, domain = %config.dns.domain, "serving");
        serve::run(&config, sockets, shutdown, reload_rx).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// On every SIGHUP, reads the configuration again and hands it to the server; a file that does
/// not parse is reported and changes nothing.
async fn reload_on_sighup(
    args: ServeArgs,
    mut hangups: Signal,
    reloads: tokio::sync::mpsc::Sender<Config>,
) {
    while hangups.recv().await.is_some() {
        match serve_config(&args) {
            Ok(config) => {
                if reloads.send(config).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                tracing::error!("reload failed; the running configuration stays: {error:#}")
            }
        }
    }
}

/// SIGINT and SIGTERM, with their handlers installed when this is built: a signal that arrives
/// between start-up and the first wait is then delivered here, not to the default action that
/// would kill the process without a graceful stop.
struct StopSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<StopSignals> {
        Ok(StopSignals {
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    /// Completes on the next SIGINT or SIGTERM; returns which.
    async fn recv(&mut self) -> libc::c_int {
        tokio::select! {
            _ = self.terminate.recv() => libc::SIGTERM,
            _ = self.interrupt.recv() => libc::SIGINT,
        }
    }

    /// Cancels `token` on the next SIGINT or SIGTERM.
    async fn cancel(mut self, token: CancellationToken) {
        self.recv().await;
        token.cancel();
    }
}

/// Runs a client command; returns the exit code.
async fn client_command(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Serve(_) => unreachable_serve(),
        Command::Register(args) => {
            let reply = send_to_any(
                &args.registry.list()?,
                args.provider_builder()?.request(),
                false,
                args.registry.key()?.as_ref(),
            )
            .await?;
            if let Some(instance) = reply.instance {
                println!(
                    "registered {}/{} at {} for {}",
                    instance.service,
                    instance.id,
                    SocketAddr::new(instance.address, instance.port),
                    humantime::format_duration(Duration::from_millis(instance.ttl_ms))
                );
            }
            Ok(0)
        }
        Command::Deregister(args) => {
            let request = WireRequest {
                op: "deregister".into(),
                service: Some(args.service.clone()),
                id: Some(args.id.clone()),
                ..WireRequest::default()
            };
            let key = args.registry.key()?;
            send_to_any(&args.registry.list()?, &request, false, key.as_ref()).await?;
            println!("deregistered {}/{}", args.service, args.id);
            Ok(0)
        }
        Command::List(args) => {
            let request = WireRequest {
                op: "list".into(),
                service: args.service.clone(),
                ..WireRequest::default()
            };
            let key = args.registry.key()?;
            let reply = send_to_any(&args.registry.list()?, &request, true, key.as_ref()).await?;
            if args.json {
                println!("{}", String::from_utf8_lossy(&reply.to_json()));
            } else {
                if reply.stale == Some(true) {
                    eprintln!(
                        "stale: this node cannot reach etcd; the list is its last view of the cluster"
                    );
                }
                print!("{}", table(reply.instances.as_deref().unwrap_or_default()));
            }
            Ok(0)
        }
        Command::Status(args) => {
            let request = WireRequest {
                op: "status".into(),
                ..WireRequest::default()
            };
            // Over TCP, like list: the reply is several times the request, over UDP's bound.
            let key = args.registry.key()?;
            let reply = send_to_any(&args.registry.list()?, &request, true, key.as_ref()).await?;
            if args.json {
                println!("{}", String::from_utf8_lossy(&reply.to_json()));
            } else {
                print!("{}", status_text(&reply));
            }
            Ok(0)
        }
        Command::Announce(args) => announce::run(args).await,
        Command::Watch(args) => watch::run(args).await,
        Command::Keygen(args) => {
            let line = crate::auth::keys::generate_line(&args.name, &args.services)
                .map_err(anyhow::Error::msg)?;
            println!("{line}");
            Ok(0)
        }
    }
}

fn unreachable_serve() -> anyhow::Result<i32> {
    bail!("serve runs on its own runtime")
}

impl RegistrationArgs {
    /// The provider these flags describe: `announce` spawns it, `register` sends its request.
    fn provider_builder(&self) -> anyhow::Result<ProviderBuilder> {
        let mut builder =
            ProviderBuilder::new(&self.service, self.port).registries(&self.registry.registry)?;
        if let Some(key) = self.registry.key()? {
            builder = builder.key(key);
        }
        if let Some(address) = self.address {
            builder = builder.address(address);
        }
        if let Some(id) = &self.id {
            builder = builder.id(id);
        }
        for tag in &self.tags {
            builder = builder.tag(tag);
        }
        for (key, value) in &self.meta {
            builder = builder.meta(key, value);
        }
        if let Some(weight) = self.weight {
            builder = builder.weight(weight);
        }
        if let Some(ttl) = self.ttl {
            builder = builder.ttl(ttl);
        }
        Ok(builder)
    }
}

/// A `status` reply for people: one `name  value` line each.
fn status_text(reply: &Reply) -> String {
    let number = |n: Option<u64>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
    let preservation = match &reply.self_preservation {
        None => "-".to_string(),
        Some(sp) if !sp.enabled => "off: leases always run out".to_string(),
        Some(sp) => {
            let rule = format!(
                "at {}% of instances expiring within {}, at least {}",
                sp.threshold * 100.0,
                humantime::format_duration(Duration::from_millis(sp.window_ms)),
                sp.min_instances
            );
            match sp.active_for_ms {
                Some(ms) => format!(
                    "ACTIVE for {:.1}s: expiry stopped, {} instances overdue ({rule})",
                    ms as f64 / 1000.0,
                    sp.overdue
                ),
                None => format!("on, not active ({rule})"),
            }
        }
    };
    let rows = [
        ("version", number(reply.version)),
        ("run", number(reply.run)),
        ("services", number(reply.service_count)),
        ("instances", number(reply.instance_count)),
        ("self-preservation", preservation),
        (
            "view",
            if reply.stale == Some(true) {
                "STALE: cluster mode, etcd unreachable; answering from the last view".to_string()
            } else {
                "current".to_string()
            },
        ),
    ];
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(name, value)| format!("{name:<width$}  {value}\n"))
        .collect()
}

/// The live instances as an aligned table.
fn table(instances: &[InstanceInfo]) -> String {
    let mut rows = vec![[
        "SERVICE".to_string(),
        "ID".into(),
        "ADDRESS".into(),
        "PORT".into(),
        "WEIGHT".into(),
        "TAGS".into(),
        "META".into(),
        "EXPIRES IN".into(),
    ]];
    for i in instances {
        rows.push([
            i.service.clone(),
            i.id.clone(),
            i.address.to_string(),
            i.port.to_string(),
            i.weight.to_string(),
            if i.tags.is_empty() {
                "-".into()
            } else {
                i.tags.join(",")
            },
            if i.meta.is_empty() {
                "-".into()
            } else {
                i.meta
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            },
            match i.expires_in_ms {
                Some(ms) => format!("{:.1}s", ms as f64 / 1000.0),
                None if i.remote => "remote".into(),
                None => "-".into(),
            },
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::collections::BTreeMap;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn meta_flags_need_a_key() {
        assert_eq!(parse_meta("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(parse_meta("=x").is_err());
        assert!(parse_meta("novalue").is_err());
    }

    #[test]
    fn status_says_whether_expiry_is_stopped() {
        let mut sp = crate::protocol::SelfPreservationInfo {
            enabled: true,
            active: true,
            active_for_ms: Some(12_345),
            overdue: 40,
            threshold: 0.5,
            window_ms: 10_000,
            min_instances: 20,
        };
        let reply = |sp: &crate::protocol::SelfPreservationInfo| Reply {
            v: 1,
            ok: true,
            op: Some("status".into()),
            version: Some(41),
            run: Some(7),
            service_count: Some(1),
            instance_count: Some(40),
            self_preservation: Some(sp.clone()),
            ..Reply::default()
        };
        let out = status_text(&reply(&sp));
        assert!(out.contains("instances          40\n"), "{out}");
        assert!(
            out.contains("ACTIVE for 12.3s: expiry stopped, 40 instances overdue")
                && out.contains("at 50% of instances expiring within 10s, at least 20"),
            "{out}"
        );
        sp.active = false;
        sp.active_for_ms = None;
        assert!(status_text(&reply(&sp)).contains("on, not active"));
        sp.enabled = false;
        assert!(status_text(&reply(&sp)).contains("off"));
    }

    #[test]
    fn an_error_line_names_each_cause_once() {
        let io = std::io::Error::other("disk on fire");
        let inner = crate::store::StoreError::Directory {
            path: "/x".into(),
            source: io,
        };
        let error = anyhow::Error::from(inner).context("cannot start");
        assert_eq!(
            one_line(&error),
            "cannot start: data directory /x: disk on fire"
        );
    }

    #[test]
    fn table_lists_every_field() {
        let out = table(&[InstanceInfo {
            service: "web".into(),
            id: "w1".into(),
            address: "10.0.0.1".parse().unwrap(),
            port: 80,
            weight: 1,
            tags: vec!["a".into()],
            meta: BTreeMap::from([("v".into(), "1".into())]),
            ttl_ms: 5000,
            expires_in_ms: Some(4200),
            remote: false,
        }]);
        assert!(
            out.contains("web")
                && out.contains("10.0.0.1")
                && out.contains("v=1")
                && out.contains("4.2s"),
            "{out}"
        );
    }
}
