//! Network namespaces: open one by path and run a short piece of code inside it.
//!
//! Plugins are single-threaded; entering a namespace switches only the calling thread, and the
//! guard always switches back, so no thread is ever left in the wrong namespace.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The path exists but is no network namespace (a file, a directory, another namespace).
    #[error("{path} is not a network namespace ({what})")]
    NotNetns { path: PathBuf, what: String },
    #[error("entering network namespace {path}")]
    Enter {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An open network namespace.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    pub fn open(path: &Path) -> Result<NetNs, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let not = |what: String| NetnsError::NotNetns {
            path: path.to_path_buf(),
            what,
        };
        // NS_GET_NSTYPE answers for namespace files only, with the kind of namespace.
        const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
        // SAFETY: an ioctl without argument on a descriptor this function owns.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if kind < 0 {
            let what = match file.metadata() {
                Ok(m) if m.is_dir() => "a directory".to_string(),
                Ok(m) if m.is_file() => "a regular file".to_string(),
                Ok(_) => "not a namespace file".to_string(),
                Err(e) => e.to_string(),
            };
            return Err(not(what));
        }
        if kind != libc::CLONE_NEWNET {
            return Err(not(format!("a namespace of another kind (type {kind:#x})")));
        }
        Ok(NetNs {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Whether the namespace file is missing (the sandbox is gone), as opposed to wrong.
    pub fn is_missing(error: &NetnsError) -> bool {
        matches!(error, NetnsError::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<NetNs, NetnsError> {
        NetNs::open(Path::new("/proc/thread-self/ns/net"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Runs `f` with the calling thread inside this namespace, then returns to where it was.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
        let home = NetNs::current()?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Enter {
            path: self.path.clone(),
            source: e.into(),
        })?;
        let _back = Return(home);
        Ok(f())
    }
}

/// Switches the thread back to its namespace when dropped, also when `f` panics.
struct Return(NetNs);

impl Drop for Return {
    fn drop(&mut self) {
        if let Err(e) = setns(self.0.file.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Continuing in the wrong namespace would act on the wrong interfaces.
            tracing::error!(error = %e, "cannot return to the original network namespace");
            std::process::abort();
        }
    }
}
