//! A typed layer over nftables: batches built from the `nftables` crate's schema, applied as one
//! kernel transaction (all of it or none of it) over netlink, or with one `nft -j -f -` when a
//! command is outside what [`wire`] encodes, and listings parsed into the same types. Callers
//! own their tables and rule logic; nobody builds nft text.
//!
//! Where the crate's schema has no word for something nft accepts (a map whose values are
//! verdicts), [`Batch::raw`] takes the JSON command as nft documents it; each such use says why.

pub mod build;
pub mod elements;
mod nfnetlink;
pub mod rules;
pub mod tables;
mod wire;

use std::path::Path;

use nftables::schema::{Chain, NfCmd, NfListObject, NfObject, Rule, Set};
use nftables::types::NfFamily;
use serde_json::Value;

pub use nfnetlink::release;
pub use nftables::{expr, schema, stmt, types};

const CANDIDATES: [&str; 3] = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"];

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("the nft binary is not installed (looked in /usr/sbin, /sbin, /usr/bin)")]
    Missing,
    #[error("nft {action}: {detail}")]
    Nft {
        action: &'static str,
        detail: String,
    },
    #[error("unreadable nft output")]
    Output(#[source] serde_json::Error),
    #[error("nftables over netlink: {what}")]
    Netlink {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("taking the nftables lock {path}")]
    Lock {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn nft() -> Result<&'static str, FirewallError> {
    CANDIDATES
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or(FirewallError::Missing)
}

/// Runs nft with `args` (and `stdin`), returning its stdout or its complaint.
fn run(action: &'static str, args: &[&str], stdin: Option<&str>) -> Result<String, FirewallError> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let spawn_err = |e: std::io::Error| FirewallError::Nft {
        action,
        detail: format!("running nft: {e}"),
    };
    let mut child = Command::new(nft()?)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(FirewallError::Nft {
            action,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Commands applied together, atomically: over netlink when every command is one the
/// encoder knows ([`wire`]: no process, no cache of the table), else as one `nft -j -f`
/// document. Each command is kept as its JSON text, not as a `serde_json::Value` tree: a whole
/// table (a start of tether-netpol: thousands of elements and hundreds of rules) as trees took
/// several times the memory of the document itself.
#[derive(Debug, Clone)]
pub struct Batch {
    commands: Vec<String>,
    /// The commands as netlink messages; `None` once one of them is not encoded.
    wire: Option<wire::Wire>,
}

impl Default for Batch {
    fn default() -> Batch {
        Batch {
            commands: Vec::new(),
            wire: Some(wire::Wire::default()),
        }
    }
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    fn push(&mut self, cmd: NfCmd<'_>) {
        self.encode(|wire| wire.command(&cmd));
        // The crate's types always serialize.
        if let Ok(text) = serde_json::to_string(&NfObject::CmdObject(cmd)) {
            self.commands.push(text);
        }
    }

    fn encode(&mut self, how: impl FnOnce(&mut wire::Wire) -> Result<(), wire::Unsupported>) {
        if let Some(wire) = &mut self.wire {
            if let Err(why) = how(wire) {
                tracing::debug!(reason = why.0, "batch goes through nft");
                self.wire = None;
            }
        }
    }

    /// Whether [`Batch::apply`] writes it over netlink (else through `nft`).
    pub fn over_netlink(&self) -> bool {
        self.wire.is_some()
    }

    /// `add`: creates the object, or leaves an existing one (tables, chains, sets) alone.
    pub fn add(&mut self, obj: NfListObject<'_>) -> &mut Batch {
        self.push(NfCmd::Add(obj));
        self
    }

    /// `insert`: a rule placed first in its chain (or before the rule of its `position`).
    pub fn insert(&mut self, obj: NfListObject<'_>) -> &mut Batch {
        self.push(NfCmd::Insert(obj));
        self
    }

    /// `delete`: removes the object; fails the whole batch if it does not exist.
    pub fn delete(&mut self, obj: NfListObject<'_>) -> &mut Batch {
        self.push(NfCmd::Delete(obj));
        self
    }

    /// `flush`: empties a chain, set, map or table.
    pub fn flush(&mut self, obj: schema::FlushObject<'_>) -> &mut Batch {
        self.push(NfCmd::Flush(obj));
        self
    }

    /// A command the crate's schema cannot express, as libnftables-json(5) spells it.
    pub fn raw(&mut self, command: Value) -> &mut Batch {
        self.encode(|wire| wire.raw(&command));
        self.commands.push(command.to_string());
        self
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    pub fn len(&self) -> usize {
        self.commands.len()
    }

    /// The batch as the JSON document `nft -j -f` reads.
    pub fn to_json(&self) -> String {
        let size: usize = self.commands.iter().map(|c| c.len() + 1).sum();
        let mut out = String::with_capacity(size + 16);
        out.push_str("{\"nftables\":[");
        for (i, command) in self.commands.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(command);
        }
        out.push_str("]}");
        out
    }

    /// Applies every command as one transaction. An empty batch is a no-op.
    pub fn apply(&self) -> Result<(), FirewallError> {
        if self.commands.is_empty() {
            return Ok(());
        }
        match &self.wire {
            Some(wire) => wire.apply(),
            None => self.apply_by_process(),
        }
    }

    /// Applies the batch through `nft` even when it could go over netlink (to compare both).
    pub fn apply_by_process(&self) -> Result<(), FirewallError> {
        if self.commands.is_empty() {
            return Ok(());
        }
        let payload = self.to_json();
        tracing::debug!(batch = %payload, "nft batch");
        run("applying a batch", &["-j", "-f", "-"], Some(&payload)).map(drop)
    }
}

/// What one table holds, parsed. Objects the schema cannot read are skipped (and logged), so one
/// foreign rule never hides the rest.
#[derive(Debug, Default, Clone)]
pub struct Listing {
    pub chains: Vec<Chain<'static>>,
    pub rules: Vec<Rule<'static>>,
    pub sets: Vec<Set<'static>>,
    pub maps: Vec<ListedMap>,
    /// Whether the table exists at all.
    pub exists: bool,
}

impl Listing {
    pub fn set(&self, name: &str) -> Option<&Set<'static>> {
        self.sets.iter().find(|s| s.name == name)
    }

    pub fn map(&self, name: &str) -> Option<&ListedMap> {
        self.maps.iter().find(|m| m.name == name)
    }

    pub fn chain(&self, name: &str) -> Option<&Chain<'static>> {
        self.chains.iter().find(|c| c.name == name)
    }

    pub fn rules_in<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a Rule<'static>> + 'a {
        self.rules.iter().filter(move |r| r.chain == chain)
    }

    /// The chains holding a rule that looks up set or map `name` (`@name`).
    pub fn chains_using(&self, name: &str) -> Vec<String> {
        let reference = format!("@{name}");
        let mut chains: Vec<String> = self
            .rules
            .iter()
            .filter(|r| r.expr.iter().any(|s| build::mentions(s, &reference)))
            .map(|r| r.chain.to_string())
            .collect();
        chains.sort();
        chains.dedup();
        chains
    }
}

/// A named map as nft lists it. The crate's `Map` cannot read every map type nft prints (a
/// verdict map, a concatenated value), so maps are read into this: name, and each element as
/// (key, comment, value).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ListedMap {
    pub name: String,
    #[serde(default)]
    elem: Vec<expr::Expression<'static>>,
}

