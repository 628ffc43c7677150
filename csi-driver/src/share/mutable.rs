//! Mutable parameters: what a VolumeAttributesClass may set at CreateVolume and change later
//! with ControllerModifyVolume (a StorageClass may set them too, as the starting values). Each is
//! parsed here once; `modify` applies a change to an existing volume.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::grpc::error::CsiError;
use crate::share::ids::Layout;

/// Every mutable parameter: name, default, meaning, when it takes effect. docs/storage.md shows
/// this table ([`mutable_table`]), checked by a test.
pub const MUTABLE_PARAMETERS: [(&str, &str, &str, &str); 5] = [
    (
        "onDelete",
        "`delete`",
        "`delete` removes the directory, `retain` keeps it (it stops being a volume), `archive` renames it to `archived-<dir>-<time>`",
        "at DeleteVolume",
    ),
    (
        "limit",
        "`capacity`",
        "`capacity`: a directory volume on a share with `agent` is limited to its capacity by a project quota; `none`: not limited. An image volume is always limited by its size",
        "at once",
    ),
    (
        "nconnect",
        "the client's (1)",
        "TCP connections per NFS mount, 1 to 16 (`nconnect=`)",
        "at the next stage on each node",
    ),
    (
        "rsize",
        "negotiated",
        "largest NFS READ in bytes, 4096 to 1048576, a multiple of 4096 (`rsize=`)",
        "at the next stage on each node",
    ),
    (
        "wsize",
        "negotiated",
        "largest NFS WRITE in bytes, 4096 to 1048576, a multiple of 4096 (`wsize=`)",
        "at the next stage on each node",
    ),
];

/// The mutable parameters as a Markdown table (docs/storage.md holds it; a test checks).
#[cfg(test)]
pub fn mutable_table() -> String {
    let mut out =
        String::from("| parameter | default | meaning | takes effect |\n|---|---|---|---|\n");
    for (name, default, meaning, when) in MUTABLE_PARAMETERS {
        out.push_str(&format!("| `{name}` | {default} | {meaning} | {when} |\n"));
    }
    out
}

pub fn is_mutable(key: &str) -> bool {
    MUTABLE_PARAMETERS.iter().any(|(name, ..)| *name == key)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDelete {
    Delete,
    Retain,
    Archive,
}

/// Whether a directory volume with an agent is held to its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Limit {
    #[default]
    Capacity,
    None,
}

impl Limit {
    fn is_default(&self) -> bool {
        *self == Limit::Capacity
    }
}

/// NFS mount options the volume asks of every node that stages it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountTuning {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nconnect: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rsize: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wsize: Option<u32>,
}

impl MountTuning {
    pub fn is_empty(&self) -> bool {
        *self == MountTuning::default()
    }

    /// `flags` (a PersistentVolume's mountOptions) with these options added where the flags do
    /// not set the same option: the PersistentVolume's own choice wins.
    pub fn under(&self, mut flags: Vec<String>) -> Vec<String> {
        for option in self.options() {
            let key = option.split('=').next().unwrap_or_default();
            if !flags.iter().any(|f| f.split('=').next() == Some(key)) {
                flags.push(option);
            }
        }
        flags
    }

    /// As mount options (`nconnect=4`, ...).
    pub fn options(&self) -> Vec<String> {
        [
            ("nconnect", self.nconnect),
            ("rsize", self.rsize),
            ("wsize", self.wsize),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.map(|v| format!("{key}={v}")))
        .collect()
    }
}

/// The mutable part of a volume's settings, as its record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mutable {
    pub on_delete: OnDelete,
    #[serde(default, skip_serializing_if = "Limit::is_default")]
    pub limit: Limit,
    #[serde(default, skip_serializing_if = "MountTuning::is_empty")]
    pub mount: MountTuning,
}

impl Default for Mutable {
    fn default() -> Mutable {
        Mutable {
            on_delete: OnDelete::Delete,
            limit: Limit::Capacity,
            mount: MountTuning::default(),
        }
    }
}

/// What one set of mutable parameters asks to change (an absent key changes nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub on_delete: Option<OnDelete>,
    pub limit: Option<Limit>,
    pub nconnect: Option<u32>,
    pub rsize: Option<u32>,
    pub wsize: Option<u32>,
}

impl Changes {
    /// Parses `parameters`; with `only_mutable`, any other key is an error (a
    /// VolumeAttributesClass's parameters), otherwise other keys are left to the caller (a
    /// StorageClass's parameters).
    pub fn parse(
        parameters: &HashMap<String, String>,
        only_mutable: bool,
    ) -> Result<Changes, CsiError> {
        if only_mutable {
            let mut unknown: Vec<&str> = parameters
                .keys()
                .map(String::as_str)
                .filter(|k| !is_mutable(k))
                .collect();
            if !unknown.is_empty() {
                unknown.sort_unstable();
                let known: Vec<&str> = MUTABLE_PARAMETERS.iter().map(|(n, ..)| *n).collect();
                return Err(CsiError::invalid(format!(
                    "mutable parameter(s) not supported: {} (supported: {})",
                    unknown.join(", "),
                    known.join(", ")
                )));
            }
        }
        let get = |key: &str| {
            parameters
                .get(key)
                .map(String::as_str)
                .filter(|v| !v.is_empty())
        };
        let on_delete = match get("onDelete") {
            None => None,
            Some("delete") => Some(OnDelete::Delete),
            Some("retain") => Some(OnDelete::Retain),
            Some("archive") => Some(OnDelete::Archive),
            Some(other) => {
                return Err(CsiError::invalid(format!(
                    "onDelete {other:?} is not one of delete, retain, archive"
                )))
            }
        };
        let limit = match get("limit") {
            None => None,
            Some("capacity") => Some(Limit::Capacity),
            Some("none") => Some(Limit::None),
            Some(other) => {
                return Err(CsiError::invalid(format!(
                    "limit {other:?} is not one of capacity, none"
                )))
            }
        };
        let number = |key: &str, low: u32, high: u32, step: u32| -> Result<Option<u32>, CsiError> {
            let Some(text) = get(key) else {
                return Ok(None);
            };
            text.parse::<u32>()
                .ok()
                .filter(|n| (low..=high).contains(n) && n % step == 0)
                .map(Some)
                .ok_or_else(|| {
                    let multiple = if step > 1 {
                        format!(", a multiple of {step}")
                    } else {
                        String::new()
                    };
                    CsiError::invalid(format!(
                        "{key} {text:?} is not a number from {low} to {high}{multiple}"
                    ))
                })
        };
        Ok(Changes {
            on_delete,
            limit,
            nconnect: number("nconnect", 1, 16, 1)?,
            rsize: number("rsize", 4096, 1 << 20, 4096)?,
            wsize: number("wsize", 4096, 1 << 20, 4096)?,
        })
    }

