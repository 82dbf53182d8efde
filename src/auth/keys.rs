//! Keys: a name, a secret and the services it may change, read from the keys file
//! (`auth.keys_file`, `--keys`) on the server and from a key file (`--key-file`) on clients.
//!
//! The file format is one key per line, whitespace-separated: `NAME SECRET SERVICES`, SERVICES
//! comma-separated (`web`, `web-*`, `*`); `#` starts a comment. A client's key file holds
//! `NAME SECRET`, and a server line works there as it is, so one `beacon keygen` line serves
//! both sides.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::name;

/// HMAC-SHA256, as every signature of the protocol uses it.
pub type HmacSha256 = Hmac<Sha256>;

/// Length of a secret `beacon keygen` makes, in bytes.
pub const SECRET_BYTES: usize = 32;

/// Shortest secret accepted (an HMAC key below the hash's output size weakens it).
pub const MIN_SECRET_BYTES: usize = 16;

/// A key file that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    /// The file cannot be read.
    #[error("cannot read key file {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        reason: String,
    },
    /// A line is wrong. The message names the line and what is wrong with it, never the secret.
    #[error("{path}:{line}: {reason}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A client key file without any key.
    #[error("{path}: no key in the file (expected a line `NAME SECRET`)")]
    Empty {
        /// The file.
        path: String,
    },
}

/// A key's secret. It never leaves this type as text: `Debug` prints `<redacted>`, there is
/// no `Display`, and only [`Secret::mac`] uses the bytes.
#[derive(Clone)]
pub struct Secret {
    bytes: Box<[u8]>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// Decodes the base64 text of a secret.
    pub fn from_base64(text: &str) -> Result<Secret, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| "the secret is not valid base64".to_string())?;
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the secret is {} bytes; at least {MIN_SECRET_BYTES} are needed (`beacon keygen` makes {SECRET_BYTES})",
                bytes.len()
            ));
        }
        Ok(Secret {
            bytes: bytes.into(),
        })
    }

    /// A keyed HMAC-SHA256, ready to take a message.
    pub fn mac(&self) -> HmacSha256 {
        // HMAC takes a key of any length.
        HmacSha256::new_from_slice(&self.bytes).expect("HMAC accepts keys of every length")
    }

    /// The raw bytes, for hickory's TSIG (which keeps its own copy).
    pub fn expose_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The services a key may change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServicePattern {
    /// `*`: every service.
    All,
    /// `web`: that service only.
    Exact(String),
    /// `web-*`: every service whose name starts with `web-`.
    Prefix(String),
}

impl ServicePattern {
    fn parse(text: &str) -> Result<ServicePattern, String> {
        if text == "*" {
            return Ok(ServicePattern::All);
        }
        let lower = text.to_ascii_lowercase();
        if let Some(prefix) = lower.strip_suffix('*') {
            let valid = !prefix.is_empty()
                && !prefix.starts_with('-')
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            return if valid {
                Ok(ServicePattern::Prefix(prefix.to_string()))
            } else {
                Err(format!(
                    "service pattern {text:?}: a prefix pattern is the start of a service name followed by `*`, such as `web-*`"
                ))
            };
        }
        name::label(text)
            .map(|label| ServicePattern::Exact(label.to_string()))
            .map_err(|reason| format!("service {text:?}: {reason}"))
    }

    /// Whether `service` (a canonical label) matches.
    pub fn covers(&self, service: &str) -> bool {
        match self {
            ServicePattern::All => true,
            ServicePattern::Exact(name) => name == service,
            ServicePattern::Prefix(prefix) => service.starts_with(prefix.as_str()),
        }
    }
}

impl fmt::Display for ServicePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServicePattern::All => f.write_str("*"),
            ServicePattern::Exact(name) => f.write_str(name),
            ServicePattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// One key of the server's key ring.
pub struct Key {
    /// The key's name, sent with every signed request.
    pub name: Arc<str>,
    /// What it may change.
    pub services: Vec<ServicePattern>,
    secret: Secret,
    /// The HMAC already keyed with the secret: cloning it skips hashing the key's pads for
    /// every request.
    keyed: HmacSha256,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("name", &self.name)
            .field("services", &self.services)
            .field("secret", &self.secret)
            .finish()
    }
}

