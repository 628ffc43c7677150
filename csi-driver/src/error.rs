//! The driver's errors, and the one place where they become gRPC statuses.

use std::time::Duration;

use tonic::{Code, Status};

/// A failure talking to an NFS server. Always names the server and share.
#[derive(Debug, thiserror::Error)]
pub enum NfsError {
    #[error("NFS server {share} did not answer {what} within {after:?}")]
    Timeout {
        share: String,
        what: String,
        after: Duration,
    },
    #[error("NFS server {share} is unreachable: {reason}")]
    Unreachable { share: String, reason: String },
    #[error("{what} on NFS server {share}: not found")]
    NotFound { share: String, what: String },
    #[error("{what} on NFS server {share}: already exists")]
    Exists { share: String, what: String },
    #[error("{what} on NFS server {share}: stale file handle (the object was removed or replaced on the server)")]
    Stale { share: String, what: String },
    #[error("{what} on NFS server {share}: no space left")]
    NoSpace { share: String, what: String },
    #[error("{what} on NFS server {share}: permission denied ({detail})")]
    Denied {
        share: String,
        what: String,
        detail: String,
    },
    #[error("{what} on NFS server {share}: {detail}")]
    Failed {
        share: String,
        what: String,
        detail: String,
    },
}

impl NfsError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, NfsError::NotFound { .. })
    }

    pub fn is_exists(&self) -> bool {
        matches!(self, NfsError::Exists { .. })
    }

    pub fn is_stale(&self) -> bool {
        matches!(self, NfsError::Stale { .. })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Nfs(#[from] NfsError),
}

impl CsiError {
    pub fn invalid(message: impl Into<String>) -> CsiError {
        CsiError::InvalidArgument(message.into())
    }
}

impl From<CsiError> for Status {
    fn from(error: CsiError) -> Status {
        let code = match &error {
            CsiError::InvalidArgument(_) => Code::InvalidArgument,
            CsiError::NotFound(_) => Code::NotFound,
            CsiError::AlreadyExists(_) => Code::AlreadyExists,
            CsiError::OutOfRange(_) => Code::OutOfRange,
            CsiError::Aborted(_) => Code::Aborted,
            CsiError::FailedPrecondition(_) => Code::FailedPrecondition,
            CsiError::Unimplemented(_) => Code::Unimplemented,
            CsiError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            CsiError::Unavailable(_) => Code::Unavailable,
            CsiError::Internal(_) => Code::Internal,
            CsiError::Nfs(nfs) => match nfs {
                NfsError::Timeout { .. } => Code::DeadlineExceeded,
                NfsError::Unreachable { .. } => Code::Unavailable,
                NfsError::NotFound { .. } => Code::NotFound,
                NfsError::Exists { .. } => Code::AlreadyExists,
                NfsError::Stale { .. } => Code::FailedPrecondition,
                NfsError::NoSpace { .. } => Code::ResourceExhausted,
                NfsError::Denied { .. } => Code::PermissionDenied,
                NfsError::Failed { .. } => Code::Internal,
            },
        };
        Status::new(code, error.to_string())
    }
}

pub type CsiResult<T> = Result<T, CsiError>;
