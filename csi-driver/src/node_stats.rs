//! NodeGetVolumeStats: usage and condition of a published or staged volume.

use std::path::Path;

use tether_csi_proto::v1::{self as csi, VolumeCondition};

use crate::error::{CsiError, CsiResult};
use crate::ids::{Layout, VolumeId};
use crate::image;
use crate::mounts;
use crate::nfs_mount::{health, Health};
use crate::node::NodeService;
use crate::store;
use crate::validate::{required_path, volume};

impl NodeService {
    pub(crate) async fn stats(
        &self,
        req: &csi::NodeGetVolumeStatsRequest,
    ) -> CsiResult<csi::NodeGetVolumeStatsResponse> {
        let path = required_path("volume_path", &req.volume_path)?;
        let id = volume(&req.volume_id)?;
        if mounts::mounted_at(&path)?.is_none() {
            return Err(CsiError::NotFound(format!(
                "{} is not a published or staged volume",
                path.display()
            )));
        }
        let abnormal = |message: String| csi::NodeGetVolumeStatsResponse {
            usage: Vec::new(),
            volume_condition: Some(VolumeCondition {
                abnormal: true,
                message,
            }),
        };
        match health(&path, self.timeout) {
            Health::Fine => {}
            Health::Stale => {
                return Ok(abnormal(format!(
                    "stale NFS file handle at {} (the volume is remounted at the next stage or publish)",
                    path.display()
                )))
            }
            Health::Unreachable(after) => {
                return Ok(abnormal(format!(
                    "NFS server {} does not answer (no reply within {after:?})",
                    id.share.server
                )))
            }
            Health::Error(e) => return Ok(abnormal(format!("{}: {e}", path.display()))),
        }
        use std::os::unix::fs::FileTypeExt;
        let block = std::fs::metadata(&path).is_ok_and(|m| m.file_type().is_block_device());
        if block {
            let size = image::device_size(&path)? as i64;
            return Ok(csi::NodeGetVolumeStatsResponse {
                usage: vec![csi::VolumeUsage {
                    available: 0,
                    total: size,
                    used: 0,
                    unit: 1,
                }],
                volume_condition: Some(VolumeCondition {
                    abnormal: false,
                    message: "healthy".into(),
                }),
            });
        }
        let vfs = nix::sys::statvfs::statvfs(&path)
            .map_err(|e| CsiError::host("statvfs", &path)(e.into()))?;
        let block = vfs.fragment_size().max(1) as u64;
        let fs_total = vfs.blocks() as u64 * block;
        let fs_available = vfs.blocks_available() as u64 * block;
        let (bytes, inodes) = if id.layout == Layout::Image {
            let used = (vfs.blocks() as u64 - vfs.blocks_free() as u64) * block;
            (
                (fs_total, used, fs_available),
                (
                    vfs.files() as u64,
                    vfs.files() as u64 - vfs.files_free() as u64,
                    vfs.files_available() as u64,
                ),
            )
        } else {
            // The share's numbers are the whole share's: count this volume's own use, and take its
            // size from the record on the share.
            let walk_path = path.clone();
            let limit = self.timeout * 3;
            let counted = tokio::time::timeout(
                limit,
                tokio::task::spawn_blocking(move || usage_of_tree(&walk_path)),
            )
            .await;
            let (used, files) = match counted {
                Ok(Ok(counts)) => counts,
                _ => {
                    return Ok(abnormal(format!(
                        "counting the usage of {} took longer than {limit:?}",
                        path.display()
                    )))
                }
            };
            let capacity = self
                .capacity_of(&id)
                .await
                .filter(|c| *c > 0)
                .unwrap_or(fs_total);
            let available = capacity.saturating_sub(used).min(fs_available);
            (
                (capacity, used, available),
                (vfs.files() as u64, files, vfs.files_available() as u64),
            )
        };
        let as_i64 = |v: u64| v.min(i64::MAX as u64) as i64;
        Ok(csi::NodeGetVolumeStatsResponse {
            usage: vec![
                csi::VolumeUsage {
                    total: as_i64(bytes.0),
                    used: as_i64(bytes.1),
                    available: as_i64(bytes.2),
                    unit: csi::volume_usage::Unit::Bytes as i32,
                },
                csi::VolumeUsage {
                    total: as_i64(inodes.0),
                    used: as_i64(inodes.1),
                    available: as_i64(inodes.2),
                    unit: csi::volume_usage::Unit::Inodes as i32,
                },
            ],
            volume_condition: Some(VolumeCondition {
                abnormal: false,
                message: "healthy".into(),
            }),
        })
    }

    /// The volume's recorded size, read from the share from user space (None if unreadable).
    pub(crate) async fn capacity_of(&self, id: &VolumeId) -> Option<u64> {
        let share = self.driver.share(&id.share).await.ok()?;
        let record = store::read_volume(&share, &id.path).await.ok()??;
        u64::try_from(record.capacity_bytes).ok()
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
