//! NFS from user space: one connection per share, every call bounded by a timeout, and the few
//! file operations the controller needs (directories, small files written atomically, symlinks
//! as exclusive claims) with errors that name the server and path. Whole trees (copy, delete)
//! are in `tree`, copies in `copy`.

mod copy;
mod entry;
mod pool;
mod tree;

pub use copy::Progress;
pub use entry::{Entry, Kind, Space};
pub use pool::{ClientOptions, NfsPool};

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use nfs_rs::Mount;

use crate::grpc::error::NfsError;

pub struct Share {
    mount: Box<dyn Mount>,
    label: String,
    timeout: Duration,
    /// Set after a transport failure so that the pool reconnects.
    broken: std::sync::atomic::AtomicBool,
    /// Directory path -> file handle, so that most calls need no LOOKUP first. A handle that
    /// turns stale is dropped and looked up again once.
    dirs: Mutex<HashMap<String, Bytes>>,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// `a/b/c` -> (`a/b`, `c`); `c` -> (``, `c`).
fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// Runs `$op` with the handle of directory `$dir` bound to `$fh`; if the handle is stale, looks
/// the directory up again and retries once.
macro_rules! in_dir {
    ($self:ident, $dir:expr, $what:expr, |$fh:ident| $op:expr) => {{
        let what: String = $what;
        let $fh = $self.dir($dir).await?;
        match $self.call(what.clone(), $op).await {
            Err(e) if e.is_stale() => {
                $self.forget($dir);
                let $fh = $self.dir($dir).await?;
                $self.call(what, $op).await
            }
            other => other,
        }
    }};
}

/// An NFSv4.1 answer that says the session's slots and the client's sequence disagree (a
/// request the client resent under load whose reply the server did not keep, a session the
/// server dropped): the outcome of the call is unknown and the session unusable. Like a lost
/// connection, the next use starts a new one and the caller retries the whole request.
fn session_lost(e: &nfs_rs::NfsError) -> bool {
    use nfs_rs::Nfs4ErrorCode as C;
    matches!(
        e,
        nfs_rs::NfsError::Nfs4(
            C::NFS4ERR_BADSESSION
                | C::NFS4ERR_BADSLOT
                | C::NFS4ERR_DEADSESSION
                | C::NFS4ERR_SEQ_MISORDERED
                | C::NFS4ERR_SEQ_FALSE_RETRY
                | C::NFS4ERR_RETRY_UNCACHED_REP
                | C::NFS4ERR_CONN_NOT_BOUND_TO_SESSION
        )
    )
}

impl Share {
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether a call failed for want of the server (the next use reconnects).
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Runs one NFS call under the timeout, mapping its error.
    async fn call<T>(
        &self,
        what: impl Into<String>,
        op: impl Future<Output = nfs_rs::Result<T>>,
    ) -> Result<T, NfsError> {
        let what = what.into();
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, op).await;
        crate::metrics::metrics().nfs_call(&what, started.elapsed());
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.map(what, e)),
            Err(_) => Err(self.timed_out(&what)),
        }
    }

    /// The error for a call that got no answer in time; the connection is rebuilt next time.
    fn timed_out(&self, what: &str) -> NfsError {
        self.broken.store(true, Ordering::Relaxed);
        NfsError::Timeout {
            share: self.label.clone(),
            what: what.to_string(),
            after: self.timeout,
        }
    }

    fn map(&self, what: String, e: nfs_rs::NfsError) -> NfsError {
        // A call that got no authoritative answer (the transport failed under it): judge it
        // by what went wrong underneath.
        if let nfs_rs::NfsError::OperationOutcome(outcome) = e {
            return self.map(what, *outcome.source);
        }
        let share = self.label.clone();
        if e.is_not_found() {
            return NfsError::NotFound { share, what };
        }
        if e.is_exist() {
            return NfsError::Exists { share, what };
        }
        if e.is_connection_lost()
            || session_lost(&e)
            || matches!(
                e,
                nfs_rs::NfsError::Io(_) | nfs_rs::NfsError::Rpc(_) | nfs_rs::NfsError::Xdr(_)
            )
        {
            self.broken.store(true, Ordering::Relaxed);
            return NfsError::Unreachable {
                share,
                reason: format!("{what}: {e}"),
            };
        }
        let detail = e.to_string();
        match &e {
            nfs_rs::NfsError::Nfs3(nfs_rs::Nfs3ErrorCode::NFS3ERR_STALE) => {
                NfsError::Stale { share, what }
            }
            nfs_rs::NfsError::Nfs4(code) if matches!(*code as u32, 70 | 10014) => {
                NfsError::Stale { share, what }
            }
            nfs_rs::NfsError::Nfs3(nfs_rs::Nfs3ErrorCode::NFS3ERR_NOSPC)
            | nfs_rs::NfsError::Nfs3(nfs_rs::Nfs3ErrorCode::NFS3ERR_DQUOT) => {
                NfsError::NoSpace { share, what }
            }
            nfs_rs::NfsError::Nfs4(code) if matches!(*code as u32, 28 | 69) => {
                NfsError::NoSpace { share, what }
            }
            nfs_rs::NfsError::Nfs3(nfs_rs::Nfs3ErrorCode::NFS3ERR_ACCES)
            | nfs_rs::NfsError::Nfs3(nfs_rs::Nfs3ErrorCode::NFS3ERR_PERM) => NfsError::Denied {
                share,
                what,
                detail,
            },
            nfs_rs::NfsError::Nfs4(code) if matches!(*code as u32, 1 | 13) => NfsError::Denied {
                share,
                what,
                detail,
            },
            _ => NfsError::Failed {
                share,
                what,
                detail,
            },
        }
    }

    /// The handle of directory `dir` ("" is the export's root).
    async fn dir(&self, dir: &str) -> Result<Bytes, NfsError> {
        if dir.is_empty() {
            return Ok(self.mount.getfh().await);
        }
        if let Some(fh) = self.dirs.lock().unwrap_or_else(|p| p.into_inner()).get(dir) {
            return Ok(fh.clone());
        }
        let found = self
            .call(format!("looking up {dir}"), self.mount.lookup_path(dir))
            .await?;
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dir.to_string(), found.fh.clone());
        Ok(found.fh)
    }

    /// Drops the cached handles of `path` and everything below it.
    fn forget(&self, path: &str) {
        let below = format!("{path}/");
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| k != path && !k.starts_with(&below));
    }

    /// The handle and attributes of the object at `path`.
    async fn object(&self, path: &str) -> Result<nfs_rs::ObjRes, NfsError> {
        if path.is_empty() {
            let fh = self.mount.getfh().await;
            let attr = self
                .call(
                    "reading the root's attributes",
                    self.mount.getattr(fh.clone()),
                )
                .await?;
            return Ok(nfs_rs::ObjRes {
                fh,
                attr: Some(attr),
            });
        }
        let (dir, name) = split(path);
        in_dir!(self, dir, format!("looking up {path}"), |fh| self
            .mount
            .lookup(fh.clone(), name))
    }

    /// A cheap round trip that proves the server answers.
    pub async fn ping(&self) -> Result<(), NfsError> {
        self.call("a NULL call", self.mount.null()).await
    }

    pub async fn space(&self) -> Result<Space, NfsError> {
        let stat = self.call("FSSTAT", self.mount.fsstat()).await?;
        Ok(Space {
            total_bytes: stat.tbytes,
            available_bytes: stat.abytes,
        })
    }

    /// The entry at `path`, or `None` if there is nothing.
    pub async fn stat(&self, path: &str) -> Result<Option<Entry>, NfsError> {
        let found = match self.object(path).await {
            Ok(found) => found,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let attr = match found.attr {
            Some(attr) => attr,
            None => {
                self.call(
                    format!("reading attributes of {path}"),
                    self.mount.getattr(found.fh),
                )
                .await?
            }
        };
        Ok(Some(Entry::new(split(path).1.to_string(), &attr)))
    }

    /// Creates one directory; `Ok(false)` when it already existed.
    pub async fn mkdir(&self, path: &str, mode: u32) -> Result<bool, NfsError> {
        let (dir, name) = split(path);
        match in_dir!(self, dir, format!("creating directory {path}"), |fh| self
            .mount
            .mkdir(fh.clone(), name, mode))
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_exists() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates `path` and any missing parents (`mkdir -p`).
    pub async fn mkdir_all(&self, path: &str, mode: u32) -> Result<(), NfsError> {
        let mut sofar = String::new();
        for component in path.split('/').filter(|c| !c.is_empty()) {
            if !sofar.is_empty() {
                sofar.push('/');
            }
            sofar.push_str(component);
            self.mkdir(&sofar, mode).await?;
        }
        Ok(())
    }

    async fn set_attributes(
        &self,
        path: &str,
        mode: Option<u32>,
        size: Option<u64>,
    ) -> Result<(), NfsError> {
        let found = self.object(path).await?;
        self.call(
            format!("setting attributes of {path}"),
            self.mount
                .setattr(found.fh, None, mode, None, None, size, None, None),
        )
        .await
    }

    /// Gives `path` the owner, group, times and (unless `keep_mode`) the mode of `like`.
    pub async fn copy_attributes(
        &self,
        path: &str,
        like: &Entry,
        keep_mode: bool,
    ) -> Result<(), NfsError> {
        let found = self.object(path).await?;
        let mode = (!keep_mode).then_some(like.mode);
        self.call(
            format!("setting owner, mode and times of {path}"),
            self.mount.setattr(
                found.fh,
                None,
                mode,
                Some(like.uid),
                Some(like.gid),
                None,
                Some(like.atime),
                Some(like.mtime),
            ),
        )
        .await
    }

    /// A hard link `path` to the existing file `existing`.
    pub async fn link(&self, existing: &str, path: &str) -> Result<(), NfsError> {
        let source = self.object(existing).await?;
        let (dir, name) = split(path);
        in_dir!(self, dir, format!("linking {path} to {existing}"), |fh| {
            self.mount.link(source.fh.clone(), fh.clone(), name)
        })
        .map(|_| ())
    }

    /// A symlink `path` -> `target` with the owner and times of `like`.
    pub async fn symlink_like(
        &self,
        target: &str,
        path: &str,
        like: &Entry,
    ) -> Result<(), NfsError> {
        let (dir, name) = split(path);
        in_dir!(self, dir, format!("creating symlink {path}"), |fh| self
            .mount
            .symlink_with_attrs(
                target,
                fh.clone(),
                name,
                Some(like.uid),
                Some(like.gid),
                Some(like.atime),
                Some(like.mtime),
            ))
        .map(|_| ())
    }

    pub async fn chmod(&self, path: &str, mode: u32) -> Result<(), NfsError> {
        self.set_attributes(path, Some(mode), None).await
    }

    /// Grows or shrinks a file (sparse when growing).
    pub async fn truncate(&self, path: &str, size: u64) -> Result<(), NfsError> {
        self.set_attributes(path, None, Some(size)).await
    }

    /// Creates an empty file of `size` bytes (sparse).
    pub async fn create_sparse(&self, path: &str, size: u64, mode: u32) -> Result<(), NfsError> {
        let (dir, name) = split(path);
        let created = in_dir!(self, dir, format!("creating {path}"), |fh| self
            .mount
            .create(fh.clone(), name, Some(mode)))?;
        self.call(
            format!("resizing {path}"),
            self.mount.setattr(
                created.fh.clone(),
                None,
                None,
                None,
                None,
                Some(size),
                None,
                None,
            ),
        )
        .await?;
        self.call(format!("closing {path}"), self.mount.close(created.fh))
            .await
    }

    /// An exclusive claim: creates a symlink `path` -> `target`; `Ok(false)` if `path` exists.
    pub async fn claim(&self, path: &str, target: &str) -> Result<bool, NfsError> {
        let (dir, name) = split(path);
        match in_dir!(self, dir, format!("creating claim {path}"), |fh| self
            .mount
            .symlink(target, fh.clone(), name))
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_exists() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The target of the symlink at `path`, if there is one.
    pub async fn read_link(&self, path: &str) -> Result<Option<String>, NfsError> {
        let found = match self.object(path).await {
            Ok(found) => found,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        self.call(
            format!("reading link {path}"),
            self.mount.readlink(found.fh),
        )
        .await
        .map(Some)
    }

    /// The whole content of a (small) file, or `None` if it does not exist.
    pub async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, NfsError> {
        let found = match self.object(path).await {
            Ok(found) => found,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let size = match &found.attr {
            Some(attr) => attr.filesize,
            None => {
                self.call(
                    format!("reading attributes of {path}"),
                    self.mount.getattr(found.fh.clone()),
                )
                .await?
                .filesize
            }
        };
        let data = self.read_range(path, found.fh, size).await?;
        Ok(Some(data))
    }

    async fn read_range(&self, path: &str, fh: Bytes, size: u64) -> Result<Vec<u8>, NfsError> {
        let chunk = self.mount.get_max_read_size().max(4096);
        let mut data = Vec::with_capacity(size.min(1 << 20) as usize);
        let mut offset = 0u64;
        while offset < size {
            let want = chunk.min((size - offset).min(u64::from(u32::MAX)) as u32);
            let got = self
                .call(
                    format!("reading {path}"),
                    self.mount.read(fh.clone(), offset, want),
                )
                .await?;
            if got.is_empty() {
                break;
            }
            offset += got.len() as u64;
            data.extend_from_slice(&got);
        }
        Ok(data)
    }

    /// Writes `path` atomically: a temporary file next to it, committed to stable storage, then
    /// renamed over it.
    pub async fn write_file_atomic(&self, path: &str, data: &[u8]) -> Result<(), NfsError> {
        let (dir, name) = split(path);
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = format!(".{name}.tmp-{}-{n}", std::process::id());
        let created = in_dir!(self, dir, format!("creating {dir}/{temp}"), |fh| self
            .mount
            .create(fh.clone(), &temp, Some(0o644)))?;
        let written = async {
            if !data.is_empty() {
                self.call(
                    format!("writing {dir}/{temp}"),
                    nfs_rs::write_all(
                        &*self.mount,
                        created.fh.clone(),
                        0,
                        Bytes::copy_from_slice(data),
                    ),
                )
                .await?;
            }
            Ok(())
        }
        .await;
        let closed = self
            .call(
                format!("closing {dir}/{temp}"),
                self.mount.close(created.fh),
            )
            .await;
        let renamed = match written.and(closed) {
            Ok(()) => {
                in_dir!(
                    self,
                    dir,
                    format!("renaming {dir}/{temp} to {path}"),
                    |fh| self.mount.rename(fh.clone(), &temp, fh.clone(), name)
                )
            }
            Err(e) => Err(e),
        };
        if renamed.is_err() {
            let _ = self.remove_file(&format!("{dir}/{temp}")).await;
        }
        renamed
    }

    pub async fn rename(&self, from: &str, to: &str) -> Result<(), NfsError> {
        let (from_dir, from_name) = split(from);
        let (to_dir, to_name) = split(to);
        let what = format!("renaming {from} to {to}");
        let from_fh = self.dir(from_dir).await?;
        let to_fh = self.dir(to_dir).await?;
        let result = match self
            .call(
                what.clone(),
                self.mount.rename(from_fh, from_name, to_fh, to_name),
            )
            .await
        {
            Err(e) if e.is_stale() => {
                self.forget(from_dir);
                self.forget(to_dir);
                let from_fh = self.dir(from_dir).await?;
                let to_fh = self.dir(to_dir).await?;
                self.call(what, self.mount.rename(from_fh, from_name, to_fh, to_name))
                    .await
            }
            other => other,
        };
        self.forget(from);
        result
    }

    /// Removes a file or symlink; missing is fine.
    pub async fn remove_file(&self, path: &str) -> Result<(), NfsError> {
        let (dir, name) = split(path);
        match in_dir!(self, dir, format!("removing {path}"), |fh| self
            .mount
            .remove(fh.clone(), name))
        {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// Removes an empty directory; missing is fine.
    async fn rmdir(&self, path: &str) -> Result<(), NfsError> {
        let (dir, name) = split(path);
        let result = in_dir!(self, dir, format!("removing directory {path}"), |fh| self
            .mount
            .rmdir(fh.clone(), name));
        self.forget(path);
        match result {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    pub async fn list(&self, dir: &str) -> Result<Vec<Entry>, NfsError> {
        let what = format!("listing {dir}");
        let fh = self.dir(dir).await?;
        match self.list_handle(&what, fh).await {
            Err(e) if e.is_stale() => {
                self.forget(dir);
                let fh = self.dir(dir).await?;
                self.list_handle(&what, fh).await
            }
            other => other,
        }
    }

    async fn list_handle(&self, what: &str, fh: Bytes) -> Result<Vec<Entry>, NfsError> {
        let mut stream = tokio::time::timeout(self.timeout, self.mount.readdirplus(fh))
            .await
            .map_err(|_| self.timed_out(what))?;
        let mut entries = Vec::new();
        loop {
            let next = tokio::time::timeout(self.timeout, stream.next())
                .await
                .map_err(|_| self.timed_out(what))?;
            let Some(entry) = next else { break };
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => match self.map(what.to_string(), e) {
                    // An entry removed while we list (another delete at work) is simply gone.
                    gone if (gone.is_stale() || gone.is_not_found()) && !entries.is_empty() => {
                        continue
                    }
                    other => return Err(other),
                },
            };
            if entry.file_name == "." || entry.file_name == ".." {
                continue;
            }
            entries.push(match &entry.attr {
                Some(attr) => Entry::new(entry.file_name, attr),
                None => Entry::bare(entry.file_name, entry.fileid),
            });
        }
        Ok(entries)
    }

    /// Lists a directory that may not exist (then it is empty).
    pub async fn list_or_empty(&self, dir: &str) -> Result<Vec<Entry>, NfsError> {
        match self.list(dir).await {
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::session_lost;
    use nfs_rs::{Nfs4ErrorCode as C, NfsError};

    #[test]
    fn session_errors_rebuild_the_connection_and_others_do_not() {
        for code in [
            C::NFS4ERR_RETRY_UNCACHED_REP,
            C::NFS4ERR_BADSESSION,
            C::NFS4ERR_DEADSESSION,
            C::NFS4ERR_SEQ_MISORDERED,
        ] {
            assert!(session_lost(&NfsError::Nfs4(code)), "{code:?}");
        }
        assert!(!session_lost(&NfsError::Nfs4(C::NFS4ERR_NOENT)));
        assert!(!session_lost(&NfsError::Nfs4(C::NFS4ERR_ACCESS)));
    }
}
