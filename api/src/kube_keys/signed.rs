//! Signed Node annotations: the agent takes keys from its Node object only when a
//! key the cluster admin holds signed them, and this module is that check.
//!
//! Who may change a Node's annotations is not only who may patch Nodes: Kubernetes
//! lets an update of the `nodes/status` subresource change `metadata.annotations`
//! too, and that right is held on every node by CNI and monitoring DaemonSets
//! (flannel, calico-node, node-problem-detector), as well as by each kubelet for its
//! own Node. So the annotation's text alone says nothing about who wrote it. It is
//! used only with a second annotation, [`SIG_ANNOTATION`]: an OpenSSH signature
//! (the SSHSIG format of `ssh-keygen -Y sign -n postern-node-keys`) over the
//! annotation's bytes, by one of the public keys the agent is started with
//! (`--kube-node-keys-signer`, parsed by [`Signers::parse`]). Anyone who can write
//! the annotations can still remove or break them, so they can take keys away;
//! they cannot add one.
//!
//! A valid signature is not enough on its own: a status writer could copy a signed
//! document from another Node, or put back an older one. So the signed text starts
//! with three header lines, checked once the signature is:
//!
//! ```text
//! node=worker-3                   must be this agent's --node-name
//! serial=1764000000               never lower than the highest this node accepted
//! not-after=2026-12-01T00:00:00Z  in the future, at most MAX_VALIDITY_DAYS ahead
//! ```
//!
//! and then the key lines of [`super::parse_annotation`], numbered as lines of the
//! whole annotation. Every key ends at `not-after` at the latest (its `expires=` is
//! capped there), so sshd's `expiry-time=` ends the document even from a stale
//! cache. The same serial is accepted again only for the same bytes, which is how
//! the agent sees its document again on every watch event and restart.
//!
//! Anything wrong with the signature or a header refuses the whole document: no key
//! in it is used, and the reason is one bounded line ([`DocError`]) for the log and
//! the bastion's view. This module only decides; it does no I/O.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use ssh_key::public::KeyData;
use ssh_key::{HashAlg, PublicKey, SshSig};
use thiserror::Error;

use super::{ANNOTATION, MAX_ANNOTATION_BYTES, Parsed, RejectedLine, parse_lines, parse_utc};
use crate::pubkey::{KeyError, parse_user_key};

/// The Node annotation holding the signature of [`ANNOTATION`].
pub const SIG_ANNOTATION: &str = "postern.dev/authorized-keys-sig";
/// The SSHSIG namespace (`ssh-keygen -Y sign -n …`): a signature made for anything
/// else (git commits, files) is never taken for a grant of access.
pub const SIG_NAMESPACE: &str = "postern-node-keys";
/// The longest a signed document may still be valid when the agent reads it, so a
/// document copied or leaked today stops working within this time whatever its
/// `not-after` says, and a new node with no memory of serials can be handed an old
/// one for at most this long.
pub const MAX_VALIDITY_DAYS: i64 = 400;
const MAX_VALIDITY_MS: i64 = MAX_VALIDITY_DAYS * 24 * 3600 * 1000;
/// Largest signature annotation (an RSA-8192 signature is about 3 KiB armored).
pub const MAX_SIGNATURE_BYTES: usize = 16 * 1024;
/// Most signer keys an agent may be given.
pub const MAX_SIGNERS: usize = 32;
/// Largest signer file.
pub const MAX_SIGNERS_FILE_BYTES: usize = 64 * 1024;
/// The header lines (`node=`, `serial=`, `not-after=`) before the key lines.
pub const HEADER_LINES: usize = 3;

/// Why a signer file (`--kube-node-keys-signer`) is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SignersError {
    #[error(
        "it holds no public key: give the OpenSSH public key(s) of whoever may grant access, one per line as in authorized_keys"
    )]
    Empty,
    #[error("it holds more than {MAX_SIGNERS} keys")]
    TooMany,
    #[error("it is larger than {MAX_SIGNERS_FILE_BYTES} bytes")]
    TooLarge,
    #[error("line {0}: {1}")]
    Line(usize, KeyError),
}

/// The public keys whose signature makes an annotation usable.
#[derive(Debug, Clone)]
pub struct Signers {
    /// Each key with its `SHA256:…` fingerprint.
    keys: Vec<(PublicKey, String)>,
}

