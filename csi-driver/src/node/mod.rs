//! The Node service: staging and publishing volumes where pods run (NFS mounts are in
//! `nfs_mount`, the mount table and mount calls in `mounts`, disk images on loop devices in
//! `image`, usage and condition in `stats`).
//!
//! - directory volumes: NodeStageVolume mounts `server:/share/path` at the staging path;
//!   NodePublishVolume bind-mounts it into the pod (read-only when asked).
//! - image volumes: the volume's directory is mounted privately under `--state-dir`, its disk
//!   image attached to a loop device, formatted on first use and mounted at the staging path
//!   (mount access), or the loop device itself bind-mounted at the target (block access).
//!
//! Every decision comes from the kernel (mount table, loop devices in sysfs); every mount and
//! unmount has a deadline and unmounts escalate (force, then lazy), so a dead server never wedges
//! the service. A stale mount is replaced on the next stage or publish.

pub mod image;
pub mod mounts;
pub(crate) mod nfs_mount;
pub(crate) mod stats;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::mount::MsFlags;
use sha2::{Digest, Sha256};
use tether_csi_proto::v1::{
    self as csi, volume_capability, volume_capability::access_mode::Mode, VolumeCapability,
};

use crate::driver::Driver;
use crate::grpc::error::{CsiError, CsiResult};
use crate::share::ids::{Layout, VolumeId};

use crate::grpc::validate::{
    capability, is_block, mode, mount_flags, present, read_only_mode, required_path, volume,
    volume_path,
};
use crate::locks::OpGuard;
use crate::node::mounts::MountInfo;
use crate::node::nfs_mount::{create_dir, ensure_nfs_mount, health, Health};
use crate::node::stats::UsageCache;
use crate::share::mutable::MountTuning;
use crate::share::store::IMAGE_FILE;

/// The topology key that names a node.
pub const TOPOLOGY_KEY: &str = "topology.nfs.tether.dev/node";

pub struct NodeService {
    pub(crate) driver: Arc<Driver>,
    state_dir: PathBuf,
    pub(crate) timeout: Duration,
    pub(crate) usage: UsageCache,
}

impl NodeService {
    /// `usage_refresh`: how often a directory volume's tree is walked to count its usage.
    pub fn new(
        driver: Arc<Driver>,
        state_dir: PathBuf,
        timeout: Duration,
        usage_refresh: Duration,
    ) -> NodeService {
        NodeService {
            driver,
            state_dir,
            timeout,
            usage: UsageCache::new(usage_refresh),
        }
    }

    /// Serializes node operations on one volume (a second one meanwhile is ABORTED, and retried
    /// by kubelet).
    fn lock(&self, volume_id: &str) -> CsiResult<OpGuard> {
        if volume_id.is_empty() {
            return Err(CsiError::invalid("volume_id is required"));
        }
        self.driver
            .locks
            .acquire(&[format!("node volume {volume_id}")])
    }

    /// Where an image volume's directory is mounted privately on this node.
    pub(crate) fn private_dir(&self, volume_id: &str) -> PathBuf {
        let digest = Sha256::digest(volume_id.as_bytes());
        let key: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
        self.state_dir.join("images").join(key)
    }

    pub(crate) fn image_path(&self, volume_id: &str) -> PathBuf {
        self.private_dir(volume_id).join(IMAGE_FILE)
    }

