//! State shared by the services of one tether-csi process.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use crate::error::{CsiError, NfsError};
use crate::ids::ShareRef;
use crate::locks::OpLocks;
use crate::nfs::{NfsPool, Share};
use crate::store;

pub const DRIVER_NAME: &str = "nfs.tether.dev";

pub struct Driver {
    pub node_id: String,
    pub pool: NfsPool,
    pub locks: OpLocks,
    /// Shares named on the command line: probed, listed, and counted for capacity.
    configured: Vec<ShareRef>,
    /// Shares used since start (listed too).
    seen: Mutex<BTreeSet<ShareRef>>,
    /// Shares whose metadata directories exist.
    prepared: Mutex<HashSet<ShareRef>>,
}

impl Driver {
    pub fn new(node_id: String, pool: NfsPool, configured: Vec<ShareRef>) -> Arc<Driver> {
        Arc::new(Driver {
            node_id,
            pool,
            locks: OpLocks::default(),
            seen: Mutex::new(configured.iter().cloned().collect()),
            configured,
            prepared: Mutex::new(HashSet::new()),
        })
    }

    pub fn configured_shares(&self) -> &[ShareRef] {
        &self.configured
    }

    /// Every share this process knows about, configured or used.
    pub fn known_shares(&self) -> Vec<ShareRef> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// The connection to `share`.
    pub async fn share(&self, share: &ShareRef) -> Result<Arc<Share>, NfsError> {
        let connected = self.pool.share(share).await?;
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(share.clone());
        Ok(connected)
    }

    /// The connection to `share`, with Tether's metadata directories in place.
    pub async fn prepared_share(&self, share: &ShareRef) -> Result<Arc<Share>, CsiError> {
        let connected = self.share(share).await?;
        let done = self
            .prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(share);
        if !done {
            store::prepare(&connected).await?;
            self.prepared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(share.clone());
        }
        Ok(connected)
    }
}
