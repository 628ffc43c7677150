//! Copy-on-write clones. A file is cloned with one FICLONE (the clone is the file as it was at
//! that instant, whatever writes follow); a tree file by file. Either is built under a temporary
//! name beside the target and renamed into place without replacing anything, so the target
//! appears complete or not at all, and a crashed clone leaves only a `.<name>.agent-*` entry
//! that the next clone of that target removes. Where the filesystem cannot clone
//! (EOPNOTSUPP, EXDEV, EINVAL), the data is copied instead and the answer says so.

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use tether_csi_proto::agent::Method;

use crate::error::{AgentError, AgentResult};
use crate::paths::Root;
use crate::sys;

/// What a clone did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cloned {
    pub reflinked: bool,
    pub copied: bool,
    pub files: u64,
    pub bytes: u64,
}

impl Cloned {
    pub fn method(&self) -> Method {
        if self.copied {
            Method::Copy
        } else {
            Method::Reflink
        }
    }
}

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

fn is_type(st: &libc::stat, kind: libc::mode_t) -> bool {
    st.st_mode & libc::S_IFMT == kind
}

/// The temporary name of a clone of `name` in progress, and the prefix of every such name.
fn temporary(name: &str) -> (String, String) {
    let prefix = format!(".{name}.agent-");
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    (format!("{prefix}{}-{n}", std::process::id()), prefix)
}

/// Removes what earlier, interrupted clones of `name` left in `dir`.
fn remove_leftovers(dir: &OwnedFd, prefix: &str) -> AgentResult<()> {
    for entry in sys::entries(dir).map_err(AgentError::io("listing a target's directory"))? {
        if entry.as_encoded_bytes().starts_with(prefix.as_bytes()) {
            remove_tree_at(dir, &entry)?;
        }
    }
    Ok(())
}

/// Opens the directory that will hold `target` for reading (`*at` calls, fsync, listing), and
/// checks that the target does not exist yet (or, `into_empty`, is an empty directory).
fn target_dir(root: &Root, target: &str, into_empty: bool) -> AgentResult<(OwnedFd, String)> {
    let (parent, name) = root.parent_of(target)?;
    let read_dir = |at: &OwnedFd, entry: &str| {
        sys::open_at(at, OsStr::new(entry), libc::O_RDONLY | libc::O_DIRECTORY, 0)
    };
    let dir = read_dir(&parent, ".")
        .map_err(AgentError::io(format!("opening the directory of {target}")))?;
    match sys::stat_at(&dir, OsStr::new(&name)) {
        Ok(st) if into_empty && is_type(&st, libc::S_IFDIR) => {
            let existing =
                read_dir(&dir, &name).map_err(AgentError::io(format!("opening {target}")))?;
            let entries =
                sys::entries(&existing).map_err(AgentError::io(format!("listing {target}")))?;
            if entries.is_empty() {
                Ok((dir, name))
            } else {
                Err(AgentError::AlreadyExists(format!("{target} (not empty)")))
            }
        }
        Ok(_) => Err(AgentError::AlreadyExists(target.to_string())),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok((dir, name)),
        Err(e) => Err(AgentError::Io {
            what: format!("looking up {target}"),
            source: e,
        }),
    }
}

/// Moves the finished clone into place; a target that appeared meanwhile wins (`into_empty`: an
/// empty directory there is replaced, atomically; one that got entries meanwhile wins).
fn publish(
    dir: &OwnedFd,
    temp: &str,
    name: &str,
    target: &str,
    is_dir: bool,
    into_empty: bool,
) -> AgentResult<()> {
    let renamed = if into_empty {
        sys::rename_over_empty(dir, OsStr::new(temp), OsStr::new(name))
    } else {
        sys::rename_noreplace(dir, OsStr::new(temp), OsStr::new(name))
    };
    match renamed {
        Ok(()) => {
            sys::fsync(dir).map_err(AgentError::io(format!("syncing the directory of {target}")))
        }
        Err(e) => {
            let _ = if is_dir {
                remove_tree_at(dir, OsStr::new(temp))
            } else {
                sys::unlink_at(dir, OsStr::new(temp), false).map_err(AgentError::io("cleaning up"))
            };
            Err(match e.raw_os_error() {
                Some(libc::EEXIST | libc::ENOTEMPTY) => {
                    AgentError::AlreadyExists(target.to_string())
                }
                _ => AgentError::Io {
                    what: format!("renaming the clone into {target}"),
                    source: e,
                },
            })
        }
    }
}

/// Clones one regular file.
pub fn clone_file(root: &Root, source: &str, target: &str) -> AgentResult<Cloned> {
    let from = root.open_beneath(source, libc::O_RDONLY, 0)?;
    let st = sys::fstat(&from).map_err(AgentError::io(format!("reading {source}")))?;
    if !is_type(&st, libc::S_IFREG) {
        return Err(AgentError::WrongKind(source.to_string(), "regular file"));
    }
    let (dir, name) = target_dir(root, target, false)?;
    let (temp, prefix) = temporary(&name);
    remove_leftovers(&dir, &prefix)?;
    let mut done = Cloned::default();
    let result = (|| {
        let to = sys::open_at(
            &dir,
            OsStr::new(&temp),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o600,
        )
        .map_err(AgentError::io(format!("creating the clone of {source}")))?;
        clone_data(&from, &to, &st, &mut done)
            .map_err(AgentError::io(format!("cloning {source}")))?;
        sys::fsync(&to).map_err(AgentError::io(format!("syncing the clone of {source}")))?;
        sys::copy_attributes_at(&dir, OsStr::new(&temp), &st, false).map_err(AgentError::io(
            format!("copying the attributes of {source}"),
        ))
    })();
    if let Err(e) = result {
        let _ = sys::unlink_at(&dir, OsStr::new(&temp), false);
        return Err(e);
    }
    publish(&dir, &temp, &name, target, false, false)?;
    Ok(done)
}

