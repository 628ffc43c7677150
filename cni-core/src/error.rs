//! CNI error codes and the error object printed on stdout.
//!
//! Every plugin keeps its own error enum; the only place an error becomes a CNI error object is
//! [`ErrorObject::from_error`], called once by the entry point.

use serde::{Deserialize, Serialize};

/// Well-known error codes of the CNI specification (0-99). Plugin-specific codes start at 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnvironment = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    /// STATUS: the plugin cannot service ADD requests.
    NotAvailable = 50,
    /// STATUS: not available, and existing containers may have limited connectivity.
    NotAvailableLimitedConnectivity = 51,
}

impl From<Code> for u32 {
    fn from(code: Code) -> u32 {
        code as u32
    }
}

/// Implemented by every plugin's error type: which CNI code it maps to.
pub trait CniError: std::error::Error {
    fn code(&self) -> u32;
}

/// The JSON error object of the CNI spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorObject {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl ErrorObject {
    /// `msg` is the error's own message, `details` the chain of causes below it.
    pub fn from_error<E: CniError + ?Sized>(err: &E, cni_version: &str) -> Self {
        ErrorObject {
            cni_version: cni_version.to_string(),
            code: err.code(),
            msg: err.to_string(),
            details: causes(err),
        }
    }
}

/// The causes below `err`, joined with `: ` (empty when it has none).
pub fn causes<E: std::error::Error + ?Sized>(err: &E) -> String {
    let mut out = Vec::new();
    let mut source = err.source();
    let mut above = err.to_string();
    while let Some(cause) = source {
        let text = cause.to_string();
        // An error that prints its cause in its own message need not repeat it.
        if !above.ends_with(&text) {
            out.push(text.clone());
        }
        above = text;
        source = cause.source();
    }
    out.join(": ")
}

/// An error and all its causes on one line: `outer: cause: cause`.
pub fn chain<E: std::error::Error + ?Sized>(err: &E) -> String {
    match causes(err) {
        below if below.is_empty() => err.to_string(),
        below => format!("{err}: {below}"),
    }
}

/// How much a code tells the caller, for choosing the one code that stands for several failures:
/// what the caller must fix (version, environment, configuration, input) outranks a plugin's own
/// condition (100+), which outranks I/O, then "not available", "try again later" and
/// "unknown container" (which a retry or nothing at all cures).
pub fn severity(code: u32) -> u8 {
    match code {
        1 | 2 | 4 | 6 | 7 => 6,
        100.. => 5,
        5 => 4,
        50 | 51 => 3,
        11 => 2,
        3 => 1,
        _ => 4,
    }
}

/// The most severe of `codes` (the first among equals); `fallback` for none.
pub fn most_severe(codes: impl IntoIterator<Item = u32>, fallback: u32) -> u32 {
    codes
        .into_iter()
        .fold(None, |best: Option<u32>, code| match best {
            Some(b) if severity(b) >= severity(code) => Some(b),
            _ => Some(code),
        })
        .unwrap_or(fallback)
}

impl std::fmt::Display for ErrorObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    impl CniError for Outer {
        fn code(&self) -> u32 {
            Code::Io.into()
        }
    }

    #[test]
    fn error_object_carries_code_message_and_causes() {
        let err = Outer(std::io::Error::other("disk on fire"));
        let obj = ErrorObject::from_error(&err, "1.1.0");
        assert_eq!(obj.code, 5);
        assert_eq!(obj.msg, "outer");
        assert_eq!(obj.details, "disk on fire");
        let json = serde_json::to_value(&obj).unwrap();
        assert_eq!(json["cniVersion"], "1.1.0");
        assert_eq!(chain(&err), "outer: disk on fire");
    }

    #[test]
    fn the_most_severe_code_stands_for_several() {
        assert_eq!(most_severe([5, 122, 3], 0), 122);
        assert_eq!(most_severe([3, 11], 0), 11);
        assert_eq!(most_severe([122, 7, 5], 0), 7);
        assert_eq!(most_severe([113, 124], 0), 113, "first among equals");
        assert_eq!(most_severe([], 42), 42);
    }
}
