//! The gRPC service: each call finds its export, runs the filesystem work on a blocking thread,
//! and logs what it did.

use std::collections::BTreeMap;
use std::sync::Arc;

use tether_csi_proto::agent::agent_server::Agent;
use tether_csi_proto::agent::{
    CapabilitiesRequest, CapabilitiesResponse, CloneRequest, CloneResponse, SetLimitRequest,
    SetLimitResponse, UsageRequest, UsageResponse,
};
use tonic::{Request, Response, Status};

use crate::error::{AgentError, AgentResult};
use crate::paths::Root;
use crate::{clone, fsinfo, quota};

/// The exports this agent serves, by the path NFS clients name them.
pub struct Service {
    roots: Arc<BTreeMap<String, Root>>,
}

impl Service {
    pub fn new(roots: Vec<Root>) -> Service {
        Service {
            roots: Arc::new(roots.into_iter().map(|r| (r.export.clone(), r)).collect()),
        }
    }

    /// Runs `work` on the export's root, off the async threads.
    async fn on<T: Send + 'static>(
        &self,
        export: &str,
        work: impl FnOnce(&Root) -> AgentResult<T> + Send + 'static,
    ) -> Result<T, Status> {
        let roots = self.roots.clone();
        let export = export.trim_end_matches('/').to_string();
        tokio::task::spawn_blocking(move || {
            let root = roots
                .get(&export)
                .ok_or_else(|| AgentError::UnknownExport(export.clone()))?;
            work(root)
        })
        .await
        .map_err(|e| Status::internal(format!("the worker failed: {e}")))?
        .map_err(Status::from)
    }
}

#[tonic::async_trait]
impl Agent for Service {
    async fn capabilities(
        &self,
        request: Request<CapabilitiesRequest>,
    ) -> Result<Response<CapabilitiesResponse>, Status> {
        let req = request.into_inner();
        let answer = self.on(&req.export, fsinfo::capabilities).await?;
        tracing::info!(export = %req.export, filesystem = %answer.filesystem, reflink = answer.reflink, quota = ?answer.quota(), "capabilities");
        Ok(Response::new(answer))
    }

    async fn clone_file(
        &self,
        request: Request<CloneRequest>,
    ) -> Result<Response<CloneResponse>, Status> {
        let req = request.into_inner();
        let (source, target) = (req.source.clone(), req.target.clone());
        let started = std::time::Instant::now();
        let done = self
            .on(&req.export, move |root| clone::clone_file(root, &source, &target))
            .await
            .inspect_err(|e| tracing::warn!(export = %req.export, source = %req.source, target = %req.target, error = %e.message(), "clone file failed"))?;
        tracing::info!(export = %req.export, source = %req.source, target = %req.target, method = ?done.method(), bytes = done.bytes, took = ?started.elapsed(), "cloned a file");
        Ok(Response::new(response(done)))
    }

    async fn clone_tree(
        &self,
        request: Request<CloneRequest>,
    ) -> Result<Response<CloneResponse>, Status> {
        let req = request.into_inner();
        let (source, target, into_empty) = (req.source.clone(), req.target.clone(), req.into_empty);
        let started = std::time::Instant::now();
        let done = self
            .on(&req.export, move |root| clone::clone_tree(root, &source, &target, into_empty))
            .await
            .inspect_err(|e| tracing::warn!(export = %req.export, source = %req.source, target = %req.target, error = %e.message(), "clone tree failed"))?;
        tracing::info!(export = %req.export, source = %req.source, target = %req.target, method = ?done.method(), files = done.files, bytes = done.bytes, took = ?started.elapsed(), "cloned a tree");
        Ok(Response::new(response(done)))
    }

    async fn set_limit(
        &self,
        request: Request<SetLimitRequest>,
    ) -> Result<Response<SetLimitResponse>, Status> {
        let req = request.into_inner();
        let (path, bytes) = (req.path.clone(), req.bytes);
        let project = self
            .on(&req.export, move |root| quota::set_limit(root, &path, bytes))
            .await
            .inspect_err(|e| tracing::warn!(export = %req.export, path = %req.path, error = %e.message(), "set limit failed"))?;
        tracing::info!(export = %req.export, path = %req.path, bytes, project, "limit set");
        Ok(Response::new(SetLimitResponse { project }))
    }

    async fn usage(
        &self,
        request: Request<UsageRequest>,
    ) -> Result<Response<UsageResponse>, Status> {
        let req = request.into_inner();
        let path = req.path.clone();
        let (used_bytes, limit_bytes, used_files) = self
            .on(&req.export, move |root| quota::usage(root, &path))
            .await?;
        Ok(Response::new(UsageResponse {
            used_bytes,
            limit_bytes,
            used_files,
        }))
    }
}

fn response(done: clone::Cloned) -> CloneResponse {
    let mut out = CloneResponse {
        files: done.files,
        bytes: done.bytes,
        ..CloneResponse::default()
    };
    out.set_method(done.method());
    out
}
