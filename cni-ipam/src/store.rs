//! Leases on disk, in the reference host-local layout so that a node can switch either way:
//!
//! ```text
//! <dataDir>/<network>/lock                  flock taken by every operation (same file as host-local)
//! <dataDir>/<network>/<ip>                  one lease: "<containerID>\r\n<ifname>"
//! <dataDir>/<network>/last_reserved_ip.<n>  the last address handed out from range set n
//! <dataDir>/<network>/attachment:<id>:<ifname> -> "ips=<ip>,<ip>"   Tether's index entry
//! <dataDir>/<network>/.tether-index         marks the index as complete
//! ```
//!
//! The index lets DEL and CHECK find a container's addresses without reading every lease. Its
//! entries are symlinks whose target text lists the addresses: creating one is a single metadata
//! operation (no data to flush, so one directory fsync makes it durable), and the target never
//! names a file, so host-local's walk over the directory skips it if a node switches back. An
//! entry is written before the leases it names, so a crash at any point leaves either nothing, an
//! entry that DEL and GC clean up, or a complete lease.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use cni_core::fsutil::{
    overwrite_in_place, remove_if_exists, sync_dir, write_atomic, write_replace, FileLock,
};
use cni_core::Attachment;

use crate::error::IpamError;

const INDEX_PREFIX: &str = "attachment:";
const INDEX_TARGET_PREFIX: &str = "ips=";
const INDEX_MARKER: &str = ".tether-index";
const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";

/// Who holds a lease. Leases written by very old host-local versions carry no interface name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub container_id: String,
    pub ifname: Option<String>,
}

impl Owner {
    fn parse(text: &str) -> Owner {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        Owner {
            container_id: lines.next().unwrap_or_default().to_string(),
            ifname: lines.next().map(str::to_string),
        }
    }

    pub fn is(&self, container_id: &str, ifname: &str) -> bool {
        self.container_id == container_id && self.ifname.as_deref().is_none_or(|i| i == ifname)
    }

    fn is_valid(&self, valid: &HashSet<(&str, &str)>, valid_ids: &HashSet<&str>) -> bool {
        match &self.ifname {
            Some(ifname) => valid.contains(&(self.container_id.as_str(), ifname.as_str())),
            None => valid_ids.contains(self.container_id.as_str()),
        }
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.ifname {
            Some(ifname) => write!(f, "container {} ({})", self.container_id, ifname),
            None => write!(f, "container {}", self.container_id),
        }
    }
}

/// The leases of one network, locked for the lifetime of this value.
pub struct Store {
    dir: PathBuf,
    _lock: FileLock,
}

impl Store {
    /// Opens the network's directory, creating it if needed, and takes the lock.
    pub fn open(dir: &Path) -> Result<Store, IpamError> {
        fs::create_dir_all(dir).map_err(IpamError::io("creating lease directory", dir))?;
        Store::lock(dir)
    }

