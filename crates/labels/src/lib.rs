//! labels: the rules for node labels (a feature of later upstream Monogon, not in the 8456ddf0
//! baseline), in one place for everyone who handles them — the curator (RegisterNode,
//! UpdateNodeLabels), the node (the labels it registers with) and metroctl (which checks them
//! before a node ever sees them).
//!
//! The rules are later upstream Monogon's (`metropolis/node/labels.go` and `validation.go`), which
//! are Kubernetes' qualified names and label values with one extra restriction:
//!
//! * a **key** is an optional prefix and `/`, then a name; the prefix is a lowercase DNS name
//!   (RFC 1123 labels of 1–63 of `a-z`, `0-9`, `-`, not starting or ending with `-`, at most
//!   253 characters) that must not end in a number, so it can never be read as an IP address;
//! * a **name** is 1–63 of `a-z A-Z 0-9 - _ .`, starting and ending with a letter or digit;
//! * a **value** is like a name but may be empty;
//! * a node carries at most [`MAX_LABELS_PER_NODE`] labels, with unique keys.
//!
//! The crate works on `&str` pairs and has no dependencies beyond `thiserror`, so every crate
//! can use it without pulling in the protos.

#![forbid(unsafe_code)]

use std::collections::HashSet;

/// Most labels a node may carry (upstream `MaxLabelsPerNode`).
pub const MAX_LABELS_PER_NODE: usize = 128;

/// Longest label name or value (as Kubernetes, which Metropolis labels may be synced into).
pub const MAX_NAME_LENGTH: usize = 63;

/// Longest DNS name, written without a trailing dot.
pub const MAX_DOMAIN_NAME_LENGTH: usize = 253;

/// Longest label of a DNS name (RFC 1123).
const MAX_DOMAIN_LABEL_LENGTH: usize = 63;

/// Why a label key or value is invalid (upstream's `ErrLabel*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// A key without a name (`""`, `example.com/`).
    #[error("empty")]
    Empty,
    /// More than [`MAX_NAME_LENGTH`] characters.
    #[error("too long (at most {MAX_NAME_LENGTH} characters)")]
    TooLong,
    /// Does not start with a letter or digit.
    #[error("first character is not a letter or digit")]
    InvalidFirstCharacter,
    /// Does not end with a letter or digit.
    #[error("last character is not a letter or digit")]
    InvalidLastCharacter,
    /// Holds something other than letters, digits, `-`, `_` and `.`.
    #[error("invalid character (only letters, digits, '-', '_' and '.' are allowed)")]
    InvalidCharacter,
    /// A `/` with nothing before it.
    #[error("empty prefix before '/'")]
    EmptyPrefix,
    /// More than one `/`.
    #[error("more than one '/' (a key is an optional DNS-name prefix and '/', then a name)")]
    InvalidPrefix,
    /// The prefix is not an acceptable DNS name.
    #[error("invalid prefix: {0}")]
    Prefix(#[from] DomainNameError),
}

/// Why a DNS name (a label key prefix) is invalid (upstream's `errDomainName*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DomainNameError {
    /// More than [`MAX_DOMAIN_NAME_LENGTH`] characters.
    #[error("too long, must have length at most {MAX_DOMAIN_NAME_LENGTH}")]
    TooLong,
    /// Not a dot-separated list of RFC 1123 labels in lowercase.
    #[error(
        "must consist of labels separated by '.', where each label has between 1 and 63 \
         lowercase letters, digits or '-', and must not start or end with '-'"
    )]
    Invalid,
    /// The last label is a number (`1.1.1.1`, `example.123`, `0x1f`), which URL parsers read
    /// as an IPv4 address.
    #[error("must not end in a number")]
    EndsInNumber,
}

