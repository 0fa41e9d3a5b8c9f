//! Node labels and the label selectors that pick nodes by them, in Kubernetes'
//! syntax so that what operators already write for `kubectl -l` means the same here.
//!
//! A label key is `[prefix/]name`: the optional prefix a DNS subdomain, the name 1 to
//! 63 characters. A value is empty or a name. [`validate_labels`] holds a node's set
//! to those rules and to [`MAX_LABELS`]; [`parse_label_arg`] reads a `key=value`
//! command-line flag.
//!
//! A [`Selector`] is a comma-separated list of requirements that must all hold:
//!
//! ```text
//! role=db              role==db       the label is there with that value
//! role!=db                            absent, or there with another value
//! zone in (a,b)                       there with one of the values
//! zone notin (a,b)                    absent, or there with none of them
//! canary                              there, with any value
//! !canary                             absent
//! ```
//!
//! Everything this parser accepts means what it means to Kubernetes; some of what
//! Kubernetes accepts is refused here: `>` and `<`, tabs and newlines, an empty list
//! `()`, and an empty selector (selecting every node is what `target_type` cluster
//! is for). The input is bounded ([`MAX_SELECTOR_BYTES`], [`MAX_REQUIREMENTS`],
//! [`MAX_LIST_VALUES`]) and every refusal names the byte position where it was
//! found and what was expected there. [`Selector`]'s `Display` is a canonical form
//! that parses back to an equal selector.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// A node's labels, sorted by key so that listings and canonical forms are stable.
pub type Labels = BTreeMap<String, String>;

/// Most labels one node may carry.
pub const MAX_LABELS: usize = 64;
/// Largest selector accepted, checked before anything else is read.
pub const MAX_SELECTOR_BYTES: usize = 4096;
/// Most requirements in one selector.
pub const MAX_REQUIREMENTS: usize = 64;
/// Most values in one `in` or `notin` list.
pub const MAX_LIST_VALUES: usize = 64;

const MAX_NAME_LEN: usize = 63;
const MAX_PREFIX_LEN: usize = 253;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum LabelError {
    #[error("a label key is empty: write name or prefix/name, e.g. role or example.com/role")]
    KeyEmpty,
    #[error(
        "invalid label key {0:?}: the prefix before '/' must be a DNS subdomain: lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit, at most 253 characters"
    )]
    KeyPrefix(String),
    #[error(
        "invalid label key {0:?}: the name (after the one optional '/') must be 1 to 63 characters from A-Z, a-z, 0-9, '-', '_' and '.', starting and ending with a letter or digit"
    )]
    KeyName(String),
    #[error(
        "invalid label value {0:?}: leave it empty or use at most 63 characters from A-Z, a-z, 0-9, '-', '_' and '.', starting and ending with a letter or digit"
    )]
    Value(String),
    #[error("{0} labels given, at most {MAX_LABELS} are allowed: drop some")]
    TooMany(usize),
    #[error("invalid label {0:?}: write key=value with exactly one '=', e.g. role=db")]
    Argument(String),
}

/// Checks a label key: `name` or `prefix/name`.
pub fn validate_key(k: &str) -> Result<(), LabelError> {
    if k.is_empty() {
        return Err(LabelError::KeyEmpty);
    }
    let (prefix, name) = match k.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, k),
    };
    if prefix.is_some_and(|p| !is_dns_subdomain(p)) {
        return Err(LabelError::KeyPrefix(shown(k)));
    }
    // A second '/' lands in the name, which refuses it.
    if !is_name(name) {
        return Err(LabelError::KeyName(shown(k)));
    }
    Ok(())
}

/// Checks a label value: empty, or 1 to 63 characters like a key's name.
pub fn validate_value(v: &str) -> Result<(), LabelError> {
    if v.is_empty() || is_name(v) {
        Ok(())
    } else {
        Err(LabelError::Value(shown(v)))
    }
}

