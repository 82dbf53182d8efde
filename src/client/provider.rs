//! A registration kept alive in the background: the library form of `beacon announce`.

use std::net::IpAddr;
use std::time::Duration;

use rand::Rng;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{parse_registries, Client, ClientError};
use crate::auth::keys::ClientKey;
use crate::protocol::{ErrorCode, InstanceInfo, WireRequest};

/// The lease a registration gets when it names none: `registry.default_ttl`'s default. Only
/// used to pace retries before the registry has said which lease it granted.
const ASSUMED_TTL: Duration = Duration::from_secs(10);

/// Longest pause between rounds of attempts while no registry answers.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Describes a provider to register; [`ProviderBuilder::spawn`] keeps it registered.
///
/// ```no_run
/// # async fn example() -> Result<(), beacon::client::ClientError> {
/// use std::time::Duration;
/// use beacon::client::ProviderBuilder;
///
/// let mut provider = ProviderBuilder::new("web", 8080)
///     .registries("10.0.0.10:8601,10.0.0.11:8601")?
///     .address("10.0.0.2".parse().unwrap())
///     .tag("v2")
///     .meta("version", "2.4.1")
///     .ttl(Duration::from_secs(10))
///     .spawn()?;
/// let instance = provider.registered().await?;
/// println!("registered as {}", instance.id);
/// // ... serve ...
/// provider.shutdown().await?; // deregisters
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ProviderBuilder {
    request: WireRequest,
    ttl: Option<Duration>,
    registries: Vec<String>,
    attempt_timeout: Option<Duration>,
    attempts: u32,
    key: Option<ClientKey>,
}

impl ProviderBuilder {
    /// A provider of `service` listening on `port`, registered at the default registry
    /// (127.0.0.1:8601) with the address the registry sees its requests come from.
    pub fn new(service: impl Into<String>, port: u16) -> ProviderBuilder {
        ProviderBuilder {
            request: WireRequest {
                op: "register".into(),
                service: Some(service.into()),
                port: Some(port.into()),
                ..WireRequest::default()
            },
            ttl: None,
            registries: vec![super::DEFAULT_REGISTRY.to_string()],
            attempt_timeout: None,
            attempts: 3,
            key: None,
        }
    }

    /// Signs every request with `key`, as a registry with keys requires (docs/SECURITY.md).
    pub fn key(mut self, key: ClientKey) -> ProviderBuilder {
        self.key = Some(key);
        self
    }

    /// The key requests are signed with, if any.
    pub fn signing_key(&self) -> Option<&ClientKey> {
        self.key.as_ref()
    }

    /// Registries to use, as a comma-separated list of `host:port` (the `--registry` flag's
    /// form). The first that answers is used until it stops answering; then the next.
    pub fn registries(mut self, list: &str) -> Result<ProviderBuilder, ClientError> {
        self.registries = parse_registries(list)?;
        Ok(self)
    }

    /// The address consumers connect to.
    pub fn address(mut self, address: IpAddr) -> ProviderBuilder {
        self.request.address = Some(address.to_string());
        self
    }

    /// The instance id (one DNS label); by default the registry derives it from the address
    /// and port.
    pub fn id(mut self, id: impl Into<String>) -> ProviderBuilder {
        self.request.id = Some(id.into());
        self
    }

    /// Adds a tag (one DNS label), usable as `<tag>.<service>.<domain>`.
    pub fn tag(mut self, tag: impl Into<String>) -> ProviderBuilder {
        let mut tags = match self.request.tags.take() {
            Some(Value::Array(tags)) => tags,
            _ => Vec::new(),
        };
        tags.push(Value::String(tag.into()));
        self.request.tags = Some(Value::Array(tags));
        self
    }

