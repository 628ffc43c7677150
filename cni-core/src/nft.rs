//! Running `nft`: atomic batches and JSON listings. Callers own their tables and rule logic.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

const CANDIDATES: [&str; 3] = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"];

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("the nft binary is not installed (looked in /usr/sbin, /sbin, /usr/bin)")]
    Missing,
    #[error("running nft: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("nft: {0}")]
    Failed(String),
    #[error("unreadable nft output")]
    Output(#[source] serde_json::Error),
}

fn run(args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
    let nft = CANDIDATES
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or(NftError::Missing)?;
    let mut child = Command::new(nft)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NftError::Failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Applies a batch of nft commands as one transaction: all of it or none of it.
pub fn apply(batch: &str) -> Result<(), NftError> {
    tracing::debug!(%batch, "nft batch");
    run(&["-f", "-"], Some(batch)).map(drop)
}

/// The objects of a table (with rule handles) as JSON; an absent table is empty.
pub fn list_table(family: &str, table: &str) -> Result<Vec<Value>, NftError> {
    match run(&["-j", "-a", "list", "table", family, table], None) {
        Ok(text) => {
            let value: Value = serde_json::from_str(&text).map_err(NftError::Output)?;
            Ok(value["nftables"].as_array().cloned().unwrap_or_default())
        }
        Err(NftError::Failed(e)) if e.contains("No such file or directory") => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}