/// Checks a node's whole label set: the count first, so an oversized set is refused
/// without reading it, then each key and value.
pub fn validate_labels(l: &Labels) -> Result<(), LabelError> {
    if l.len() > MAX_LABELS {
        return Err(LabelError::TooMany(l.len()));
    }
    for (k, v) in l {
        validate_key(k)?;
        validate_value(v)?;
    }
    Ok(())
}

/// Reads a `key=value` command-line flag. A second '=' is refused rather than
/// folded into the value, where it could only be a typo (values cannot hold '=').
pub fn parse_label_arg(s: &str) -> Result<(String, String), LabelError> {
    let Some((k, v)) = s.split_once('=') else {
        return Err(LabelError::Argument(shown(s)));
    };
    if v.contains('=') {
        return Err(LabelError::Argument(shown(s)));
    }
    validate_key(k)?;
    validate_value(v)?;
    Ok((k.to_string(), v.to_string()))
}

/// A label set as people read and write it: `k=v,k2=v2` in key order, or
/// `(none)` for the empty set, so that "no labels" is never a blank.
pub fn joined(l: &Labels) -> String {
    if l.is_empty() {
        return "(none)".into();
    }
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63 bytes.
fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            b.len() <= MAX_NAME_LEN
                && first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// RFC 1123 subdomain as Kubernetes checks it: only the whole is bounded, not each part.
fn is_dns_subdomain(s: &str) -> bool {
    let part_ok = |part: &str| {
        let b = part.as_bytes();
        let end_ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        b.first().is_some_and(end_ok)
            && b.last().is_some_and(end_ok)
            && b.iter().all(|c| end_ok(c) || *c == b'-')
    };
    !s.is_empty() && s.len() <= MAX_PREFIX_LEN && s.split('.').all(part_ok)
}

/// Echo at most 80 characters of a rejected key or value, so an error message cannot
/// reflect a large input into logs.
fn shown(s: &str) -> String {
    s.chars().take(80).collect()
}

/// What a requirement asks of one label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    /// `k=v` or `k==v`.
    Equals(String),
    /// `k!=v`; also holds when the label is absent.
    NotEquals(String),
    /// `k in (a,b)`; the values sorted, without repeats, never empty.
    In(Vec<String>),
    /// `k notin (a,b)`; also holds when the label is absent.
    NotIn(Vec<String>),
    /// `k`.
    Exists,
    /// `!k`.
    DoesNotExist,
}

/// One requirement of a [`Selector`]: a validated key and what it asks of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    key: String,
    operator: Operator,
}

impl Requirement {
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn operator(&self) -> &Operator {
        &self.operator
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        let listed = |values: &[String]| value.is_some_and(|v| values.binary_search(v).is_ok());
        match &self.operator {
            Operator::Equals(want) => value == Some(want),
            Operator::NotEquals(want) => value != Some(want),
            Operator::In(values) => listed(values),
            Operator::NotIn(values) => !listed(values),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |f: &mut fmt::Formatter<'_>, op: &str, values: &[String]| {
            // A list of the empty value alone would join to "()", which is refused
            // as an empty list; "(,)" reads back as that one empty value.
            if values.len() == 1 && values.iter().all(String::is_empty) {
                write!(f, "{} {op} (,)", self.key)
            } else {
                write!(f, "{} {op} ({})", self.key, values.join(","))
            }
        };
        match &self.operator {
            Operator::Equals(v) => write!(f, "{}={v}", self.key),
            Operator::NotEquals(v) => write!(f, "{}!={v}", self.key),
            Operator::In(values) => list(f, "in", values),
            Operator::NotIn(values) => list(f, "notin", values),
            Operator::Exists => write!(f, "{}", self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
        }
    }
}

/// A parsed label selector: requirements that must all hold, in the order written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// Parses a selector written in Kubernetes' syntax (see the module's doc).
    pub fn parse(s: &str) -> Result<Selector, SelectorError> {
        if s.len() > MAX_SELECTOR_BYTES {
            return Err(SelectorError::at(
                MAX_SELECTOR_BYTES,
                SelectorErrorKind::TooLong(s.len()),
            ));
        }
        let mut p = Parser { text: s, pos: 0 };
        let mut requirements: Vec<Requirement> = Vec::new();
        let mut canonical_len = 0usize;
        loop {
            let (at, tok) = p.peek()?;
            if requirements.is_empty() && tok == Tok::End {
                return Err(SelectorError::at(at, SelectorErrorKind::Empty));
            }
            if requirements.len() == MAX_REQUIREMENTS {
                return Err(SelectorError::at(
                    at,
                    SelectorErrorKind::TooManyRequirements,
                ));
            }
            let r = p.requirement()?;
            // The canonical form adds a space before each '(' that the input may
            // have left out, so it can outgrow an input that fit; refusing here
            // keeps every accepted selector's Display parseable.
            canonical_len += r.to_string().len() + usize::from(!requirements.is_empty());
            if canonical_len > MAX_SELECTOR_BYTES {
                return Err(SelectorError::at(at, SelectorErrorKind::CanonicalTooLong));
            }
            requirements.push(r);
            let (at, tok) = p.peek()?;
            match tok {
                Tok::End => break,
                Tok::Sym(b',') => p.pos += 1,
                other => {
                    return Err(SelectorError::at(
                        at,
                        SelectorErrorKind::ExpectedSeparator(other.found()),
                    ));
                }
            }
        }
        Ok(Selector { requirements })
    }

