//! The controller's sweep, on a timer: what killed or abandoned requests left on a share.
//!
//! - trash (`.tether/trash/`): trees whose delete was interrupted;
//! - temporary record files (`.<name>.tmp-<pid>-<n>`) of writes that were interrupted;
//! - volumes left half made (`creating`) that no request has worked on for a while, and name
//!   claims that lead to no volume: the creation was abandoned (nobody retries it);
//! - volumes left half deleted (`deleting`): the delete is finished.
//!
//! Only what is older than `leftover_age` is touched, so work in progress is never disturbed;
//! one share (or entry) that fails does not stop the others.

use std::sync::Arc;

use crate::controller::create::claim_lock;
use crate::controller::remove_volume;
use crate::driver::Driver;
use crate::grpc::error::NfsError;
use crate::share::ids::{SharePath, VolumeId, META_DIR};
use crate::share::nfs::{Kind, Share};
use crate::share::store::{self, State};

/// What one sweep of one share removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub trash: usize,
    pub temporary: usize,
    pub abandoned: usize,
    pub claims: usize,
}

/// How old a temporary file of this process must be before the sweep removes it: far longer
/// than any write takes.
const OWN_WRITE_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// Sweeps every known share now and then every `tuning.sweep_every`, until the process ends.
pub async fn run(driver: Arc<Driver>) {
    let mut ticker = tokio::time::interval(driver.tuning.sweep_every);
    loop {
        ticker.tick().await;
        for share_ref in driver.known_shares() {
            let share = match driver.share(&share_ref).await {
                Ok(share) => share,
                Err(e) => {
                    tracing::warn!(share = %share_ref, error = %e, "sweep: share unavailable");
                    continue;
                }
            };
            match sweep(&driver, &share).await {
                Ok(swept) if swept != Swept::default() => {
                    tracing::info!(share = %share_ref, ?swept, "sweep removed leftovers")
                }
                Ok(_) => tracing::debug!(share = %share_ref, "sweep: nothing left over"),
                Err(e) => tracing::warn!(share = %share_ref, error = %e, "sweep failed"),
            }
        }
    }
}

/// One share's sweep.
pub async fn sweep(driver: &Driver, share: &Share) -> Result<Swept, NfsError> {
    let mut swept = Swept::default();
    if share.stat(META_DIR).await?.is_none() {
        return Ok(swept);
    }
    let cutoff = store::now_unix().saturating_sub(driver.tuning.leftover_age.as_secs());
    swept.trash = trash(share, cutoff).await?;
    swept.temporary = temporary(share, store::VOLUMES, cutoff).await?;
    for snapshot in share.list_or_empty(store::SNAPSHOTS).await? {
        let dir = store::snapshot_dir(&snapshot.name);
        swept.temporary += temporary(share, &dir, cutoff).await?;
    }
    swept.abandoned = abandoned(driver, share, cutoff).await?;
    swept.claims = claims(driver, share, cutoff).await?;
    Ok(swept)
}

/// Trash entries are named `<nanoseconds>-<what>`.
async fn trash(share: &Share, cutoff: u64) -> Result<usize, NfsError> {
    let mut removed = 0;
    for entry in share.list_or_empty(store::TRASH).await? {
        let stamp = entry
            .name
            .split('-')
            .next()
            .and_then(|s| s.parse::<u128>().ok())
            .map(|nanos| (nanos / 1_000_000_000) as u64);
        if stamp.is_some_and(|t| t < cutoff) {
            let path = format!("{}/{}", store::TRASH, entry.name);
            match share.remove_tree(&path).await {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(%path, error = %e, "sweep: cannot remove trash"),
            }
        }
    }
    Ok(removed)
}

/// A temporary file this process made may be a write in flight: it goes only once it is older
/// than both `cutoff` and [`OWN_WRITE_AGE`] (a process's earlier incarnation in a container
/// has the same process id; its files wait that long).
async fn temporary(share: &Share, dir: &str, cutoff: u64) -> Result<usize, NfsError> {
    let mut removed = 0;
    let own = format!(".tmp-{}-", std::process::id());
    let own_cutoff = cutoff.min(store::now_unix().saturating_sub(OWN_WRITE_AGE.as_secs()));
    for entry in share.list_or_empty(dir).await? {
        let temp = entry.name.starts_with('.') && entry.name.contains(".tmp-");
        let cutoff = if entry.name.contains(&own) {
            own_cutoff
        } else {
            cutoff
        };
        if temp && entry.kind != Kind::Dir && entry.modified_unix() < cutoff {
            share.remove_file(&format!("{dir}/{}", entry.name)).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Volumes still `creating` that no request has touched since `cutoff` and whose copy is not
/// running here: their directory, record and claim go. Volumes left `deleting` that long are
/// deleted as their `onDelete` says.
async fn abandoned(driver: &Driver, share: &Share, cutoff: u64) -> Result<usize, NfsError> {
    let mut removed = 0;
    for mut record in store::list_volumes(share).await? {
        let stale = record.state != State::Ready && record.touched_unix < cutoff;
        if !stale || driver.copies.has(&record.volume_id) {
            continue;
        }
        // A request at work on it now holds its lock: leave it to that request.
        let Ok(_guard) = driver
            .locks
            .acquire(&[format!("volume {}", record.volume_id)])
        else {
            continue;
        };
        if record.state == State::Deleting {
            let Some(id) = VolumeId::decode(&record.volume_id) else {
                continue;
            };
            tracing::info!(volume = %record.volume_id, "sweep: finishing an interrupted delete");
            remove_volume(share, &id, &mut record).await?;
            removed += 1;
            continue;
        }
        let Ok(path) = SharePath::parse(&record.path) else {
            continue;
        };
        tracing::info!(volume = %record.volume_id, name = %record.name, "sweep: removing a volume whose creation was abandoned");
        store::delete_tree(share, &record.path).await?;
        share.remove_file(&store::claim_path(&record.name)).await?;
        share.remove_file(&store::record_path(&path)).await?;
        removed += 1;
    }
    Ok(removed)
}

/// Claims older than `cutoff` that lead to no volume record: the attempt that made them died
/// before it got further. An empty directory it made goes too; anything else stays.
async fn claims(driver: &Driver, share: &Share, cutoff: u64) -> Result<usize, NfsError> {
    let mut removed = 0;
    for entry in share.list_or_empty(store::NAMES).await? {
        if entry.kind != Kind::Symlink || entry.modified_unix() >= cutoff {
            continue;
        }
        // A request at work on this name holds its lock: leave the claim to that request.
        let Ok(_guard) = driver.locks.acquire(&[claim_lock(&entry.name)]) else {
            continue;
        };
        let claim = format!("{}/{}", store::NAMES, entry.name);
        let Some(target) = share.read_link(&claim).await? else {
            continue;
        };
        let Ok(path) = SharePath::parse(&target) else {
            continue;
        };
        let record = store::read_volume(share, &path).await?;
        let owner_claims = record
            .as_ref()
            .is_some_and(|r| store::claim_path(&r.name) == claim);
        if owner_claims {
            continue;
        }
        let empty_dir = match share.stat(&target).await? {
            Some(e) if e.kind == Kind::Dir => share.list(&target).await?.is_empty(),
            _ => false,
        };
        if record.is_none() && empty_dir {
            share.remove_tree(&target).await?;
        }
        tracing::info!(%claim, %target, "sweep: removing a name claim that leads to no volume");
        share.remove_file(&claim).await?;
        removed += 1;
    }
    Ok(removed)
}
