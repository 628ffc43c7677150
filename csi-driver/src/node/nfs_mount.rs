//! Kernel NFS mounts on the node: the mount options a volume needs, the health of a mount, and
//! making sure the right, healthy export is mounted at a path.

use std::net::{IpAddr, ToSocketAddrs, UdpSocket};
use std::path::Path;
use std::time::Duration;

use nix::mount::MsFlags;

use crate::grpc::error::{CsiError, CsiResult};
use crate::node::mounts;
use crate::share::ids::{NfsVersion, VolumeId};

/// The server's address (names are resolved once, here).
pub fn server_ip(server: &str) -> CsiResult<IpAddr> {
    let host = server.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse() {
        return Ok(ip);
    }
    (host, 2049)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .map(|a| a.ip())
        .ok_or_else(|| CsiError::Unresolvable(server.to_string()))
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
pub fn nfs_source(id: &VolumeId) -> String {
    let export = id.share.export.trim_end_matches('/');
    format!("{}:{export}/{}", id.share.server, id.path.as_str())
}

/// Mount flags and the NFS option string for mounting `id`.
pub fn nfs_options(id: &VolumeId, extra: &[String]) -> CsiResult<(MsFlags, String)> {
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
pub enum Health {
    Fine,
    Stale,
    Unreachable(Duration),
    Error(String),
}

pub fn health(path: &Path, limit: Duration) -> Health {
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

/// Mounts the volume's NFS directory at `target` unless the right one is there and healthy;
/// a stale or unreachable one is replaced.
pub fn ensure_nfs_mount(
    id: &VolumeId,
    target: &Path,
    extra: &[String],
    timeout: Duration,
) -> CsiResult<()> {
    let source = nfs_source(id);
    if let Some(existing) = mounts::mounted_at(target)? {
        if existing.source != source || !existing.fs_type.starts_with("nfs") {
            return Err(CsiError::Conflict(format!(
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
            return Err(CsiError::Conflict(format!(
                "{} is mounted with another NFS version",
                target.display()
            )));
        }
        match health(target, timeout) {
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
        mounts::unmount_all(target, timeout)?;
    }
    // A directory with a stale mount on it cannot be stat'ed, but it exists: created only
    // when nothing is mounted there (any more).
    create_dir(target)?;
    let (flags, options) = nfs_options(id, extra)?;
    let fs_type = match id.share.version {
        NfsVersion::V3 => "nfs",
        NfsVersion::V41 => "nfs4",
    };
    mounts::mount(&source, target, fs_type, flags, &options, timeout).map_err(|error| {
        CsiError::NfsMount {
            export: source.clone(),
            target: target.to_path_buf(),
            source: error,
        }
    })?;
    tracing::info!(source = %source, target = %target.display(), options = %options, "NFS mounted");
    Ok(())
}

/// Creates `path` (and its parents); one that exists is fine.
pub fn create_dir(path: &Path) -> CsiResult<()> {
    match std::fs::create_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(CsiError::host("creating", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::share::ids::{Layout, SharePath, ShareRef};

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
}
