//! `beacon announce`: the sidecar. Keeps a provider registered (through
//! [`crate::client::Provider`]) while its health checks pass, optionally running the provider
//! itself as a child process whose life bounds the registration.

use std::process::ExitStatus;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::process::Child;

use super::{parse_duration, RegistrationArgs, StopSignals};
use crate::client::check::{Check, Damping, Health};
use crate::client::{ClientError, Provider, ProviderBuilder, Status};

#[derive(Debug, Args)]
pub(super) struct AnnounceArgs {
    #[command(flatten)]
    registration: RegistrationArgs,
    /// Register only while a GET of this http:// URL answers 2xx.
    #[arg(long, value_name = "URL")]
    check_http: Option<String>,
    /// Register only while a TCP connection to HOST:PORT is accepted.
    #[arg(long, value_name = "HOST:PORT")]
    check_tcp: Option<String>,
    /// Register only while `sh -c COMMAND` exits with status 0.
    #[arg(long, value_name = "COMMAND")]
    check_cmd: Option<String>,
    /// Time between checks.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    check_interval: Duration,
    /// A check that takes longer fails.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    check_timeout: Duration,
    /// Consecutive passes before a deregistered instance is registered again (the first pass
    /// registers at once).
    #[arg(long, default_value_t = 2, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    check_passes: u32,
    /// Consecutive failures before a registered instance is deregistered.
    #[arg(long, default_value_t = 2, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    check_failures: u32,
    /// The provider to run as a child: `announce [OPTIONS] -- COMMAND [ARGS]...`. It is
    /// deregistered when the child exits; SIGINT and SIGTERM are passed on to it after
    /// deregistering; announce exits with the child's status.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

impl AnnounceArgs {
    fn checks(&self) -> anyhow::Result<Vec<Check>> {
        let mut checks = Vec::new();
        if let Some(url) = &self.check_http {
            checks.push(Check::http(url)?);
        }
        if let Some(target) = &self.check_tcp {
            checks.push(Check::tcp(target)?);
        }
        if let Some(command) = &self.check_cmd {
            checks.push(Check::command(command)?);
        }
        Ok(checks)
    }
}

/// Runs the sidecar until a stop signal, the child's exit, or a final refusal; returns the exit
/// code (the child's, when there is one).
pub(super) async fn run(args: AnnounceArgs) -> anyhow::Result<i32> {
    let builder = args.registration.provider_builder()?;
    let checks = args.checks()?;
    let mut signals = StopSignals::install()?;
    let mut child = match args.command.split_first() {
        Some((program, rest)) => Some(
            tokio::process::Command::new(program)
                .args(rest)
                .spawn()
                .with_context(|| format!("cannot run {program:?}"))?,
        ),
        None => None,
    };
    let mut sidecar = Sidecar {
        builder,
        provider: None,
        reported: Status::Stopped,
    };
    if checks.is_empty() {
        sidecar.start()?;
    }
    let mut damping = Damping::new(args.check_passes, args.check_failures);
    let mut next_check = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_check), if !checks.is_empty() => {
                next_check = tokio::time::Instant::now() + args.check_interval;
                let failure = run_checks(&checks, args.check_timeout).await;
                if let Some(reason) = &failure {
                    eprintln!("beacon: check failed: {reason}");
                }
                match damping.record(failure.is_none()) {
                    Some(Health::Passing) => {
                        eprintln!("beacon: checks passing; registering");
                        sidecar.start()?;
                    }
                    Some(Health::Failing) => {
                        eprintln!("beacon: checks failing; deregistering");
                        sidecar.stop().await;
                    }
                    None => {}
                }
            }
            status = sidecar.changed() => {
                if let Status::Refused { code, message } = status {
                    if let Some(child) = child.as_mut() {
                        stop_child(child, libc::SIGTERM);
                        let _ = child.wait().await;
                    }
                    return Err(ClientError::Refused { code, message })
                        .context("the registry refused the registration");
                }
            }
            exited = wait_child(&mut child) => {
                let status = exited.context("cannot wait for the child process")?;
                eprintln!("beacon: the provider exited ({status}); deregistering");
                sidecar.stop().await;
                return Ok(exit_code(status));
            }
            signal = signals.recv() => {
                sidecar.stop().await;
                let Some(mut child) = child.take() else {
                    return Ok(0);
                };
                // Deregistered first, so consumers stop coming before the provider stops.
                stop_child(&mut child, signal);
                let status = child.wait().await.context("cannot wait for the child process")?;
                return Ok(exit_code(status));
            }
        }
    }
}

