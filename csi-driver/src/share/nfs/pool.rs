//! Connections to shares: one per share, made on first use, dropped after a transport failure.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Share;
use crate::grpc::error::NfsError;
use crate::share::ids::{NfsVersion, ShareRef};

/// How the driver authenticates and connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub timeout: Duration,
    pub uid: u32,
    pub gid: u32,
    /// Bind a privileged source port (servers exporting with `secure` demand it).
    pub privileged_port: bool,
}

/// Open connections, one per share, made on first use and dropped after a transport failure.
pub struct NfsPool {
    options: ClientOptions,
    shares: Mutex<HashMap<ShareRef, Arc<Share>>>,
}

impl NfsPool {
    pub fn new(options: ClientOptions) -> NfsPool {
        NfsPool {
            options,
            shares: Mutex::new(HashMap::new()),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.options.timeout
    }

    /// The connection to `share`, connecting if needed.
    pub async fn share(&self, share: &ShareRef) -> Result<Arc<Share>, NfsError> {
        if let Some(existing) = self.cached(share) {
            return Ok(existing);
        }
        let url = self.url(share);
        let label = share.to_string();
        let mount =
            match tokio::time::timeout(self.options.timeout, nfs_rs::parse_url_and_mount(&url))
                .await
            {
                Err(_) => {
                    return Err(NfsError::Timeout {
                        share: label,
                        what: "the mount request".into(),
                        after: self.options.timeout,
                    })
                }
                Ok(Err(e)) => return Err(mount_failure(label, e)),
                Ok(Ok(mount)) => mount,
            };
        let connected = Arc::new(Share {
            mount,
            label,
            timeout: self.options.timeout,
            broken: std::sync::atomic::AtomicBool::new(false),
            dirs: Mutex::new(HashMap::new()),
        });
        let mut shares = self.shares.lock().unwrap_or_else(|p| p.into_inner());
        Ok(shares
            .entry(share.clone())
            .or_insert_with(|| connected)
            .clone())
    }

    fn cached(&self, share: &ShareRef) -> Option<Arc<Share>> {
        let mut shares = self.shares.lock().unwrap_or_else(|p| p.into_inner());
        match shares.get(share) {
            Some(s) if s.broken.load(Ordering::Relaxed) => {
                shares.remove(share);
                None
            }
            other => other.cloned(),
        }
    }

    fn url(&self, share: &ShareRef) -> String {
        let version = match share.version {
            NfsVersion::V3 => "3",
            NfsVersion::V41 => "4.1",
        };
        format!(
            "nfs://{}{}?version={version}&uid={}&gid={}&noresvport={}",
            share.server,
            share.export,
            self.options.uid,
            self.options.gid,
            !self.options.privileged_port
        )
    }
}

/// The error for a mount request that failed: a server that answers that it has no such
/// export (MOUNT's NOENT/ACCES/NOTDIR for NFSv3, LOOKUP's NOENT/NOTDIR/ACCESS walking to the
/// export for NFSv4) is not unreachable.
fn mount_failure(share: String, e: nfs_rs::NfsError) -> NfsError {
    use nfs_rs::Nfs3MountErrorCode as M;
    let no_export = match &e {
        nfs_rs::NfsError::Mount(code) => {
            matches!(
                code,
                M::MNT3ERR_NOENT | M::MNT3ERR_ACCES | M::MNT3ERR_NOTDIR
            )
        }
        nfs_rs::NfsError::Nfs4(code) => matches!(*code as u32, 2 | 13 | 20),
        _ => false,
    };
    if no_export {
        NfsError::NoExport {
            share,
            detail: format!("the server answers: {e}"),
        }
    } else {
        NfsError::Unreachable {
            share,
            reason: e.to_string(),
        }
    }
}
