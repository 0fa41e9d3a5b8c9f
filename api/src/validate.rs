//! Validation of every name that crosses a trust boundary. Each rule lives here once,
//! so the REST API, enrollment and the SSH front door cannot disagree.

use thiserror::Error;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ValidationError {
    #[error(
        "invalid {what} {value:?}: use 1 to 63 lowercase letters, digits or '-', starting with a letter or digit"
    )]
    Name { what: &'static str, value: String },
    #[error(
        "invalid hostname {0:?}: use dot-separated labels of letters, digits and '-' (at most 63 each, 253 in all)"
    )]
    Hostname(String),
    #[error(
        "invalid node name {0:?}: it reads as an IP address, and ssh, the bastion's jumps and resolvers would take it for one (a node so named would receive connections meant for that address); use a name with a letter in it, e.g. node-10-20-30-40"
    )]
    HostnameIsAddress(String),
    #[error(
        "invalid unix login {0:?}: use 1 to 32 characters from a-z, 0-9, '_' and '-', starting with a letter or '_'"
    )]
    Login(String),
    #[error(
        "invalid forwarding destination {0:?}: use host:port as seen from the node (a hostname or IPv4 address, a port 1 to 65535), e.g. 127.0.0.1:5432"
    )]
    ForwardTarget(String),
    #[error("{what} must be between {min} and {max}, got {value}")]
    OutOfRange {
        what: &'static str,
        min: i64,
        max: i64,
        value: i64,
    },
}

/// Org, project, edge and user names: DNS-label-like, so they are safe in paths,
/// logs and the `<host>.<edge>.<project>` SSH form.
pub fn name(what: &'static str, value: &str) -> Result<(), ValidationError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::Name {
            what,
            value: truncate(value),
        })
    }
}

/// RFC 1123 hostnames. Case is kept as given; uniqueness is per edge.
pub fn hostname(value: &str) -> Result<(), ValidationError> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !value.is_empty() && value.len() <= 253 && value.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(ValidationError::Hostname(truncate(value)))
    }
}

/// A name a node enrolls under: a hostname ([`hostname`]) that does not read
/// as an IP address ([`ip_shaped`]). The name is the joiner's choice and
/// becomes what `ssh NAME` and the bastion's jumps reach, so it must never
/// stand for an address: `10.20.30.40` would capture a user's `HostName
/// 10.20.30.40`. Names are checked with this only where they are made; nodes
/// enrolled before keep being found by [`hostname`], so they can be deleted.
pub fn node_hostname(value: &str) -> Result<(), ValidationError> {
    hostname(value)?;
    if ip_shaped(value) {
        return Err(ValidationError::HostnameIsAddress(truncate(value)));
    }
    Ok(())
}

/// Whether a name reads as an IP address to something that resolves names:
/// an IPv6 or dotted-quad IPv4 address, or any of the forms the C library's
/// `inet_aton` (and so `getaddrinfo`, and ssh) also takes as IPv4: one to
/// four parts, each decimal, octal (a leading 0) or hex (`0x`), such as
/// `1234`, `127.1` or `0x7f.0.0.1`. Every part being a number is the test, so
/// names with more parts are refused too: nothing is lost by it, since a top
/// level domain is never all digits.
pub fn ip_shaped(value: &str) -> bool {
    let number = |part: &str| match (part.get(..2), part.get(2..)) {
        (Some(prefix), Some(digits)) if prefix.eq_ignore_ascii_case("0x") => {
            digits.bytes().all(|b| b.is_ascii_hexdigit())
        }
        _ => !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()),
    };
    value.parse::<std::net::IpAddr>().is_ok() || (!value.is_empty() && value.split('.').all(number))
}

/// Unix logins as `useradd` accepts them by default (NAME_REGEX), no `$` suffix.
pub fn login(value: &str) -> Result<(), ValidationError> {
    let mut bytes = value.bytes();
    let first_ok = matches!(bytes.next(), Some(b) if b.is_ascii_lowercase() || b == b'_');
    let rest_ok =
        bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if first_ok && rest_ok && value.len() <= 32 {
        Ok(())
    } else {
        Err(ValidationError::Login(truncate(value)))
    }
}

/// A port-forwarding destination, `host:port` as seen from the node: what a role
/// lists in `forward_to` and a grant line carries in `permitopen="…"`, so it may
/// hold nothing that could end the quoted option.
pub fn forward_target(value: &str) -> Result<(), ValidationError> {
    let ok = value.rsplit_once(':').is_some_and(|(host, port)| {
        hostname(host).is_ok()
            && !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p))
    });
    if ok {
        Ok(())
    } else {
        Err(ValidationError::ForwardTarget(truncate(value)))
    }
}

pub fn range(what: &'static str, value: i64, min: i64, max: i64) -> Result<i64, ValidationError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ValidationError::OutOfRange {
            what,
            min,
            max,
            value,
        })
    }
}

/// Deserializes an optional integer, also from a JSON number with a zero fraction
/// (`60.0`), which JSON Schema counts as an integer and clients do send.
pub fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::Deserialize;
    use serde::de::Error;
    let Some(v) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(i) = v.as_i64() {
        return Ok(Some(i));
    }
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
        _ => Err(D::Error::custom(format!(
            "expected a whole number of seconds, got {v}"
        ))),
    }
}