impl ListedMap {
    /// Each element's key, the key's comment, and its value.
    pub fn elements(
        &self,
    ) -> Vec<(
        expr::Expression<'static>,
        Option<String>,
        expr::Expression<'static>,
    )> {
        self.elem
            .iter()
            .filter_map(|e| match e {
                expr::Expression::List(pair) if pair.len() == 2 => {
                    let (key, comment) = match &pair[0] {
                        expr::Expression::Named(expr::NamedExpression::Elem(elem)) => (
                            (*elem.val).clone(),
                            elem.comment.as_ref().map(|c| c.to_string()),
                        ),
                        other => (other.clone(), None),
                    };
                    Some((key, comment, pair[1].clone()))
                }
                _ => None,
            })
            .collect()
    }
}

/// The table `family name` with rule handles; an absent table is an empty listing.
pub fn list_table(family: NfFamily, name: &str) -> Result<Listing, FirewallError> {
    let family_word = build::family_name(family);
    let text = match run(
        "listing a table",
        &["-j", "-a", "list", "table", family_word, name],
        None,
    ) {
        Ok(text) => text,
        Err(FirewallError::Nft { detail, .. }) if detail.contains("No such file or directory") => {
            return Ok(Listing::default())
        }
        Err(e) => return Err(e),
    };
    parse_listing(&text)
}