impl Key {
    /// Whether this key may change `service`.
    pub fn covers(&self, service: &str) -> bool {
        self.services.iter().any(|p| p.covers(service))
    }

    /// A fresh MAC keyed with this key's secret.
    pub fn mac(&self) -> HmacSha256 {
        self.keyed.clone()
    }

    /// The secret, for TSIG.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }
}

/// The server's keys, by name.
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: HashMap<Arc<str>, Key>,
}

impl KeyRing {
    /// Reads and parses the keys file at `path`.
    pub fn load(path: &Path) -> Result<KeyRing, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| KeyFileError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        KeyRing::parse(&text, &path.display().to_string())
    }

    /// Parses the text of a keys file (`path` names it in errors).
    pub fn parse(text: &str, path: &str) -> Result<KeyRing, KeyFileError> {
        let mut keys = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let error = |reason: String| KeyFileError::Line {
                path: path.to_string(),
                line: number + 1,
                reason,
            };
            let fields: Vec<&str> = content(line).split_whitespace().collect();
            let (name, secret, services) = match fields[..] {
                [] => continue,
                [name, secret, services] => (name, secret, services),
                [_, _] => {
                    return Err(error(
                        "missing the services this key may change (third field: names, `web-*` patterns or `*`)".into(),
                    ))
                }
                _ => {
                    return Err(error(format!(
                        "expected `NAME SECRET SERVICES` (3 fields), found {}",
                        fields.len()
                    )))
                }
            };
            let name = key_name(name).map_err(error)?;
            let secret = Secret::from_base64(secret).map_err(error)?;
            let services = services
                .split(',')
                .filter(|s| !s.is_empty())
                .map(ServicePattern::parse)
                .collect::<Result<Vec<_>, _>>()
                .map_err(error)?;
            if services.is_empty() {
                return Err(error("no services given for this key".into()));
            }
            let name: Arc<str> = name.into();
            if keys.contains_key(&name) {
                return Err(error(format!("key {name:?} is defined twice")));
            }
            let keyed = secret.mac();
            keys.insert(
                name.clone(),
                Key {
                    name,
                    services,
                    secret,
                    keyed,
                },
            );
        }
        Ok(KeyRing { keys })
    }

    /// The key called `name`.
    pub fn get(&self, name: &str) -> Option<&Key> {
        self.keys.get(name)
    }

    /// Whether the ring holds no key (protected mode then decides who may change anything).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The keys, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Key> {
        self.keys.values()
    }
}

/// The line without its comment.
fn content(line: &str) -> &str {
    line.split('#').next().unwrap_or("")
}

/// Checks a key name: 1 to 63 characters of lower-case letters, digits, `-`, `_` and `.`, not
/// starting with `.` or `-`. Lower case only because a TSIG key name is a DNS name, compared
/// without regard to case.
pub fn key_name(raw: &str) -> Result<&str, String> {
    let valid_chars = raw
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'));
    if raw.is_empty() || raw.len() > 63 || !valid_chars || raw.starts_with(['.', '-']) {
        return Err(format!(
            "key name {raw:?}: 1 to 63 characters of lower-case letters, digits, `-`, `_` and `.`, not starting with `.` or `-`"
        ));
    }
    Ok(raw)
}

/// A client's key: the name and secret it signs with.
#[derive(Clone)]
pub struct ClientKey {
    /// The key's name.
    pub name: String,
    secret: Secret,
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientKey")
            .field("name", &self.name)
            .field("secret", &self.secret)
            .finish()
    }
}

impl ClientKey {
    /// A key from its name and base64 secret.
    pub fn new(name: &str, secret_base64: &str) -> Result<ClientKey, String> {
        Ok(ClientKey {
            name: key_name(name)?.to_string(),
            secret: Secret::from_base64(secret_base64)?,
        })
    }

    /// Reads the first key of a key file (`NAME SECRET`, or a server line `NAME SECRET
    /// SERVICES`, whose third field is ignored).
    pub fn load(path: &Path) -> Result<ClientKey, KeyFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| KeyFileError::Read {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        ClientKey::parse(&text, &shown)
    }