/// Why a set of labels (or a change to one) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelSetError {
    /// A key breaks the rules.
    #[error("label key {key:?}: {error}")]
    Key {
        /// The key.
        key: String,
        /// What is wrong with it.
        error: LabelError,
    },
    /// A value breaks the rules.
    #[error("value {value:?} of label {key:?}: {error}")]
    Value {
        /// The key the value belongs to.
        key: String,
        /// The value.
        value: String,
        /// What is wrong with it.
        error: LabelError,
    },
    /// The same key is set twice.
    #[error("label {0:?} is given twice")]
    DuplicateKey(String),
    /// The same key is deleted twice.
    #[error("label {0:?} is deleted twice")]
    DuplicateDelete(String),
    /// A key is both set and deleted.
    #[error("label {0:?} is both upserted and deleted")]
    UpsertAndDelete(String),
    /// More than [`MAX_LABELS_PER_NODE`] labels.
    #[error("{count} labels; a node may have at most {MAX_LABELS_PER_NODE}")]
    TooMany {
        /// How many there would be.
        count: usize,
    },
}

/// Checks a label key (upstream `ValidateLabelKey`): an optional DNS-name prefix and `/`, then
/// a name.
pub fn validate_key(key: &str) -> Result<(), LabelError> {
    let mut parts = key.split('/');
    let (prefix, name) = match (parts.next(), parts.next(), parts.next()) {
        (Some(name), None, _) => (None, name),
        (Some(prefix), Some(name), None) => (Some(prefix), name),
        _ => return Err(LabelError::InvalidPrefix),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err(LabelError::EmptyPrefix);
        }
        validate_domain_name(prefix)?;
    }
    if name.is_empty() {
        return Err(LabelError::Empty);
    }
    validate_name(name)
}

/// Checks a label value (upstream `ValidateLabelValue`): empty, or like a key's name.
pub fn validate_value(value: &str) -> Result<(), LabelError> {
    if value.is_empty() {
        return Ok(());
    }
    validate_name(value)
}

/// A non-empty name or value. Bytes, not chars, as upstream: anything beyond ASCII is invalid
/// anyway, and a multi-byte character then fails the character checks.
fn validate_name(s: &str) -> Result<(), LabelError> {
    let b = s.as_bytes();
    if b.len() > MAX_NAME_LENGTH {
        return Err(LabelError::TooLong);
    }
    if !b.first().is_some_and(u8::is_ascii_alphanumeric) {
        return Err(LabelError::InvalidFirstCharacter);
    }
    if !b.last().is_some_and(u8::is_ascii_alphanumeric) {
        return Err(LabelError::InvalidLastCharacter);
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        return Err(LabelError::InvalidCharacter);
    }
    Ok(())
}

/// Checks a DNS name (upstream `validateDomainName`): RFC 1123 without a trailing dot, in
/// lowercase only (so names compare without case folding), and not ending in a number (the
/// WHATWG URL "ends in a number" check), so it is never mistaken for an IPv4 address.
pub fn validate_domain_name(name: &str) -> Result<(), DomainNameError> {
    if name.len() > MAX_DOMAIN_NAME_LENGTH {
        return Err(DomainNameError::TooLong);
    }
    let valid_label = |l: &str| {
        let b = l.as_bytes();
        let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        (1..=MAX_DOMAIN_LABEL_LENGTH).contains(&b.len())
            && b.iter().all(|c| edge(c) || *c == b'-')
            && b.first().is_some_and(edge)
            && b.last().is_some_and(edge)
    };
    if !name.split('.').all(valid_label) {
        return Err(DomainNameError::Invalid);
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    let decimal = last.bytes().all(|c| c.is_ascii_digit());
    let hex = last
        .strip_prefix("0x")
        .is_some_and(|h| h.bytes().all(|c| c.is_ascii_hexdigit()));
    if decimal || hex {
        return Err(DomainNameError::EndsInNumber);
    }
    Ok(())
}

/// Longest key or value an error quotes in full: errors reach callers (gRPC messages, which
/// travel in a header) and logs, and an invalid key can be as long as a request allows.
pub const MAX_QUOTED_CHARS: usize = 320;

/// `s` for an error: in full if it could be a valid key (a prefix and a name), else its start
/// with `…` appended.
fn quoted(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_string(),
    }
}

