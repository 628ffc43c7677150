//! The Node service: kernel NFS mounts where pods run.
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

use std::collections::HashMap;
use std::net::{IpAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::mount::MsFlags;
use sha2::{Digest, Sha256};
use tether_csi_proto::v1::{
    self as csi, node_service_capability::rpc::Type as Rpc, volume_capability,
    volume_capability::access_mode::Mode, NodeServiceCapability, VolumeCapability, VolumeCondition,
};
use tonic::{Request, Response, Status};

use crate::controller::traced;
use crate::driver::Driver;
use crate::error::{CsiError, CsiResult};
use crate::ids::{Layout, NfsVersion, VolumeId};
use crate::image;
use crate::mounts::{self, MountError, MountInfo};
use crate::store::{self, IMAGE_FILE};

/// The topology key that names a node.
pub const TOPOLOGY_KEY: &str = "topology.nfs.tether.dev/node";

pub struct NodeService {
    driver: Arc<Driver>,
    state_dir: PathBuf,
    timeout: Duration,
}

impl From<MountError> for CsiError {
    fn from(e: MountError) -> CsiError {
        match e {
            MountError::Timeout { .. } => CsiError::DeadlineExceeded(e.to_string()),
            other => CsiError::Internal(other.to_string()),
        }
    }
}

impl From<image::ImageError> for CsiError {
    fn from(e: image::ImageError) -> CsiError {
        match e {
            image::ImageError::WrongFilesystem { .. } => {
                CsiError::FailedPrecondition(e.to_string())
            }
            other => CsiError::Internal(other.to_string()),
        }
    }
}

fn required_path(name: &str, value: &str) -> CsiResult<PathBuf> {
    if value.is_empty() {
        return Err(CsiError::invalid(format!("{name} is required")));
    }
    let path = PathBuf::from(value);
    if !path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(CsiError::invalid(format!(
            "{name} {value:?} must be an absolute path without '..'"
        )));
    }
    Ok(path)
}

fn volume(volume_id: &str) -> CsiResult<VolumeId> {
    if volume_id.is_empty() {
        return Err(CsiError::invalid("volume_id is required"));
    }
    VolumeId::decode(volume_id)
        .ok_or_else(|| CsiError::NotFound(format!("{volume_id} is not a volume of this driver")))
}

fn capability(capability: Option<&VolumeCapability>) -> CsiResult<&VolumeCapability> {
    let capability =
        capability.ok_or_else(|| CsiError::invalid("volume_capability is required"))?;
    if capability.access_type.is_none() {
        return Err(CsiError::invalid(
            "volume_capability has neither mount nor block access",
        ));
    }
    if capability
        .access_mode
        .as_ref()
        .is_none_or(|m| m.mode == Mode::Unknown as i32)
    {
        return Err(CsiError::invalid("volume_capability has no access mode"));
    }
    Ok(capability)
}

fn is_block(capability: &VolumeCapability) -> bool {
    matches!(
        capability.access_type,
        Some(volume_capability::AccessType::Block(_))
    )
}

fn mode(capability: &VolumeCapability) -> Mode {
    capability
        .access_mode
        .as_ref()
        .and_then(|m| Mode::try_from(m.mode).ok())
        .unwrap_or(Mode::Unknown)
}

fn read_only_mode(capability: &VolumeCapability) -> bool {
    matches!(
        mode(capability),
        Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly
    )
}