    /// Like [`Store::open`], but `None` when the directory does not exist: there is nothing to
    /// release or check, and DEL/GC must not create state.
    pub fn open_existing(dir: &Path) -> Result<Option<Store>, IpamError> {
        match fs::metadata(dir) {
            Ok(_) => Store::lock(dir).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IpamError::io("reading lease directory", dir)(e)),
        }
    }

    fn lock(dir: &Path) -> Result<Store, IpamError> {
        let lock_path = dir.join("lock");
        let lock = FileLock::exclusive(&lock_path).map_err(IpamError::io("locking", &lock_path))?;
        let store = Store {
            dir: dir.to_path_buf(),
            _lock: lock,
        };
        store.ensure_index()?;
        Ok(store)
    }

    /// Builds the index once for a directory that host-local (or an older layout) filled.
    fn ensure_index(&self) -> Result<(), IpamError> {
        let marker = self.dir.join(INDEX_MARKER);
        if marker.exists() {
            return Ok(());
        }
        let mut by_attachment: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for (ip, owner) in self.all_leases()? {
            let key = index_key(&owner.container_id, owner.ifname.as_deref().unwrap_or(""));
            by_attachment.entry(key).or_default().push(ip);
        }
        let migrated = by_attachment.len();
        for (key, ips) in by_attachment {
            self.write_index_entry(&key, &ips)?;
        }
        write_atomic(&marker, b"1\n").map_err(IpamError::io("writing", &marker))?;
        self.sync()?;
        if migrated > 0 {
            tracing::info!(dir = %self.dir.display(), attachments = migrated, "indexed existing host-local leases");
        }
        Ok(())
    }

    fn lease_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    pub fn is_leased(&self, ip: IpAddr) -> bool {
        // symlink_metadata: a lease is a file; nothing else by that name can be an address of ours.
        fs::symlink_metadata(self.lease_path(ip)).is_ok()
    }

    pub fn owner(&self, ip: IpAddr) -> Result<Option<Owner>, IpamError> {
        let path = self.lease_path(ip);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(Owner::parse(&text))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IpamError::io("reading lease", path)(e)),
        }
    }

    pub fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(format!("{LAST_RESERVED_PREFIX}{set}")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Addresses the index names for this attachment that are really leased to it.
    pub fn held_by(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
        let mut held = Vec::new();
        for key in [index_key(container_id, ifname), index_key(container_id, "")] {
            for ip in self.read_index_entry(&key)? {
                if self.owner(ip)?.is_some_and(|o| o.is(container_id, ifname))
                    && !held.contains(&ip)
                {
                    held.push(ip);
                }
            }
        }
        Ok(held)
    }

    /// Records the leases: index entry first, then the lease files, then the round-robin hints.
    /// Everything is renamed into place before anything is flushed, so that one journal commit
    /// makes it all durable; the caller flushes ([`Unsynced::sync`]) before ADD reports success.
    pub fn reserve(
        &self,
        container_id: &str,
        ifname: &str,
        leases: &[(usize, IpAddr)],
    ) -> Result<Unsynced, IpamError> {
        let ips: Vec<IpAddr> = leases.iter().map(|(_, ip)| *ip).collect();
        self.write_index_entry(&index_key(container_id, ifname), &ips)?;
        let owner = format!("{container_id}\r\n{ifname}");
        let mut written = Vec::with_capacity(leases.len());
        for (set, ip) in leases {
            let path = self.lease_path(*ip);
            let file = write_replace(&path, owner.as_bytes())
                .map_err(IpamError::io("writing lease", &path))?;
            written.push((path, file));
            // Only a hint for round-robin order, read under the lock: a torn or lost one restarts
            // at the range start.
            let hint = self.dir.join(format!("{LAST_RESERVED_PREFIX}{set}"));
            overwrite_in_place(&hint, ip.to_string().as_bytes())
                .map_err(IpamError::io("writing", &hint))?;
        }
        Ok(Unsynced {
            dir: self.dir.clone(),
            files: written,
        })
    }

    /// Frees every lease of the attachment; returns what was freed, and the unlinks to flush
    /// ([`Unsynced::sync`]) before DEL reports success. Unknown attachments free nothing.
    pub fn release(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<(Vec<IpAddr>, Unsynced), IpamError> {
        let mut freed = Vec::new();
        for key in [index_key(container_id, ifname), index_key(container_id, "")] {
            for ip in self.read_index_entry(&key)? {
                if self.owner(ip)?.is_some_and(|o| o.is(container_id, ifname)) {
                    let path = self.lease_path(ip);
                    remove_if_exists(&path).map_err(IpamError::io("removing lease", &path))?;
                    freed.push(ip);
                }
            }
            let entry = self.dir.join(&key);
            remove_if_exists(&entry).map_err(IpamError::io("removing index entry", &entry))?;
        }
        Ok((
            freed,
            Unsynced {
                dir: self.dir.clone(),
                files: Vec::new(),
            },
        ))
    }

    /// Frees every lease and index entry whose attachment is not in `valid`, and any temporary
    /// file a crashed writer left behind. Returns the freed addresses.
    pub fn collect_garbage(&self, valid: &[Attachment]) -> Result<Vec<IpAddr>, IpamError> {
        let valid_pairs: HashSet<(&str, &str)> = valid
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect();
        let valid_ids: HashSet<&str> = valid.iter().map(|a| a.container_id.as_str()).collect();

        let mut freed = Vec::new();
        for (ip, owner) in self.all_leases()? {
            if !owner.is_valid(&valid_pairs, &valid_ids) {
                let path = self.lease_path(ip);
                remove_if_exists(&path).map_err(IpamError::io("removing lease", &path))?;
                tracing::info!(%ip, %owner, "GC freed lease");
                freed.push(ip);
            }
        }
        let names = list_names(&self.dir)?;
        for name in &names {
            let Some(key) = name.strip_prefix(INDEX_PREFIX) else {
                continue;
            };
            let (container_id, ifname) = key.split_once(':').unwrap_or((key, ""));
            let owner = Owner {
                container_id: container_id.to_string(),
                ifname: (!ifname.is_empty()).then(|| ifname.to_string()),
            };
            if !owner.is_valid(&valid_pairs, &valid_ids) {
                let path = self.dir.join(name);
                remove_if_exists(&path).map_err(IpamError::io("removing index entry", &path))?;
            }
        }
        for name in names.iter().filter(|n| is_temp_file(n)) {
            let path = self.dir.join(name);
            remove_if_exists(&path).map_err(IpamError::io("removing", &path))?;
        }
        self.sync()?;
        Ok(freed)
    }

    /// Proves that a lease could be written right now.
    pub fn probe_writable(&self) -> Result<(), IpamError> {
        let probe = self.dir.join(".status-probe");
        write_atomic(&probe, b"").map_err(IpamError::io("writing", &probe))?;
        remove_if_exists(&probe).map_err(IpamError::io("removing", &probe))
    }

    /// Every lease in the directory. Reads every lease file: for migration and GC only.
    fn all_leases(&self) -> Result<Vec<(IpAddr, Owner)>, IpamError> {
        let mut leases = Vec::new();
        for name in list_names(&self.dir)? {
            let Ok(ip) = name.parse::<IpAddr>() else {
                continue;
            };
            if let Some(owner) = self.owner(ip)? {
                leases.push((ip, owner));
            }
        }
        Ok(leases)
    }

    fn read_index_entry(&self, key: &str) -> Result<Vec<IpAddr>, IpamError> {
        let path = self.dir.join(key);
        match fs::read_link(&path) {
            Ok(target) => Ok(target
                .to_string_lossy()
                .strip_prefix(INDEX_TARGET_PREFIX)
                .unwrap_or_default()
                .split(',')
                .filter_map(|ip| ip.parse().ok())
                .collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(IpamError::io("reading index entry", path)(e)),
        }
    }

    /// Replaces the entry (a stale one may be left by an ADD that crashed).
    fn write_index_entry(&self, key: &str, ips: &[IpAddr]) -> Result<(), IpamError> {
        let path = self.dir.join(key);
        let target = format!(
            "{INDEX_TARGET_PREFIX}{}",
            ips.iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        let write = || {
            remove_if_exists(&path)?;
            std::os::unix::fs::symlink(&target, &path)
        };
        write().map_err(IpamError::io("writing index entry", &path))
    }

    fn sync(&self) -> Result<(), IpamError> {
        sync_dir(&self.dir).map_err(IpamError::io("syncing", &self.dir))
    }
}

/// Changes in place (renamed or unlinked under the lock, so every later reader sees them) but
/// not yet durable. They are flushed after the lock is released: concurrent ADDs and DELs then
/// flush side by side (a journaling filesystem commits them together) instead of one after
/// another behind the lock, and each still reports success only once its own are durable. A
/// power loss before the flush loses only changes whose call never reported success.
#[must_use = "the changes are not durable until synced"]
pub struct Unsynced {
    dir: PathBuf,
    files: Vec<(PathBuf, fs::File)>,
}

impl Unsynced {
    pub fn sync(self) -> Result<(), IpamError> {
        for (path, file) in self.files {
            file.sync_all()
                .map_err(IpamError::io("syncing lease", &path))?;
        }
        sync_dir(&self.dir).map_err(IpamError::io("syncing", &self.dir))
    }
}

/// Container IDs never contain ':' (validated by cni-core), so the key splits unambiguously.
fn index_key(container_id: &str, ifname: &str) -> String {
    format!("{INDEX_PREFIX}{container_id}:{ifname}")
}

fn is_temp_file(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

fn list_names(dir: &Path) -> Result<Vec<String>, IpamError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(IpamError::io("listing", dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(IpamError::io("listing", dir))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_in_both_host_local_formats() {
        let new = Owner::parse("abc\r\neth0");
        assert!(new.is("abc", "eth0"));
        assert!(!new.is("abc", "eth1"));
        let old = Owner::parse("abc\n");
        assert_eq!(old.ifname, None);
        assert!(old.is("abc", "eth1"));
    }

    #[test]
    fn reserve_release_and_migration() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net");
        fs::create_dir_all(&dir).unwrap();
        // A host-local directory: two leases, no index.
        fs::write(dir.join("10.0.0.2"), "c1\r\neth0").unwrap();
        fs::write(dir.join("10.0.0.3"), "c2").unwrap();
        let store = Store::open(&dir).unwrap();
        let ip2: IpAddr = "10.0.0.2".parse().unwrap();
        let ip3: IpAddr = "10.0.0.3".parse().unwrap();
        assert_eq!(store.held_by("c1", "eth0").unwrap(), [ip2]);
        assert_eq!(store.held_by("c2", "eth0").unwrap(), [ip3]);

        let ip4: IpAddr = "10.0.0.4".parse().unwrap();
        store
            .reserve("c3", "eth0", &[(0, ip4)])
            .unwrap()
            .sync()
            .unwrap();
        assert_eq!(store.last_reserved(0), Some(ip4));
        assert_eq!(store.release("c3", "eth0").unwrap().0, [ip4]);
        assert!(store.release("c3", "eth0").unwrap().0.is_empty());
        assert!(!store.is_leased(ip4));
    }
}
