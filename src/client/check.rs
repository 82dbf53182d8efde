//! Health checks for the `announce` sidecar: an HTTP GET, a TCP connect or a shell command,
//! each bounded by a timeout, and the damping that turns a series of results into a decision.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// Why a check could not be set up (a start-up error, naming the flag).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// `--check-http` is not an `http://` URL.
    #[error("--check-http {url:?}: {reason}")]
    BadUrl {
        /// As given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// `--check-tcp` is not `host:port`.
    #[error("--check-tcp {target:?}: expected HOST:PORT")]
    BadTarget {
        /// As given.
        target: String,
    },
    /// `--check-cmd` is empty.
    #[error("--check-cmd: the command is empty")]
    EmptyCommand,
}

/// One health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Passes when a GET of the URL answers 2xx (redirects followed).
    Http {
        /// `http://host[:port]/path`.
        url: String,
    },
    /// Passes when a TCP connection to the target is accepted.
    Tcp {
        /// `host:port`.
        target: String,
    },
    /// Passes when `sh -c COMMAND` exits with status 0.
    Command {
        /// The shell command.
        command: String,
    },
}

impl Check {
    /// An HTTP check. Only `http://` is supported: beacon links no TLS stack; check an HTTPS
    /// endpoint with `--check-cmd 'curl -fsS https://…'`.
    pub fn http(url: &str) -> Result<Check, CheckError> {
        let bad = |reason: &str| CheckError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if url.starts_with("https://") {
            return Err(bad(
                "https is not supported; use --check-cmd 'curl -fsS URL' for TLS endpoints",
            ));
        }
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("expected a URL starting with http://"))?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(bad("the URL has no host"));
        }
        Ok(Check::Http {
            url: url.to_string(),
        })
    }

    /// A TCP connect check.
    pub fn tcp(target: &str) -> Result<Check, CheckError> {
        match target.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Check::Tcp {
                    target: target.to_string(),
                })
            }
            _ => Err(CheckError::BadTarget {
                target: target.to_string(),
            }),
        }
    }

    /// A command check.
    pub fn command(command: &str) -> Result<Check, CheckError> {
        if command.trim().is_empty() {
            return Err(CheckError::EmptyCommand);
        }
        Ok(Check::Command {
            command: command.to_string(),
        })
    }

    /// Runs the check once; `Err` says why it failed.
    pub async fn run(&self, timeout: Duration) -> Result<(), String> {
        match self {
            Check::Http { url } => http(url, timeout).await,
            Check::Tcp { target } => {
                match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("TCP {target}: {e}")),
                    Err(_) => Err(format!("TCP {target}: no connection within {timeout:?}")),
                }
            }
            Check::Command { command } => run_command(command, timeout).await,
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Check::Http { url } => write!(f, "HTTP GET {url}"),
            Check::Tcp { target } => write!(f, "TCP {target}"),
            Check::Command { command } => write!(f, "command {command:?}"),
        }
    }
}

async fn http(url: &str, timeout: Duration) -> Result<(), String> {
    let url = url.to_string();
    // ureq is blocking: the check runs on tokio's blocking pool, bounded by its own timeout.
    let outcome = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            // A health check of a local endpoint must not go through HTTP_PROXY.
            .proxy(None)
            .user_agent("beacon-health-check")
            .build()
            .into();
        match agent.get(&url).call() {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("HTTP GET {url}: status {}", response.status())),
            Err(e) => Err(format!("HTTP GET {url}: {e}")),
        }
    })
    .await;
    outcome.unwrap_or_else(|e| Err(format!("the HTTP check did not finish: {e}")))
}

async fn run_command(command: &str, timeout: Duration) -> Result<(), String> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills whatever the shell started too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run sh -c {command:?}: {e}"))?;
    let mut stderr = child.stderr.take();
    let finished = tokio::time::timeout(timeout, async {
        let mut output = Vec::new();
        if let Some(stderr) = stderr.as_mut() {
            // Bounded: a chatty check cannot grow this without limit.
            let _ = stderr.take(4096).read_to_end(&mut output).await;
        }
        (child.wait().await, output)
    })
    .await;
    match finished {
        Ok((Ok(status), _)) if status.success() => Ok(()),
        Ok((Ok(status), output)) => {
            let said = String::from_utf8_lossy(&output);
            let said = said.trim().lines().last().unwrap_or("").to_string();
            Err(format!(
                "command {command:?} exited with {status}{}",
                if said.is_empty() {
                    String::new()
                } else {
                    format!(": {said}")
                }
            ))
        }
        Ok((Err(e), _)) => Err(format!("command {command:?}: {e}")),
        Err(_) => {
            if let Some(pid) = child.id() {
                // SAFETY: kill() takes plain integers; a stale group id only makes it fail.
                unsafe {
                    libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
                }
            }
            let _ = child.kill().await;
            Err(format!(
                "command {command:?} did not finish within {timeout:?}"
            ))
        }
    }
}

