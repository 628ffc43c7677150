//! Whole trees on a share: recursive delete, and copies (snapshots, clones) between shares.

use std::future::Future;

use super::{Kind, Share};
use crate::error::NfsError;

impl Share {
    /// `rm -rf`: missing is fine. An empty directory (the common case) takes one call. Boxed
    /// because it recurses.
    pub fn remove_tree<'a>(
        &'a self,
        path: &'a str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), NfsError>> + Send + 'a>> {
        Box::pin(async move {
            if self.rmdir(path).await.is_ok() {
                return Ok(());
            }
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
            self.rmdir(path).await
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