    /// Parses the text of a client key file.
    pub fn parse(text: &str, path: &str) -> Result<ClientKey, KeyFileError> {
        for (number, line) in text.lines().enumerate() {
            let fields: Vec<&str> = content(line).split_whitespace().collect();
            let (name, secret) = match fields[..] {
                [] => continue,
                [name, secret] | [name, secret, _] => (name, secret),
                _ => (fields[0], ""),
            };
            return ClientKey::new(name, secret).map_err(|reason| KeyFileError::Line {
                path: path.to_string(),
                line: number + 1,
                reason: if secret.is_empty() {
                    "expected `NAME SECRET` (a third field, the services, is allowed)".into()
                } else {
                    reason
                },
            });
        }
        Err(KeyFileError::Empty {
            path: path.to_string(),
        })
    }

    /// A fresh MAC keyed with this key's secret.
    pub fn mac(&self) -> HmacSha256 {
        self.secret.mac()
    }
}

/// A new key line for `beacon keygen NAME SERVICES`: `NAME SECRET SERVICES` with 32 random
/// bytes from the operating system's generator as the secret.
pub fn generate_line(name: &str, services: &str) -> Result<String, String> {
    let name = key_name(name)?;
    let patterns = services
        .split(',')
        .filter(|s| !s.is_empty())
        .map(ServicePattern::parse)
        .collect::<Result<Vec<_>, _>>()?;
    if patterns.is_empty() {
        return Err("give the services this key may change: names, `web-*` patterns or `*`".into());
    }
    let mut secret = [0u8; SECRET_BYTES];
    rand::fill(&mut secret);
    let services: Vec<String> = patterns.iter().map(ToString::to_string).collect();
    Ok(format!(
        "{name} {} {}",
        base64::engine::general_purpose::STANDARD.encode(secret),
        services.join(",")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";

    #[test]
    fn parses_names_patterns_and_comments() {
        let ring = KeyRing::parse(
            &format!("# keys\n\nweb-key {SECRET} web,api-*  # the web team\nops {SECRET} *\n"),
            "keys",
        )
        .unwrap();
        assert_eq!(ring.len(), 2);
        let web = ring.get("web-key").unwrap();
        assert!(
            web.covers("web") && web.covers("api-eu") && !web.covers("api") && !web.covers("db")
        );
        assert!(ring.get("ops").unwrap().covers("anything"));
    }

    #[test]
    fn errors_name_the_line_and_never_the_secret() {
        for (text, expected) in [
            (
                format!("ok {SECRET} web\nbad {SECRET}\n"),
                ":2: missing the services",
            ),
            (format!("Upper {SECRET} web"), "key name"),
            ("k bm90LWJhc2U2NA== web".to_string(), "at least 16"),
            ("k %%%% web".to_string(), "not valid base64"),
            (format!("k {SECRET} my_web"), "service \"my_web\""),
            (format!("k {SECRET} w*b*"), "prefix pattern"),
            (format!("k {SECRET} web\nk {SECRET} db"), "defined twice"),
        ] {
            let error = KeyRing::parse(&text, "keys").unwrap_err().to_string();
            assert!(error.contains(expected), "{error} lacks {expected}");
            assert!(!error.contains(SECRET), "{error}");
        }
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let ring = KeyRing::parse(&format!("k {SECRET} web"), "keys").unwrap();
        let shown = format!("{ring:?} {:?}", ClientKey::new("k", SECRET).unwrap());
        assert!(shown.contains("<redacted>"));
        assert!(!shown.contains(SECRET) && !shown.contains("q83v"));
    }

    #[test]
    fn a_keygen_line_serves_both_sides() {
        let line = generate_line("web-key", "web,api-*").unwrap();
        let ring = KeyRing::parse(&line, "keys").unwrap();
        assert!(ring.get("web-key").unwrap().covers("api-x"));
        let client = ClientKey::parse(&line, "key").unwrap();
        assert_eq!(client.name, "web-key");
        assert_ne!(
            generate_line("a", "*").unwrap(),
            generate_line("a", "*").unwrap()
        );
        assert!(generate_line("a", "").is_err());
    }
}