    /// Mounts the volume's NFS directory at `target` unless the right one is there and healthy;
    /// a stale or unreachable one is replaced.
    pub(crate) fn stage(
        &self,
        req: &csi::NodeStageVolumeRequest,
        tuning: &MountTuning,
    ) -> CsiResult<csi::NodeStageVolumeResponse> {
        let staging = required_path("staging_target_path", &req.staging_target_path)?;
        let capability = capability(req.volume_capability.as_ref())?;
        let id = volume(&req.volume_id)?;
        let _guard = self.lock(&req.volume_id)?;
        let flags = tuning.under(mount_flags(capability));
        match id.layout {
            Layout::Directory => {
                if is_block(capability) {
                    return Err(CsiError::invalid(
                        "a directory volume cannot be used as a block device",
                    ));
                }
                ensure_nfs_mount(&id, &staging, &flags, self.timeout)?;
            }
            Layout::Image => {
                let private = self.private_dir(&req.volume_id);
                ensure_nfs_mount(&id, &private, &flags, self.timeout)?;
                let device = image::attach(&private.join(IMAGE_FILE))?;
                if !is_block(capability) {
                    let fs_type = filesystem(capability, &req.volume_context);
                    if let Err(e) = self.ensure_image_mount(&device, &staging, &fs_type) {
                        // Nothing half made stays: the loop device and the private mount go.
                        self.release_image(&req.volume_id);
                        return Err(e);
                    }
                }
            }
        }
        Ok(csi::NodeStageVolumeResponse {})
    }

    pub(crate) fn ensure_image_mount(
        &self,
        device: &Path,
        staging: &Path,
        fs_type: &str,
    ) -> CsiResult<()> {
        std::fs::create_dir_all(staging).map_err(CsiError::host("creating", staging))?;
        let device_name = device.display().to_string();
        if let Some(existing) = mounts::mounted_at(staging)? {
            if existing.source == device_name {
                return Ok(());
            }
            return Err(CsiError::Conflict(format!(
                "{} already holds {}, not {device_name}",
                staging.display(),
                existing.source
            )));
        }
        if image::ensure_filesystem(device, fs_type)? {
            tracing::info!(device = %device_name, fs_type, "formatted the volume's disk image");
        }
        mounts::mount(
            &device_name,
            staging,
            fs_type,
            MsFlags::empty(),
            "",
            self.timeout,
        )?;
        Ok(())
    }

    pub(crate) fn unstage(
        &self,
        req: &csi::NodeUnstageVolumeRequest,
    ) -> CsiResult<csi::NodeUnstageVolumeResponse> {
        let staging = required_path("staging_target_path", &req.staging_target_path)?;
        let _guard = self.lock(&req.volume_id)?;
        mounts::unmount_all(&staging, self.timeout)?;
        if VolumeId::decode(&req.volume_id).is_some_and(|id| id.layout == Layout::Image) {
            let private = self.private_dir(&req.volume_id);
            // The loop device holds the image open: detach it before the share goes away.
            if let Err(e) = image::detach(&private.join(IMAGE_FILE)) {
                tracing::warn!(error = %e, "detaching the loop device failed");
            }
            mounts::unmount_all(&private, self.timeout)?;
            let _ = std::fs::remove_dir(&private);
        }
        Ok(csi::NodeUnstageVolumeResponse {})
    }

    /// Detaches an image volume's loop device and unmounts its private directory, logging
    /// what fails (for undoing a failed stage).
    fn release_image(&self, volume_id: &str) {
        let private = self.private_dir(volume_id);
        if let Err(e) = image::detach(&private.join(IMAGE_FILE)) {
            tracing::warn!(error = %e, "detaching the loop device failed");
        }
        if let Err(e) = mounts::unmount_all(&private, self.timeout) {
            tracing::warn!(error = %e, "unmounting the image's directory failed");
        }
        let _ = std::fs::remove_dir(&private);
    }

