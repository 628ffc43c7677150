//! The export roots and every path below them. A request's path is checked twice: its text must
//! be a plain relative path, and the kernel resolves it with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)` from the root's descriptor, so that no `..`, symbolic
//! link (planted by an NFS client, say) or mount point leads outside the export.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::error::{AgentError, AgentResult};

/// One export the agent serves: the path NFS clients name it by, and the directory it is here.
#[derive(Debug)]
pub struct Root {
    pub export: String,
    pub dir: PathBuf,
    fd: OwnedFd,
}

/// The longest name a component may have (NAME_MAX).
const NAME_MAX: usize = 255;

impl Root {
    pub fn open(export: &str, dir: &Path) -> std::io::Result<Root> {
        let c = CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Root {
            export: export.trim_end_matches('/').to_string(),
            dir: dir.to_path_buf(),
            // SAFETY: a descriptor just opened and owned by nothing else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Opens `rel` below the root (`flags` as for open(2); O_NOFOLLOW and O_CLOEXEC added).
    pub fn open_beneath(&self, rel: &str, flags: i32, mode: u32) -> AgentResult<OwnedFd> {
        let parts = components(rel)?;
        openat2(&self.fd, &parts.join("/"), flags, mode).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => AgentError::NotFound(rel.to_string()),
            Some(libc::EEXIST) => AgentError::AlreadyExists(rel.to_string()),
            Some(libc::ELOOP | libc::EXDEV) => AgentError::BadPath(format!(
                "{rel} passes through a symbolic link or another filesystem"
            )),
            Some(libc::ENOTDIR) => AgentError::BadPath(format!(
                "{rel}: not a directory where one is needed (or a symbolic link in its place)"
            )),
            _ => AgentError::Io {
                what: format!("opening {rel}"),
                source: e,
            },
        })
    }

    /// The directory that holds `rel` (opened below the root) and `rel`'s last component.
    pub fn parent_of(&self, rel: &str) -> AgentResult<(OwnedFd, String)> {
        let parts = components(rel)?;
        let (name, parents) = parts
            .split_last()
            .ok_or_else(|| AgentError::BadPath("an empty path".into()))?;
        let parent = if parents.is_empty() {
            openat2(&self.fd, ".", libc::O_PATH | libc::O_DIRECTORY, 0)
                .map_err(AgentError::io("opening the export root"))?
        } else {
            self.open_beneath(&parents.join("/"), libc::O_PATH | libc::O_DIRECTORY, 0)?
        };
        Ok((parent, name.to_string()))
    }

    /// The root's own descriptor (for filesystem-wide questions).
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

/// The components of a request's path: relative, no empty, `.` or `..` component, no NUL, each
/// at most NAME_MAX bytes.
pub fn components(path: &str) -> AgentResult<Vec<&str>> {
    if path.is_empty() {
        return Err(AgentError::BadPath("an empty path".into()));
    }
    if path.starts_with('/') {
        return Err(AgentError::BadPath(format!(
            "{path:?} is absolute; paths are relative to the export"
        )));
    }
    let parts: Vec<&str> = path.split('/').collect();
    for part in &parts {
        if part.is_empty() || *part == "." || *part == ".." {
            return Err(AgentError::BadPath(format!(
                "{path:?} has an empty, `.` or `..` component"
            )));
        }
        if part.contains('\0') || part.len() > NAME_MAX {
            return Err(AgentError::BadPath(format!(
                "{path:?} has a component with NUL or longer than {NAME_MAX} bytes"
            )));
        }
    }
    Ok(parts)
}

/// openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
/// RESOLVE_NO_XDEV.
fn openat2(dir: &OwnedFd, rel: &str, flags: i32, mode: u32) -> std::io::Result<OwnedFd> {
    let c = CString::new(rel).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is plain data; zeroed is its documented "nothing asked" value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64;
    how.mode = if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        u64::from(mode)
    } else {
        0
    };
    how.resolve = libc::RESOLVE_BENEATH
        | libc::RESOLVE_NO_SYMLINKS
        | libc::RESOLVE_NO_MAGICLINKS
        | libc::RESOLVE_NO_XDEV;
    // SAFETY: every pointer is valid for the call; the size is the struct's.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that only we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_plain_and_relative() {
        assert_eq!(
            components("a/b.c/.tether").unwrap(),
            ["a", "b.c", ".tether"]
        );
        for bad in ["", "/etc", "a/../b", "..", "a//b", "a/./b", "a/", "a\0b"] {
            assert!(components(bad).is_err(), "{bad:?}");
        }
        assert!(components(&"x".repeat(256)).is_err());
        assert!(components(&"x".repeat(255)).is_ok());
    }
}
