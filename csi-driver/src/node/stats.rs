//! NodeGetVolumeStats: usage and condition of a published or staged volume; directory
//! volumes' usage is counted in the background ([`UsageCache`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tether_csi_proto::v1::{self as csi, VolumeCondition};

use crate::grpc::error::{CsiError, CsiResult};
use crate::grpc::validate::{present, volume, volume_path};
use crate::node::image;
use crate::node::nfs_mount::{health, Health};
use crate::node::{holds_volume, NodeService};
use crate::share::ids::{Layout, VolumeId};
use crate::share::mutable::MountTuning;
use crate::share::store;

impl NodeService {
    pub(crate) async fn stats(
        &self,
        req: &csi::NodeGetVolumeStatsRequest,
    ) -> CsiResult<csi::NodeGetVolumeStatsResponse> {
        present(&[
            ("volume_id", &req.volume_id),
            ("volume_path", &req.volume_path),
        ])?;
        let path = volume_path(&req.volume_path)?;
        let id = volume(&req.volume_id)?;
        holds_volume(&path)?;
        if let Some(fault) = self.fault(&path, &id) {
            return Ok(csi::NodeGetVolumeStatsResponse {
                usage: Vec::new(),
                volume_condition: Some(VolumeCondition {
                    abnormal: true,
                    message: fault,
                }),
            });
        }
        use std::os::unix::fs::FileTypeExt;
        let block = std::fs::metadata(&path).is_ok_and(|m| m.file_type().is_block_device());
        let (usage, note) = if block {
            let size = image::device_size(&path)?;
            (
                vec![usage(csi::volume_usage::Unit::Bytes, size, 0, 0)],
                None,
            )
        } else if id.layout == Layout::Image {
            (filesystem_usage(&path)?, None)
        } else {
            // The record (read once) says whether a quota holds the directory, and its size.
            let record = self.record_of(&id).await;
            match self.quota_usage(&path, &id, record.as_ref()).await {
                Some(counted) => counted,
                None => self.directory_usage(&path, record.as_ref()).await?,
            }
        };
        Ok(csi::NodeGetVolumeStatsResponse {
            usage,
            volume_condition: Some(VolumeCondition {
                abnormal: false,
                message: note.unwrap_or_else(|| "healthy".into()),
            }),
        })
    }

    /// What is really wrong with the mount, if anything: a stale handle, a server that does not
    /// answer, a path that cannot be read.
    fn fault(&self, path: &Path, id: &VolumeId) -> Option<String> {
        match health(path, self.timeout) {
            Health::Fine => None,
            Health::Stale => Some(format!(
                "stale NFS file handle at {} (the volume's directory is gone or replaced on the \
                 server; it is remounted at the next stage or publish)",
                path.display()
            )),
            Health::Unreachable(after) => Some(format!(
                "NFS server {} does not answer (no reply within {after:?})",
                id.share.server
            )),
            Health::Error(e) => Some(format!("{}: {e}", path.display())),
        }
    }

    /// A directory volume's numbers: the share's statvfs covers the whole share, so the use is
    /// this volume's own tree, counted in the background (see [`UsageCache`]), against the size
    /// in its record.
    async fn directory_usage(
        &self,
        path: &Path,
        record: Option<&store::VolumeRecord>,
    ) -> CsiResult<(Vec<csi::VolumeUsage>, Option<String>)> {
        let vfs = statvfs(path)?;
        let (counted, note) = match self.usage.get(path).await {
            Some(counted) => (counted, None),
            None => (
                Counted::default(),
                Some("healthy; usage is still being counted".to_string()),
            ),
        };
        let capacity = record
            .and_then(|r| u64::try_from(r.capacity_bytes).ok())
            .filter(|c| *c > 0)
            .unwrap_or(vfs.total_bytes);
        let available = capacity
            .saturating_sub(counted.bytes)
            .min(vfs.available_bytes);
        Ok((
            vec![
                usage(
                    csi::volume_usage::Unit::Bytes,
                    capacity,
                    counted.bytes,
                    available,
                ),
                usage(
                    csi::volume_usage::Unit::Inodes,
                    vfs.total_files,
                    counted.files,
                    vfs.available_files,
                ),
            ],
            note,
        ))
    }

