//! The driver's errors by meaning: NFS calls, and what a request ran into. They become gRPC
//! statuses in one place, `rpc::status`.

use std::time::Duration;

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
    /// The server answers but does not export the share (to this client).
    #[error("NFS server {share}: no such export ({detail})")]
    NoExport { share: String, detail: String },
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

    pub fn is_no_export(&self) -> bool {
        matches!(self, NfsError::NoExport { .. })
    }

    pub fn is_stale(&self) -> bool {
        matches!(self, NfsError::Stale { .. })
    }
}

/// A failure of tether-nfs-agent, or of reaching it. Always names the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the StorageClass names tether-nfs-agent {0}, but tether-csi runs without --agent-tls-dir (the certificates to reach it)")]
    NotConfigured(String),
    #[error("tether-nfs-agent {address} is unreachable: {reason}")]
    Unreachable { address: String, reason: String },
    #[error("tether-nfs-agent {address} did not answer {what} in time")]
    Timeout { address: String, what: String },
    /// The agent answered with an error of its own.
    #[error("tether-nfs-agent {address}: {what}: {detail}")]
    Failed {
        address: String,
        what: String,
        detail: String,
    },
}

/// What a request ran into, by meaning. Which gRPC code each meaning is, is decided in one table:
/// `rpc::status`.
#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    /// The request is malformed, or asks for something this driver never does.
    #[error("{0}")]
    Invalid(String),
    /// The volume, snapshot, source or path the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The name or path is taken by something incompatible with the request.
    #[error("{0}")]
    Conflict(String),
    /// A size the volume, its source or the share cannot give.
    #[error("{0}")]
    Capacity(String),
    /// Another operation on the same volume or name is under way: retry later.
    #[error("{0}")]
    Busy(String),
    /// The work the request asks for is under way in the background (a copy): retry later.
    #[error("{0}")]
    InProgress(String),
    /// A paging token this driver did not issue (or that no longer fits).
    #[error("starting_token {0:?} was not issued by this driver")]
    StaleToken(String),
    /// The object exists but is not in the state the request needs (not staged, published
    /// elsewhere, holding something unexpected).
    #[error("{0}")]
    WrongState(String),
    /// An RPC or option this driver does not offer (and does not advertise).
    #[error("{0}")]
    NotOffered(String),
    /// A file or directory on this node could not be made or read.
    #[error("{what} {path}")]
    Host {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The NFS server's name does not resolve.
    #[error("cannot resolve NFS server {0:?}")]
    Unresolvable(String),
    #[error(transparent)]
    Nfs(#[from] NfsError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// Mounting an NFS export on this node failed.
    #[error("mounting {export} at {}", .target.display())]
    NfsMount {
        export: String,
        target: std::path::PathBuf,
        #[source]
        source: crate::node::mounts::MountError,
    },
    #[error(transparent)]
    Mount(#[from] crate::node::mounts::MountError),
    #[error(transparent)]
    Image(#[from] crate::node::image::ImageError),
    /// A worker thread died: a bug.
    #[error("{0}")]
    Internal(String),
}

impl CsiError {
    pub fn invalid(message: impl Into<String>) -> CsiError {
        CsiError::Invalid(message.into())
    }

    /// A failed local file operation on `path`.
    pub fn host(
        what: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> CsiError {
        let path = path.to_path_buf();
        move |source| CsiError::Host { what, path, source }
    }
}

pub type CsiResult<T> = Result<T, CsiError>;
