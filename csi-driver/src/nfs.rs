//! NFS from user space: one connection per share, every call bounded by a timeout, and the few
//! file operations the controller needs (directories, small files written atomically, symlinks
//! as exclusive claims, recursive copy and delete) with errors that name the server and path.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use nfs_rs::Mount;

use crate::error::NfsError;
use crate::ids::{NfsVersion, ShareRef};

/// NFS object types (the same numbers in NFSv3 and NFSv4).
const TYPE_FILE: u32 = 1;
const TYPE_DIR: u32 = 2;
const TYPE_SYMLINK: u32 = 5;

/// How the driver authenticates and connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub timeout: Duration,
    pub uid: u32,
    pub gid: u32,
    /// Bind a privileged source port (servers exporting with `secure` demand it).
    pub privileged_port: bool,
}

/// Open connections, one per share, made on first use and dropped after a transport failure.
pub struct NfsPool {
    options: ClientOptions,
    shares: Mutex<HashMap<ShareRef, Arc<Share>>>,
}

impl NfsPool {
    pub fn new(options: ClientOptions) -> NfsPool {
        NfsPool {
            options,
            shares: Mutex::new(HashMap::new()),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.options.timeout
    }

    /// The connection to `share`, connecting if needed.
    pub async fn share(&self, share: &ShareRef) -> Result<Arc<Share>, NfsError> {
        if let Some(existing) = self.cached(share) {
            return Ok(existing);
        }
        let url = self.url(share);
        let label = share.to_string();
        let mount =
            match tokio::time::timeout(self.options.timeout, nfs_rs::parse_url_and_mount(&url))
                .await
            {
                Err(_) => {
                    return Err(NfsError::Timeout {
                        share: label,
                        what: "the mount request".into(),
                        after: self.options.timeout,
                    })
                }
                Ok(Err(e)) => {
                    return Err(NfsError::Unreachable {
                        share: label,
                        reason: e.to_string(),
                    })
                }
                Ok(Ok(mount)) => mount,
            };
        let connected = Arc::new(Share {
            mount,
            label,
            timeout: self.options.timeout,
            broken: std::sync::atomic::AtomicBool::new(false),
        });
        let mut shares = self.shares.lock().unwrap_or_else(|p| p.into_inner());
        Ok(shares
            .entry(share.clone())
            .or_insert_with(|| connected)
            .clone())
    }

    fn cached(&self, share: &ShareRef) -> Option<Arc<Share>> {
        let mut shares = self.shares.lock().unwrap_or_else(|p| p.into_inner());
        match shares.get(share) {
            Some(s) if s.broken.load(Ordering::Relaxed) => {
                shares.remove(share);
                None
            }
            other => other.cloned(),
        }
    }

    fn url(&self, share: &ShareRef) -> String {
        let version = match share.version {
            NfsVersion::V3 => "3",
            NfsVersion::V41 => "4.1",
        };
        format!(
            "nfs://{}{}?version={version}&uid={}&gid={}&noresvport={}",
            share.server,
            share.export,
            self.options.uid,
            self.options.gid,
            !self.options.privileged_port
        )
    }
}

/// A directory entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub kind: Kind,
    pub mode: u32,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

fn kind_of(type_: u32) -> Kind {
    match type_ {
        TYPE_FILE => Kind::File,
        TYPE_DIR => Kind::Dir,
        TYPE_SYMLINK => Kind::Symlink,
        _ => Kind::Other,
    }
}

/// Space on a share.
#[derive(Debug, Clone, Copy)]
pub struct Space {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

pub struct Share {
    mount: Box<dyn Mount>,
    label: String,
    timeout: Duration,
    /// Set after a transport failure so that the pool reconnects.
    broken: std::sync::atomic::AtomicBool,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Share {
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Runs one NFS call under the timeout, mapping its error.
    async fn call<T>(
        &self,
        what: impl Into<String>,
        op: impl Future<Output = nfs_rs::Result<T>>,
    ) -> Result<T, NfsError> {
        let what = what.into();
        match tokio::time::timeout(self.timeout, op).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.map(what, e)),
            Err(_) => {
                self.broken.store(true, Ordering::Relaxed);
                Err(NfsError::Timeout {
                    share: self.label.clone(),
                    what,
                    after: self.timeout,
                })
            }
        }
    }