/// The decision a series of check results leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Register (or stay registered).
    Passing,
    /// Deregister (or stay unregistered).
    Failing,
}

/// Flap damping: the decision changes only after `passes` consecutive passes (to come back) or
/// `failures` consecutive failures (to leave). Until the first pass there is no decision to
/// change, so the first pass registers at once: a provider that needs a moment to start (a
/// child just spawned) is registered on its first passing check, not after a streak.
#[derive(Debug, Clone)]
pub struct Damping {
    passes: u32,
    failures: u32,
    state: Option<Health>,
    streak: u32,
}

impl Damping {
    /// Damping with these thresholds (each at least 1).
    pub fn new(passes: u32, failures: u32) -> Damping {
        Damping {
            passes: passes.max(1),
            failures: failures.max(1),
            state: None,
            streak: 0,
        }
    }

    /// Records one result; returns the new decision when it changes.
    pub fn record(&mut self, passed: bool) -> Option<Health> {
        let observed = if passed {
            Health::Passing
        } else {
            Health::Failing
        };
        match self.state {
            None if passed => {
                self.state = Some(Health::Passing);
                self.streak = 0;
                Some(Health::Passing)
            }
            // Never registered: nothing to take back.
            None => None,
            Some(state) if state == observed => {
                self.streak = 0;
                None
            }
            Some(_) => {
                self.streak += 1;
                let needed = if passed { self.passes } else { self.failures };
                if self.streak >= needed {
                    self.state = Some(observed);
                    self.streak = 0;
                    Some(observed)
                } else {
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damping_needs_a_streak_to_change() {
        let mut d = Damping::new(2, 3);
        assert_eq!(d.record(false), None, "not passed yet: nothing to change");
        assert_eq!(
            d.record(true),
            Some(Health::Passing),
            "the first pass decides"
        );
        assert_eq!(d.record(false), None);
        assert_eq!(d.record(false), None);
        assert_eq!(d.record(true), None, "a pass breaks the failure streak");
        assert_eq!(d.record(false), None);
        assert_eq!(d.record(false), None);
        assert_eq!(d.record(false), Some(Health::Failing));
        assert_eq!(d.record(true), None);
        assert_eq!(d.record(true), Some(Health::Passing));
        let mut slow_start = Damping::new(3, 1);
        assert_eq!(slow_start.record(false), None);
        assert_eq!(slow_start.record(false), None);
        assert_eq!(slow_start.record(true), Some(Health::Passing));
    }

    #[test]
    fn check_arguments_are_validated() {
        assert!(Check::http("http://127.0.0.1:8080/health").is_ok());
        assert!(matches!(
            Check::http("https://example.test/"),
            Err(CheckError::BadUrl { .. })
        ));
        assert!(Check::http("localhost:8080").is_err());
        assert!(Check::http("http:///x").is_err());
        assert!(Check::tcp("127.0.0.1:80").is_ok());
        assert!(Check::tcp("[::1]:80").is_ok());
        assert!(Check::tcp("127.0.0.1").is_err());
        assert!(Check::tcp(":80").is_err());
        assert!(Check::command("  ").is_err());
    }

    #[tokio::test]
    async fn checks_pass_and_fail_for_real() {
        let t = Duration::from_secs(2);
        assert_eq!(Check::command("true").unwrap().run(t).await, Ok(()));
        let failed = Check::command("echo broken >&2; exit 3")
            .unwrap()
            .run(t)
            .await
            .unwrap_err();
        assert!(
            failed.contains("broken") && failed.contains('3'),
            "{failed}"
        );
        let slow = Check::command("sleep 5")
            .unwrap()
            .run(Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(slow.contains("did not finish"), "{slow}");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        assert_eq!(Check::tcp(&addr).unwrap().run(t).await, Ok(()));
        drop(listener);
        assert!(Check::tcp(&addr).unwrap().run(t).await.is_err());
    }
}
