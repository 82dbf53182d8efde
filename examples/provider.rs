//! A provider in Rust on beacon's client library: it serves a one-line greeting over TCP and
//! keeps itself registered while it runs, failing over between registries when given several.
//!
//!     BEACON_REGISTRY=127.0.0.1:8601 cargo run --example provider -- hello 8080
//!     dig @127.0.0.1 -p 8600 hello.service.local SRV
//!
//! Port 0 picks a free port. SIGINT or SIGTERM deregisters and exits.

use std::time::Duration;

use beacon::client::ProviderBuilder;
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let service = args.next().unwrap_or_else(|| "hello".into());
    let port: u16 = args.next().as_deref().unwrap_or("8080").parse()?;
    let registries =
        std::env::var("BEACON_REGISTRY").unwrap_or_else(|_| "127.0.0.1:8601".to_string());

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(b"hello from a beacon provider\n").await;
        }
    });

    let mut provider = ProviderBuilder::new(&service, port)
        .registries(&registries)?
        .address("127.0.0.1".parse()?)
        .meta("example", "rust")
        .ttl(Duration::from_secs(3))
        .spawn()?;
    let instance = provider.registered().await?;
    println!("serving {service} on 127.0.0.1:{port} as {}", instance.id);

    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
        // Only a refusal (an invalid name, say) stops the provider by itself.
        stopped = provider.stopped() => stopped?,
    }
    provider.shutdown().await?;
    println!("deregistered");
    Ok(())
}