impl Signers {
    /// The signer file's text: one OpenSSH public key per line (`<algorithm>
    /// <base64> [comment]`, as in authorized_keys but without options); blank lines
    /// and `#` comments are skipped. Keys are held to the rules of users' keys
    /// (Ed25519, ECDSA, RSA of at least 2048 bits). Any bad line refuses the whole
    /// file: it is configuration, and a signer silently left out would be a
    /// surprise at the worst moment.
    pub fn parse(text: &str) -> Result<Signers, SignersError> {
        if text.len() > MAX_SIGNERS_FILE_BYTES {
            return Err(SignersError::TooLarge);
        }
        let mut keys: Vec<(PublicKey, String)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |e: KeyError| SignersError::Line(i + 1, e);
            let k = parse_user_key(line).map_err(bad)?;
            let key = PublicKey::from_openssh(&k.public_key)
                .map_err(|e| bad(KeyError::Unparsable(e.to_string())))?;
            if keys.iter().any(|(_, fp)| *fp == k.fingerprint) {
                continue;
            }
            if keys.len() >= MAX_SIGNERS {
                return Err(SignersError::TooMany);
            }
            keys.push((key, k.fingerprint));
        }
        if keys.is_empty() {
            return Err(SignersError::Empty);
        }
        Ok(Signers { keys })
    }

    /// The `SHA256:…` fingerprints of the keys, in the file's order.
    pub fn fingerprints(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(_, fp)| fp.as_str())
    }

    /// Whether the key with this fingerprint is a signer.
    pub fn contains(&self, fingerprint: &str) -> bool {
        self.fingerprints().any(|f| f == fingerprint)
    }

    fn find(&self, key: &KeyData) -> Option<&PublicKey> {
        self.keys
            .iter()
            .map(|(k, _)| k)
            .find(|k| k.key_data() == key)
    }
}

/// A signed document the agent accepted: kept in its cache, to refuse an older
/// serial later and to drop the keys when their signer is no longer configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedDoc {
    /// `SHA256:…` of the key that signed it.
    pub signer: String,
    pub serial: u64,
    /// `not-after=`, unix ms.
    pub not_after_ms: i64,
    /// SHA-256 of the signed bytes (hex): the same serial is accepted again only
    /// for the same document.
    pub sha256: String,
}

/// Why a document grants nothing. Each text is one line of bounded length: it
/// reaches the agent's log and the bastion's view of the node.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum DocError {
    #[error(
        "{ANNOTATION} is not signed ({SIG_ANNOTATION} is missing): only keys signed by a --kube-node-keys-signer key are used"
    )]
    Unsigned,
    #[error("{ANNOTATION} is larger than {MAX_ANNOTATION_BYTES} bytes")]
    TooLarge,
    #[error("{SIG_ANNOTATION} is larger than {MAX_SIGNATURE_BYTES} bytes")]
    SignatureTooLarge,
    #[error("{SIG_ANNOTATION} is not an SSH signature (from ssh-keygen -Y sign): {0}")]
    SignatureUnreadable(String),
    #[error(
        "the signature's namespace is {0:?}, not {SIG_NAMESPACE:?} (ssh-keygen -Y sign -n {SIG_NAMESPACE})"
    )]
    Namespace(String),
    #[error("signed by {0}, which is not one of this agent's --kube-node-keys-signer keys")]
    UnknownSigner(String),
    #[error(
        "the signature by {0} does not match {ANNOTATION}: the annotation was changed after it was signed"
    )]
    Mismatch(String),
    #[error("line {0} of the signed document must be {1}")]
    Header(usize, &'static str),
    #[error("signed for node {0:?}, and this is node {1:?}")]
    OtherNode(String, String),
    #[error("the signed document expired at {0} (not-after): sign a new one")]
    Expired(String),
    #[error("not-after={0} is more than {MAX_VALIDITY_DAYS} days ahead")]
    TooFarAhead(String),
    #[error(
        "serial={0} is lower than serial={1}, which this node already accepted: an older document is not used again"
    )]
    OldSerial(u64, u64),
    #[error(
        "serial={0} was already accepted for a different document: sign each change with a higher serial"
    )]
    SerialReused(u64),
}

/// What a check needs besides the two annotations.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// This agent's `--node-name`.
    pub node_name: &'a str,
    pub signers: &'a Signers,
    pub now_ms: i64,
    /// The last document this node accepted, if any: its serial is the floor.
    pub floor: Option<&'a SignedDoc>,
}

/// A document whose signature and header hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub doc: SignedDoc,
    /// Its key lines, each key's expiry capped at `not-after`.
    pub parsed: Parsed,
}

/// What the agent holds after reading its Node's two annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The keys to serve, and the lines (or, as line 0, the whole document) refused.
    pub parsed: Parsed,
    /// The document accepted; `None` when there was none or it was refused.
    pub accepted: Option<SignedDoc>,
}

/// The Node's annotations as the agent uses them: no document (or a blank one)
/// grants nothing and reports nothing, as before signatures; a refused document
/// grants nothing and reports why as line 0; an accepted one grants its keys.
pub fn evaluate(doc: Option<&str>, sig: Option<&str>, cx: &Context<'_>) -> Outcome {
    let Some(doc) = doc.filter(|d| !d.trim().is_empty()) else {
        return Outcome::default();
    };
    match verify(doc, sig, cx) {
        Ok(v) => Outcome {
            parsed: v.parsed,
            accepted: Some(v.doc),
        },
        Err(e) => Outcome {
            parsed: Parsed {
                keys: Vec::new(),
                rejected: vec![RejectedLine {
                    line: 0,
                    reason: e.to_string(),
                }],
            },
            accepted: None,
        },
    }
}