    /// A directory volume held by a project quota: the quota's numbers, asked of the agent
    /// (nfs-ganesha's statfs answers for the whole export, so `df` over NFS cannot show them);
    /// no tree is walked. None when the volume has no quota, this node has no certificates for
    /// the agent (`--agent-tls-dir`), or the agent does not answer: then the tree is counted.
    async fn quota_usage(
        &self,
        path: &Path,
        id: &VolumeId,
        record: Option<&store::VolumeRecord>,
    ) -> Option<(Vec<csi::VolumeUsage>, Option<String>)> {
        let record = record.filter(|r| r.limited)?;
        let agent = record.settings.agent.as_deref()?;
        let quota = match self
            .driver
            .agents
            .usage(agent, &id.share.export, id.path.as_str())
            .await
        {
            Ok(quota) => quota,
            Err(e) => {
                tracing::debug!(volume = %record.volume_id, error = %e, "no usage from the agent; counting the tree");
                return None;
            }
        };
        let vfs = statvfs(path).ok()?;
        let total = if quota.limit_bytes > 0 {
            quota.limit_bytes
        } else {
            u64::try_from(record.capacity_bytes).unwrap_or(vfs.total_bytes)
        };
        let available = total
            .saturating_sub(quota.used_bytes)
            .min(vfs.available_bytes);
        Some((
            vec![
                usage(
                    csi::volume_usage::Unit::Bytes,
                    total,
                    quota.used_bytes,
                    available,
                ),
                usage(
                    csi::volume_usage::Unit::Inodes,
                    vfs.total_files,
                    quota.used_files,
                    vfs.available_files,
                ),
            ],
            None,
        ))
    }

    /// The volume's record, read from the share from user space (None if unreadable).
    pub(crate) async fn record_of(&self, id: &VolumeId) -> Option<store::VolumeRecord> {
        let share = self.driver.share(&id.share).await.ok()?;
        store::read_volume(&share, &id.path).await.ok()?
    }

    /// The NFS mount options the volume's record asks for (a VolumeAttributesClass's
    /// `nconnect`, `rsize`, `wsize`); none when the record cannot be read, which only means the
    /// mount gets the client's defaults.
    pub(crate) async fn mount_tuning(&self, volume_id: &str) -> MountTuning {
        let Some(id) = VolumeId::decode(volume_id) else {
            return MountTuning::default();
        };
        match self.record_of(&id).await {
            Some(record) => record.settings.mutable.mount,
            None => {
                tracing::warn!(volume = %volume_id, "the volume's record cannot be read; mounting without its mount options");
                MountTuning::default()
            }
        }
    }
}

/// A filesystem's numbers (an image volume's own filesystem).
fn filesystem_usage(path: &Path) -> CsiResult<Vec<csi::VolumeUsage>> {
    let vfs = statvfs(path)?;
    Ok(vec![
        usage(
            csi::volume_usage::Unit::Bytes,
            vfs.total_bytes,
            vfs.total_bytes - vfs.free_bytes,
            vfs.available_bytes,
        ),
        usage(
            csi::volume_usage::Unit::Inodes,
            vfs.total_files,
            vfs.total_files - vfs.free_files,
            vfs.available_files,
        ),
    ])
}

struct Space {
    total_bytes: u64,
    free_bytes: u64,
    available_bytes: u64,
    total_files: u64,
    free_files: u64,
    available_files: u64,
}

fn statvfs(path: &Path) -> CsiResult<Space> {
    let vfs =
        nix::sys::statvfs::statvfs(path).map_err(|e| CsiError::host("statvfs", path)(e.into()))?;
    let block = vfs.fragment_size().max(1) as u64;
    Ok(Space {
        total_bytes: vfs.blocks() as u64 * block,
        free_bytes: vfs.blocks_free() as u64 * block,
        available_bytes: vfs.blocks_available() as u64 * block,
        total_files: vfs.files() as u64,
        free_files: vfs.files_free() as u64,
        available_files: vfs.files_available() as u64,
    })
}

