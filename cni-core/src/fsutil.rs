//! Crash-safe files: atomic replacement and advisory locks.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

/// Replaces `path` with `contents` so that a crash leaves either the old or the new file, never a
/// torn one: write a temporary file beside it, fsync it, rename it over. The caller fsyncs the
/// directory (once, after all renames) with [`sync_dir`].
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path)?;
    let result = write_file(&tmp, contents)
        .and_then(|file| file.sync_all())
        .and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Replaces `path` with `contents` and `mode` (atomically, durably, as [`write_atomic`], and the
/// directory synced) unless it holds exactly that already. Returns whether it wrote. A node
/// whose files are right is left alone: no new inode, no change event for watchers.
pub fn write_if_changed(path: &Path, contents: &[u8], mode: u32) -> io::Result<bool> {
    write_if_changed_staged(path, None, contents, mode)
}

/// [`write_if_changed`], with the temporary file in `staging` (a directory on the same
/// filesystem) instead of beside `path`: for a directory whose watchers would see the temporary
/// file (containerd 2.x reloads its CNI configuration on every file event).
pub fn write_if_changed_staged(
    path: &Path,
    staging: Option<&Path>,
    contents: &[u8],
    mode: u32,
) -> io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    if let (Ok(existing), Ok(meta)) = (fs::read(path), fs::metadata(path)) {
        if existing == contents && meta.permissions().mode() & 0o7777 == mode {
            return Ok(false);
        }
    }
    let tmp = match staging {
        Some(dir) => {
            let beside = temp_path(path)?;
            dir.join(beside.file_name().unwrap_or_default())
        }
        None => temp_path(path)?,
    };
    let result = (|| {
        let file = write_file(&tmp, contents)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        sync_dir(dir)?;
    }
    Ok(true)
}

/// Replaces `path` through a rename without flushing first: other processes never see a torn
/// file. The returned handle makes the content durable with `sync_all()`; syncing several files
/// after all renames lets a journaling filesystem commit them together. Until then a power loss
/// may leave the file empty, so call it before reporting success.
pub fn write_replace(path: &Path, contents: &[u8]) -> io::Result<File> {
    let tmp = temp_path(path)?;
    let result = write_file(&tmp, contents).and_then(|file| fs::rename(&tmp, path).map(|()| file));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Overwrites `path` in place (creating it the first time). Cheaper than a rename because no new
/// inode is made, but a reader could see a half-written file: only for files that are read under
/// the same lock as they are written, and whose loss after a power failure is harmless.
pub fn overwrite_in_place(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)?;
    file.write_all(contents)?;
    file.set_len(contents.len() as u64)
}

/// `.<name>.tmp-<pid>` beside `path`: hidden, and unique per writer.
fn temp_path(path: &Path) -> io::Result<std::path::PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    Ok(dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

fn write_file(path: &Path, contents: &[u8]) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)?;
    file.write_all(contents)?;
    Ok(file)
}

/// Makes renames and unlinks in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes a file; a file that is already gone is success.
pub fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// An exclusive `flock` on a file, released on drop (or when the process dies).
pub struct FileLock {
    _lock: Flock<File>,
}

impl FileLock {
    /// Blocks until the lock on `path` (created if missing) is ours.
    pub fn exclusive(path: &Path) -> io::Result<FileLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io::Error::from_raw_os_error(errno as i32))?;
        Ok(FileLock { _lock: lock })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lease");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        sync_dir(dir.path()).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn write_if_changed_writes_only_differences() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugin");
        assert!(write_if_changed(&path, b"v1", 0o755).unwrap());
        assert!(!write_if_changed(&path, b"v1", 0o755).unwrap());
        assert!(
            write_if_changed(&path, b"v1", 0o644).unwrap(),
            "mode counts"
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert!(write_if_changed(&path, b"v2", 0o644).unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"v2");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary files"
        );
    }

    #[test]
    fn remove_if_exists_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        fs::write(&path, b"").unwrap();
        remove_if_exists(&path).unwrap();
        remove_if_exists(&path).unwrap();
    }

    #[test]
    fn lock_can_be_taken_again_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        drop(FileLock::exclusive(&path).unwrap());
        FileLock::exclusive(&path).unwrap();
    }
}
