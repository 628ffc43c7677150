//! What the agent can fail with, by meaning, and the one table that maps each to a gRPC status.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("export {0:?} is not served by this agent")]
    UnknownExport(String),
    /// A path that is not a plain relative path, or that leaves the export (a `..`, a symbolic
    /// link, another filesystem).
    #[error("{0}")]
    BadPath(String),
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0} is not a {1}")]
    WrongKind(String, &'static str),
    /// What the filesystem cannot do (a quota it does not have).
    #[error("{0}")]
    Unsupported(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

pub type AgentResult<T> = Result<T, AgentError>;

impl AgentError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
        let what = what.into();
        move |source| AgentError::Io { what, source }
    }
}

impl From<AgentError> for Status {
    fn from(e: AgentError) -> Status {
        let code = match &e {
            AgentError::UnknownExport(_) | AgentError::NotFound(_) => Code::NotFound,
            AgentError::BadPath(_) | AgentError::WrongKind(..) => Code::InvalidArgument,
            AgentError::AlreadyExists(_) => Code::AlreadyExists,
            AgentError::Unsupported(_) => Code::FailedPrecondition,
            AgentError::Io { source, .. } => match source.raw_os_error() {
                Some(libc::ENOSPC | libc::EDQUOT) => Code::ResourceExhausted,
                Some(libc::EROFS | libc::EACCES | libc::EPERM) => Code::PermissionDenied,
                _ => Code::Internal,
            },
        };
        Status::new(code, e.to_string())
    }
}
