//! `beacon watch`: the live set of some services printed (or handed to a command) at every
//! change, through [`crate::client::Watcher`].

use std::io::Write;
use std::net::SocketAddr;
use std::process::Stdio;

use clap::Args;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::{table, RegistryArg, StopSignals};
use crate::client::{ClientError, Update, WatchEvent, Watcher};

#[derive(Debug, Args)]
pub(super) struct WatchArgs {
    /// Services to watch; every service when none is named.
    #[arg(value_name = "SERVICE")]
    services: Vec<String>,
    /// Print each live set as one JSON line: {"version":N,"instances":[...]}.
    #[arg(long)]
    json: bool,
    /// Run `sh -c COMMAND` at every change instead of printing: the live set's JSON line on its
    /// standard input, and in its environment BEACON_VERSION and BEACON_ADDRESSES (the live
    /// ADDRESS:PORT pairs, space-separated). Changes that arrive while it runs are folded into
    /// one run with the latest set.
    #[arg(long, value_name = "COMMAND")]
    exec: Option<String>,
    /// Resume from this version: nothing happens until the live set differs from it.
    #[arg(long, value_name = "VERSION")]
    since: Option<u64>,
    /// The registry run --since was seen under (the `run` of the JSON lines): if the registry
    /// has restarted since, the current set is printed at once.
    #[arg(long, value_name = "RUN", requires = "since")]
    run: Option<u64>,
    #[command(flatten)]
    registry: RegistryArg,
}

/// Watches until SIGINT/SIGTERM (exit 0) or a refusal of the watch itself (an error).
pub(super) async fn run(args: WatchArgs) -> anyhow::Result<i32> {
    let mut watcher = Watcher::new(&args.registry.registry, args.services.iter().cloned())?
        .key(args.registry.key()?);
    if let Some(version) = args.since {
        watcher = watcher.since(version, args.run);
    }
    let mut signals = StopSignals::install()?;
    let (latest, mut updates) = watch::channel::<Option<Update>>(None);
    // The reader keeps only the latest set, so a slow --exec command skips straight to it.
    let reader = tokio::spawn(async move {
        loop {
            match watcher.next().await {
                Ok(WatchEvent::Update(update)) => {
                    latest.send_replace(Some(update));
                }
                Ok(WatchEvent::Disconnected { registry, error }) => {
                    eprintln!("beacon: lost the watch at {registry}: {error}; reconnecting");
                }
                Err(refused) => return refused,
            }
        }
    });
    loop {
        tokio::select! {
            changed = updates.changed() => {
                if changed.is_err() {
                    break;
                }
                let Some(update) = updates.borrow_and_update().clone() else {
                    continue;
                };
                match &args.exec {
                    Some(command) => {
                        // A stop signal during the command waits for it to finish.
                        run_command(command, &update).await;
                    }
                    None => print_update(&update, args.json)?,
                }
            }
            _ = signals.recv() => return Ok(0),
        }
    }
    let refused: ClientError = reader.await?;
    Err(anyhow::Error::new(refused).context("the registry refused the watch"))
}

fn print_update(update: &Update, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, update)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "version {} — {} live instance{}",
            update.version,
            update.instances.len(),
            if update.instances.len() == 1 { "" } else { "s" }
        )?;
        write!(out, "{}", table(&update.instances))?;
        writeln!(out)?;
    }
    // Each change must reach a pipe at once, not when a buffer fills.
    out.flush()?;
    Ok(())
}

async fn run_command(command: &str, update: &Update) {
    let addresses: Vec<String> = update
        .instances
        .iter()
        .map(|i| SocketAddr::new(i.address, i.port).to_string())
        .collect();
    let mut input = match serde_json::to_vec(update) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("beacon: cannot encode the live set: {e}");
            return;
        }
    };
    input.push(b'\n');
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("BEACON_VERSION", update.version.to_string())
        .env("BEACON_ADDRESSES", addresses.join(" "))
        .stdin(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            eprintln!("beacon: cannot run sh -c {command:?}: {e}");
            return;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input is fine: the broken pipe is ignored.
        let _ = stdin.write_all(&input).await;
    }
    match child.wait().await {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!(
            "beacon: the command for version {} exited with {status}",
            update.version
        ),
        Err(e) => eprintln!("beacon: cannot wait for the command: {e}"),
    }
}