    /// Refuses what this volume cannot do: a limit other than its size on an image, a quota
    /// without an agent to set it.
    pub fn check(&self, layout: Layout, has_agent: bool) -> Result<(), CsiError> {
        match (self.limit, layout, has_agent) {
            (Some(Limit::None), Layout::Image, _) => Err(CsiError::invalid(
                "limit: none does not apply to a layout: image volume (its size is its limit)",
            )),
            (Some(Limit::Capacity), Layout::Directory, false) => Err(CsiError::invalid(
                "limit: capacity needs tether-nfs-agent (the StorageClass parameter agent): NFS itself has no quota",
            )),
            _ => Ok(()),
        }
    }

    /// `settings` with these changes made.
    pub fn apply(&self, settings: &Mutable) -> Mutable {
        let mut out = settings.clone();
        if let Some(on_delete) = self.on_delete {
            out.on_delete = on_delete;
        }
        if let Some(limit) = self.limit {
            out.limit = limit;
        }
        if self.nconnect.is_some() {
            out.mount.nconnect = self.nconnect;
        }
        if self.rsize.is_some() {
            out.mount.rsize = self.rsize;
        }
        if self.wsize.is_some() {
            out.mount.wsize = self.wsize;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn changes_parse_and_apply() {
        let changes = Changes::parse(
            &map(&[
                ("onDelete", "retain"),
                ("nconnect", "4"),
                ("wsize", "65536"),
            ]),
            true,
        )
        .unwrap();
        let settings = changes.apply(&Mutable::default());
        assert_eq!(settings.on_delete, OnDelete::Retain);
        assert_eq!(settings.limit, Limit::Capacity);
        assert_eq!(settings.mount.options(), ["nconnect=4", "wsize=65536"]);
        assert_eq!(
            settings
                .mount
                .under(vec!["hard".into(), "nconnect=2".into()]),
            ["hard", "nconnect=2", "wsize=65536"]
        );
        // Absent keys keep what was there.
        let again = Changes::parse(&map(&[("limit", "none")]), true)
            .unwrap()
            .apply(&settings);
        assert_eq!(again.on_delete, OnDelete::Retain);
        assert_eq!(again.limit, Limit::None);
        assert_eq!(again.mount, settings.mount);
        assert_eq!(
            Changes::parse(&HashMap::new(), true).unwrap(),
            Changes::default()
        );
    }

    #[test]
    fn a_volume_refuses_what_it_cannot_do() {
        let limit = |v: &str| Changes::parse(&map(&[("limit", v)]), true).unwrap();
        assert!(limit("none").check(Layout::Image, true).is_err());
        assert!(limit("capacity").check(Layout::Image, false).is_ok());
        assert!(limit("capacity")
            .check(Layout::Directory, false)
            .unwrap_err()
            .to_string()
            .contains("agent"));
        assert!(limit("capacity").check(Layout::Directory, true).is_ok());
        assert!(limit("none").check(Layout::Directory, false).is_ok());
    }

    #[test]
    fn errors_name_the_key_and_the_rule() {
        let err =
            |pairs: &[(&str, &str)]| Changes::parse(&map(pairs), true).unwrap_err().to_string();
        assert!(err(&[("XXX_FakeKey", "XXX_FakeValue")]).contains("XXX_FakeKey"));
        assert!(err(&[("server", "x")]).contains("not supported: server"));
        assert!(err(&[("nconnect", "17")]).contains("1 to 16"));
        assert!(err(&[("nconnect", "four")]).contains("four"));
        assert!(err(&[("rsize", "5000")]).contains("multiple of 4096"));
        assert!(err(&[("limit", "half")]).contains("capacity, none"));
        assert!(err(&[("onDelete", "shred")]).contains("shred"));
        // In a StorageClass other keys are the caller's.
        assert!(Changes::parse(&map(&[("server", "x")]), false).is_ok());
    }

    #[test]
    fn records_without_the_new_fields_still_read() {
        let old: Mutable = serde_json::from_str(r#"{"onDelete":"archive"}"#).unwrap();
        assert_eq!(old.on_delete, OnDelete::Archive);
        assert_eq!(old.limit, Limit::Capacity);
        assert!(old.mount.is_empty());
        assert_eq!(
            serde_json::to_string(&Mutable::default()).unwrap(),
            r#"{"onDelete":"delete"}"#
        );
    }

    #[test]
    fn the_storage_docs_show_every_mutable_parameter() {
        let docs = include_str!("../../../docs/storage.md");
        assert!(
            docs.contains(&mutable_table()),
            "docs/storage.md's table of mutable parameters differs from mutable::MUTABLE_PARAMETERS; it should read:\n{}",
            mutable_table()
        );
    }
}