/// Clones a directory tree; `into_empty`: the target may be an empty directory.
pub fn clone_tree(
    root: &Root,
    source: &str,
    target: &str,
    into_empty: bool,
) -> AgentResult<Cloned> {
    let from = root.open_beneath(source, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let st = sys::fstat(&from).map_err(AgentError::io(format!("reading {source}")))?;
    let (dir, name) = target_dir(root, target, into_empty)?;
    let (temp, prefix) = temporary(&name);
    remove_leftovers(&dir, &prefix)?;
    let mut done = Cloned::default();
    let result = (|| {
        sys::mkdir_at(&dir, OsStr::new(&temp), 0o700)
            .map_err(AgentError::io(format!("creating the clone of {source}")))?;
        let to = sys::open_at(
            &dir,
            OsStr::new(&temp),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .map_err(AgentError::io(format!("opening the clone of {source}")))?;
        clone_entries(&from, &to, st.st_dev, &mut done)?;
        sys::fsync(&to).map_err(AgentError::io(format!("syncing the clone of {source}")))?;
        sys::copy_attributes_at(&dir, OsStr::new(&temp), &st, false).map_err(AgentError::io(
            format!("copying the attributes of {source}"),
        ))
    })();
    if let Err(e) = result {
        let _ = remove_tree_at(&dir, OsStr::new(&temp));
        return Err(e);
    }
    publish(&dir, &temp, &name, target, true, into_empty)?;
    Ok(done)
}

/// FICLONE, or copy_file_range where the filesystem cannot clone.
fn clone_data(
    from: &OwnedFd,
    to: &OwnedFd,
    st: &libc::stat,
    done: &mut Cloned,
) -> std::io::Result<()> {
    match sys::ficlone(from, to) {
        Ok(()) => done.reflinked = true,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL | libc::ENOTTY)
            ) =>
        {
            sys::copy_range(from, to, st.st_size as u64)?;
            done.copied = true;
        }
        Err(e) => return Err(e),
    }
    done.files += 1;
    done.bytes += st.st_size as u64;
    Ok(())
}

/// Every entry of `from` into `to`, recursively: files cloned, directories, symbolic links,
/// FIFOs and device nodes made alike, with their owners, modes and times. A mount point inside
/// the tree (another filesystem) is refused.
fn clone_entries(from: &OwnedFd, to: &OwnedFd, device: u64, done: &mut Cloned) -> AgentResult<()> {
    let io = |what: &str, name: &OsString| format!("{what} {}", name.to_string_lossy());
    for name in sys::entries(from).map_err(AgentError::io("listing a directory"))? {
        let st = sys::stat_at(from, &name).map_err(AgentError::io(io("reading", &name)))?;
        if st.st_dev != device {
            return Err(AgentError::BadPath(format!(
                "{} is on another filesystem",
                name.to_string_lossy()
            )));
        }
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {
                let src = sys::open_at(from, &name, libc::O_RDONLY, 0)
                    .map_err(AgentError::io(io("opening", &name)))?;
                let dst = sys::open_at(
                    to,
                    &name,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                    0o600,
                )
                .map_err(AgentError::io(io("creating", &name)))?;
                clone_data(&src, &dst, &st, done).map_err(AgentError::io(io("cloning", &name)))?;
            }
            libc::S_IFDIR => {
                sys::mkdir_at(to, &name, 0o700).map_err(AgentError::io(io("creating", &name)))?;
                let src = sys::open_at(from, &name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                    .map_err(AgentError::io(io("opening", &name)))?;
                let dst = sys::open_at(to, &name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                    .map_err(AgentError::io(io("opening", &name)))?;
                clone_entries(&src, &dst, device, done)?;
            }
            libc::S_IFLNK => {
                let target =
                    sys::read_link_at(from, &name).map_err(AgentError::io(io("reading", &name)))?;
                sys::symlink_at(&target, to, &name)
                    .map_err(AgentError::io(io("creating", &name)))?;
            }
            _ => {
                sys::mknod_at(to, &name, st.st_mode, st.st_rdev)
                    .map_err(AgentError::io(io("creating", &name)))?;
            }
        }
        let link = is_type(&st, libc::S_IFLNK);
        sys::copy_attributes_at(to, &name, &st, link)
            .map_err(AgentError::io(io("copying the attributes of", &name)))?;
    }
    Ok(())
}

/// Removes `name` in `dir` and everything below it (never following a symbolic link).
fn remove_tree_at(dir: &OwnedFd, name: &OsStr) -> AgentResult<()> {
    let st = match sys::stat_at(dir, name) {
        Ok(st) => st,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(AgentError::io("removing a leftover")(e)),
    };
    if is_type(&st, libc::S_IFDIR) {
        let sub = sys::open_at(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(AgentError::io("removing a leftover"))?;
        for entry in sys::entries(&sub).map_err(AgentError::io("removing a leftover"))? {
            remove_tree_at(&sub, &entry)?;
        }
    }
    sys::unlink_at(dir, name, is_type(&st, libc::S_IFDIR))
        .map_err(AgentError::io("removing a leftover"))
}