fn mount_flags(capability: &VolumeCapability) -> Vec<String> {
    match &capability.access_type {
        Some(volume_capability::AccessType::Mount(m)) => m
            .mount_flags
            .iter()
            .flat_map(|f| f.split(','))
            .filter(|o| !o.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// The server's address (names are resolved once, here).
fn server_ip(server: &str) -> CsiResult<IpAddr> {
    let host = server.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse() {
        return Ok(ip);
    }
    (host, 2049)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .map(|a| a.ip())
        .ok_or_else(|| CsiError::Unavailable(format!("cannot resolve NFS server {server:?}")))
}

/// Our address towards the server (NFSv4 callbacks need it spelled out).
fn local_ip_towards(server: IpAddr) -> Option<IpAddr> {
    let any: IpAddr = if server.is_ipv4() {
        [0, 0, 0, 0].into()
    } else {
        [0u16; 8].into()
    };
    let socket = UdpSocket::bind((any, 0)).ok()?;
    socket.connect((server, 2049)).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

/// `server:/share/path` as the kernel shows it in the mount table.
fn nfs_source(id: &VolumeId) -> String {
    let export = id.share.export.trim_end_matches('/');
    format!("{}:{export}/{}", id.share.server, id.path.as_str())
}

/// Mount flags and the NFS option string for mounting `id`.
fn nfs_options(id: &VolumeId, extra: &[String]) -> CsiResult<(MsFlags, String)> {
    let ip = server_ip(&id.share.server)?;
    let mut flags = MsFlags::empty();
    let mut options = vec![
        format!("vers={}", id.share.version.as_option()),
        format!("addr={ip}"),
    ];
    let mut locking_chosen = false;
    for option in extra {
        let (key, value) = option.split_once('=').unwrap_or((option, ""));
        match key {
            "nfsvers" | "vers" => {
                if NfsVersion::parse(value) != Some(id.share.version) {
                    return Err(CsiError::invalid(format!(
                        "mount option {option} contradicts the volume's NFS version {}",
                        id.share.version.as_option()
                    )));
                }
            }
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => {}
            "addr" | "clientaddr" => {}
            _ => {
                locking_chosen |= matches!(key, "lock" | "nolock" | "local_lock");
                options.push(option.clone());
            }
        }
    }
    match id.share.version {
        // Without rpc.statd on the node, NFSv3 locks can only be local.
        NfsVersion::V3 if !locking_chosen => options.push("nolock".into()),
        NfsVersion::V41 => {
            if let Some(local) = local_ip_towards(ip) {
                options.push(format!("clientaddr={local}"));
            }
        }
        NfsVersion::V3 => {}
    }
    Ok((flags, options.join(",")))
}

/// What a bounded `stat` found.
enum Health {
    Fine,
    Stale,
    Unreachable(Duration),
    Error(String),
}

fn health(path: &Path, limit: Duration) -> Health {
    let (tx, rx) = std::sync::mpsc::channel();
    let target = path.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("stat-helper".into())
        .spawn(move || {
            let _ = tx.send(nix::sys::statvfs::statvfs(&target).map(drop));
        });
    if spawned.is_err() {
        return Health::Error("cannot start a helper thread".into());
    }
    match rx.recv_timeout(limit) {
        Ok(Ok(())) => Health::Fine,
        Ok(Err(nix::Error::ESTALE)) => Health::Stale,
        Ok(Err(e)) => Health::Error(e.to_string()),
        Err(_) => Health::Unreachable(limit),
    }
}

impl NodeService {
    pub fn new(driver: Arc<Driver>, state_dir: PathBuf, timeout: Duration) -> NodeService {
        NodeService {
            driver,
            state_dir,
            timeout,
        }
    }

    /// Where an image volume's directory is mounted privately on this node.
    fn private_dir(&self, volume_id: &str) -> PathBuf {
        let digest = Sha256::digest(volume_id.as_bytes());
        let key: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
        self.state_dir.join("images").join(key)
    }

    fn image_path(&self, volume_id: &str) -> PathBuf {
        self.private_dir(volume_id).join(IMAGE_FILE)
    }

    /// Mounts the volume's NFS directory at `target` unless the right one is there and healthy;
    /// a stale or unreachable one is replaced.
    fn ensure_nfs_mount(&self, id: &VolumeId, target: &Path, extra: &[String]) -> CsiResult<()> {
        let source = nfs_source(id);
        if let Some(existing) = mounts::mounted_at(target)? {
            if existing.source != source || !existing.fs_type.starts_with("nfs") {
                return Err(CsiError::AlreadyExists(format!(
                    "{} already holds {} ({}), not volume {}",
                    target.display(),
                    existing.source,
                    existing.fs_type,
                    nfs_source(id)
                )));
            }
            let vers = existing
                .super_options
                .iter()
                .find_map(|o| o.strip_prefix("vers="))
                .and_then(NfsVersion::parse);
            if vers.is_some_and(|v| v != id.share.version) {
                return Err(CsiError::AlreadyExists(format!(
                    "{} is mounted with another NFS version",
                    target.display()
                )));
            }
            match health(target, self.timeout) {
                Health::Fine => return Ok(()),
                Health::Stale => {
                    tracing::warn!(path = %target.display(), "stale NFS file handle; remounting");
                }
                Health::Unreachable(after) => {
                    tracing::warn!(path = %target.display(), ?after, "NFS server not answering; remounting");
                }
                Health::Error(e) => {
                    tracing::warn!(path = %target.display(), error = %e, "mount unusable; remounting");
                }
            }
            mounts::unmount_all(target, self.timeout)?;
        }
        // A directory with a stale mount on it cannot be stat'ed, but it exists: created only
        // when nothing is mounted there (any more).
        create_dir(target)?;
        let (flags, options) = nfs_options(id, extra)?;
        let fs_type = match id.share.version {
            NfsVersion::V3 => "nfs",
            NfsVersion::V41 => "nfs4",
        };
        mounts::mount(&source, target, fs_type, flags, &options, self.timeout).map_err(
            |e| match e {
                MountError::Timeout { .. } => CsiError::DeadlineExceeded(format!(
                    "mounting {source}: the NFS server did not answer within {:?}",
                    self.timeout
                )),
                MountError::Sys { source: errno, .. } => CsiError::Unavailable(format!(
                    "mounting {source} at {}: {errno}",
                    target.display()
                )),
                other => other.into(),
            },
        )?;
        tracing::info!(source = %source, target = %target.display(), options = %options, "NFS mounted");
        Ok(())
    }

    fn stage(&self, req: &csi::NodeStageVolumeRequest) -> CsiResult<csi::NodeStageVolumeResponse> {
        let staging = required_path("staging_target_path", &req.staging_target_path)?;
        let capability = capability(req.volume_capability.as_ref())?;
        let id = volume(&req.volume_id)?;
        let _guard = self
            .driver
            .locks
            .acquire(&[format!("node volume {}", req.volume_id)])?;
        let flags = mount_flags(capability);
        match id.layout {
            Layout::Directory => {
                if is_block(capability) {
                    return Err(CsiError::invalid(
                        "a directory volume cannot be used as a block device",
                    ));
                }
                self.ensure_nfs_mount(&id, &staging, &flags)?;
            }
            Layout::Image => {
                let private = self.private_dir(&req.volume_id);
                self.ensure_nfs_mount(&id, &private, &flags)?;
                let device = image::attach(&private.join(IMAGE_FILE))?;
                if !is_block(capability) {
                    let fs_type = filesystem(capability, &req.volume_context);
                    self.ensure_image_mount(&device, &staging, &fs_type)?;
                }
            }
        }
        Ok(csi::NodeStageVolumeResponse {})
    }

    fn ensure_image_mount(&self, device: &Path, staging: &Path, fs_type: &str) -> CsiResult<()> {
        std::fs::create_dir_all(staging)
            .map_err(|e| CsiError::Internal(format!("creating {}: {e}", staging.display())))?;
        let device_name = device.display().to_string();
        if let Some(existing) = mounts::mounted_at(staging)? {
            if existing.source == device_name {
                return Ok(());
            }
            return Err(CsiError::AlreadyExists(format!(
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

    fn unstage(
        &self,
        req: &csi::NodeUnstageVolumeRequest,
    ) -> CsiResult<csi::NodeUnstageVolumeResponse> {
        let staging = required_path("staging_target_path", &req.staging_target_path)?;
        if req.volume_id.is_empty() {
            return Err(CsiError::invalid("volume_id is required"));
        }
        let _guard = self
            .driver
            .locks
            .acquire(&[format!("node volume {}", req.volume_id)])?;
        mounts::unmount_all(&staging, self.timeout)?;
        if VolumeId::decode(&req.volume_id).is_some_and(|id| id.layout == Layout::Image) {
            let private = self.private_dir(&req.volume_id);
            let image_file = private.join(IMAGE_FILE);
            // The loop device holds the image open: detach it before the share goes away.
            if let Err(e) = image::detach(&image_file) {
                tracing::warn!(error = %e, "detaching the loop device failed");
            }
            mounts::unmount_all(&private, self.timeout)?;
            let _ = std::fs::remove_dir(&private);
        }
        Ok(csi::NodeUnstageVolumeResponse {})
    }

    fn publish(
        &self,
        req: &csi::NodePublishVolumeRequest,
    ) -> CsiResult<csi::NodePublishVolumeResponse> {
        let target = required_path("target_path", &req.target_path)?;
        let staging = required_path("staging_target_path", &req.staging_target_path)?;
        let capability = capability(req.volume_capability.as_ref())?;
        let id = volume(&req.volume_id)?;
        let _guard = self
            .driver
            .locks
            .acquire(&[format!("node volume {}", req.volume_id)])?;
        let read_only = req.readonly || read_only_mode(capability);

        // The origin to publish: the staged filesystem, or the loop device of a block volume.
        let origin: PathBuf = if is_block(capability) {
            if id.layout != Layout::Image {
                return Err(CsiError::invalid(
                    "a directory volume cannot be used as a block device",
                ));
            }
            let private = self.private_dir(&req.volume_id);
            self.ensure_nfs_mount(&id, &private, &mount_flags(capability))?;
            image::attach(&private.join(IMAGE_FILE))?
        } else {
            let staged = mounts::mounted_at(&staging)?.ok_or_else(|| {
                CsiError::FailedPrecondition(format!(
                    "volume {} is not staged at {}",
                    req.volume_id,
                    staging.display()
                ))
            })?;
            if id.layout == Layout::Directory
                && !matches!(health(&staging, self.timeout), Health::Fine)
            {
                // Stale or gone: stage again before publishing.
                drop(staged);
                self.ensure_nfs_mount(&id, &staging, &mount_flags(capability))?;
            }
            staging.clone()
        };
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
                return Err(CsiError::AlreadyExists(format!(
                    "{} is already published with other arguments",
                    target.display()
                )));
            }
        }

        if mode(capability) == Mode::SingleNodeSingleWriter && !is_block(capability) {
            if let Some(origin_mount) = &origin_mount {
                let elsewhere = table.iter().any(|m| {
                    m.same_origin(origin_mount)
                        && m.mount_point != staging
                        && m.mount_point != target
                });
                if elsewhere {
                    return Err(CsiError::FailedPrecondition(format!(
                        "volume {} is SINGLE_NODE_SINGLE_WRITER and already published elsewhere",
                        req.volume_id
                    )));
                }
            }
        }

        if is_block(capability) {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    CsiError::Internal(format!("creating {}: {e}", parent.display()))
                })?;
            }
            if !target.exists() {
                std::fs::File::create(&target).map_err(|e| {
                    CsiError::Internal(format!("creating {}: {e}", target.display()))
                })?;
            }
        } else {
            create_dir(&target)?;
        }
        mounts::bind(&origin, &target, read_only, self.timeout)?;
        tracing::info!(volume = %req.volume_id, target = %target.display(), read_only, "published");
        Ok(csi::NodePublishVolumeResponse {})
    }

    fn unpublish(
        &self,
        req: &csi::NodeUnpublishVolumeRequest,
    ) -> CsiResult<csi::NodeUnpublishVolumeResponse> {
        let target = required_path("target_path", &req.target_path)?;
        if req.volume_id.is_empty() {
            return Err(CsiError::invalid("volume_id is required"));
        }
        let _guard = self
            .driver
            .locks
            .acquire(&[format!("node volume {}", req.volume_id)])?;
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

    async fn stats(
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
            .map_err(|e| CsiError::Internal(format!("statvfs {}: {e}", path.display())))?;
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
    async fn capacity_of(&self, id: &VolumeId) -> Option<u64> {
        let share = self.driver.share(&id.share).await.ok()?;
        let record = store::read_volume(&share, &id.path).await.ok()??;
        u64::try_from(record.capacity_bytes).ok()
    }

    fn expand(
        &self,
        req: &csi::NodeExpandVolumeRequest,
    ) -> CsiResult<csi::NodeExpandVolumeResponse> {
        let path = required_path("volume_path", &req.volume_path)?;
        let id = volume(&req.volume_id)?;
        let _guard = self
            .driver
            .locks
            .acquire(&[format!("node volume {}", req.volume_id)])?;
        let wanted = req
            .capacity_range
            .as_ref()
            .map(|r| r.required_bytes)
            .unwrap_or(0);
        if id.layout == Layout::Directory {
            return Ok(csi::NodeExpandVolumeResponse {
                capacity_bytes: wanted,
            });
        }
        let image_file = self.image_path(&req.volume_id);
        let device = image::find_loop(&image_file)?.ok_or_else(|| {
            CsiError::FailedPrecondition(format!(
                "volume {} is not staged on this node",
                req.volume_id
            ))
        })?;
        // The controller grew the image on the server: opening it makes the NFS client revalidate
        // its attributes (close-to-open consistency), so the loop device sees the new size.
        let fresh = std::fs::File::open(&image_file)
            .and_then(|f| f.metadata())
            .map_err(|e| CsiError::Internal(format!("reading {}: {e}", image_file.display())))?;
        tracing::debug!(size = fresh.len(), image = %image_file.display(), "image size on the server");
        image::refresh_capacity(&device)?;
        let size = image::device_size(&device)?;
        if size < wanted as u64 {
            return Err(CsiError::FailedPrecondition(format!(
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

fn create_dir(path: &Path) -> CsiResult<()> {
    match std::fs::create_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(CsiError::Internal(format!(
            "creating {}: {e}",
            path.display()
        ))),
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

const CAPABILITIES: [Rpc; 5] = [
    Rpc::StageUnstageVolume,
    Rpc::GetVolumeStats,
    Rpc::VolumeCondition,
    Rpc::ExpandVolume,
    Rpc::SingleNodeMultiWriter,
];

/// Runs blocking node work off the async runtime.
async fn blocking<T: Send + 'static>(
    service: &Arc<NodeService>,
    work: impl FnOnce(&NodeService) -> CsiResult<T> + Send + 'static,
) -> CsiResult<T> {
    let service = service.clone();
    tokio::task::spawn_blocking(move || work(&service))
        .await
        .map_err(|e| CsiError::Internal(format!("node operation panicked: {e}")))?
}

/// The tonic service: a cheap handle around the shared node state.
pub struct NodeServer(pub Arc<NodeService>);

#[tonic::async_trait]
impl csi::node_server::Node for NodeServer {
    async fn node_stage_volume(
        &self,
        request: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        let req = request.into_inner();
        let owned = req.clone();
        traced(
            "NodeStageVolume",
            &req.volume_id,
            &req,
            blocking(&self.0, move |s| s.stage(&owned)),
        )
        .await
    }

    async fn node_unstage_volume(
        &self,
        request: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        let req = request.into_inner();
        let owned = req.clone();
        traced(
            "NodeUnstageVolume",
            &req.volume_id,
            &req,
            blocking(&self.0, move |s| s.unstage(&owned)),
        )
        .await
    }

    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let owned = req.clone();
        traced(
            "NodePublishVolume",
            &req.volume_id,
            &req,
            blocking(&self.0, move |s| s.publish(&owned)),
        )
        .await
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let owned = req.clone();
        traced(
            "NodeUnpublishVolume",
            &req.volume_id,
            &req,
            blocking(&self.0, move |s| s.unpublish(&owned)),
        )
        .await
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        let req = request.into_inner();
        traced(
            "NodeGetVolumeStats",
            &req.volume_id,
            &req,
            self.0.stats(&req),
        )
        .await
    }

    async fn node_expand_volume(
        &self,
        request: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        let owned = req.clone();
        traced(
            "NodeExpandVolume",
            &req.volume_id,
            &req,
            blocking(&self.0, move |s| s.expand(&owned)),
        )
        .await
    }

    async fn node_get_capabilities(
        &self,
        request: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        let req = request.into_inner();
        traced("NodeGetCapabilities", "", &req, async {
            Ok(csi::NodeGetCapabilitiesResponse {
                capabilities: CAPABILITIES
                    .iter()
                    .map(|rpc| NodeServiceCapability {
                        r#type: Some(csi::node_service_capability::Type::Rpc(
                            csi::node_service_capability::Rpc {
                                r#type: *rpc as i32,
                            },
                        )),
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn node_get_info(
        &self,
        request: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        let req = request.into_inner();
        let node_id = self.0.driver.node_id.clone();
        traced("NodeGetInfo", "", &req, async move {
            Ok(csi::NodeGetInfoResponse {
                node_id: node_id.clone(),
                max_volumes_per_node: 0,
                accessible_topology: Some(csi::Topology {
                    segments: [(TOPOLOGY_KEY.to_string(), node_id)].into(),
                }),
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{SharePath, ShareRef};

    fn id(version: NfsVersion) -> VolumeId {
        VolumeId {
            share: ShareRef::new("10.0.0.5", "/srv/k8s", version).unwrap(),
            layout: Layout::Directory,
            path: SharePath::parse("ns/pvc-1").unwrap(),
        }
    }

    #[test]
    fn nfs_mount_options_follow_the_volume_and_the_storage_class() {
        assert_eq!(
            nfs_source(&id(NfsVersion::V41)),
            "10.0.0.5:/srv/k8s/ns/pvc-1"
        );
        let (flags, options) = nfs_options(
            &id(NfsVersion::V3),
            &["hard".into(), "timeo=600".into(), "ro".into()],
        )
        .unwrap();
        assert!(flags.contains(MsFlags::MS_RDONLY));
        assert!(
            options.starts_with("vers=3,addr=10.0.0.5,hard,timeo=600"),
            "{options}"
        );
        assert!(options.ends_with(",nolock"), "{options}");
        let (_, options) = nfs_options(&id(NfsVersion::V3), &["lock".into()]).unwrap();
        assert!(!options.contains("nolock"));
        let (_, options) = nfs_options(&id(NfsVersion::V41), &["nfsvers=4.1".into()]).unwrap();
        assert!(options.starts_with("vers=4.1,addr=10.0.0.5"), "{options}");
        assert!(nfs_options(&id(NfsVersion::V41), &["nfsvers=3".into()]).is_err());
    }

    #[test]
    fn arguments_are_checked() {
        assert!(required_path("target_path", "").is_err());
        assert!(required_path("target_path", "relative/x").is_err());
        assert!(required_path("target_path", "/a/../b").is_err());
        assert!(required_path("target_path", "/var/lib/kubelet/pods/x").is_ok());
        assert!(matches!(volume(""), Err(CsiError::InvalidArgument(_))));
        assert!(matches!(volume("nonsense"), Err(CsiError::NotFound(_))));
        assert!(capability(None).is_err());
        let no_mode = VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(Default::default())),
            access_mode: None,
        };
        assert!(capability(Some(&no_mode)).is_err());
    }

    #[test]
    fn counts_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/f"), vec![1u8; 100_000]).unwrap();
        std::fs::write(dir.path().join("g"), b"x").unwrap();
        let (bytes, files) = usage_of_tree(dir.path());
        assert_eq!(files, 3);
        assert!(bytes >= 100_000, "{bytes}");
    }
}