    /// Adds a metadata entry, published as TXT `key=value`.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> ProviderBuilder {
        let mut meta = match self.request.meta.take() {
            Some(Value::Object(meta)) => meta,
            _ => serde_json::Map::new(),
        };
        meta.insert(key.into(), Value::String(value.into()));
        self.request.meta = Some(Value::Object(meta));
        self
    }

    /// The SRV weight.
    pub fn weight(mut self, weight: u16) -> ProviderBuilder {
        self.request.weight = Some(weight.into());
        self
    }

    /// The lease: the instance leaves the answers this long after its last heartbeat.
    /// Heartbeats go about every third of it.
    pub fn ttl(mut self, ttl: Duration) -> ProviderBuilder {
        self.request.ttl_ms = Some((ttl.as_millis() as u64).into());
        self.ttl = Some(ttl);
        self
    }

    /// How long to wait for each reply and how many times to send a request before moving to
    /// the next registry. By default a tenth of the TTL (between 100 and 500 ms), 3 times.
    pub fn attempts(mut self, timeout: Duration, attempts: u32) -> ProviderBuilder {
        self.attempt_timeout = Some(timeout);
        self.attempts = attempts.max(1);
        self
    }

    /// The register request this builder sends.
    pub fn request(&self) -> &WireRequest {
        &self.request
    }

    /// Starts keeping the registration alive on the current tokio runtime and returns its
    /// handle at once; [`Provider::registered`] waits for the first registration. Fails
    /// (rather than panicking) when called outside a tokio runtime.
    pub fn spawn(self) -> Result<Provider, ClientError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ClientError::NoRuntime)?;
        let (status_tx, status) = watch::channel(Status::Pending);
        let stop = CancellationToken::new();
        let task = runtime.spawn(keep_registered(self, status_tx, stop.clone()));
        Ok(Provider {
            status,
            stop,
            task: Some(task),
        })
    }
}

/// Where a [`Provider`] stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Not registered yet, or registering again after the registry forgot the instance.
    Pending,
    /// Registered and heartbeating.
    Registered {
        /// The instance as the registry accepted it.
        instance: InstanceInfo,
        /// The registry in use.
        registry: String,
    },
    /// No registry answered the last attempts; retrying with backoff.
    Unreachable {
        /// The last error, for people.
        error: String,
    },
    /// A registry refused the registration for good (an invalid name, a TTL out of range):
    /// the provider has stopped.
    Refused {
        /// Machine-readable reason.
        code: ErrorCode,
        /// The registry's explanation.
        message: String,
    },
    /// Shut down (deregistered if it was registered and a registry answered).
    Stopped,
}

/// A registration kept alive in the background by heartbeats. Dropping it stops the
/// heartbeats and deregisters in the background (if the runtime keeps running);
/// [`Provider::shutdown`] does so and waits for the registry's answer.
#[derive(Debug)]
pub struct Provider {
    status: watch::Receiver<Status>,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), ClientError>>>,
}

impl Provider {
    /// The current status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A receiver of every status change.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Waits until the instance is registered and returns it as accepted; fails if a registry
    /// refused it for good (or the provider was stopped).
    pub async fn registered(&mut self) -> Result<InstanceInfo, ClientError> {
        let status = self
            .status
            .wait_for(|s| {
                matches!(
                    s,
                    Status::Registered { .. } | Status::Refused { .. } | Status::Stopped
                )
            })
            .await
            .map(|s| s.clone())
            .unwrap_or(Status::Stopped);
        match status {
            Status::Registered { instance, .. } => Ok(instance),
            Status::Refused { code, message } => Err(ClientError::Refused { code, message }),
            _ => Err(ClientError::Stopped),
        }
    }

    /// Waits until the provider stops by itself, which only a final refusal makes it do.
    pub async fn stopped(&mut self) -> Result<(), ClientError> {
        match self.task.as_mut() {
            Some(task) => {
                let result = task.await.unwrap_or(Err(ClientError::Stopped));
                self.task = None;
                result
            }
            None => Ok(()),
        }
    }

