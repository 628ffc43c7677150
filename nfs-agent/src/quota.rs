//! Directory limits with project quotas (XFS, or ext4, mounted with `prjquota`): a volume's
//! directory gets a project of its own (FS_IOC_FSSETXATTR, inherited by everything created
//! below it), and the project a hard block limit (quotactl_fd Q_XSETQLIM). A writer past it gets
//! EDQUOT; usage is the quota's count, not a walk of the tree; and statfs of the directory
//! (what an NFS client's `df` sees) reports the limit as the size.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};

use tether_csi_proto::agent::QuotaKind;

use crate::error::{AgentError, AgentResult};
use crate::paths::Root;
use crate::sys;

const PRJQUOTA: u32 = 2;
const fn xqm_cmd(n: u32) -> u32 {
    (('X' as u32) << 8) + n
}
const Q_XGETQUOTA: u32 = xqm_cmd(3);
const Q_XSETQLIM: u32 = xqm_cmd(4);
const Q_XGETQSTAT: u32 = xqm_cmd(5);
const fn qcmd(cmd: u32, kind: u32) -> u32 {
    (cmd << 8) | (kind & 0xff)
}
const FS_DQUOT_VERSION: i8 = 1;
const FS_PROJ_QUOTA: i8 = 2;
const FS_DQ_BHARD: u16 = 1 << 3;
const FS_QUOTA_PDQ_ENFD: u16 = 1 << 5;
const FS_XFLAG_PROJINHERIT: u32 = 0x0000_0200;
const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;
/// Quota block counts are in 512-byte "basic blocks".
const BASIC_BLOCK: u64 = 512;

/// `struct fs_disk_quota` (linux/dqblk_xfs.h).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct FsDiskQuota {
    d_version: i8,
    d_flags: i8,
    d_fieldmask: u16,
    d_id: u32,
    d_blk_hardlimit: u64,
    d_blk_softlimit: u64,
    d_ino_hardlimit: u64,
    d_ino_softlimit: u64,
    d_bcount: u64,
    d_icount: u64,
    d_itimer: i32,
    d_btimer: i32,
    d_iwarns: u16,
    d_bwarns: u16,
    d_itimer_hi: i8,
    d_btimer_hi: i8,
    d_rtbtimer_hi: i8,
    d_padding2: i8,
    d_rtb_hardlimit: u64,
    d_rtb_softlimit: u64,
    d_rtbcount: u64,
    d_rtbtimer: i32,
    d_rtbwarns: u16,
    d_padding3: i16,
    d_padding4: [u8; 8],
}

/// `struct fsxattr` (linux/fs.h).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct FsXattr {
    fsx_xflags: u32,
    fsx_extsize: u32,
    fsx_nextents: u32,
    fsx_projid: u32,
    fsx_cowextsize: u32,
    fsx_pad: [u8; 8],
}