fn usage(unit: csi::volume_usage::Unit, total: u64, used: u64, available: u64) -> csi::VolumeUsage {
    let as_i64 = |v: u64| v.min(i64::MAX as u64) as i64;
    csi::VolumeUsage {
        total: as_i64(total),
        used: as_i64(used),
        available: as_i64(available),
        unit: unit as i32,
    }
}

/// What a walk counted under a volume path.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counted {
    pub bytes: u64,
    pub files: u64,
}

/// Usage of directory volumes, counted by walking their tree over NFS: in the background, at
/// most [`WALKS`] at once, each volume at most once per `refresh`. kubelet's poll gets the latest
/// count at once (waiting only for a volume's first count, and at most [`FIRST_WAIT`]), so a
/// large or slow tree is never a false alarm.
pub struct UsageCache {
    refresh: Duration,
    walks: Arc<tokio::sync::Semaphore>,
    entries: Arc<Mutex<HashMap<PathBuf, Entry>>>,
}

#[derive(Default)]
struct Entry {
    counted: Option<Counted>,
    counted_at: Option<Instant>,
    walking: bool,
    asked_at: Option<Instant>,
}

/// Walks at once, across all volumes of the node.
const WALKS: usize = 2;
/// How long a poll waits for a volume's first count.
const FIRST_WAIT: Duration = Duration::from_secs(2);

impl UsageCache {
    pub fn new(refresh: Duration) -> UsageCache {
        UsageCache {
            refresh,
            walks: Arc::new(tokio::sync::Semaphore::new(WALKS)),
            entries: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The latest count for `path`, starting a new walk when it is older than `refresh`;
    /// `None` until the first walk is done.
    pub async fn get(&self, path: &Path) -> Option<Counted> {
        let walk = {
            let mut entries = self.entries();
            // Volumes nobody asks about any more are forgotten.
            let forget = self.refresh * 10;
            entries.retain(|_, e| e.walking || e.asked_at.is_some_and(|t| t.elapsed() < forget));
            let entry = entries.entry(path.to_path_buf()).or_default();
            entry.asked_at = Some(Instant::now());
            let due = entry.counted_at.is_none_or(|t| t.elapsed() >= self.refresh);
            if due && !entry.walking {
                entry.walking = true;
                Some(self.walk(path.to_path_buf()))
            } else {
                None
            }
        };
        if let Some(walk) = walk {
            if self
                .entries()
                .get(path)
                .is_some_and(|e| e.counted.is_none())
            {
                let _ = tokio::time::timeout(FIRST_WAIT, walk).await;
            }
        }
        self.entries().get(path).and_then(|e| e.counted)
    }

    fn walk(&self, path: PathBuf) -> tokio::task::JoinHandle<()> {
        let (walks, entries) = (self.walks.clone(), self.entries.clone());
        tokio::spawn(async move {
            let counted = match walks.acquire_owned().await {
                Ok(_slot) => {
                    let root = path.clone();
                    tokio::task::spawn_blocking(move || usage_of_tree(&root))
                        .await
                        .ok()
                }
                Err(_) => None,
            };
            let mut entries = entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(entry) = entries.get_mut(&path) {
                entry.walking = false;
                if let Some((bytes, files)) = counted {
                    entry.counted = Some(Counted { bytes, files });
                    entry.counted_at = Some(Instant::now());
                }
            }
        })
    }
}

/// Bytes allocated and entries under `root`, without following symlinks or crossing mounts.
fn usage_of_tree(root: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(root) else {
        return (0, 0);
    };
    let device = top.dev();
    let (mut bytes, mut files) = (0u64, 0u64);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            files += 1;
            bytes += meta.blocks() * 512;
            if meta.is_dir() && meta.dev() == device {
                stack.push(entry.path());
            }
        }
    }
    (bytes, files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(crate) fn counts_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/f"), vec![1u8; 100_000]).unwrap();
        std::fs::write(dir.path().join("g"), b"x").unwrap();
        let (bytes, files) = usage_of_tree(dir.path());
        assert_eq!(files, 3);
        assert!(bytes >= 100_000, "{bytes}");
    }
}