    /// Stops heartbeating and deregisters; returns the deregistration's outcome (Ok if there
    /// was nothing to deregister).
    pub async fn shutdown(mut self) -> Result<(), ClientError> {
        self.stop.cancel();
        self.stopped().await
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The heartbeat loop: register, heartbeat about every TTL/3 with jitter, register again when
/// the registry has forgotten the instance (expiry, restart), move to the next registry when
/// one stops answering, and deregister when stopped.
async fn keep_registered(
    builder: ProviderBuilder,
    status: watch::Sender<Status>,
    stop: CancellationToken,
) -> Result<(), ClientError> {
    let assumed_ttl = builder.ttl.unwrap_or(ASSUMED_TTL);
    let attempt_timeout = builder.attempt_timeout.unwrap_or_else(|| {
        (assumed_ttl / 10).clamp(Duration::from_millis(100), Duration::from_millis(500))
    });
    let clients: Vec<Client> = builder
        .registries
        .iter()
        .map(|r| {
            Client::new(r.as_str())
                .with_retries(attempt_timeout, builder.attempts)
                .with_key(builder.key.clone())
        })
        .collect();
    let mut current = 0;
    let mut registered: Option<InstanceInfo> = None;
    // Registries that failed in a row; a full round of them means backing off.
    let mut failed_in_row = 0usize;
    let mut rounds_failed = 0u32;
    loop {
        let client = &clients[current];
        let outcome = match &registered {
            None => client.register(&builder.request).await,
            Some(instance) => client
                .send(&WireRequest::for_instance("heartbeat", instance))
                .await
                .map(|_| instance.clone()),
        };
        let pause = match outcome {
            Ok(instance) => {
                let ttl = Duration::from_millis(instance.ttl_ms);
                if registered.is_none() {
                    tracing::info!(
                        service = %instance.service, id = %instance.id,
                        registry = %builder.registries[current], "registered"
                    );
                }
                status.send_replace(Status::Registered {
                    instance: instance.clone(),
                    registry: builder.registries[current].clone(),
                });
                registered = Some(instance);
                failed_in_row = 0;
                rounds_failed = 0;
                heartbeat_interval(ttl)
            }
            Err(ClientError::Refused {
                code: ErrorCode::UnknownInstance,
                ..
            }) if registered.is_some() => {
                // Expired, or the registry restarted: register again at once.
                registered = None;
                status.send_replace(Status::Pending);
                continue;
            }
            Err(e) if e.is_unreachable() => {
                tracing::info!(registry = %builder.registries[current], error = %e, "registry unreachable");
                status.send_replace(Status::Unreachable {
                    error: e.to_string(),
                });
                // The next registry is asked to register the instance: it may not know it.
                current = (current + 1) % clients.len();
                registered = None;
                failed_in_row += 1;
                if failed_in_row < clients.len() {
                    continue;
                }
                failed_in_row = 0;
                rounds_failed += 1;
                backoff(rounds_failed)
            }
            Err(e @ ClientError::Refused { .. }) if e.is_transient() => {
                // Full: there may be room once other instances expire. Replayed: an earlier
                // copy of a request overtook it; the next one is signed anew.
                status.send_replace(Status::Unreachable {
                    error: e.to_string(),
                });
                registered = None;
                rounds_failed += 1;
                backoff(rounds_failed)
            }
            Err(e) => {
                if let ClientError::Refused { code, message } = &e {
                    status.send_replace(Status::Refused {
                        code: *code,
                        message: message.clone(),
                    });
                }
                return Err(e);
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => break,
        }
    }
    let result = match registered {
        Some(instance) => clients[current]
            .send(&WireRequest::for_instance("deregister", &instance))
            .await
            .map(|_| ())
            .or_else(|e| match e {
                // Already gone: the goal is reached.
                ClientError::Refused {
                    code: ErrorCode::UnknownInstance,
                    ..
                } => Ok(()),
                e => Err(e),
            }),
        None => Ok(()),
    };
    status.send_replace(Status::Stopped);
    result
}

/// About a third of the TTL, give or take 10%, so a fleet started together does not heartbeat
/// in lock-step and two heartbeats may be lost before the lease runs out.
pub fn heartbeat_interval(ttl: Duration) -> Duration {
    (ttl / 3).mul_f64(rand::rng().random_range(0.9..1.1))
}

/// 200 ms doubling per failed round up to [`MAX_BACKOFF`], with jitter so a fleet cut off
/// together does not come back in lock-step.
fn backoff(rounds: u32) -> Duration {
    let base = Duration::from_millis(200).saturating_mul(1 << rounds.min(6).saturating_sub(1));
    base.min(MAX_BACKOFF)
        .mul_f64(rand::rng().random_range(0.5..1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_come_about_every_third_of_the_ttl() {
        for _ in 0..100 {
            let pause = heartbeat_interval(Duration::from_secs(9));
            assert!(pause >= Duration::from_millis(2700) && pause <= Duration::from_millis(3300));
        }
    }

    #[test]
    fn backoff_grows_to_a_bound() {
        assert!(backoff(1) <= Duration::from_millis(200));
        assert!(
            backoff(3) >= Duration::from_millis(400) && backoff(3) <= Duration::from_millis(800)
        );
        for rounds in 1..100 {
            assert!(backoff(rounds) <= MAX_BACKOFF);
        }
    }

    #[test]
    fn the_builder_writes_a_register_request() {
        let builder = ProviderBuilder::new("web", 80)
            .tag("a")
            .tag("b")
            .meta("k", "v")
            .ttl(Duration::from_millis(1500))
            .id("w1");
        let text = serde_json::to_string(builder.request()).unwrap();
        assert_eq!(
            text,
            r#"{"op":"register","service":"web","id":"w1","port":80,"tags":["a","b"],"meta":{"k":"v"},"ttl_ms":1500}"#
        );
        assert!(ProviderBuilder::new("web", 80).registries(" , ").is_err());
    }
}
