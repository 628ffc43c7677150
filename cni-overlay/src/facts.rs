//! The node's network facts, written by tether-overlayd and read by the cni-overlay plugin.

use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

pub const DEFAULT_RUN_DIR: &str = "/run/tether";
const FILE_NAME: &str = "overlay.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeFacts {
    pub node_name: String,
    /// This node's pod subnet(s).
    pub subnets: Vec<IpNetwork>,
    pub cluster_cidrs: Vec<IpNetwork>,
    /// MTU for pod interfaces: the VXLAN device's.
    pub mtu: u32,
    pub vxlan_device: String,
}

pub fn path(run_dir: &Path) -> PathBuf {
    run_dir.join(FILE_NAME)
}

#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error("node facts {path} are missing: is tether-overlayd running on this node?")]
    Missing { path: PathBuf },
    #[error("reading node facts {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("node facts {path} are unreadable")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("removing node facts {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing node facts {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Removes the facts file (the node leaves the overlay); a missing file is success.
pub fn remove(run_dir: &Path) -> Result<(), FactsError> {
    let path = path(run_dir);
    cni_core::fsutil::remove_if_exists(&path).map_err(|source| FactsError::Remove { path, source })
}

impl NodeFacts {
    pub fn read(run_dir: &Path) -> Result<NodeFacts, FactsError> {
        let path = path(run_dir);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(FactsError::Missing { path })
            }
            Err(source) => return Err(FactsError::Read { path, source }),
        };
        serde_json::from_slice(&text).map_err(|source| FactsError::Parse { path, source })
    }

    /// Replaces the file atomically, and only when the content changed.
    pub fn write(&self, run_dir: &Path) -> Result<(), FactsError> {
        let path = path(run_dir);
        let err = |source| FactsError::Write {
            path: path.clone(),
            source,
        };
        if NodeFacts::read(run_dir).ok().as_ref() == Some(self) {
            return Ok(());
        }
        std::fs::create_dir_all(run_dir).map_err(err)?;
        let text = serde_json::to_vec_pretty(self).unwrap_or_default();
        cni_core::fsutil::write_atomic(&path, &text).map_err(err)?;
        cni_core::fsutil::sync_dir(run_dir).map_err(err)
    }
}
