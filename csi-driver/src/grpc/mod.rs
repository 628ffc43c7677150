//! The gRPC boundary: the three tonic services (`controller`, `identity`, `node`: adapters that
//! trace each call and hand it to the workflows), the errors and the one table that turns them
//! into gRPC statuses (`error`, `code` below), the checks of request fields every RPC shares
//! (`validate`), who may call (`authority`) and what never reaches a log (`redact`).

pub mod authority;
mod controller;
pub mod error;
mod identity;
mod node;
pub mod redact;
pub mod validate;

pub use controller::ControllerServer;
pub use identity::IdentityService;
pub use node::NodeServer;

use tonic::{Code, Response, Status};

use crate::grpc::error::{AgentError, CsiError, CsiResult, NfsError};
use crate::grpc::redact::Redact;
use crate::node::image::ImageError;
use crate::node::mounts::MountError;

/// The gRPC code of every error the driver can report: the one place this is decided.
pub fn code(error: &CsiError) -> Code {
    match error {
        CsiError::Invalid(_) => Code::InvalidArgument,
        CsiError::NotFound(_) => Code::NotFound,
        CsiError::Conflict(_) => Code::AlreadyExists,
        CsiError::Capacity(_) => Code::OutOfRange,
        CsiError::Busy(_) | CsiError::InProgress(_) | CsiError::StaleToken(_) => Code::Aborted,
        CsiError::WrongState(_) => Code::FailedPrecondition,
        CsiError::NotOffered(_) => Code::Unimplemented,
        CsiError::Host { .. } | CsiError::Internal(_) => Code::Internal,
        CsiError::Unresolvable(_) => Code::Unavailable,
        CsiError::Nfs(nfs) => match nfs {
            NfsError::Timeout { .. } => Code::DeadlineExceeded,
            NfsError::Unreachable { .. } => Code::Unavailable,
            NfsError::NoExport { .. } => Code::NotFound,
            NfsError::NotFound { .. } => Code::NotFound,
            NfsError::Exists { .. } => Code::AlreadyExists,
            NfsError::Stale { .. } => Code::FailedPrecondition,
            NfsError::NoSpace { .. } => Code::ResourceExhausted,
            NfsError::Denied { .. } => Code::PermissionDenied,
            NfsError::Failed { .. } => Code::Internal,
        },
        CsiError::Agent(agent) => match agent {
            AgentError::NotConfigured(_) => Code::FailedPrecondition,
            AgentError::Unreachable { .. } => Code::Unavailable,
            AgentError::Timeout { .. } => Code::DeadlineExceeded,
            AgentError::Failed { .. } => Code::Internal,
        },
        CsiError::NfsMount { source, .. } => match source {
            MountError::Timeout { .. } => Code::DeadlineExceeded,
            _ => Code::Unavailable,
        },
        CsiError::Mount(mount) => match mount {
            MountError::Timeout { .. } => Code::DeadlineExceeded,
            _ => Code::Internal,
        },
        CsiError::Image(image) => match image {
            ImageError::WrongFilesystem { .. } => Code::FailedPrecondition,
            _ => Code::Internal,
        },
    }
}

impl From<CsiError> for Status {
    fn from(error: CsiError) -> Status {
        Status::new(code(&error), message(&error))
    }
}

/// The error and its causes on one line; a cause whose text the message already holds is not
/// repeated.
fn message(error: &CsiError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Logs the call (method, ids, redacted request at debug level) and runs it, logging failures.
pub(crate) async fn traced<Req: Redact, T>(
    method: &'static str,
    subject: &str,
    request: &Req,
    work: impl std::future::Future<Output = CsiResult<T>>,
) -> Result<Response<T>, Status> {
    tracing::info!(method, subject, "request");
    tracing::debug!(method, request = %request.redacted(), "request body");
    let metrics = crate::metrics::metrics();
    let label = crate::metrics::MethodLabel { method };
    let in_flight = metrics.in_flight.get_or_create(&label).clone();
    in_flight.inc();
    let started = std::time::Instant::now();
    let result = work.await;
    in_flight.dec();
    let took = started.elapsed();
    metrics
        .rpc_seconds
        .get_or_create(&label)
        .observe(took.as_secs_f64());
    let answered = match result {
        Ok(response) => {
            tracing::info!(method, subject, ?took, "ok");
            Ok(Response::new(response))
        }
        Err(error) => {
            let status = Status::from(error);
            tracing::warn!(method, subject, code = ?status.code(), message = status.message(), ?took, "failed");
            Err(status)
        }
    };
    let code = match &answered {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    };
    metrics
        .rpcs
        .get_or_create(&crate::metrics::RpcLabels {
            method,
            code: format!("{code:?}"),
        })
        .inc();
    answered
}

/// Runs blocking work off the async runtime.
async fn blocking<S: Send + Sync + 'static, T: Send + 'static>(
    service: &std::sync::Arc<S>,
    work: impl FnOnce(&S) -> CsiResult<T> + Send + 'static,
) -> CsiResult<T> {
    let service = service.clone();
    tokio::task::spawn_blocking(move || work(&service))
        .await
        .map_err(|e| CsiError::Internal(format!("node operation panicked: {e}")))?
}