/// Text a peer sent (an SSH user name, an agent's version or error, a path), made
/// safe to store, log and format: at most `max_bytes` bytes (cut on a character
/// boundary, with `…` when cut), control characters (NUL included, which
/// PostgreSQL refuses in text) replaced by `?`. Never fails, so one bad string
/// cannot fail the record it belongs to.
pub fn peer_text(value: &str, max_bytes: usize) -> String {
    let fits = value.len() <= max_bytes;
    let budget = if fits {
        max_bytes
    } else {
        max_bytes.saturating_sub('…'.len_utf8())
    };
    let mut out = String::with_capacity(value.len().min(max_bytes));
    for c in value.chars() {
        let c = if c.is_control() && c != '\n' && c != '\t' {
            '?'
        } else {
            c
        };
        if out.len() + c.len_utf8() > budget {
            out.push('…');
            return out;
        }
        out.push(c);
    }
    out
}

/// Like [`peer_text`] for one-line values (names, versions): newlines too become `?`.
pub fn peer_line(value: &str, max_bytes: usize) -> String {
    peer_text(&value.replace(['\n', '\r', '\t'], "?"), max_bytes)
}

/// Echo at most 80 characters of a rejected value back, so an error message cannot
/// be used to reflect a megabyte of attacker input into logs.
fn truncate(value: &str) -> String {
    value.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(name("project", "demo-1").is_ok());
        for bad in ["", "-x", "Demo", "a_b", "a.b", &"a".repeat(64), "a/b"] {
            assert!(name("project", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hostnames() {
        for good in ["node-a", "n1.example.com", "A1"] {
            assert!(hostname(good).is_ok(), "{good:?} refused");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            "a b",
            "a_b",
            &"a".repeat(64),
            "a\nb",
        ] {
            assert!(hostname(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn node_names_never_read_as_addresses() {
        for good in [
            "node-a",
            "n1.example.com",
            "10-20-30-40",
            "web.10",
            "1a",
            "0xg",
            "x0.1",
        ] {
            assert!(node_hostname(good).is_ok(), "{good:?} refused");
        }
        for bad in [
            "10.20.30.40",
            "127.1",
            "1234",
            "0x7f.0.0.1",
            "0X7F",
            "017.0.0.1",
            "1.2.3.4.5",
            "0x",
        ] {
            assert!(hostname(bad).is_ok(), "{bad:?} is a hostname to look up");
            assert_eq!(
                node_hostname(bad),
                Err(ValidationError::HostnameIsAddress(bad.into())),
                "{bad:?}"
            );
        }
        assert!(ip_shaped("::1") && ip_shaped("fe80::1"));
        assert!(node_hostname("-a").is_err() && node_hostname("").is_err());
    }

    #[test]
    fn logins() {
        for good in ["root", "_svc", "deploy-1", "a_b"] {
            assert!(login(good).is_ok(), "{good:?} refused");
        }
        for bad in ["", "1abc", "Root", "a b", "a:b", "a\n", &"a".repeat(33)] {
            assert!(login(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn forward_targets() {
        for good in ["127.0.0.1:5432", "db.internal:1", "localhost:65535"] {
            assert!(forward_target(good).is_ok(), "{good:?} refused");
        }
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:0",
            "h:65536",
            "h:",
            ":22",
            "h:22\"",
            "h:2 2",
            "[::1]:22",
            "h:-1",
            "a\"b:22",
            "h:22,permitopen=\"x:1\"",
        ] {
            assert!(forward_target(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(range("limit", 10, 1, 100), Ok(10));
        assert!(range("limit", 0, 1, 100).is_err());
        assert!(range("limit", 101, 1, 100).is_err());
    }

    #[test]
    fn whole_numbers() {
        #[derive(serde::Deserialize)]
        struct T {
            #[serde(default, deserialize_with = "whole_number")]
            t: Option<i64>,
        }
        let parse = |s: &str| serde_json::from_str::<T>(s).map(|t| t.t);
        assert_eq!(parse(r#"{"t": 60}"#).unwrap(), Some(60));
        assert_eq!(parse(r#"{"t": 60.0}"#).unwrap(), Some(60));
        assert_eq!(parse(r#"{"t": -5.0}"#).unwrap(), Some(-5));
        assert_eq!(parse(r#"{"t": null}"#).unwrap(), None);
        assert_eq!(parse(r#"{}"#).unwrap(), None);
        assert!(parse(r#"{"t": 1.5}"#).is_err());
        assert!(parse(r#"{"t": "60"}"#).is_err());
    }

    #[test]
    fn peer_text_is_bounded_and_has_no_control_bytes() {
        assert_eq!(peer_text("plain", 64), "plain");
        assert_eq!(peer_text("a\0b\x1bc\nd", 64), "a?b?c\nd");
        assert_eq!(peer_line("a\nb", 64), "a?b");
        let long = "é".repeat(100_000);
        let t = peer_text(&long, 100);
        assert!(t.len() <= 100 && t.ends_with('…'), "{} bytes", t.len());
        // A cut never splits a character, whatever the budget.
        for max in 0..12 {
            let t = peer_text("ééééé", max);
            assert!(t.len() <= max.max(3));
        }
    }

    #[test]
    fn rejected_values_are_truncated() {
        let long = "X".repeat(10_000);
        let msg = name("user", &long).unwrap_err().to_string();
        assert!(msg.len() < 300);
    }
}
