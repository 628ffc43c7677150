//! Volume and snapshot identifiers, and the path rules that keep every volume inside its share.
//!
//! A volume id is `v<layout><version>#<server>#<export>#<path>`, a snapshot id
//! `s<version>#<server>#<export>#<key>`: e.g. `vd4#10.0.0.5#/srv/nfs#pvc-1234`. Everything a
//! node or a later call needs is in the id, so the controller keeps no state of its own. Parsing
//! accepts only what creating could have produced: no `..`, no absolute or empty components, no
//! NUL or control characters, at most 128 bytes. An id that fails these rules names nothing.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::grpc::error::CsiError;

/// The CSI limit for ids (and our own for names used as keys).
pub const MAX_ID_BYTES: usize = 128;

/// The directory on every share where Tether keeps its metadata; no volume may live in it.
pub const META_DIR: &str = ".tether";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NfsVersion {
    V3,
    V41,
}

impl NfsVersion {
    fn code(self) -> char {
        match self {
            NfsVersion::V3 => '3',
            NfsVersion::V41 => '4',
        }
    }

    fn from_code(c: char) -> Option<NfsVersion> {
        match c {
            '3' => Some(NfsVersion::V3),
            '4' => Some(NfsVersion::V41),
            _ => None,
        }
    }

    /// As a mount option value (`nfsvers=`).
    pub fn as_option(self) -> &'static str {
        match self {
            NfsVersion::V3 => "3",
            NfsVersion::V41 => "4.1",
        }
    }

    /// Parses a mount option value: `3`, `4`, `4.1`.
    pub fn parse(value: &str) -> Option<NfsVersion> {
        match value {
            "3" => Some(NfsVersion::V3),
            "4" | "4.1" => Some(NfsVersion::V41),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    Directory,
    Image,
}

impl Layout {
    fn code(self) -> char {
        match self {
            Layout::Directory => 'd',
            Layout::Image => 'i',
        }
    }

    fn from_code(c: char) -> Option<Layout> {
        match c {
            'd' => Some(Layout::Directory),
            'i' => Some(Layout::Image),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Layout::Directory => "directory",
            Layout::Image => "image",
        }
    }
}

/// One NFS export as the driver reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShareRef {
    /// Host name or address, optionally with `:port` (IPv6 in brackets).
    pub server: String,
    /// Absolute export path (NFSv4 pseudo path and NFSv3 export path alike).
    pub export: String,
    pub version: NfsVersion,
}

impl fmt::Display for ShareRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{} (NFSv{})",
            self.server,
            self.export,
            self.version.as_option()
        )
    }
}

impl ShareRef {
    pub fn new(server: &str, export: &str, version: NfsVersion) -> Result<ShareRef, CsiError> {
        validate_server(server)?;
        let export = normalize_export(export)?;
        Ok(ShareRef {
            server: server.to_string(),
            export,
            version,
        })
    }
}

/// A path inside a share, relative to its root: safe components only.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SharePath(String);