/// The names of the chains of table `family name` (a cheaper listing than the whole table);
/// none when the table is absent.
pub fn list_chains(family: NfFamily, name: &str) -> Result<Vec<String>, FirewallError> {
    let text = run(
        "listing chains",
        &["-j", "list", "chains", build::family_name(family)],
        None,
    )?;
    let document: Value = serde_json::from_str(&text).map_err(FirewallError::Output)?;
    Ok(document["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("chain"))
        .filter(|c| c["table"] == name)
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect())
}

/// Parses `nft -j list ...` output.
pub fn parse_listing(text: &str) -> Result<Listing, FirewallError> {
    let document: Value = serde_json::from_str(text).map_err(FirewallError::Output)?;
    let mut listing = Listing::default();
    for object in document["nftables"].as_array().into_iter().flatten() {
        if object.get("metainfo").is_some() {
            continue;
        }
        if let Some(map) = object.get("map") {
            match serde_json::from_value::<ListedMap>(map.clone()) {
                Ok(m) => listing.maps.push(m),
                Err(e) => tracing::debug!(error = %e, %object, "unreadable nft map; skipped"),
            }
            continue;
        }
        match serde_json::from_value::<NfListObject<'static>>(object.clone()) {
            Ok(NfListObject::Table(_)) => listing.exists = true,
            Ok(NfListObject::Chain(c)) => listing.chains.push(c),
            Ok(NfListObject::Rule(r)) => listing.rules.push(r),
            Ok(NfListObject::Set(s)) => listing.sets.push(*s),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, %object, "nft object not in the schema; skipped"),
        }
    }
    Ok(listing)
}

/// An exclusive lock for read-modify-write changes of one of our tables, shared by every process
/// on the node (`/run/tether/<name>.lock`), released on drop.
pub struct Lock {
    _held: crate::fsutil::FileLock,
}

impl Lock {
    pub fn take(name: &str) -> Result<Lock, FirewallError> {
        let dir = Path::new(LOCK_DIR);
        let path = dir.join(format!("{name}.lock"));
        let err = |source| FirewallError::Lock {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        crate::fsutil::FileLock::exclusive(&path)
            .map(|held| Lock { _held: held })
            .map_err(|source| FirewallError::Lock {
                path: path.display().to_string(),
                source,
            })
    }
}

const LOCK_DIR: &str = "/run/tether";

/// Whether nft can be run and the kernel answers (for STATUS and readiness).
pub fn probe() -> Result<(), FirewallError> {
    run("listing tables", &["list", "tables"], None).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_one_document_of_its_commands_in_order() {
        let mut batch = Batch::new();
        assert_eq!(batch.to_json(), r#"{"nftables":[]}"#);
        batch
            .add(build::table(NfFamily::INet, "t"))
            .raw(serde_json::json!({"flush": {"set": {"family": "inet", "table": "t", "name": "s"}}}))
            .delete(build::table(NfFamily::INet, "t"));
        let document: Value = serde_json::from_str(&batch.to_json()).unwrap();
        let commands = document["nftables"].as_array().unwrap();
        assert_eq!(commands.len(), 3);
        assert_eq!(commands[0]["add"]["table"]["name"], "t");
        assert_eq!(commands[1]["flush"]["set"]["name"], "s");
        assert_eq!(commands[2]["delete"]["table"]["family"], "inet");
    }
}
