//! StorageClass parameters and mount options of a CreateVolume request, validated once.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use tether_csi_proto::v1::{volume_capability, VolumeCapability};

use crate::grpc::error::CsiError;
use crate::share::ids::{Layout, NfsVersion, SharePath, ShareRef, VolumeName};
pub use crate::share::mutable::OnDelete;
use crate::share::mutable::{Changes, Mutable, MUTABLE_PARAMETERS};

/// Keys csi-provisioner adds with `--extra-create-metadata`.
pub const PVC_NAME: &str = "csi.storage.k8s.io/pvc/name";
pub const PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";
pub const PV_NAME: &str = "csi.storage.k8s.io/pv/name";
/// Everything under this prefix belongs to the Kubernetes sidecars, not to us.
const SIDECAR_PREFIX: &str = "csi.storage.k8s.io/";

/// Every StorageClass parameter: name, default, meaning. docs/storage.md shows this table
/// ([`parameters_table`]), checked by a test.
pub const PARAMETERS: [(&str, &str, &str); 7] = [
    ("server", "required", "NFS server host name or address"),
    (
        "share",
        "required",
        "exported path (the NFSv4 pseudo path; give a server whose v3 export and v4 pseudo path agree if you mix versions)",
    ),
    (
        "subDir",
        "the volume name",
        "directory of the volume inside the share; may use `${pvc.metadata.name}`, `${pvc.metadata.namespace}`, `${pv.metadata.name}` (csi-provisioner `--extra-create-metadata`); components `[A-Za-z0-9._-]`, no leading dot",
    ),
    ("mountPermissions", "`0777`", "mode of the volume directory (octal)"),
    (
        "layout",
        "`directory`",
        "`directory`: a directory per volume, every access mode including ReadWriteMany. `image`: a sparse disk image per volume (single-node access modes and raw block)",
    ),
    (
        "fsType",
        "`ext4`",
        "filesystem of `layout: image` volumes (`ext4`, `xfs`)",
    ),
    (
        "agent",
        "none",
        "`HOST:PORT` of the tether-nfs-agent beside the share's filesystem: snapshots, restores and clones by copy-on-write clones on the server, directory volumes limited by project quota (needs `--agent-tls-dir`)",
    ),
];

/// The StorageClass parameters as a Markdown table (docs/storage.md holds it; a test checks).
#[cfg(test)]
pub fn parameters_table() -> String {
    let mut out = String::from("| parameter | default | meaning |\n|---|---|---|\n");
    for (name, default, meaning) in PARAMETERS {
        out.push_str(&format!("| `{name}` | {default} | {meaning} |\n"));
    }
    out
}

/// Every key a StorageClass may hold: its own parameters and the mutable ones (their starting
/// values).
fn known() -> impl Iterator<Item = &'static str> {
    PARAMETERS
        .iter()
        .map(|(name, _, _)| *name)
        .chain(MUTABLE_PARAMETERS.iter().map(|(name, ..)| *name))
}

/// What a volume is made of, as the StorageClass and the request decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSettings {
    /// What ControllerModifyVolume may change (onDelete, limit, mount options).
    #[serde(flatten)]
    pub mutable: Mutable,
    pub mount_permissions: u32,
    pub layout: String,
    /// Filesystem of an image volume (ext4 or xfs); empty for directories.
    #[serde(default)]
    pub fs_type: String,
    /// tether-nfs-agent's HOST:PORT, when the StorageClass names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

#[derive(Debug, Clone)]
pub struct VolumeParams {
    pub share: ShareRef,
    pub path: SharePath,
    pub layout: Layout,
    pub settings: VolumeSettings,
}