fn quotactl(fd: &OwnedFd, cmd: u32, id: u32, addr: *mut libc::c_void) -> std::io::Result<()> {
    // SAFETY: `addr` points at a buffer of the size the command reads or writes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            fd.as_raw_fd() as libc::c_uint,
            qcmd(cmd, PRJQUOTA),
            id,
            addr,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether project quotas are enforced on the filesystem of `root`, or why not.
pub fn kind(root: &Root) -> (QuotaKind, String) {
    // fs_quota_stat: qs_flags is the u16 at offset 2; the buffer is larger than the struct.
    let mut stat = [0u8; 256];
    match quotactl(root.fd(), Q_XGETQSTAT, 0, stat.as_mut_ptr().cast()) {
        Ok(()) => {
            let flags = u16::from_ne_bytes([stat[2], stat[3]]);
            if flags & FS_QUOTA_PDQ_ENFD != 0 {
                (QuotaKind::Project, String::new())
            } else {
                (
                    QuotaKind::None,
                    "project quota is not enforced on this filesystem (mount it with prjquota)"
                        .into(),
                )
            }
        }
        Err(e) => (
            QuotaKind::None,
            format!("the filesystem answers no project quota ({e}); XFS or ext4 mounted with prjquota has one"),
        ),
    }
}

/// A stable project id for a directory of an export: never 0 (the default project).
pub fn project_of(export: &str, path: &str) -> u32 {
    // FNV-1a: stable across builds and releases.
    let mut hash: u32 = 0x811c_9dc5;
    for b in export.bytes().chain([0]).chain(path.bytes()) {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash & 0x7fff_ffff).max(1)
}

/// Gives `path` (a directory) its own project, inherited below it, and limits the project to
/// `bytes` (0: no limit).
pub fn set_limit(root: &Root, path: &str, bytes: u64) -> AgentResult<u32> {
    let (kind, why) = kind(root);
    if kind != QuotaKind::Project {
        return Err(AgentError::Unsupported(why));
    }
    let dir = root.open_beneath(path, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let project = project_of(&root.export, path);
    assign(&dir, project).map_err(AgentError::io(format!("giving {path} project {project}")))?;
    let mut limit = FsDiskQuota {
        d_version: FS_DQUOT_VERSION,
        d_flags: FS_PROJ_QUOTA,
        d_fieldmask: FS_DQ_BHARD,
        d_id: project,
        d_blk_hardlimit: bytes.div_ceil(BASIC_BLOCK),
        ..FsDiskQuota::default()
    };
    quotactl(
        root.fd(),
        Q_XSETQLIM,
        project,
        (&mut limit as *mut FsDiskQuota).cast(),
    )
    .map_err(AgentError::io(format!(
        "limiting project {project} ({path})"
    )))?;
    Ok(project)
}

/// Sets the project of `dir` and of everything already below it (a volume made before it had a
/// limit), and the inherit flag on directories.
fn assign(dir: &OwnedFd, project: u32) -> std::io::Result<()> {
    set_project(dir, project, true)?;
    for name in sys::entries(dir)? {
        let st = sys::stat_at(dir, &name)?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                let sub = sys::open_at(dir, &name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
                assign(&sub, project)?;
            }
            libc::S_IFREG => {
                let file = sys::open_at(dir, OsStr::new(&name), libc::O_RDONLY, 0)?;
                set_project(&file, project, false)?;
            }
            // Symbolic links and special files hold no blocks; the kernel refuses the ioctl.
            _ => {}
        }
    }
    Ok(())
}

fn set_project(fd: &OwnedFd, project: u32, inherit: bool) -> std::io::Result<()> {
    let mut attr = FsXattr::default();
    // SAFETY: the ioctls read and write one fsxattr.
    if unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSGETXATTR, &mut attr as *mut FsXattr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    attr.fsx_projid = project;
    if inherit {
        attr.fsx_xflags |= FS_XFLAG_PROJINHERIT;
    }
    if unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSSETXATTR, &attr as *const FsXattr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Usage below `path`: (bytes used, limit in bytes or 0, files).
pub fn usage(root: &Root, path: &str) -> AgentResult<(u64, u64, u64)> {
    let (kind, why) = kind(root);
    if kind != QuotaKind::Project {
        return Err(AgentError::Unsupported(why));
    }
    let dir = root.open_beneath(path, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let mut attr = FsXattr::default();
    // SAFETY: as in set_project.
    if unsafe {
        libc::ioctl(
            dir.as_raw_fd(),
            FS_IOC_FSGETXATTR,
            &mut attr as *mut FsXattr,
        )
    } < 0
    {
        return Err(AgentError::io(format!("reading the project of {path}"))(
            std::io::Error::last_os_error(),
        ));
    }
    if attr.fsx_projid == 0 {
        return Err(AgentError::Unsupported(format!(
            "{path} has no project of its own (no limit was ever set)"
        )));
    }
    let mut quota = FsDiskQuota::default();
    quotactl(
        root.fd(),
        Q_XGETQUOTA,
        attr.fsx_projid,
        (&mut quota as *mut FsDiskQuota).cast(),
    )
    .map_err(AgentError::io(format!(
        "reading project {}",
        attr.fsx_projid
    )))?;
    Ok((
        quota.d_bcount * BASIC_BLOCK,
        quota.d_blk_hardlimit * BASIC_BLOCK,
        quota.d_icount,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_structures_have_their_abi_sizes() {
        assert_eq!(std::mem::size_of::<FsDiskQuota>(), 112);
        assert_eq!(std::mem::size_of::<FsXattr>(), 28);
    }

    #[test]
    fn project_ids_are_stable_and_never_the_default() {
        assert_eq!(
            project_of("/srv/k8s", "pvc-1"),
            project_of("/srv/k8s", "pvc-1")
        );
        assert_ne!(
            project_of("/srv/k8s", "pvc-1"),
            project_of("/srv/k8s", "pvc-2")
        );
        assert_ne!(project_of("/a", "bc"), project_of("/ab", "c"));
        assert!(project_of("", "") >= 1);
    }
}