/// Checks the signature, then the header, then parses the key lines. Nothing of
/// the document is read before its signature is known good, except its size.
pub fn verify(doc: &str, sig: Option<&str>, cx: &Context<'_>) -> Result<Verified, DocError> {
    if doc.len() > MAX_ANNOTATION_BYTES {
        return Err(DocError::TooLarge);
    }
    let sig = sig
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(DocError::Unsigned)?;
    if sig.len() > MAX_SIGNATURE_BYTES {
        return Err(DocError::SignatureTooLarge);
    }
    let sig = SshSig::from_pem(sig)
        .map_err(|e| DocError::SignatureUnreadable(shown(&e.to_string(), 100)))?;
    if sig.namespace() != SIG_NAMESPACE {
        return Err(DocError::Namespace(shown(sig.namespace(), 40)));
    }
    let by = sig.public_key().fingerprint(HashAlg::Sha256).to_string();
    let Some(signer) = cx.signers.find(sig.public_key()) else {
        return Err(DocError::UnknownSigner(by));
    };
    let Some(message) = signed_bytes(doc, |m| signer.verify(SIG_NAMESPACE, m, &sig).is_ok()) else {
        return Err(DocError::Mismatch(by));
    };

    let header = Header::parse(doc)?;
    if header.node != cx.node_name {
        return Err(DocError::OtherNode(
            shown(header.node, 64),
            shown(cx.node_name, 64),
        ));
    }
    if header.not_after_ms <= cx.now_ms {
        return Err(DocError::Expired(header.not_after.to_string()));
    }
    if header.not_after_ms.saturating_sub(cx.now_ms) > MAX_VALIDITY_MS {
        return Err(DocError::TooFarAhead(header.not_after.to_string()));
    }
    let sha256 = hex(&HashAlg::Sha256.digest(&message));
    if let Some(floor) = cx.floor {
        if header.serial < floor.serial {
            return Err(DocError::OldSerial(header.serial, floor.serial));
        }
        if header.serial == floor.serial && sha256 != floor.sha256 {
            return Err(DocError::SerialReused(header.serial));
        }
    }

    let mut parsed = parse_lines(doc, HEADER_LINES);
    for k in &mut parsed.keys {
        let until = k
            .expires_at_ms
            .map_or(header.not_after_ms, |t| t.min(header.not_after_ms));
        k.expires_at_ms = Some(until);
    }
    Ok(Verified {
        doc: SignedDoc {
            signer: by,
            serial: header.serial,
            not_after_ms: header.not_after_ms,
            sha256,
        },
        parsed,
    })
}

/// The bytes the signature covers: the annotation's own, or those plus one
/// newline. `ssh-keygen -Y sign` signs a file, which ends with a newline, and
/// `kubectl annotate k="$(cat file)"` drops it; the two texts have the same lines,
/// so they mean the same keys.
fn signed_bytes(doc: &str, verifies: impl Fn(&[u8]) -> bool) -> Option<Cow<'_, [u8]>> {
    if verifies(doc.as_bytes()) {
        return Some(Cow::Borrowed(doc.as_bytes()));
    }
    if doc.ends_with('\n') {
        return None;
    }
    let mut with_newline = doc.as_bytes().to_vec();
    with_newline.push(b'\n');
    verifies(&with_newline).then_some(Cow::Owned(with_newline))
}

/// The three header lines of a signed document.
struct Header<'d> {
    node: &'d str,
    serial: u64,
    /// As written (20 characters, checked).
    not_after: &'d str,
    not_after_ms: i64,
}

impl<'d> Header<'d> {
    fn parse(doc: &'d str) -> Result<Header<'d>, DocError> {
        let mut lines = doc.lines();
        let node =
            field(lines.next(), "node").ok_or(DocError::Header(1, "node=<this Node's name>"))?;
        let serial = field(lines.next(), "serial")
            .filter(|v| v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or(DocError::Header(
                2,
                "serial=<a number higher than the last one signed for this node>",
            ))?;
        const NOT_AFTER: &str = "not-after=YYYY-MM-DDTHH:MM:SSZ (UTC)";
        let not_after = field(lines.next(), "not-after").ok_or(DocError::Header(3, NOT_AFTER))?;
        let not_after_ms = parse_utc(not_after).map_err(|_| DocError::Header(3, NOT_AFTER))?;
        Ok(Header {
            node,
            serial,
            not_after,
            not_after_ms,
        })
    }
}

/// `name=value` exactly: no blanks anywhere, a value of at least one character.
fn field<'d>(line: Option<&'d str>, name: &str) -> Option<&'d str> {
    line?
        .strip_prefix(name)?
        .strip_prefix('=')
        .filter(|v| !v.is_empty() && !v.contains(char::is_whitespace))
}

/// Text from the document or the signature, for an error line: at most `max`
/// characters, anything but printable ASCII shown as `?` (node names and
/// namespaces are ASCII; anything else would only make the line longer or
/// misleading once escaped).
fn shown(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
