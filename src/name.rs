//! Validation of the names that end up inside DNS names: service names, instance ids and tags.
//!
//! Each of them becomes exactly one label of a DNS name (`<id>.<service>.service.local`,
//! `<tag>.<service>.service.local`), so each must be one valid host-name label: ASCII letters,
//! digits and `-`, 1 to 63 characters, not starting or ending with `-`. Underscores are refused
//! because glibc's resolver drops address records whose owner name holds one, which would make
//! an SRV target unresolvable through `getent`. DNS names are case-insensitive, so every label is
//! stored in lower case: `Web` and `web` are the same service.

use std::fmt;

/// Longest label DNS allows (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

/// Why a string is not a usable DNS label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelError {
    /// The string is empty.
    Empty,
    /// Longer than [`MAX_LABEL_LEN`] bytes.
    TooLong(usize),
    /// Holds a character other than ASCII letters, digits and `-`.
    BadChar(char),
    /// Starts or ends with `-`.
    EdgeHyphen,
}

impl fmt::Display for LabelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabelError::Empty => write!(f, "it is empty"),
            LabelError::TooLong(n) => {
                write!(f, "it is {n} characters long, the limit is {MAX_LABEL_LEN}")
            }
            LabelError::BadChar('.') => write!(
                f,
                "'.' would split it into several DNS labels; use letters, digits and '-' only"
            ),
            LabelError::BadChar(c) => write!(
                f,
                "{c:?} is not allowed; use ASCII letters, digits and '-' only"
            ),
            LabelError::EdgeHyphen => write!(f, "it starts or ends with '-'"),
        }
    }
}

/// Checks that `raw` is one host-name label and returns it in lower case.
pub fn label(raw: &str) -> Result<String, LabelError> {
    check_label(raw)?;
    Ok(raw.to_ascii_lowercase())
}

/// Whether [`label`] would return `raw` unchanged: a valid label, already in lower case. No
/// allocation, for the heartbeat's fast path.
pub fn is_canonical_label(raw: &str) -> bool {
    check_label(raw).is_ok() && !raw.bytes().any(|b| b.is_ascii_uppercase())
}

fn check_label(raw: &str) -> Result<(), LabelError> {
    if raw.is_empty() {
        return Err(LabelError::Empty);
    }
    if raw.len() > MAX_LABEL_LEN {
        return Err(LabelError::TooLong(raw.len()));
    }
    if let Some(c) = raw
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(LabelError::BadChar(c));
    }
    if raw.starts_with('-') || raw.ends_with('-') {
        return Err(LabelError::EdgeHyphen);
    }
    Ok(())
}

/// A suggestion for an id that failed validation: every character that is not allowed becomes
/// `-`, so `web-10.0.0.2-8080` suggests `web-10-0-0-2-8080`.
pub fn suggest_label(raw: &str) -> Option<String> {
    let replaced: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let trimmed = replaced.trim_matches('-');
    let mut out = String::with_capacity(trimmed.len());
    for c in trimmed.chars() {
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    let out = out.chars().take(MAX_LABEL_LEN).collect::<String>();
    let out = out.trim_end_matches('-').to_ascii_lowercase();
    (!out.is_empty() && out != raw).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_lowercases_host_labels() {
        assert_eq!(label("Web-1").unwrap(), "web-1");
        assert_eq!(label("a").unwrap(), "a");
        assert_eq!(label(&"x".repeat(63)).unwrap().len(), 63);
    }

    #[test]
    fn refuses_what_would_break_a_dns_name() {
        assert_eq!(label(""), Err(LabelError::Empty));
        assert_eq!(label(&"x".repeat(64)), Err(LabelError::TooLong(64)));
        assert_eq!(label("web-10.0.0.2-8080"), Err(LabelError::BadChar('.')));
        assert_eq!(label("_web"), Err(LabelError::BadChar('_')));
        assert_eq!(label("wéb"), Err(LabelError::BadChar('é')));
        assert_eq!(label("-web"), Err(LabelError::EdgeHyphen));
        assert_eq!(label("web-"), Err(LabelError::EdgeHyphen));
    }

    #[test]
    fn suggests_a_usable_label() {
        assert_eq!(
            suggest_label("web-10.0.0.2-8080").as_deref(),
            Some("web-10-0-0-2-8080")
        );
        assert_eq!(suggest_label("fe80::1").as_deref(), Some("fe80-1"));
        assert_eq!(suggest_label("..."), None);
    }
}
