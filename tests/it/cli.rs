//! The command line, run as a real process: one-shot commands, help, and errors that are one
//! clear line with a non-zero exit.

use std::io::Write;

use serde_json::json;

use crate::support::{run, run_fails, Server};

#[test]
fn register_list_deregister_from_the_command_line() {
    let server = Server::start(&[]);
    let registry = server.registry.to_string();
    let (code, out, err) = run(&[
        "register",
        "--registry",
        &registry,
        "--service",
        "web",
        "--port",
        "8080",
        "--address",
        "10.0.0.5",
        "--id",
        "web-5",
        "--tag",
        "primary",
        "--meta",
        "version=2",
        "--ttl",
        "30s",
        "--weight",
        "3",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("registered web/web-5 at 10.0.0.5:8080 for 30s"),
        "{out}"
    );

    let (code, out, _) = run(&["list", "--registry", &registry]);
    assert_eq!(code, 0);
    let row = out
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_else(|| panic!("{out}"));
    for field in ["web-5", "10.0.0.5", "8080", "primary", "version=2"] {
        assert!(row.contains(field), "{field} missing from {row:?}");
    }
    assert!(out.lines().next().unwrap().contains("EXPIRES IN"));

    let (code, out, _) = run(&["list", "--json", "--registry", &registry, "web"]);
    assert_eq!(code, 0);
    let reply: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(reply["instances"][0]["weight"], 3);

    let (code, out, _) = run(&[
        "deregister",
        "--registry",
        &registry,
        "--service",
        "web",
        "--id",
        "web-5",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("deregistered web/web-5"));
    assert_eq!(server.tcp(r#"{"op":"list"}"#)["instances"], json!([]));
}

#[test]
fn registry_address_comes_from_the_environment() {
    let server = Server::start(&[]);
    let out = std::process::Command::new(crate::support::beacon_bin())
        .args([
            "register",
            "--service",
            "env",
            "--port",
            "1",
            "--address",
            "10.0.0.1",
        ])
        .env("BEACON_REGISTRY", server.registry.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        server.tcp(r#"{"op":"list","service":"env"}"#)["instances"][0]["port"],
        1
    );
}

#[test]
fn refusals_are_one_line_with_the_reason_and_a_failing_exit() {
    let server = Server::start(&[]);
    let registry = server.registry.to_string();
    let err = run_fails(&[
        "register",
        "--registry",
        &registry,
        "--service",
        "web",
        "--port",
        "80",
        "--id",
        "web-10.0.0.2-8080",
    ]);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("invalid_id") && err.contains("web-10-0-0-2-8080"),
        "{err}"
    );

    let (code, _, err) = run(&[
        "announce",
        "--registry",
        &registry,
        "--service",
        "bad_name",
        "--port",
        "80",
    ]);
    assert_ne!(
        code, 0,
        "a refused announce stops instead of retrying forever"
    );
    assert!(err.contains("invalid_service"), "{err}");

    let err = run_fails(&[
        "deregister",
        "--registry",
        &registry,
        "--service",
        "web",
        "--id",
        "nobody",
    ]);
    assert!(err.contains("unknown_instance"), "{err}");

    let err = run_fails(&[
        "register",
        "--service",
        "web",
        "--port",
        "80",
        "--ttl",
        "soon",
    ]);
    assert!(err.contains("--ttl"), "{err}");
}

#[test]
fn unreachable_registry_is_a_clear_error_for_one_shot_commands() {
    let probe = Server::start(&[]);
    let registry = probe.registry.to_string();
    drop(probe);
    let err = run_fails(&["list", "--registry", &registry]);
    assert!(
        err.starts_with("beacon: ") && err.contains(&registry),
        "{err}"
    );
}

#[test]
fn every_command_has_help() {
    for command in ["serve", "announce", "register", "deregister", "list"] {
        let (code, out, _) = run(&[command, "--help"]);
        assert_eq!(code, 0, "{command} --help");
        assert!(out.contains("Usage: beacon"), "{out}");
    }
}

#[test]
fn bad_configuration_stops_start_up_naming_the_key() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "[dns]\nttl = \"1500ms\"").unwrap();
    let err = run_fails(&[
        "serve",
        "--config",
        file.path().to_str().unwrap(),
        "--dns",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(err.contains("dns.ttl"), "{err}");

    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "[registry]\nmax_instance = 5").unwrap();
    let err = run_fails(&["serve", "--config", file.path().to_str().unwrap()]);
    assert!(err.contains("max_instance"), "{err}");

    let err = run_fails(&["serve", "--config", "/nonexistent/beacon.toml"]);
    assert!(err.contains("/nonexistent/beacon.toml"), "{err}");
}

#[test]
fn a_taken_port_is_a_clear_start_up_error() {
    let server = Server::start(&[]);
    let err = run_fails(&[
        "serve",
        "--dns",
        &server.dns.to_string(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(
        err.contains("dns.listen") && err.contains(&server.dns.to_string()),
        "{err}"
    );
}