    fn map(&self, what: String, e: nfs_rs::NfsError) -> NfsError {
        let share = self.label.clone();
        if e.is_not_found() {
            return NfsError::NotFound { share, what };
        }
        if e.is_exist() {
            return NfsError::Exists { share, what };
        }
        if e.is_connection_lost() || matches!(e, nfs_rs::NfsError::Io(_)) {
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
        match self
            .call(format!("looking up {path}"), self.mount.getattr_path(path))
            .await
        {
            Ok(attr) => Ok(Some(Entry {
                name: path.rsplit('/').next().unwrap_or(path).to_string(),
                kind: kind_of(attr.type_),
                mode: attr.file_mode & 0o7777,
                size: attr.filesize,
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates one directory; `Ok(false)` when it already existed.
    pub async fn mkdir(&self, path: &str, mode: u32) -> Result<bool, NfsError> {
        match self
            .call(
                format!("creating directory {path}"),
                self.mount.mkdir_path(path, mode),
            )
            .await
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

    pub async fn chmod(&self, path: &str, mode: u32) -> Result<(), NfsError> {
        self.call(
            format!("setting the mode of {path}"),
            self.mount
                .setattr_path(path, false, Some(mode), None, None, None, None, None),
        )
        .await
    }

    /// Grows or shrinks a file (sparse when growing).
    pub async fn truncate(&self, path: &str, size: u64) -> Result<(), NfsError> {
        self.call(
            format!("resizing {path}"),
            self.mount
                .setattr_path(path, false, None, None, None, Some(size), None, None),
        )
        .await
    }

    /// Creates an empty file of `size` bytes (sparse).
    pub async fn create_sparse(&self, path: &str, size: u64, mode: u32) -> Result<(), NfsError> {
        let created = self
            .call(
                format!("creating {path}"),
                self.mount.create_path(path, Some(mode)),
            )
            .await?;
        self.call(format!("closing {path}"), self.mount.close(created.fh))
            .await?;
        self.truncate(path, size).await
    }

    /// An exclusive claim: creates a symlink `path` -> `target`; `Ok(false)` if `path` exists.
    pub async fn claim(&self, path: &str, target: &str) -> Result<bool, NfsError> {
        match self
            .call(
                format!("creating claim {path}"),
                self.mount.symlink_path(target, path),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_exists() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The target of the symlink at `path`, if there is one.
    pub async fn read_link(&self, path: &str) -> Result<Option<String>, NfsError> {
        match self
            .call(
                format!("reading link {path}"),
                self.mount.readlink_path(path),
            )
            .await
        {
            Ok(target) => Ok(Some(target)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The whole content of a (small) file, or `None` if it does not exist.
    pub async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, NfsError> {
        let found = match self
            .call(format!("opening {path}"), self.mount.lookup_path(path))
            .await
        {
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

    /// Writes `path` atomically: a temporary file next to it, committed, then renamed over it.
    pub async fn write_file_atomic(&self, path: &str, data: &[u8]) -> Result<(), NfsError> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp_name = format!(".{name}.tmp-{}-{n}", std::process::id());
        let temp = if dir.is_empty() {
            temp_name
        } else {
            format!("{dir}/{temp_name}")
        };
        let written = self.write_new_file(&temp, data, 0o644).await;
        let renamed = match written {
            Ok(()) => self.rename(&temp, path).await,
            Err(e) => Err(e),
        };
        if renamed.is_err() {
            let _ = self.remove_file(&temp).await;
        }
        renamed
    }

    async fn write_new_file(&self, path: &str, data: &[u8], mode: u32) -> Result<(), NfsError> {
        let created = self
            .call(
                format!("creating {path}"),
                self.mount.create_path(path, Some(mode)),
            )
            .await?;
        let result = async {
            if !data.is_empty() {
                self.call(
                    format!("writing {path}"),
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
            .call(format!("closing {path}"), self.mount.close(created.fh))
            .await;
        result.and(closed)
    }

    pub async fn rename(&self, from: &str, to: &str) -> Result<(), NfsError> {
        self.call(
            format!("renaming {from} to {to}"),
            self.mount.rename_path(from, to),
        )
        .await
    }

    /// Removes a file or symlink; missing is fine.
    pub async fn remove_file(&self, path: &str) -> Result<(), NfsError> {
        match self
            .call(format!("removing {path}"), self.mount.remove_path(path))
            .await
        {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    pub async fn list(&self, dir: &str) -> Result<Vec<Entry>, NfsError> {
        let what = format!("listing {dir}");
        let mut stream = self
            .call(what.clone(), self.mount.readdirplus_path(dir))
            .await?;
        let mut entries = Vec::new();
        loop {
            let next = match tokio::time::timeout(self.timeout, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    self.broken.store(true, Ordering::Relaxed);
                    return Err(NfsError::Timeout {
                        share: self.label.clone(),
                        what,
                        after: self.timeout,
                    });
                }
            };
            let Some(entry) = next else { break };
            let entry = entry.map_err(|e| self.map(what.clone(), e))?;
            if entry.file_name == "." || entry.file_name == ".." {
                continue;
            }
            let (kind, mode, size) = match &entry.attr {
                Some(a) => (kind_of(a.type_), a.file_mode & 0o7777, a.filesize),
                None => (Kind::Other, 0, 0),
            };
            entries.push(Entry {
                name: entry.file_name,
                kind,
                mode,
                size,
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

    /// `rm -rf`: missing is fine. Boxed because it recurses.
    pub fn remove_tree<'a>(
        &'a self,
        path: &'a str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), NfsError>> + Send + 'a>> {
        Box::pin(async move {
            let Some(entry) = self.stat(path).await? else {
                return Ok(());
            };
            if entry.kind != Kind::Dir {
                return self.remove_file(path).await;
            }
            for child in self.list(path).await? {
                let child_path = format!("{path}/{}", child.name);
                if child.kind == Kind::Dir {
                    self.remove_tree(&child_path).await?;
                } else {
                    self.remove_file(&child_path).await?;
                }
            }
            match self
                .call(
                    format!("removing directory {path}"),
                    self.mount.rmdir_path(path),
                )
                .await
            {
                Err(e) if e.is_not_found() => Ok(()),
                other => other,
            }
        })
    }

    /// Copies the tree under `from` on this share into `to` on `target` (which may be this
    /// share), keeping modes and symlinks. `to` must exist. Returns the bytes copied.
    pub fn copy_tree<'a>(
        &'a self,
        from: &'a str,
        target: &'a Share,
        to: &'a str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<u64, NfsError>> + Send + 'a>> {
        Box::pin(async move {
            let mut copied = 0;
            for entry in self.list(from).await? {
                let src = format!("{from}/{}", entry.name);
                let dst = format!("{to}/{}", entry.name);
                match entry.kind {
                    Kind::Dir => {
                        target.mkdir(&dst, entry.mode | 0o700).await?;
                        copied += self.copy_tree(&src, target, &dst).await?;
                        target.chmod(&dst, entry.mode).await?;
                    }
                    Kind::File => {
                        copied += self
                            .copy_file(&src, entry.size, target, &dst, entry.mode)
                            .await?;
                    }
                    Kind::Symlink => {
                        if let Some(link) = self.read_link(&src).await? {
                            target.remove_file(&dst).await?;
                            target
                                .call(
                                    format!("creating symlink {dst}"),
                                    target.mount.symlink_path(&link, &dst),
                                )
                                .await?;
                        }
                    }
                    Kind::Other => {
                        tracing::warn!(path = %src, share = %self.label, "skipping a special file while copying");
                    }
                }
            }
            Ok(copied)
        })
    }

    async fn copy_file(
        &self,
        from: &str,
        size: u64,
        target: &Share,
        to: &str,
        mode: u32,
    ) -> Result<u64, NfsError> {
        let source = self
            .call(format!("opening {from}"), self.mount.lookup_path(from))
            .await?;
        let created = target
            .call(
                format!("creating {to}"),
                target.mount.create_path(to, Some(mode)),
            )
            .await?;
        let chunk = self
            .mount
            .get_max_read_size()
            .min(target.mount.get_max_write_size())
            .clamp(4096, 1 << 20);
        let result = async {
            let mut offset = 0u64;
            while offset < size {
                let want = chunk.min((size - offset).min(u64::from(u32::MAX)) as u32);
                let data = self
                    .call(
                        format!("reading {from}"),
                        self.mount.read(source.fh.clone(), offset, want),
                    )
                    .await?;
                if data.is_empty() {
                    break;
                }
                let len = data.len() as u64;
                // Runs of zeros are skipped, so sparse files (disk images) stay sparse.
                if data.iter().any(|b| *b != 0) {
                    target
                        .call(
                            format!("writing {to}"),
                            nfs_rs::write_all(&*target.mount, created.fh.clone(), offset, data),
                        )
                        .await?;
                }
                offset += len;
            }
            Ok(offset)
        }
        .await;
        let closed = target
            .call(format!("closing {to}"), target.mount.close(created.fh))
            .await;
        let copied = result?;
        closed?;
        // Sets the length exactly, also when the file ends in skipped zeros.
        target.truncate(to, size).await?;
        Ok(copied)
    }
}