impl VolumeParams {
    /// Parses the request's parameters. `name` is the CSI volume name (the default directory).
    pub fn parse(
        name: &VolumeName,
        parameters: &HashMap<String, String>,
        capabilities: &[VolumeCapability],
    ) -> Result<VolumeParams, CsiError> {
        let mut unknown: Vec<&str> = parameters
            .keys()
            .map(String::as_str)
            .filter(|k| !known().any(|n| n == *k) && !k.starts_with(SIDECAR_PREFIX))
            .collect();
        if !unknown.is_empty() {
            unknown.sort_unstable();
            return Err(CsiError::invalid(format!(
                "unknown StorageClass parameter(s): {} (known: {})",
                unknown.join(", "),
                known().collect::<Vec<_>>().join(", ")
            )));
        }
        let required = |key: &str| {
            parameters
                .get(key)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    CsiError::invalid(format!("the StorageClass parameter {key:?} is required"))
                })
        };
        let version = nfs_version(capabilities)?;
        let share = ShareRef::new(required("server")?, required("share")?, version)?;

        let layout = match parameters.get("layout").map(String::as_str) {
            None | Some("") | Some("directory") => Layout::Directory,
            Some("image") => Layout::Image,
            Some(other) => {
                return Err(CsiError::invalid(format!(
                    "layout {other:?} is not one of directory, image"
                )))
            }
        };
        // The mutable parameters a StorageClass sets: their starting values.
        let from_class = Changes::parse(parameters, false)?;
        let mount_permissions = match parameters.get("mountPermissions") {
            None => 0o777,
            Some(text) => u32::from_str_radix(text.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| {
                    CsiError::invalid(format!(
                        "mountPermissions {text:?} is not an octal mode such as 0770"
                    ))
                })?,
        };
        let fs_type = match (layout, parameters.get("fsType").map(String::as_str)) {
            (Layout::Directory, None | Some("")) => String::new(),
            (Layout::Directory, Some(fs)) => {
                return Err(CsiError::invalid(format!(
                    "fsType {fs:?} applies to layout: image only"
                )))
            }
            (Layout::Image, None | Some("") | Some("ext4")) => "ext4".into(),
            (Layout::Image, Some("xfs")) => "xfs".into(),
            (Layout::Image, Some(fs)) => {
                return Err(CsiError::invalid(format!(
                    "fsType {fs:?} is not one of ext4, xfs"
                )))
            }
        };
        let agent = match parameters.get("agent").map(String::as_str) {
            None | Some("") => None,
            Some(address) => Some(agent_address(address)?),
        };
        from_class.check(layout, agent.is_some())?;
        let mutable = from_class.apply(&Mutable::default());
        let path = match parameters.get("subDir").filter(|s| !s.is_empty()) {
            Some(template) => SharePath::parse(&expand(template, parameters)?)?,
            None => name.directory(&share)?,
        };
        Ok(VolumeParams {
            share,
            path,
            layout,
            settings: VolumeSettings {
                mutable,
                mount_permissions,
                layout: layout.name().into(),
                fs_type,
                agent,
            },
        })
    }

    /// The parameters that define the volume, for comparing a repeated request with the original.
    pub fn canonical(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("server".to_string(), self.share.server.clone()),
            ("share".to_string(), self.share.export.clone()),
            (
                "nfsvers".to_string(),
                self.share.version.as_option().to_string(),
            ),
            ("path".to_string(), self.path.as_str().to_string()),
            ("layout".to_string(), self.settings.layout.clone()),
            ("fsType".to_string(), self.settings.fs_type.clone()),
            (
                "mountPermissions".to_string(),
                format!("{:04o}", self.settings.mount_permissions),
            ),
        ])
        .into_iter()
        .chain(
            self.settings
                .agent
                .clone()
                .map(|a| ("agent".to_string(), a)),
        )
        .collect()
    }
}

/// Whether a record's parameters and a request's canonical ones name the same volume. Mutable
/// parameters do not count: records before ModifyVolume kept `onDelete` among them, and it may
/// have changed since.
pub fn same_volume(
    recorded: &BTreeMap<String, String>,
    canonical: &BTreeMap<String, String>,
) -> bool {
    let fixed = |m: &BTreeMap<String, String>| {
        m.iter()
            .filter(|(k, _)| !crate::share::mutable::is_mutable(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    fixed(recorded) == fixed(canonical)
}

/// An agent's `HOST:PORT` (a name, an IPv4 address, or an IPv6 address in brackets).
fn agent_address(text: &str) -> Result<String, CsiError> {
    let bad = || {
        CsiError::invalid(format!(
            "agent {text:?} is not HOST:PORT (e.g. nfs1.example.com:9820 or [fd00::5]:9820)"
        ))
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(bad)?;
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    let host_ok = match bare {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        }
    };
    if host_ok {
        Ok(text.to_string())
    } else {
        Err(bad())
    }
}

/// Expands `${pvc.metadata.name}`, `${pvc.metadata.namespace}` and `${pv.metadata.name}`.
fn expand(template: &str, parameters: &HashMap<String, String>) -> Result<String, CsiError> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| CsiError::invalid(format!("subDir {template:?} has an unclosed ${{")))?;
        let variable = &after[..end];
        let key = match variable {
            "pvc.metadata.name" => PVC_NAME,
            "pvc.metadata.namespace" => PVC_NAMESPACE,
            "pv.metadata.name" => PV_NAME,
            other => {
                return Err(CsiError::invalid(format!(
                    "subDir uses ${{{other}}}; known: ${{pvc.metadata.name}}, \
                     ${{pvc.metadata.namespace}}, ${{pv.metadata.name}}"
                )))
            }
        };
        let value = parameters
            .get(key)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                CsiError::invalid(format!(
                    "subDir uses ${{{variable}}} but the request carries no {key} \
                 (run csi-provisioner with --extra-create-metadata)"
                ))
            })?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The NFS version from the capabilities' mount options (`nfsvers=`/`vers=`), NFSv4.1 if none.
