//! The web view at `/`, loaded in headless Chromium (Debian's `chromium`) driven over the
//! DevTools protocol by `tests/web/driver.mjs` (Node's standard library): a newly registered
//! instance shows in the rendered DOM, and then its removal, each within a second, with no
//! reload; the list of changes names both.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::json;

use crate::support::{padded, Server};

/// The driver: commands in, one answer line each.
struct Browser {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Browser {
    fn open(url: &str) -> Browser {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("Chromium is not installed: apt-get install chromium (the README's test command does)");
        let driver = format!("{}/tests/web/driver.mjs", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new("node")
            .args([
                "--experimental-websocket",
                "--no-warnings",
                &driver,
                chromium,
                url,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("Node.js is not installed: it drives Chromium for this test");
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        Browser {
            child,
            input,
            output,
        }
    }

    fn ask(&mut self, command: &str) -> String {
        writeln!(self.input, "{command}").unwrap();
        self.input.flush().unwrap();
        let mut line = String::new();
        self.output
            .read_line(&mut line)
            .expect("the driver answers");
        line.trim().to_string()
    }

    /// Milliseconds until `selector` is in (or out of) the DOM; panics after the driver's 5 s.
    fn wait(&mut self, present: bool, selector: &str) -> u64 {
        let command = if present {
            "wait-present"
        } else {
            "wait-absent"
        };
        let answer = self.ask(&format!("{command} {selector}"));
        answer
            .split_whitespace()
            .nth(1)
            .and_then(|ms| ms.parse().ok())
            .unwrap_or_else(|| panic!("{command} {selector}: {answer}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.input, "quit");
        let _ = self.child.wait();
    }
}

#[test]
fn the_web_view_shows_a_registration_and_a_removal_within_a_second() {
    let server = Server::start(&["--http", "127.0.0.1:0"]);
    let http = server.http.unwrap();
    server.register(json!({"service": "db", "id": "db-1", "address": "10.0.1.1", "port": 5432}));
    let mut browser = Browser::open(&format!("http://{http}/"));
    browser.wait(true, "#connection.ok");
    browser.wait(true, r#"tr[data-instance="db/db-1"]"#);

    server.register(
        json!({"service": "view", "id": "v1", "address": "10.0.9.1", "port": 80,
        "tags": ["blue"], "meta": {"version": "1.2"}, "ttl_ms": 60000}),
    );
    let shown = browser.wait(true, r#"tr[data-instance="view/v1"]"#);
    assert!(shown < 1000, "shown after {shown} ms");
    let row = browser.ask(r#"text tr[data-instance="view/v1"]"#);
    assert!(
        row.contains("10.0.9.1:80") && row.contains("blue") && row.contains("version=1.2"),
        "{row}"
    );
    assert!(row.contains(" s"), "a lease countdown: {row}");

    let reply = server.udp(&padded(
        r#"{"op":"deregister","service":"view","id":"v1"}"#,
        64,
    ));
    assert_eq!(reply["ok"], true, "{reply}");
    let removed = browser.wait(false, r#"tr[data-instance="view/v1"]"#);
    assert!(removed < 1000, "removed after {removed} ms");
    browser.wait(true, r#"#changes li[data-kind="deregistered"]"#);
    browser.wait(true, r#"#changes li[data-kind="registered"]"#);
    let node = browser.ask("text #node");
    assert_ne!(node, r#"text "…""#, "the status event names the node");
}