    /// Whether every requirement holds for a node with these labels.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// A refused selector: where (a 0-based byte offset) and why.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("selector: at position {position}: {kind}")]
pub struct SelectorError {
    position: usize,
    kind: SelectorErrorKind,
}

impl SelectorError {
    fn at(position: usize, kind: SelectorErrorKind) -> SelectorError {
        SelectorError { position, kind }
    }

    /// The 0-based byte offset in the selector where the problem was found.
    pub fn position(&self) -> usize {
        self.position
    }

    pub fn kind(&self) -> &SelectorErrorKind {
        &self.kind
    }
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum SelectorErrorKind {
    #[error(
        "expected at most {MAX_SELECTOR_BYTES} bytes, found {0}: use fewer or shorter requirements"
    )]
    TooLong(usize),
    #[error(
        "expected at most {MAX_SELECTOR_BYTES} bytes once written canonically (with a space before each '('): use fewer or shorter requirements"
    )]
    CanonicalTooLong,
    #[error("expected at most {MAX_REQUIREMENTS} requirements: split the selection")]
    TooManyRequirements,
    #[error("expected at most {MAX_LIST_VALUES} values in one list: split the selection")]
    TooManyValues,
    #[error(
        "expected printable ASCII, found a non-ASCII character: label keys, values and operators are ASCII"
    )]
    NotAscii,
    #[error(
        "expected printable ASCII, found control character 0x{0:02x}: separate tokens with spaces"
    )]
    ControlCharacter(u8),
    #[error(
        "expected a requirement such as role=db: a selector must name at least one requirement (to select every node, use target_type cluster)"
    )]
    Empty,
    #[error("expected a requirement (a label key, or '!' and a key), found {0}")]
    ExpectedRequirement(Found),
    #[error("expected a label key after '!', found {0}")]
    ExpectedKeyAfterNot(Found),
    #[error("expected a label key, found the operator {0:?}: in and notin cannot be keys here")]
    KeywordAsKey(&'static str),
    #[error(
        "expected an operator ('=', '==', '!=', 'in' or 'notin'), ',' or the end of the selector after a label key, found {0}"
    )]
    ExpectedOperator(Found),
    #[error(
        "expected a label value, ',' or the end of the selector after '{operator}', found {found}"
    )]
    ExpectedValue {
        operator: &'static str,
        found: Found,
    },
    #[error("expected '(' after '{operator}', found {found}: write key {operator} (a,b)")]
    ExpectedOpenParen {
        operator: &'static str,
        found: Found,
    },
    #[error("expected a value before ')': a list names at least one value, e.g. key {0} (a,b)")]
    EmptyList(&'static str),
    #[error("expected a value, ',' or ')' in a list, found {0}")]
    ExpectedListValue(Found),
    #[error("expected ')' or ',' after a value, found {0}")]
    ExpectedCloseOrComma(Found),
    #[error("expected ',' or the end of the selector after a requirement, found {0}")]
    ExpectedSeparator(Found),
    #[error("expected a label key: {0}")]
    BadKey(LabelError),
    #[error("expected a label value: {0}")]
    BadValue(LabelError),
}