impl SharePath {
    /// Validates a relative path made of safe components (`[A-Za-z0-9._-]`, not starting with a
    /// dot), never inside the metadata directory.
    pub fn parse(path: &str) -> Result<SharePath, CsiError> {
        if path.is_empty() {
            return Err(CsiError::invalid("the volume path is empty"));
        }
        if path.starts_with('/') {
            return Err(CsiError::invalid(format!(
                "volume path {path:?} must be relative to the share"
            )));
        }
        for component in path.split('/') {
            validate_component(component, path)?;
        }
        Ok(SharePath(path.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A single file name standing for this path (for metadata keyed by path): the path with
    /// `/` spelled `%2F`, or a hash when that would not fit in a file name.
    pub fn key(&self) -> String {
        let key = self.0.replace('/', "%2F");
        if key.len() <= MAX_KEY_BYTES {
            key
        } else {
            hashed(&self.0)
        }
    }

    /// (parent path or "", last component)
    pub fn split_last(&self) -> (&str, &str) {
        match self.0.rsplit_once('/') {
            Some((parent, last)) => (parent, last),
            None => ("", &self.0),
        }
    }
}

fn validate_component(component: &str, whole: &str) -> Result<(), CsiError> {
    let bad = |why: &str| {
        Err(CsiError::invalid(format!(
            "volume path {whole:?}: component {component:?} {why}"
        )))
    };
    if component.is_empty() {
        return bad("is empty");
    }
    if component == "." || component == ".." {
        return bad("would leave the volume");
    }
    if component.starts_with('.') {
        return bad("must not start with a dot (names starting with a dot are reserved)");
    }
    if component.len() > 255 {
        return bad("is longer than 255 bytes");
    }
    if !component
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("may only hold letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

fn validate_server(server: &str) -> Result<(), CsiError> {
    let ok = !server.is_empty()
        && server.len() <= 253
        && server
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if ok {
        Ok(())
    } else {
        Err(CsiError::invalid(format!(
            "server {server:?} is not a host name or address"
        )))
    }
}

fn normalize_export(export: &str) -> Result<String, CsiError> {
    if !export.starts_with('/') {
        return Err(CsiError::invalid(format!(
            "share {export:?} must be an absolute export path"
        )));
    }
    let trimmed = export.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok("/".into());
    }
    for component in trimmed[1..].split('/') {
        let fine = !component.is_empty()
            && component != "."
            && component != ".."
            && component
                .bytes()
                .all(|b| b > 0x20 && b != 0x7f && b != b'#');
        if !fine {
            return Err(CsiError::invalid(format!(
                "share {export:?} has an unusable component {component:?}"
            )));
        }
    }
    Ok(trimmed.to_string())
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VolumeId {
    pub share: ShareRef,
    pub layout: Layout,
    pub path: SharePath,
}

impl VolumeId {
    pub fn encode(&self) -> Result<String, CsiError> {
        let id = format!(
            "v{}{}#{}#{}#{}",
            self.layout.code(),
            self.share.version.code(),
            self.share.server,
            self.share.export,
            self.path.as_str()
        );
        if id.len() > MAX_ID_BYTES {
            let room = MAX_ID_BYTES.saturating_sub(overhead(3, &self.share));
            return Err(CsiError::invalid(format!(
                "the volume id {id:?} would be {} bytes, over the CSI limit of {MAX_ID_BYTES}: \
                 on server {:?} share {:?} a subDir may take at most {room} bytes",
                id.len(),
                self.share.server,
                self.share.export,
            )));
        }
        Ok(id)
    }

    /// `None` for anything that is not an id this driver could have made.
    pub fn decode(id: &str) -> Option<VolumeId> {
        if id.len() > MAX_ID_BYTES {
            return None;
        }
        let mut parts = id.splitn(4, '#');
        let head = parts.next()?;
        let mut chars = head.chars();
        if chars.next()? != 'v' {
            return None;
        }
        let layout = Layout::from_code(chars.next()?)?;
        let version = NfsVersion::from_code(chars.next()?)?;
        if chars.next().is_some() {
            return None;
        }
        let share = ShareRef::new(parts.next()?, parts.next()?, version).ok()?;
        let path = SharePath::parse(parts.next()?).ok()?;
        Some(VolumeId {
            share,
            layout,
            path,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SnapshotId {
    pub share: ShareRef,
    /// Directory name of the snapshot under `.tether/snapshots/`.
    pub key: String,
}

impl SnapshotId {
    pub fn encode(&self) -> Result<String, CsiError> {
        let id = format!(
            "s{}#{}#{}#{}",
            self.share.version.code(),
            self.share.server,
            self.share.export,
            self.key
        );
        if id.len() > MAX_ID_BYTES {
            return Err(CsiError::invalid(format!(
                "the snapshot id {id:?} would be {} bytes, over the CSI limit of {MAX_ID_BYTES}",
                id.len()
            )));
        }
        Ok(id)
    }

    pub fn decode(id: &str) -> Option<SnapshotId> {
        if id.len() > MAX_ID_BYTES {
            return None;
        }
        let mut parts = id.splitn(4, '#');
        let head = parts.next()?;
        let mut chars = head.chars();
        if chars.next()? != 's' {
            return None;
        }
        let version = NfsVersion::from_code(chars.next()?)?;
        if chars.next().is_some() {
            return None;
        }
        let share = ShareRef::new(parts.next()?, parts.next()?, version).ok()?;
        let key = parts.next()?;
        SharePath::parse(key)
            .ok()
            .filter(|p| !p.as_str().contains('/'))?;
        Some(SnapshotId {
            share,
            key: key.to_string(),
        })
    }
}

/// A volume's CSI name (CreateVolume's `name`, kept in its record). The two things a name
/// decides on a share come from here: the volume's directory when the StorageClass sets no
/// `subDir` ([`VolumeName::directory`]) and the key of the claim that reserves the name
/// ([`VolumeName::claim_key`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VolumeName(String);

impl VolumeName {
    /// A name from a request, checked as [`validate_name`] does.
    pub fn parse(name: &str) -> Result<VolumeName, CsiError> {
        validate_name("volume", name)?;
        Ok(VolumeName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The volume's directory when the StorageClass sets no subDir: the name itself when it is
    /// a plain file name and the volume id stays within 128 bytes, else `h-<hash>` (the record
    /// keeps the real name). Any legal CSI name works on a share whose server and export path
    /// take at most [`MAX_SHARE_BYTES`].
    pub fn directory(&self, share: &ShareRef) -> Result<SharePath, CsiError> {
        let fits = |len: usize| overhead(3, share) + len <= MAX_ID_BYTES;
        if is_plain(&self.0) && fits(self.0.len()) {
            return Ok(SharePath(self.0.clone()));
        }
        if !fits(HASHED_BYTES) {
            return Err(share_too_long("volume", share));
        }
        Ok(SharePath(hashed(&self.0)))
    }

    /// The file name of the name's claim (under `.tether/names/`).
    pub fn claim_key(&self) -> String {
        name_key(&self.0)
    }
}

impl fmt::Display for VolumeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a CSI name (volume or snapshot): non-empty, at most 128 bytes, no control characters.
pub fn validate_name(kind: &str, name: &str) -> Result<(), CsiError> {
    if name.is_empty() {
        return Err(CsiError::invalid(format!("the {kind} name is missing")));
    }
    if name.len() > MAX_ID_BYTES {
        return Err(CsiError::invalid(format!(
            "the {kind} name is {} bytes, over the limit of {MAX_ID_BYTES}",
            name.len()
        )));
    }
    if name.chars().any(|c| {
        let c = c as u32;
        c <= 0x08
            || c == 0x0b
            || c == 0x0c
            || (0x0e..=0x1f).contains(&c)
            || (0x7f..=0x9f).contains(&c)
    }) {
        return Err(CsiError::invalid(format!(
            "the {kind} name {name:?} holds control characters"
        )));
    }
    Ok(())
}

/// A file name standing for a CSI name: the name itself when it is a short safe component,
/// else `h-` and a hash. Never contains `/` and never starts with a dot.
pub fn name_key(name: &str) -> String {
    if name.len() <= 64 && !name.starts_with("h-") && is_plain(name) {
        return name.to_string();
    }
    hashed(name)
}

/// Bytes of a hashed name: `h-` and 32 hex digits.
pub const HASHED_BYTES: usize = 34;

/// Longest metadata file name we make (the server's limit is 255; room for `.json` and temp
/// suffixes).
const MAX_KEY_BYTES: usize = 200;

/// `h-` and the first 128 bits of the name's SHA-256, in hex.
fn hashed(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("h-{hex}")
}

/// A name that can be a directory name as it is: one safe component, not a reserved dot name,
/// and not something a hash could also be.
fn is_plain(name: &str) -> bool {
    let looks_hashed = name.len() == HASHED_BYTES
        && name.starts_with("h-")
        && name[2..].bytes().all(|b| b.is_ascii_hexdigit());
    !looks_hashed && validate_component(name, name).is_ok()
}

/// Bytes an id spends on everything but its last part (the path or key): the head, the server,
/// the export and three separators.
fn overhead(head: usize, share: &ShareRef) -> usize {
    head + 3 + share.server.len() + share.export.len()
}

/// The key (directory under `.tether/snapshots/`) of a snapshot named `name` on `share`: the
/// name when it is short and plain and the id fits, else a hash.
pub fn snapshot_key(share: &ShareRef, name: &str) -> Result<String, CsiError> {
    let fits = |len: usize| overhead(2, share) + len <= MAX_ID_BYTES;
    let key = name_key(name);
    if fits(key.len()) {
        return Ok(key);
    }
    if !fits(HASHED_BYTES) {
        return Err(share_too_long("snapshot", share));
    }
    Ok(hashed(name))
}

/// The most bytes server and export path may take together for every volume name to fit in an
/// id (`vd4#` + server + `#` + export + `#` + a 34-byte hash = 128).
pub const MAX_SHARE_BYTES: usize = MAX_ID_BYTES - 3 - 3 - HASHED_BYTES;

fn share_too_long(kind: &str, share: &ShareRef) -> CsiError {
    CsiError::invalid(format!(
        "server {:?} and share {:?} take {} bytes: a {kind} id (at most {MAX_ID_BYTES} bytes, \
         the CSI limit) names both, so together they may take at most {MAX_SHARE_BYTES} bytes; \
         use a shorter server name (an address) or export path",
        share.server,
        share.export,
        share.server.len() + share.export.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share() -> ShareRef {
        ShareRef::new("10.0.0.5", "/srv/nfs/", NfsVersion::V41).unwrap()
    }

    #[test]
    fn volume_ids_round_trip() {
        let id = VolumeId {
            share: share(),
            layout: Layout::Directory,
            path: SharePath::parse("team-a/pvc-1").unwrap(),
        };
        let text = id.encode().unwrap();
        assert_eq!(text, "vd4#10.0.0.5#/srv/nfs#team-a/pvc-1");
        assert_eq!(VolumeId::decode(&text), Some(id));
    }

    #[test]
    fn ids_that_could_reach_outside_the_share_name_nothing() {
        for bad in [
            "vd4#10.0.0.5#/srv/nfs#../etc",
            "vd4#10.0.0.5#/srv/nfs#a/../../etc",
            "vd4#10.0.0.5#/srv/nfs#/etc/passwd",
            "vd4#10.0.0.5#/srv/nfs#.tether/volumes",
            "vd4#10.0.0.5#/srv/nfs#a//b",
            "vd4#10.0.0.5#/srv/nfs#a\0b",
            "vd4#10.0.0.5#/srv/../etc#a",
            "vd4#10.0.0.5#srv#a",
            "vd4#10.0.0.5#/srv/nfs#",
            "vd4#a/b#/srv/nfs#x",
            "vd9#10.0.0.5#/srv/nfs#x",
            "vx4#10.0.0.5#/srv/nfs#x",
            "some-volume-id",
            "",
        ] {
            assert_eq!(VolumeId::decode(bad), None, "{bad:?}");
        }
        let long = format!("vd4#10.0.0.5#/srv/nfs#{}", "a".repeat(120));
        assert_eq!(VolumeId::decode(&long), None);
    }

    #[test]
    fn ids_over_128_bytes_are_refused_at_creation() {
        let id = VolumeId {
            share: share(),
            layout: Layout::Directory,
            path: SharePath::parse(&"a".repeat(110)).unwrap(),
        };
        assert!(id.encode().is_err());
    }

    #[test]
    fn paths_take_safe_components_only() {
        for bad in ["", "/abs", "..", "a/..", "a/.hidden", "a b", "a#b", "ü"] {
            assert!(SharePath::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(SharePath::parse("ns/pvc-1").unwrap().key(), "ns%2Fpvc-1");
    }

    #[test]
    fn names_become_safe_keys() {
        assert_eq!(name_key("pvc-1234"), "pvc-1234");
        for odd in ["../../etc", "a/b", ".x", "h-spoof", &"x".repeat(100), "ü"] {
            let key = name_key(odd);
            assert!(key.starts_with("h-") && key.len() == 34, "{odd:?} -> {key}");
        }
        assert_ne!(name_key("a/b"), name_key("a/c"));
    }

    #[test]
    fn every_legal_name_gets_a_directory_that_fits_in_an_id() {
        let share = share();
        assert_eq!(
            VolumeName::parse("pvc-1")
                .unwrap()
                .directory(&share)
                .unwrap()
                .as_str(),
            "pvc-1"
        );
        let long = "n".repeat(128);
        for name in [
            long.as_str(),
            "a/b",
            "../x",
            ".hidden",
            "ü",
            "h-0123456789abcdef0123456789abcdef",
        ] {
            let path = VolumeName::parse(name).unwrap().directory(&share).unwrap();
            assert!(
                path.as_str().starts_with("h-") && !path.as_str().contains('/'),
                "{name:?}"
            );
            let id = VolumeId {
                share: share.clone(),
                layout: Layout::Image,
                path,
            }
            .encode()
            .unwrap();
            assert!(id.len() <= MAX_ID_BYTES);
        }
        // A name that fits as it is stays readable up to the last byte of the id.
        let room = MAX_ID_BYTES - "vd4#10.0.0.5#/srv/nfs#".len();
        assert_eq!(
            VolumeName::parse(&"x".repeat(room))
                .unwrap()
                .directory(&share)
                .unwrap()
                .as_str()
                .len(),
            room
        );
        assert!(VolumeName::parse(&"x".repeat(room + 1))
            .unwrap()
            .directory(&share)
            .unwrap()
            .as_str()
            .starts_with("h-"));
        // The limit that remains: server + export.
        let exact = ShareRef::new(
            "s",
            &format!("/{}", "e".repeat(MAX_SHARE_BYTES - 2)),
            NfsVersion::V3,
        )
        .unwrap();
        assert!(VolumeName::parse(&long).unwrap().directory(&exact).is_ok());
        let over = ShareRef::new(
            "s",
            &format!("/{}", "e".repeat(MAX_SHARE_BYTES - 1)),
            NfsVersion::V3,
        )
        .unwrap();
        let err = VolumeName::parse(&long)
            .unwrap()
            .directory(&over)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 88 bytes"), "{err}");
        assert!(snapshot_key(&exact, &long).is_ok());
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("volume", "").is_err());
        assert!(validate_name("volume", &"n".repeat(129)).is_err());
        assert!(validate_name("volume", &"n".repeat(128)).is_ok());
        assert!(validate_name("volume", "a\u{1}b").is_err());
        assert!(validate_name("volume", "tab\tok").is_ok());
    }
}
