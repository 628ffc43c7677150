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
        let mut causes = Vec::new();
        let mut source = err.source();
        while let Some(cause) = source {
            causes.push(cause.to_string());
            source = cause.source();
        }
        ErrorObject {
            cni_version: cni_version.to_string(),
            code: err.code(),
            msg: err.to_string(),
            details: causes.join(": "),
        }
    }
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
    }
}
