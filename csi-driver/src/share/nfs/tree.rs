//! Whole trees on a share: recursive delete, emptying a directory, empty parents.

use std::future::Future;

use super::{Kind, Share};
use crate::grpc::error::NfsError;

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

    /// Removes the directories above `path` (a volume nested in a `subDir`) that are left empty,
    /// nearest first, up to the export's root; stops at the first that is not empty (another
    /// volume lives there) or cannot be removed.
    pub async fn remove_empty_parents(&self, path: &str) {
        let mut current = path;
        while let Some((parent, _)) = current.rsplit_once('/') {
            if parent.is_empty() || self.rmdir(parent).await.is_err() {
                break;
            }
            current = parent;
        }
    }

    /// Removes everything inside directory `path`, keeping the directory.
    pub async fn clear_dir(&self, path: &str) -> Result<(), NfsError> {
        for child in self.list_or_empty(path).await? {
            self.remove_tree(&format!("{path}/{}", child.name)).await?;
        }
        Ok(())
    }
}