/// Checks one label.
pub fn check_pair(key: &str, value: &str) -> Result<(), LabelSetError> {
    validate_key(key).map_err(|error| LabelSetError::Key {
        key: quoted(key),
        error,
    })?;
    validate_value(value).map_err(|error| LabelSetError::Value {
        key: quoted(key),
        value: quoted(value),
        error,
    })
}

/// Checks that a node may carry `count` labels.
pub fn check_count(count: usize) -> Result<(), LabelSetError> {
    if count > MAX_LABELS_PER_NODE {
        return Err(LabelSetError::TooMany { count });
    }
    Ok(())
}

/// Checks a complete set of labels, e.g. those a node is told to register with: every label
/// valid, keys unique, at most [`MAX_LABELS_PER_NODE`].
pub fn check_set<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), LabelSetError> {
    let mut seen = HashSet::new();
    for (key, value) in pairs {
        check_pair(key, value)?;
        if !seen.insert(key) {
            return Err(LabelSetError::DuplicateKey(quoted(key)));
        }
    }
    check_count(seen.len())
}

/// Checks a change to a node's labels (UpdateNodeLabels): valid keys and values, no key
/// upserted or deleted twice, none both upserted and deleted. Whether the result stays within
/// [`MAX_LABELS_PER_NODE`] depends on the labels the node has; see [`check_count`].
pub fn check_update<'a>(
    upsert: impl IntoIterator<Item = (&'a str, &'a str)>,
    delete: impl IntoIterator<Item = &'a str>,
) -> Result<(), LabelSetError> {
    let mut upserted = HashSet::new();
    for (key, value) in upsert {
        check_pair(key, value)?;
        if !upserted.insert(key) {
            return Err(LabelSetError::DuplicateKey(quoted(key)));
        }
    }
    let mut deleted = HashSet::new();
    for key in delete {
        validate_key(key).map_err(|error| LabelSetError::Key {
            key: quoted(key),
            error,
        })?;
        if !deleted.insert(key) {
            return Err(LabelSetError::DuplicateDelete(quoted(key)));
        }
        if upserted.contains(key) {
            return Err(LabelSetError::UpsertAndDelete(quoted(key)));
        }
    }
    Ok(())
}

/// Why [`filter_registration`] left a label out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// It came after the first [`MAX_LABELS_PER_NODE`].
    BeyondLimit,
    /// It breaks the rules.
    Invalid(LabelSetError),
    /// An earlier label has the same key.
    Duplicate,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::BeyondLimit => write!(f, "only the first {MAX_LABELS_PER_NODE} labels are kept"),
            Skip::Invalid(e) => write!(f, "{e}"),
            Skip::Duplicate => write!(f, "an earlier label has the same key"),
        }
    }
}

/// The labels a registering node keeps, and the ones it does not.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filtered<'a> {
    /// Kept, in the order given.
    pub kept: Vec<(&'a str, &'a str)>,
    /// Left out, in the order given, with the reason.
    pub skipped: Vec<(&'a str, &'a str, Skip)>,
}

/// What RegisterNode keeps of the labels a node registers with, as upstream: the first
/// [`MAX_LABELS_PER_NODE`] pairs, minus invalid ones and repeats of an earlier key. Nothing is
/// refused, because a registering node cannot change its labels (they come from its
/// NodeParameters) and refusing would keep it out of the cluster for good; a manager fixes
/// labels afterwards with UpdateNodeLabels.
pub fn filter_registration<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Filtered<'a> {
    let mut out = Filtered::default();
    let mut seen = HashSet::new();
    for (i, (key, value)) in pairs.into_iter().enumerate() {
        let skip = if i >= MAX_LABELS_PER_NODE {
            Some(Skip::BeyondLimit)
        } else if let Err(e) = check_pair(key, value) {
            Some(Skip::Invalid(e))
        } else if !seen.insert(key) {
            Some(Skip::Duplicate)
        } else {
            None
        };
        match skip {
            Some(reason) => out.skipped.push((key, value, reason)),
            None => out.kept.push((key, value)),
        }
    }
    out
}

#[cfg(test)]
mod tests;
