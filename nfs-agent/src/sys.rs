//! Thin, safe wrappers over the descriptor-relative system calls the agent uses (each name is
//! one path component, resolved from a directory descriptor, never following a symbolic link).

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io::{Error, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

fn cstr(name: &OsStr) -> Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| Error::from_raw_os_error(libc::EINVAL))
}

fn check(rc: libc::c_int) -> Result<libc::c_int> {
    if rc < 0 {
        Err(Error::last_os_error())
    } else {
        Ok(rc)
    }
}

pub fn fstat(fd: &OwnedFd) -> Result<libc::stat> {
    // SAFETY: stat is plain data filled by the kernel.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// lstat of `name` in `dir`.
pub fn stat_at(dir: &OwnedFd, name: &OsStr) -> Result<libc::stat> {
    let c = cstr(name)?;
    // SAFETY: as above.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// openat(2) of one component, never following a symbolic link.
pub fn open_at(dir: &OwnedFd, name: &OsStr, flags: i32, mode: u32) -> Result<OwnedFd> {
    let c = cstr(name)?;
    let fd = check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode,
        )
    })?;
    // SAFETY: a new descriptor only we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn mkdir_at(dir: &OwnedFd, name: &OsStr, mode: u32) -> Result<()> {
    let c = cstr(name)?;
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode) }).map(drop)
}

pub fn unlink_at(dir: &OwnedFd, name: &OsStr, is_dir: bool) -> Result<()> {
    let c = cstr(name)?;
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) }).map(drop)
}

/// renameat2(RENAME_NOREPLACE) within one directory: EEXIST when `to` exists.
pub fn rename_noreplace(dir: &OwnedFd, from: &OsStr, to: &OsStr) -> Result<()> {
    let (f, t) = (cstr(from)?, cstr(to)?);
    check(unsafe {
        libc::renameat2(
            dir.as_raw_fd(),
            f.as_ptr(),
            dir.as_raw_fd(),
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    })
    .map(drop)
}

/// renameat(2) within one directory: replaces `to` only if it is an empty directory
/// (ENOTEMPTY or EEXIST otherwise, as the kernel says).
pub fn rename_over_empty(dir: &OwnedFd, from: &OsStr, to: &OsStr) -> Result<()> {
    let (f, t) = (cstr(from)?, cstr(to)?);
    check(unsafe { libc::renameat(dir.as_raw_fd(), f.as_ptr(), dir.as_raw_fd(), t.as_ptr()) })
        .map(drop)
}

pub fn read_link_at(dir: &OwnedFd, name: &OsStr) -> Result<OsString> {
    let c = cstr(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            c.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(OsString::from_vec(buf))
}

pub fn symlink_at(target: &OsStr, dir: &OwnedFd, name: &OsStr) -> Result<()> {
    let (t, c) = (cstr(target)?, cstr(name)?);
    check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) }).map(drop)
}

pub fn mknod_at(dir: &OwnedFd, name: &OsStr, mode: u32, dev: u64) -> Result<()> {
    let c = cstr(name)?;
    check(unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), mode, dev) }).map(drop)
}

/// Owner, mode and times of `name` in `dir` (not following a symbolic link) set to `st`'s.
pub fn copy_attributes_at(dir: &OwnedFd, name: &OsStr, st: &libc::stat, link: bool) -> Result<()> {
    let c = cstr(name)?;
    check(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            c.as_ptr(),
            st.st_uid,
            st.st_gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    if !link {
        check(unsafe { libc::fchmodat(dir.as_raw_fd(), c.as_ptr(), st.st_mode & 0o7777, 0) })?;
    }
    let times = [
        libc::timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec,
        },
        libc::timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec,
        },
    ];
    check(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

pub fn fsync(fd: &OwnedFd) -> Result<()> {
    check(unsafe { libc::fsync(fd.as_raw_fd()) }).map(drop)
}

/// The entries of a directory (without `.` and `..`).
pub fn entries(dir: &OwnedFd) -> Result<Vec<OsString>> {
    // fdopendir takes the descriptor: give it a duplicate.
    let dup = check(unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
    let stream = unsafe { libc::fdopendir(dup) };
    if stream.is_null() {
        let e = Error::last_os_error();
        unsafe { libc::close(dup) };
        return Err(e);
    }
    unsafe { libc::rewinddir(stream) };
    let mut out = Vec::new();
    loop {
        // errno tells an error from the end.
        unsafe { *libc::__errno_location() = 0 };
        let entry = unsafe { libc::readdir64(stream) };
        if entry.is_null() {
            let errno = unsafe { *libc::__errno_location() };
            unsafe { libc::closedir(stream) };
            if errno != 0 {
                return Err(Error::from_raw_os_error(errno));
            }
            return Ok(out);
        }
        // SAFETY: d_name is NUL-terminated within the entry.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        let bytes = name.to_bytes();
        if bytes != b"." && bytes != b".." {
            out.push(OsStr::from_bytes(bytes).to_os_string());
        }
    }
}

/// FICLONE: `to` shares `from`'s blocks (copy-on-write).
pub fn ficlone(from: &OwnedFd, to: &OwnedFd) -> Result<()> {
    const FICLONE: libc::c_ulong = 0x4004_9409;
    check(unsafe { libc::ioctl(to.as_raw_fd(), FICLONE, from.as_raw_fd()) }).map(drop)
}

/// copy_file_range(2) until `len` bytes are copied.
pub fn copy_range(from: &OwnedFd, to: &OwnedFd, len: u64) -> Result<()> {
    let mut left = len;
    while left > 0 {
        let chunk = left.min(1 << 30) as usize;
        let n = unsafe {
            libc::syscall(
                libc::SYS_copy_file_range,
                from.as_raw_fd(),
                std::ptr::null_mut::<i64>(),
                to.as_raw_fd(),
                std::ptr::null_mut::<i64>(),
                chunk,
                0u32,
            )
        };
        if n < 0 {
            return Err(Error::last_os_error());
        }
        if n == 0 {
            break; // The source shrank under us.
        }
        left -= n as u64;
    }
    Ok(())
}

pub fn fstatfs(fd: &OwnedFd) -> Result<libc::statfs> {
    // SAFETY: plain data filled by the kernel.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}
