//! State shared by the services of one tether-csi process.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agent::Agents;
use crate::controller::copies::Copies;
use crate::grpc::error::{CsiError, NfsError};
use crate::locks::OpLocks;
use crate::share::ids::ShareRef;
use crate::share::nfs::{NfsPool, Share};
use crate::share::store;

pub const DRIVER_NAME: &str = "nfs.tether.dev";

/// Limits and periods an operator may tune (command-line flags).
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Copies (snapshots, clones) running at once.
    pub max_copies: usize,
    /// How long a request waits for its copy before answering "in progress".
    pub copy_wait: Duration,
    /// How often the controller sweeps its shares (trash, stale temporary files, orphans).
    pub sweep_every: Duration,
    /// How old leftovers must be before the sweep removes them.
    pub leftover_age: Duration,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            max_copies: 4,
            copy_wait: Duration::from_secs(5),
            sweep_every: Duration::from_secs(600),
            leftover_age: Duration::from_secs(3600),
        }
    }
}

pub struct Driver {
    pub node_id: String,
    pub pool: NfsPool,
    pub locks: OpLocks,
    pub copies: Copies,
    pub tuning: Tuning,
    /// tether-nfs-agent's clients.
    pub agents: Agents,
    /// Shares named on the command line: probed, listed, and counted for capacity.
    configured: Vec<ShareRef>,
    /// Shares used since start (listed too).
    seen: Mutex<BTreeSet<ShareRef>>,
    /// Shares whose metadata directories exist.
    prepared: Mutex<HashSet<ShareRef>>,
    /// Each share's size, and when it was read.
    sizes: Mutex<HashMap<ShareRef, (Instant, u64)>>,
    /// Each share's volume record names, sorted, for paging ListVolumes without listing the
    /// directory again for every page.
    listings: Mutex<HashMap<ShareRef, Listing>>,
}

/// A share's sorted volume record names, and when they were listed.
type Listing = (Instant, Arc<Vec<String>>);

/// How long a share's volume listing serves the pages after the first.
const LISTING_TTL: Duration = Duration::from_secs(60);

/// How long a share's size (for capacity checks) is taken as known.
const SIZE_TTL: Duration = Duration::from_secs(60);

impl Driver {
    pub fn new(
        node_id: String,
        pool: NfsPool,
        configured: Vec<ShareRef>,
        tuning: Tuning,
        agents: Agents,
    ) -> Arc<Driver> {
        Arc::new(Driver {
            node_id,
            pool,
            locks: OpLocks::default(),
            copies: Copies::new(tuning.max_copies, tuning.copy_wait),
            tuning,
            agents,
            seen: Mutex::new(configured.iter().cloned().collect()),
            configured,
            prepared: Mutex::new(HashSet::new()),
            sizes: Mutex::new(HashMap::new()),
            listings: Mutex::new(HashMap::new()),
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

    /// The sorted names of the share's volume records: listed again for a first page
    /// (`fresh`) or when the last listing is older than a minute, else the last listing.
    pub async fn volume_listing(
        &self,
        share_ref: &ShareRef,
        share: &Share,
        fresh: bool,
    ) -> Result<Arc<Vec<String>>, CsiError> {
        if !fresh {
            if let Some((at, names)) = self
                .listings
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(share_ref)
            {
                if at.elapsed() < LISTING_TTL {
                    return Ok(names.clone());
                }
            }
        }
        let mut names = store::volume_files(share).await?;
        names.sort();
        let names = Arc::new(names);
        self.listings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(share_ref.clone(), (Instant::now(), names.clone()));
        Ok(names)
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
