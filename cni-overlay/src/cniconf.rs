//! The node's conflist: written into the runtime's CNI configuration directory only once the
//! node can really serve pods (until then kubelet keeps the node NotReady), optionally as the
//! only one there (other conflists moved aside, and moved back when Tether leaves), and removed
//! when the node leaves the overlay.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConflistError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("conflist {path}: {why}")]
    Invalid { path: PathBuf, why: String },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ConflistError + 'a {
    move |source| ConflistError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Where other conflists are moved in exclusive mode.
const ASIDE: &str = "tether-moved-aside";
/// Where the conflist is written before it is renamed into place: a runtime watching the
/// directory (containerd 2.x) sees only the finished file, never a temporary one.
const STAGING: &str = ".tether-staging";

/// A conflist to install from `source` into `conf_dir`.
#[derive(Debug, Clone)]
pub struct Conflist {
    pub source: PathBuf,
    pub conf_dir: PathBuf,
    pub exclusive: bool,
}

impl Conflist {
    fn target(&self) -> PathBuf {
        let name = self
            .source
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("10-tether.conflist"));
        self.conf_dir.join(name)
    }

    /// The conflist must be one a runtime would run: JSON with a name, a cniVersion (and, if
    /// given, cniVersions as a list of strings), cni-overlay first.
    fn read(&self) -> Result<Vec<u8>, ConflistError> {
        let data = std::fs::read(&self.source).map_err(io("reading", &self.source))?;
        let bad = |why: String| ConflistError::Invalid {
            path: self.source.clone(),
            why,
        };
        let value: serde_json::Value =
            serde_json::from_slice(&data).map_err(|e| bad(format!("not JSON: {e}")))?;
        for key in ["name", "cniVersion"] {
            if !value[key].is_string() {
                return Err(bad(format!("{key:?} is missing")));
            }
        }
        if let Some(versions) = value.get("cniVersions") {
            if !versions
                .as_array()
                .is_some_and(|v| v.iter().all(|x| x.is_string()))
            {
                return Err(bad("\"cniVersions\" is not a list of versions".into()));
            }
        }
        match value["plugins"][0]["type"].as_str() {
            Some("cni-overlay") => Ok(data),
            other => Err(bad(format!(
                "the first plugin must be cni-overlay, not {other:?}"
            ))),
        }
    }

    /// Writes the conflist (atomically, only when it changed); in exclusive mode moves every
    /// other network configuration aside first. Returns whether anything changed.
    pub fn install(&self) -> Result<bool, ConflistError> {
        let data = self.read()?;
        std::fs::create_dir_all(&self.conf_dir).map_err(io("creating", &self.conf_dir))?;
        let target = self.target();
        let mut changed = false;
        if self.exclusive {
            changed |= self.move_others_aside(&target)?;
        }
        let staging = self.conf_dir.join(STAGING);
        std::fs::create_dir_all(&staging).map_err(io("creating", &staging))?;
        changed |= cni_core::fsutil::write_if_changed_staged(&target, Some(&staging), &data, 0o644)
            .map_err(io("writing", &target))?;
        Ok(changed)
    }

    fn move_others_aside(&self, ours: &Path) -> Result<bool, ConflistError> {
        let aside = self.conf_dir.join(ASIDE);
        let mut moved = false;
        let entries = std::fs::read_dir(&self.conf_dir).map_err(io("reading", &self.conf_dir))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let is_config = path
                .extension()
                .is_some_and(|e| e == "conf" || e == "conflist" || e == "json");
            if !is_config || path == ours || !path.is_file() {
                continue;
            }
            std::fs::create_dir_all(&aside).map_err(io("creating", &aside))?;
            let to = aside.join(entry.file_name());
            std::fs::rename(&path, &to).map_err(io("moving aside", &path))?;
            tracing::info!(from = %path.display(), to = %to.display(), "another CNI configuration moved aside");
            moved = true;
        }
        Ok(moved)
    }

    /// Removes the conflist, and puts back what exclusive mode moved aside.
    pub fn remove(&self) -> Result<(), ConflistError> {
        let target = self.target();
        cni_core::fsutil::remove_if_exists(&target).map_err(io("removing", &target))?;
        let staging = self.conf_dir.join(STAGING);
        match std::fs::remove_dir_all(&staging) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("removing", &staging)(e))
            }
            _ => {}
        }
        let aside = self.conf_dir.join(ASIDE);
        if let Ok(entries) = std::fs::read_dir(&aside) {
            for entry in entries.flatten() {
                let back = self.conf_dir.join(entry.file_name());
                if !back.exists() {
                    std::fs::rename(entry.path(), &back).map_err(io("restoring", &back))?;
                }
            }
            let _ = std::fs::remove_dir(&aside);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_install_moves_others_aside_and_leave_puts_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let conf_dir = dir.path().join("net.d");
        std::fs::create_dir_all(&conf_dir).unwrap();
        std::fs::write(conf_dir.join("10-flannel.conflist"), b"{}").unwrap();
        let source = dir.path().join("05-tether.conflist");
        std::fs::write(
            &source,
            br#"{"cniVersion":"1.0.0","cniVersions":["1.0.0","1.1.0"],"name":"tether","plugins":[{"type":"cni-overlay"}]}"#,
        )
        .unwrap();
        let list = Conflist {
            source: source.clone(),
            conf_dir: conf_dir.clone(),
            exclusive: true,
        };
        assert!(list.install().unwrap());
        assert!(!list.install().unwrap(), "unchanged the second time");
        assert!(!conf_dir.join("10-flannel.conflist").exists());
        assert!(conf_dir.join("05-tether.conflist").exists());
        list.remove().unwrap();
        assert!(conf_dir.join("10-flannel.conflist").exists());
        assert!(!conf_dir.join("05-tether.conflist").exists());
        std::fs::write(
            &source,
            br#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        assert!(matches!(list.install(), Err(ConflistError::Invalid { .. })));
    }

    /// Names of the files created in or moved into `dir` while `during` runs (inotify).
    fn created_in(dir: &Path, during: impl FnOnce()) -> Vec<String> {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: plain inotify calls on a descriptor this function owns and closes.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_NONBLOCK);
            assert!(fd >= 0);
            let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
            assert!(
                libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_CREATE | libc::IN_MOVED_TO)
                    >= 0
            );
            during();
            let mut buf = [0u8; 4096];
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            libc::close(fd);
            let mut names = Vec::new();
            let mut at = 0usize;
            let header = std::mem::size_of::<libc::inotify_event>();
            while n > 0 && at + header <= n as usize {
                let event = &*(buf.as_ptr().add(at) as *const libc::inotify_event);
                let name = &buf[at + header..at + header + event.len as usize];
                let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
                names.push(String::from_utf8_lossy(&name[..end]).into_owned());
                at += header + event.len as usize;
            }
            names
        }
    }

    /// A runtime watching the directory (containerd 2.x) sees the finished conflist appear, never
    /// a temporary file.
    #[test]
    fn a_watcher_of_the_conf_dir_sees_only_the_finished_conflist() {
        let dir = tempfile::tempdir().unwrap();
        let conf_dir = dir.path().join("net.d");
        std::fs::create_dir_all(conf_dir.join(STAGING)).unwrap();
        let source = dir.path().join("10-tether.conflist");
        std::fs::write(
            &source,
            br#"{"cniVersion":"1.0.0","name":"tether","plugins":[{"type":"cni-overlay"}]}"#,
        )
        .unwrap();
        let list = Conflist {
            source,
            conf_dir: conf_dir.clone(),
            exclusive: false,
        };
        let seen = created_in(&conf_dir, || assert!(list.install().unwrap()));
        assert_eq!(seen, ["10-tether.conflist"]);
        list.remove().unwrap();
        assert_eq!(
            std::fs::read_dir(&conf_dir).unwrap().count(),
            0,
            "nothing left"
        );
    }
}
