//! Faithful tree copies between shares (snapshots and clones): content, mode, owner, group and
//! times of every file, directory and symlink; hard links stay one file; runs of zeros are not
//! written, so sparse files (disk images) stay sparse.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::{Entry, Kind, Share};
use crate::grpc::error::NfsError;

/// The granularity of hole detection: blocks of zeros this big are skipped.
const BLOCK: usize = 4096;

/// What a copy has done so far (read by progress messages while it runs).
#[derive(Debug, Default)]
pub struct Progress {
    pub bytes: AtomicU64,
    pub files: AtomicU64,
}

impl Progress {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn files(&self) -> u64 {
        self.files.load(Ordering::Relaxed)
    }
}

impl Share {
    /// Copies what is under directory `from` on this share into the existing, empty directory
    /// `to` on `target` (which may be this share). `to` gets the owner, group and times of
    /// `from`, but keeps its mode (the volume's `mountPermissions`). Returns the bytes copied.
    pub async fn copy_tree(
        &self,
        from: &str,
        target: &Share,
        to: &str,
        progress: &Progress,
    ) -> Result<u64, NfsError> {
        let root = self.stat(from).await?.ok_or_else(|| NfsError::NotFound {
            share: self.label.clone(),
            what: format!("copying {from}"),
        })?;
        let mut copier = Copier {
            source: self,
            target,
            progress,
            links: HashMap::new(),
        };
        copier.directory(from, to).await?;
        target.copy_attributes(to, &root, true).await?;
        Ok(progress.bytes())
    }
}

struct Copier<'a> {
    source: &'a Share,
    target: &'a Share,
    progress: &'a Progress,
    /// Source file id -> the first copy made of it, for files with more than one link.
    links: HashMap<u64, String>,
}

impl<'a> Copier<'a> {
    /// Copies the children of `from` into `to`; boxed because it recurses.
    fn directory<'b>(
        &'b mut self,
        from: &'b str,
        to: &'b str,
    ) -> Pin<Box<dyn Future<Output = Result<(), NfsError>> + Send + 'b>>
    where
        'a: 'b,
    {
        Box::pin(async move {
            for entry in self.source.list(from).await? {
                let src = format!("{from}/{}", entry.name);
                let dst = format!("{to}/{}", entry.name);
                match entry.kind {
                    Kind::Dir => {
                        self.target.mkdir(&dst, 0o700).await?;
                        self.directory(&src, &dst).await?;
                        // Last, so that creating the children does not change the times.
                        self.target.copy_attributes(&dst, &entry, false).await?;
                    }
                    Kind::File => self.file(&src, &dst, &entry).await?,
                    Kind::Symlink => {
                        if let Some(link) = self.source.read_link(&src).await? {
                            self.target.symlink_like(&link, &dst, &entry).await?;
                        }
                    }
                    Kind::Other => {
                        tracing::warn!(path = %src, share = %self.source.label, "skipping a special file (device, FIFO or socket) while copying");
                    }
                }
                self.progress.files.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    }

    async fn file(&mut self, from: &str, to: &str, entry: &Entry) -> Result<(), NfsError> {
        if entry.nlink > 1 {
            if let Some(first) = self.links.get(&entry.fileid) {
                return self.target.link(first, to).await;
            }
        }
        self.content(from, to, entry.size).await?;
        self.target.copy_attributes(to, entry, false).await?;
        if entry.nlink > 1 {
            self.links.insert(entry.fileid, to.to_string());
        }
        Ok(())
    }

    /// Creates `to` and copies `size` bytes of `from` into it, skipping blocks of zeros, then
    /// sets its length exactly (also when it ends in a hole).
    async fn content(&self, from: &str, to: &str, size: u64) -> Result<(), NfsError> {
        let (source, target) = (self.source, self.target);
        let found = source
            .call(format!("opening {from}"), source.mount.lookup_path(from))
            .await?;
        let created = target
            .call(
                format!("creating {to}"),
                target.mount.create_path(to, Some(0o600)),
            )
            .await?;
        let chunk = source
            .mount
            .get_max_read_size()
            .min(target.mount.get_max_write_size())
            .clamp(BLOCK as u32, 1 << 20);
        let copied = async {
            let mut offset = 0u64;
            while offset < size {
                let want = chunk.min((size - offset).min(u64::from(u32::MAX)) as u32);
                let data = source
                    .call(
                        format!("reading {from}"),
                        source.mount.read(found.fh.clone(), offset, want),
                    )
                    .await?;
                if data.is_empty() {
                    break;
                }
                for (start, end) in data_runs(&data) {
                    target
                        .call(
                            format!("writing {to}"),
                            nfs_rs::write_all(
                                &*target.mount,
                                created.fh.clone(),
                                offset + start as u64,
                                data.slice(start..end),
                            ),
                        )
                        .await?;
                }
                offset += data.len() as u64;
                self.progress
                    .bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            Ok::<(), NfsError>(())
        }
        .await;
        let closed = target
            .call(format!("closing {to}"), target.mount.close(created.fh))
            .await;
        copied?;
        closed?;
        target.truncate(to, size).await
    }
}

/// The byte ranges of `data` that hold something other than zeros, in blocks of [`BLOCK`]
/// bytes, neighbouring blocks joined.
fn data_runs(data: &Bytes) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, block) in data.chunks(BLOCK).enumerate() {
        if block.iter().all(|b| *b == 0) {
            continue;
        }
        let start = i * BLOCK;
        let end = start + block.len();
        match runs.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => runs.push((start, end)),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_blocks_holding_data_are_written() {
        let mut data = vec![0u8; BLOCK * 5 + 10];
        data[1] = 1;
        data[BLOCK + 7] = 1;
        data[BLOCK * 3] = 1;
        data[BLOCK * 5 + 9] = 1;
        let runs = data_runs(&Bytes::from(data));
        assert_eq!(
            runs,
            vec![
                (0, 2 * BLOCK),
                (3 * BLOCK, 4 * BLOCK),
                (5 * BLOCK, 5 * BLOCK + 10)
            ]
        );
        assert!(data_runs(&Bytes::from(vec![0u8; 3 * BLOCK])).is_empty());
    }
}
