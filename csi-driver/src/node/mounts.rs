//! The kernel's mount table and mount/unmount calls that never wedge the caller.
//!
//! Decisions are made from `/proc/self/mountinfo`, never from memory. Every mount and unmount runs
//! on a helper thread with a deadline: a call that does not return in time (a dead NFS server)
//! gives a timeout error while the thread finishes in the background; a mount that completes
//! after its caller gave up is undone.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use nix::mount::{MntFlags, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{what} {path}: {source}")]
    Sys {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{what} {path} did not finish within {after:?}")]
    Timeout {
        what: &'static str,
        path: PathBuf,
        after: Duration,
    },
    #[error("reading the mount table: {0}")]
    Table(std::io::Error),
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub id: u32,
    pub parent: u32,
    /// `major:minor` of the filesystem.
    pub device: String,
    /// The directory of the filesystem that is mounted here (`/` for a whole filesystem).
    pub root: String,
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`, `ro`, `nosuid`...).
    pub options: Vec<String>,
    pub fs_type: String,
    pub source: String,
    pub super_options: Vec<String>,
}

impl MountInfo {
    pub fn read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }

    /// The same filesystem and subtree as `other` (a bind mount of it, or it). The source counts
    /// too: NFS mounts of different directories of one export share a superblock and all show
    /// the root `/`.
    pub fn same_origin(&self, other: &MountInfo) -> bool {
        self.device == other.device && self.root == other.root && self.source == other.source
    }
}

/// Undoes the kernel's octal escapes (`\040` for a space...).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let (b'\\', Some(digits)) = (bytes[i], octal) {
            let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses the text of a mountinfo file; lines that do not parse are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountInfo> {
    let (left, right) = line.split_once(" - ")?;
    let mut l = left.split(' ');
    let id = l.next()?.parse().ok()?;
    let parent = l.next()?.parse().ok()?;
    let device = l.next()?.to_string();
    let root = unescape(l.next()?);
    let mount_point = PathBuf::from(unescape(l.next()?));
    let options = l.next()?.split(',').map(str::to_string).collect();
    let mut r = right.split(' ');
    let fs_type = r.next()?.to_string();
    let source = unescape(r.next()?);
    let super_options = r
        .next()
        .unwrap_or("")
        .split(',')
        .map(str::to_string)
        .collect();
    Some(MountInfo {
        id,
        parent,
        device,
        root,
        mount_point,
        options,
        fs_type,
        source,
        super_options,
    })
}

pub fn table() -> Result<Vec<MountInfo>, MountError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(MountError::Table)?;
    Ok(parse_mountinfo(&text))
}

/// The topmost mount at exactly `path`, if any.
pub fn mounted_at(path: &Path) -> Result<Option<MountInfo>, MountError> {
    Ok(table()?.into_iter().rfind(|m| m.mount_point == path))
}

/// Runs `work` on a helper thread and waits at most `limit` for it. If it is too late, `late`
/// receives its result when it finally arrives (to undo a mount that happened anyway).
fn bounded<T: Send + 'static>(
    what: &'static str,
    path: &Path,
    limit: Duration,
    work: impl FnOnce() -> nix::Result<T> + Send + 'static,
    late: impl FnOnce(nix::Result<T>) + Send + 'static,
) -> Result<T, MountError> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("{what}-helper"))
        .spawn(move || {
            let result = work();
            if let Err(mpsc::SendError(result)) = tx.send(result) {
                late(result);
            }
        });
    if let Err(e) = spawned {
        return Err(MountError::Sys {
            what,
            path: path.into(),
            source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EAGAIN)),
        });
    }
    match rx.recv_timeout(limit) {
        Ok(result) => result.map_err(|source| MountError::Sys {
            what,
            path: path.into(),
            source,
        }),
        Err(_) => Err(MountError::Timeout {
            what,
            path: path.into(),
            after: limit,
        }),
    }
}

/// `mount -t <fs_type> <source> <target> -o <data>` with a deadline.
pub fn mount(
    source: &str,
    target: &Path,
    fs_type: &str,
    flags: MsFlags,
    data: &str,
    limit: Duration,
) -> Result<(), MountError> {
    let (source, fs_type, data) = (source.to_string(), fs_type.to_string(), data.to_string());
    let target_owned = target.to_path_buf();
    let target_late = target.to_path_buf();
    bounded(
        "mounting",
        target,
        limit,
        move || {
            nix::mount::mount(
                Some(source.as_str()),
                &target_owned,
                Some(fs_type.as_str()),
                flags,
                (!data.is_empty()).then_some(data.as_str()),
            )
        },
        move |result| {
            if result.is_ok() {
                tracing::warn!(target = %target_late.display(), "a mount finished after its deadline; undoing it");
                let _ = nix::mount::umount2(&target_late, MntFlags::MNT_DETACH);
            }
        },
    )
}

/// A bind mount of `source` at `target`, read-only if asked (which takes a remount).
pub fn bind(
    source: &Path,
    target: &Path,
    read_only: bool,
    limit: Duration,
) -> Result<(), MountError> {
    let source = source.display().to_string();
    mount(&source, target, "", MsFlags::MS_BIND, "", limit)?;
    if read_only {
        let result = mount(
            "",
            target,
            "",
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            "",
            limit,
        );
        if let Err(e) = result {
            let _ = unmount(target, limit);
            return Err(e);
        }
    }
    Ok(())
}

/// Unmounts `path`, escalating when needed: a normal unmount, then a forced one (which aborts
/// requests to a dead NFS server), then a lazy one (which always returns). Each step has `limit`.
pub fn unmount(path: &Path, limit: Duration) -> Result<(), MountError> {
    let mut last = None;
    for flags in [MntFlags::empty(), MntFlags::MNT_FORCE, MntFlags::MNT_DETACH] {
        let target = path.to_path_buf();
        match bounded(
            "unmounting",
            path,
            limit,
            move || nix::mount::umount2(&target, flags),
            |_| {},
        ) {
            Ok(()) => return Ok(()),
            Err(MountError::Sys {
                source: nix::Error::EINVAL,
                ..
            }) => return Ok(()), // Not a mount point (any more).
            Err(e) => {
                tracing::warn!(path = %path.display(), ?flags, error = %e, "unmount did not work; escalating");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or(MountError::Timeout {
        what: "unmounting",
        path: path.into(),
        after: limit,
    }))
}

/// Unmounts everything stacked at `path`.
pub fn unmount_all(path: &Path, limit: Duration) -> Result<(), MountError> {
    while mounted_at(path)?.is_some() {
        unmount(path, limit)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
98 29 0:52 / /var/lib/kubelet/plugins/kubernetes.io/csi/nfs.tether.dev/abc/globalmount rw,relatime shared:40 - nfs4 10.0.0.5:/srv/k8s/pvc-1 rw,vers=4.1,rsize=1048576,addr=10.0.0.5
120 29 0:52 / /var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/pvc-1/mount ro,relatime shared:40 - nfs4 10.0.0.5:/srv/k8s/pvc-1 rw,vers=4.1
130 29 7:3 / /mnt/with\\040space rw,relatime - ext4 /dev/loop3 rw
140 29 0:52 / /var/lib/kubelet/plugins/kubernetes.io/csi/nfs.tether.dev/def/globalmount rw,relatime - nfs4 10.0.0.5:/srv/k8s/pvc-2 rw,vers=4.1
";

    #[test]
    fn parses_mountinfo_including_escapes_and_optional_fields() {
        let mounts = parse_mountinfo(SAMPLE);
        assert_eq!(mounts.len(), 5);
        let stage = &mounts[1];
        assert_eq!(stage.fs_type, "nfs4");
        assert_eq!(stage.source, "10.0.0.5:/srv/k8s/pvc-1");
        assert_eq!(stage.device, "0:52");
        assert!(!stage.read_only());
        let publish = &mounts[2];
        assert!(publish.read_only());
        assert!(publish.same_origin(stage));
        assert!(!mounts[3].same_origin(stage));
        // Another volume of the same export: same superblock and root, other source.
        assert!(!mounts[4].same_origin(stage));
        assert_eq!(mounts[3].mount_point, PathBuf::from("/mnt/with space"));
        assert!(mounts[3].super_options.contains(&"rw".to_string()));
    }

    #[test]
    fn garbage_lines_are_skipped() {
        assert!(parse_mountinfo("nonsense\n\n1 2 3\n").is_empty());
        assert_eq!(unescape("a\\011b\\134"), "a\tb\\");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }
}