pub fn nfs_version(capabilities: &[VolumeCapability]) -> Result<NfsVersion, CsiError> {
    let mut found: Option<NfsVersion> = None;
    for capability in capabilities {
        let Some(volume_capability::AccessType::Mount(mount)) = &capability.access_type else {
            continue;
        };
        for flag in &mount.mount_flags {
            for option in flag.split(',') {
                let Some(value) = option
                    .strip_prefix("nfsvers=")
                    .or_else(|| option.strip_prefix("vers="))
                else {
                    continue;
                };
                let version = NfsVersion::parse(value).ok_or_else(|| {
                    CsiError::invalid(format!(
                        "mount option {option:?}: NFS version {value} is not supported (3 or 4.1)"
                    ))
                })?;
                if found.is_some_and(|f| f != version) {
                    return Err(CsiError::invalid(
                        "the mount options ask for two different NFS versions",
                    ));
                }
                found = Some(version);
            }
        }
    }
    Ok(found.unwrap_or(NfsVersion::V41))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_csi_proto::v1::volume_capability::{AccessMode, MountVolume};

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn mount_with(flags: &[&str]) -> VolumeCapability {
        VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(MountVolume {
                mount_flags: flags.iter().map(|f| f.to_string()).collect(),
                ..Default::default()
            })),
            access_mode: Some(AccessMode { mode: 5 }),
        }
    }

    #[test]
    fn defaults_and_templates() {
        let p = VolumeParams::parse(
            &VolumeName::parse("pvc-1").unwrap(),
            &params(&[("server", "nfs.example"), ("share", "/exports/k8s")]),
            &[],
        )
        .unwrap();
        assert_eq!(p.path.as_str(), "pvc-1");
        assert_eq!(p.share.version, NfsVersion::V41);
        assert_eq!(p.settings.mutable.on_delete, OnDelete::Delete);
        assert_eq!(p.settings.mount_permissions, 0o777);

        let p = VolumeParams::parse(
            &VolumeName::parse("pvc-1").unwrap(),
            &params(&[
                ("server", "nfs.example"),
                ("share", "/exports/k8s"),
                (
                    "subDir",
                    "${pvc.metadata.namespace}/${pvc.metadata.name}-data",
                ),
                (PVC_NAME, "db"),
                (PVC_NAMESPACE, "team-a"),
                (PV_NAME, "pvc-1"),
                ("csi.storage.k8s.io/provisioner-secret-name", "x"),
            ]),
            &[mount_with(&["nfsvers=3", "hard"])],
        )
        .unwrap();
        assert_eq!(p.path.as_str(), "team-a/db-data");
        assert_eq!(p.share.version, NfsVersion::V3);
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let base = [("server", "s"), ("share", "/e")];
        let err = |extra: &[(&str, &str)], caps: &[VolumeCapability]| {
            let mut all = base.to_vec();
            all.extend_from_slice(extra);
            VolumeParams::parse(&VolumeName::parse("pvc-1").unwrap(), &params(&all), caps)
                .unwrap_err()
                .to_string()
        };
        assert!(err(&[("colour", "red"), ("size", "1")], &[]).contains("colour, size"));
        assert!(err(&[("subDir", "${pvc.metadata.name}")], &[]).contains("--extra-create-metadata"));
        assert!(err(&[("subDir", "${node.name}")], &[]).contains("node.name"));
        assert!(err(&[("subDir", "../x")], &[]).contains("would leave"));
        assert!(err(&[("onDelete", "shred")], &[]).contains("shred"));
        assert!(err(&[("mountPermissions", "rwx")], &[]).contains("octal"));
        assert!(err(&[("layout", "zfs")], &[]).contains("zfs"));
        assert!(err(&[], &[mount_with(&["nfsvers=2"])]).contains("not supported"));
        assert!(err(
            &[],
            &[mount_with(&["nfsvers=3"]), mount_with(&["vers=4.1"])]
        )
        .contains("two"));
        let missing = VolumeParams::parse(
            &VolumeName::parse("pvc-1").unwrap(),
            &params(&[("share", "/e")]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(missing.contains("\"server\""), "{missing}");
    }

    #[test]
    fn the_storage_docs_show_every_parameter() {
        let docs = include_str!("../../../docs/storage.md");
        assert!(
            docs.contains(&parameters_table()),
            "docs/storage.md's table of StorageClass parameters differs from params::PARAMETERS; it should read:\n{}",
            parameters_table()
        );
    }
}