/// The registration, present while it should be.
struct Sidecar {
    builder: ProviderBuilder,
    provider: Option<Provider>,
    /// The last status reported on standard error.
    reported: Status,
}

impl Sidecar {
    fn start(&mut self) -> anyhow::Result<()> {
        if self.provider.is_none() {
            self.provider = Some(self.builder.clone().spawn()?);
        }
        Ok(())
    }

    async fn stop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let registered = match provider.status() {
                Status::Registered { instance, .. } => Some(instance),
                _ => None,
            };
            let result = provider.shutdown().await;
            if let Some(instance) = registered {
                match result {
                    Ok(()) => {
                        eprintln!("beacon: deregistered {}/{}", instance.service, instance.id)
                    }
                    Err(e) => eprintln!(
                        "beacon: could not deregister {}/{}: {e}",
                        instance.service, instance.id
                    ),
                }
            }
            self.reported = Status::Stopped;
        }
    }

    /// The next status worth reporting (and reports it); pending forever without a provider.
    async fn changed(&mut self) -> Status {
        let Some(provider) = self.provider.as_ref() else {
            return std::future::pending().await;
        };
        let mut statuses = provider.subscribe();
        loop {
            let status = statuses.borrow_and_update().clone();
            let news = match (&self.reported, &status) {
                (
                    Status::Registered {
                        instance: a,
                        registry: ra,
                    },
                    Status::Registered {
                        instance: b,
                        registry: rb,
                    },
                ) => a.id != b.id || ra != rb,
                (Status::Unreachable { .. }, Status::Unreachable { .. }) => false,
                (Status::Pending, _) | (_, Status::Pending) => false,
                (a, b) => std::mem::discriminant(a) != std::mem::discriminant(b),
            };
            if news {
                match &status {
                    Status::Registered { instance, registry } => eprintln!(
                        "beacon: announced {}/{} at {} (ttl {}) to {registry}",
                        instance.service,
                        instance.id,
                        std::net::SocketAddr::new(instance.address, instance.port),
                        humantime::format_duration(Duration::from_millis(instance.ttl_ms))
                    ),
                    Status::Unreachable { error } => eprintln!("beacon: {error}; retrying"),
                    _ => {}
                }
                self.reported = status.clone();
                if matches!(status, Status::Refused { .. }) {
                    return status;
                }
            }
            if statuses.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

/// Runs every check; the first failure's reason, if any.
async fn run_checks(checks: &[Check], timeout: Duration) -> Option<String> {
    for check in checks {
        if let Err(reason) = check.run(timeout).await {
            return Some(reason);
        }
    }
    None
}

async fn wait_child(child: &mut Option<Child>) -> std::io::Result<ExitStatus> {
    match child.as_mut() {
        Some(child) => child.wait().await,
        None => std::future::pending().await,
    }
}

fn stop_child(child: &mut Child, signal: libc::c_int) {
    if let Some(pid) = child.id() {
        // SAFETY: kill() takes plain integers; the child has not been reaped (we hold it), so
        // its pid cannot have been reused.
        unsafe {
            libc::kill(pid as libc::pid_t, signal);
        }
    }
}

/// The child's exit code, or 128 + the signal that killed it, as shells report it.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}