    pub(crate) fn publish(
        &self,
        req: &csi::NodePublishVolumeRequest,
        tuning: &dyn Fn() -> MountTuning,
    ) -> CsiResult<csi::NodePublishVolumeResponse> {
        let target = required_path("target_path", &req.target_path)?;
        let staging = required_path("staging_target_path", &req.staging_target_path)?;
        let capability = capability(req.volume_capability.as_ref())?;
        let id = volume(&req.volume_id)?;
        let _guard = self.lock(&req.volume_id)?;
        let read_only = req.readonly || read_only_mode(capability);

        let origin = self.origin(req, &id, capability, &staging, tuning)?;
        let table = mounts::table()?;
        let origin_mount = if is_block(capability) {
            None
        } else {
            table.iter().rfind(|m| m.mount_point == origin).cloned()
        };

        if let Some(existing) = table.iter().rfind(|m| m.mount_point == target) {
            let same = if is_block(capability) {
                block_mount_matches(existing, &origin)
            } else {
                origin_mount
                    .as_ref()
                    .is_some_and(|o| existing.same_origin(o))
            };
            if same && existing.read_only() == read_only {
                if !is_block(capability) && !matches!(health(&target, self.timeout), Health::Fine) {
                    tracing::warn!(target = %target.display(), "published mount is stale; binding again");
                    mounts::unmount_all(&target, self.timeout)?;
                } else {
                    return Ok(csi::NodePublishVolumeResponse {});
                }
            } else {
                return Err(CsiError::Conflict(format!(
                    "{} is already published with other arguments",
                    target.display()
                )));
            }
        }

        if mode(capability) == Mode::SingleNodeSingleWriter {
            single_writer(
                &table,
                origin_mount.as_ref(),
                &origin,
                &staging,
                &target,
                &req.volume_id,
            )?;
        }

        if is_block(capability) {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(CsiError::host("creating", parent))?;
            }
            if !target.exists() {
                std::fs::File::create(&target).map_err(CsiError::host("creating", &target))?;
            }
        } else {
            create_dir(&target)?;
        }
        mounts::bind(&origin, &target, read_only, self.timeout)?;
        tracing::info!(volume = %req.volume_id, target = %target.display(), read_only, "published");
        Ok(csi::NodePublishVolumeResponse {})
    }

    /// What to publish: the staged filesystem (staged again when stale), or the loop device of
    /// a block volume.
    fn origin(
        &self,
        req: &csi::NodePublishVolumeRequest,
        id: &VolumeId,
        capability: &VolumeCapability,
        staging: &Path,
        tuning: &dyn Fn() -> MountTuning,
    ) -> CsiResult<PathBuf> {
        // The volume's mount options are read only when publishing has to mount.
        let flags = || tuning().under(mount_flags(capability));
        if is_block(capability) {
            if id.layout != Layout::Image {
                return Err(CsiError::invalid(
                    "a directory volume cannot be used as a block device",
                ));
            }
            let private = self.private_dir(&req.volume_id);
            ensure_nfs_mount(id, &private, &flags(), self.timeout)?;
            return Ok(image::attach(&private.join(IMAGE_FILE))?);
        }
        if mounts::mounted_at(staging)?.is_none() {
            return Err(CsiError::WrongState(format!(
                "volume {} is not staged at {}",
                req.volume_id,
                staging.display()
            )));
        }
        if id.layout == Layout::Directory && !matches!(health(staging, self.timeout), Health::Fine)
        {
            // Stale or gone: stage again before publishing.
            ensure_nfs_mount(id, staging, &flags(), self.timeout)?;
        }
        Ok(staging.to_path_buf())
    }

    pub(crate) fn unpublish(
        &self,
        req: &csi::NodeUnpublishVolumeRequest,
    ) -> CsiResult<csi::NodeUnpublishVolumeResponse> {
        let target = required_path("target_path", &req.target_path)?;
        let _guard = self.lock(&req.volume_id)?;
        mounts::unmount_all(&target, self.timeout)?;
        match std::fs::symlink_metadata(&target) {
            Ok(meta) if meta.is_dir() => {
                let _ = std::fs::remove_dir(&target);
            }
            Ok(_) => {
                let _ = std::fs::remove_file(&target);
            }
            Err(_) => {}
        }
        Ok(csi::NodeUnpublishVolumeResponse {})
    }

    pub(crate) fn expand(
        &self,
        req: &csi::NodeExpandVolumeRequest,
    ) -> CsiResult<csi::NodeExpandVolumeResponse> {
        present(&[
            ("volume_id", &req.volume_id),
            ("volume_path", &req.volume_path),
        ])?;
        let path = volume_path(&req.volume_path)?;
        let id = volume(&req.volume_id)?;
        let _guard = self.lock(&req.volume_id)?;
        let wanted = req
            .capacity_range
            .as_ref()
            .map(|r| r.required_bytes)
            .unwrap_or(0);
        holds_volume(&path)?;
        if id.layout == Layout::Directory {
            return Ok(csi::NodeExpandVolumeResponse {
                capacity_bytes: wanted,
            });
        }
        let image_file = self.image_path(&req.volume_id);
        let device = image::find_loop(&image_file)?.ok_or_else(|| {
            CsiError::WrongState(format!(
                "volume {} is not staged on this node",
                req.volume_id
            ))
        })?;
        // The controller grew the image on the server: opening it makes the NFS client revalidate
        // its attributes (close-to-open consistency), so the loop device sees the new size.
        let fresh = std::fs::File::open(&image_file)
            .and_then(|f| f.metadata())
            .map_err(CsiError::host("reading", &image_file))?;
        tracing::debug!(size = fresh.len(), image = %image_file.display(), "image size on the server");
        image::refresh_capacity(&device)?;
        let size = image::device_size(&device)?;
        if size < wanted as u64 {
            return Err(CsiError::Capacity(format!(
                "the disk image holds {size} bytes, less than {wanted}: expand it with ControllerExpandVolume first"
            )));
        }
        let block = req.volume_capability.as_ref().is_some_and(is_block) || !path.is_dir();
        if !block {
            let mount = mounts::mounted_at(&path)?.ok_or_else(|| {
                CsiError::NotFound(format!("{} is not a mounted volume", path.display()))
            })?;
            image::grow_filesystem(&device, &path, &mount.fs_type)?;
            tracing::info!(volume = %req.volume_id, size, "filesystem grown online");
        }
        Ok(csi::NodeExpandVolumeResponse {
            capacity_bytes: size as i64,
        })
    }
}

