//! State shared by the services of one tether-csi process.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// When each share's trash was last swept.
    swept: Mutex<HashMap<ShareRef, Instant>>,
    /// Each share's size, and when it was read.
    sizes: Mutex<HashMap<ShareRef, (Instant, u64)>>,
}

/// How long a share's size (for capacity checks) is taken as known.
const SIZE_TTL: Duration = Duration::from_secs(60);

/// How often a share's trash is checked for what interrupted deletes left.
const SWEEP_EVERY: Duration = Duration::from_secs(600);

impl Driver {
    pub fn new(node_id: String, pool: NfsPool, configured: Vec<ShareRef>) -> Arc<Driver> {
        Arc::new(Driver {
            node_id,
            pool,
            locks: OpLocks::default(),
            seen: Mutex::new(configured.iter().cloned().collect()),
            configured,
            prepared: Mutex::new(HashSet::new()),
            swept: Mutex::new(HashMap::new()),
            sizes: Mutex::new(HashMap::new()),
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

    /// Sweeps the share's trash if that has not happened for a while (see `store::sweep_trash`).
    pub async fn sweep_if_due(&self, share_ref: &ShareRef, share: &Share) -> Result<(), CsiError> {
        {
            let mut swept = self.swept.lock().unwrap_or_else(|p| p.into_inner());
            if swept
                .get(share_ref)
                .is_some_and(|at| at.elapsed() < SWEEP_EVERY)
            {
                return Ok(());
            }
            swept.insert(share_ref.clone(), Instant::now());
        }
        store::sweep_trash(share).await?;
        Ok(())
    }

    /// The share's total size in bytes, read from the server at most once a minute.
    pub async fn share_size(&self, share_ref: &ShareRef, share: &Share) -> Result<u64, CsiError> {
        if let Some((at, size)) = self
            .sizes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(share_ref)
        {
            if at.elapsed() < SIZE_TTL {
                return Ok(*size);
            }
        }
        let size = share.space().await?.total_bytes;
        self.sizes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(share_ref.clone(), (Instant::now(), size));
        Ok(size)
    }
}