/// What the parser found where it expected something else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    End,
    Symbol(char),
    /// A key, value or keyword: at most 40 bytes of it.
    Word(String),
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::End => f.write_str("the end of the selector"),
            Found::Symbol(c) => write!(f, "{c:?}"),
            Found::Word(w) => write!(f, "{w:?}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<'a> {
    End,
    /// A run of the characters keys and values are made of.
    Word(&'a str),
    /// Any other printable ASCII character: an operator, a parenthesis, a comma, or
    /// something out of place.
    Sym(u8),
}

impl Tok<'_> {
    fn found(self) -> Found {
        match self {
            Tok::End => Found::End,
            Tok::Sym(b) => Found::Symbol(char::from(b)),
            Tok::Word(w) => Found::Word(w.chars().take(40).collect()),
        }
    }
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/')
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    /// The next token and where it starts, leaving it unconsumed. Every byte the
    /// parser reads passes through here, so a non-ASCII or control byte is refused
    /// at its own position whatever the parser expected there.
    fn peek(&mut self) -> Result<(usize, Tok<'a>), SelectorError> {
        let bytes = self.text.as_bytes();
        while bytes.get(self.pos) == Some(&b' ') {
            self.pos += 1;
        }
        let at = self.pos;
        let Some(&b) = bytes.get(at) else {
            return Ok((at, Tok::End));
        };
        if !b.is_ascii() {
            return Err(SelectorError::at(at, SelectorErrorKind::NotAscii));
        }
        if b.is_ascii_control() {
            return Err(SelectorError::at(
                at,
                SelectorErrorKind::ControlCharacter(b),
            ));
        }
        if !is_word_byte(b) {
            return Ok((at, Tok::Sym(b)));
        }
        let len = bytes
            .get(at..)
            .unwrap_or_default()
            .iter()
            .take_while(|&&c| is_word_byte(c))
            .count();
        // Word bytes are ASCII, so both ends are character boundaries.
        let word = self.text.get(at..at + len).unwrap_or_default();
        Ok((at, Tok::Word(word)))
    }

    fn next_byte_is(&self, at: usize, b: u8) -> bool {
        self.text.as_bytes().get(at) == Some(&b)
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        let (at, tok) = self.peek()?;
        match tok {
            Tok::Sym(b'!') => {
                self.pos += 1;
                let key = self.key(SelectorErrorKind::ExpectedKeyAfterNot)?;
                Ok(Requirement {
                    key,
                    operator: Operator::DoesNotExist,
                })
            }
            Tok::Word(_) => {
                let key = self.key(SelectorErrorKind::ExpectedRequirement)?;
                let operator = self.operator()?;
                Ok(Requirement { key, operator })
            }
            other => Err(SelectorError::at(
                at,
                SelectorErrorKind::ExpectedRequirement(other.found()),
            )),
        }
    }

    fn key(&mut self, not_a_word: fn(Found) -> SelectorErrorKind) -> Result<String, SelectorError> {
        let (at, tok) = self.peek()?;
        match tok {
            // Kubernetes lexes these as operators wherever a key may stand.
            Tok::Word(w @ ("in" | "notin")) => Err(SelectorError::at(
                at,
                SelectorErrorKind::KeywordAsKey(if w == "in" { "in" } else { "notin" }),
            )),
            Tok::Word(w) => {
                validate_key(w).map_err(|e| SelectorError::at(at, SelectorErrorKind::BadKey(e)))?;
                self.pos += w.len();
                Ok(w.to_string())
            }
            other => Err(SelectorError::at(at, not_a_word(other.found()))),
        }
    }

    fn operator(&mut self) -> Result<Operator, SelectorError> {
        let (at, tok) = self.peek()?;
        match tok {
            Tok::End | Tok::Sym(b',') => Ok(Operator::Exists),
            Tok::Sym(b'=') if self.next_byte_is(at + 1, b'=') => {
                self.pos += 2;
                Ok(Operator::Equals(self.value("==")?))
            }
            Tok::Sym(b'=') => {
                self.pos += 1;
                Ok(Operator::Equals(self.value("=")?))
            }
            Tok::Sym(b'!') if self.next_byte_is(at + 1, b'=') => {
                self.pos += 2;
                Ok(Operator::NotEquals(self.value("!=")?))
            }
            Tok::Word("in") => {
                self.pos += 2;
                Ok(Operator::In(self.list("in")?))
            }
            Tok::Word("notin") => {
                self.pos += 5;
                Ok(Operator::NotIn(self.list("notin")?))
            }
            other => Err(SelectorError::at(
                at,
                SelectorErrorKind::ExpectedOperator(other.found()),
            )),
        }
    }

    /// The value after `=`, `==` or `!=`; nothing before ',' or the end is the
    /// empty value, as in Kubernetes.
    fn value(&mut self, operator: &'static str) -> Result<String, SelectorError> {
        let (at, tok) = self.peek()?;
        match tok {
            Tok::Word(w) => {
                validate_value(w)
                    .map_err(|e| SelectorError::at(at, SelectorErrorKind::BadValue(e)))?;
                self.pos += w.len();
                Ok(w.to_string())
            }
            Tok::End | Tok::Sym(b',') => Ok(String::new()),
            other => Err(SelectorError::at(
                at,
                SelectorErrorKind::ExpectedValue {
                    operator,
                    found: other.found(),
                },
            )),
        }
    }

    /// `(a,b)`, sorted and without repeats. As in Kubernetes, nothing between two
    /// separators is the empty value: `(a,)` is `a` and the empty value.
    fn list(&mut self, operator: &'static str) -> Result<Vec<String>, SelectorError> {
        let (at, tok) = self.peek()?;
        if tok != Tok::Sym(b'(') {
            return Err(SelectorError::at(
                at,
                SelectorErrorKind::ExpectedOpenParen {
                    operator,
                    found: tok.found(),
                },
            ));
        }
        self.pos += 1;
        let mut values: Vec<String> = Vec::new();
        loop {
            let (at, tok) = self.peek()?;
            let value = match tok {
                Tok::Word(w) => {
                    validate_value(w)
                        .map_err(|e| SelectorError::at(at, SelectorErrorKind::BadValue(e)))?;
                    self.pos += w.len();
                    w.to_string()
                }
                // Kubernetes reads "()" as the empty value; refused here, since
                // someone who wrote it more likely meant no value at all.
                Tok::Sym(b')') if values.is_empty() => {
                    return Err(SelectorError::at(
                        at,
                        SelectorErrorKind::EmptyList(operator),
                    ));
                }
                Tok::Sym(b',' | b')') => String::new(),
                other => {
                    return Err(SelectorError::at(
                        at,
                        SelectorErrorKind::ExpectedListValue(other.found()),
                    ));
                }
            };
            if values.len() == MAX_LIST_VALUES {
                return Err(SelectorError::at(at, SelectorErrorKind::TooManyValues));
            }
            values.push(value);
            let (at, tok) = self.peek()?;
            match tok {
                Tok::Sym(b',') => self.pos += 1,
                Tok::Sym(b')') => {
                    self.pos += 1;
                    break;
                }
                other => {
                    return Err(SelectorError::at(
                        at,
                        SelectorErrorKind::ExpectedCloseOrComma(other.found()),
                    ));
                }
            }
        }
        values.sort();
        values.dedup();
        Ok(values)
    }
}

#[cfg(test)]
mod tests;