/// FAILED_PRECONDITION when a SINGLE_NODE_SINGLE_WRITER volume is published at a target other
/// than `target` already (a filesystem bind of the same origin, or the same loop device).
fn single_writer(
    table: &[MountInfo],
    origin_mount: Option<&MountInfo>,
    origin: &Path,
    staging: &Path,
    target: &Path,
    volume_id: &str,
) -> CsiResult<()> {
    let elsewhere = table.iter().any(|m| {
        let same = match origin_mount {
            Some(origin_mount) => m.same_origin(origin_mount),
            None => block_mount_matches(m, origin),
        };
        same && m.mount_point != staging && m.mount_point != target
    });
    if elsewhere {
        return Err(CsiError::WrongState(format!(
            "volume {volume_id} is SINGLE_NODE_SINGLE_WRITER and already published elsewhere"
        )));
    }
    Ok(())
}

/// NOT_FOUND unless `path` is where a volume is staged or published: a mount point, or the
/// device node of a published block volume.
pub(crate) fn holds_volume(path: &Path) -> CsiResult<()> {
    use std::os::unix::fs::FileTypeExt;
    let mounted = mounts::mounted_at(path)?.is_some();
    let device = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
    if mounted || device {
        Ok(())
    } else {
        Err(CsiError::NotFound(format!(
            "{} holds no staged or published volume",
            path.display()
        )))
    }
}

fn block_mount_matches(existing: &MountInfo, device: &Path) -> bool {
    // A bind mount of a device node shows the devtmpfs it lives on; the root names the node.
    existing.root.ends_with(&format!(
        "/{}",
        device
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ))
}

fn filesystem(capability: &VolumeCapability, context: &HashMap<String, String>) -> String {
    match &capability.access_type {
        Some(volume_capability::AccessType::Mount(m)) if !m.fs_type.is_empty() => m.fs_type.clone(),
        _ => context
            .get("fsType")
            .cloned()
            .unwrap_or_else(|| "ext4".into()),
    }
}
