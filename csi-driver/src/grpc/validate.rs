//! Request checks shared by the services: capacities, volume capabilities, paths and ids. Every
//! failure here is the caller's to fix (INVALID_ARGUMENT), except an id that names nothing of
//! ours (NOT_FOUND) and an impossible size (OUT_OF_RANGE).

use std::path::PathBuf;

use tether_csi_proto::v1::{
    self as csi, volume_capability, volume_capability::access_mode::Mode, VolumeCapability,
};

use crate::grpc::error::{CsiError, CsiResult};
use crate::share::ids::{Layout, VolumeId};

/// Bytes wanted from a capacity range: required if given, else limit, else 0 (unknown).
pub fn wanted_capacity(range: Option<&csi::CapacityRange>) -> CsiResult<(i64, i64)> {
    let Some(range) = range else {
        return Ok((0, 0));
    };
    if range.required_bytes < 0 || range.limit_bytes < 0 {
        return Err(CsiError::invalid("capacity must not be negative"));
    }
    if range.limit_bytes > 0 && range.required_bytes > range.limit_bytes {
        return Err(CsiError::Capacity(format!(
            "required {} bytes exceeds the limit of {} bytes",
            range.required_bytes, range.limit_bytes
        )));
    }
    let want = if range.required_bytes > 0 {
        range.required_bytes
    } else {
        range.limit_bytes
    };
    Ok((want, range.limit_bytes))
}

pub fn fits(capacity: i64, range: Option<&csi::CapacityRange>) -> bool {
    range.is_none_or(|r| {
        capacity >= r.required_bytes && (r.limit_bytes == 0 || capacity <= r.limit_bytes)
    })
}

fn is_multi_node(capability: &VolumeCapability) -> bool {
    use volume_capability::access_mode::Mode;
    capability
        .access_mode
        .as_ref()
        .and_then(|m| Mode::try_from(m.mode).ok())
        .is_some_and(|m| {
            matches!(
                m,
                Mode::MultiNodeReaderOnly
                    | Mode::MultiNodeSingleWriter
                    | Mode::MultiNodeMultiWriter
            )
        })
}

/// Why `capability` cannot be served by `layout`, if it cannot.
pub fn unsupported(capability: &VolumeCapability, layout: Layout) -> Option<String> {
    use volume_capability::access_mode::Mode;
    let mode = capability
        .access_mode
        .as_ref()
        .and_then(|m| Mode::try_from(m.mode).ok());
    if mode.is_none_or(|m| m == Mode::Unknown) {
        return Some("a volume capability has no access mode".into());
    }
    match (&capability.access_type, layout) {
        (None, _) => Some("a volume capability has neither mount nor block access".into()),
        (Some(volume_capability::AccessType::Block(_)), Layout::Directory) => Some(
            "raw block access needs layout: image (a directory volume is a filesystem)".into(),
        ),
        (Some(volume_capability::AccessType::Mount(m)), Layout::Directory)
            if !matches!(m.fs_type.as_str(), "" | "nfs" | "nfs4") =>
        {
            Some(format!(
                "fsType {:?} does not apply to a directory volume on NFS",
                m.fs_type
            ))
        }
        (_, Layout::Image) if is_multi_node(capability) => Some(
            "layout: image serves single-node access modes only (use layout: directory for ReadWriteMany)"
                .into(),
        ),
        (Some(volume_capability::AccessType::Mount(m)), Layout::Image)
            if !matches!(m.fs_type.as_str(), "" | "ext4" | "xfs") =>
        {
            Some(format!("fsType {:?} is not one of ext4, xfs", m.fs_type))
        }
        _ => None,
    }
}

pub fn check_capabilities(capabilities: &[VolumeCapability], layout: Layout) -> CsiResult<()> {
    if capabilities.is_empty() {
        return Err(CsiError::invalid("volume_capabilities are required"));
    }
    match capabilities.iter().find_map(|c| unsupported(c, layout)) {
        Some(why) => Err(CsiError::Invalid(why)),
        None => Ok(()),
    }
}

pub fn required_path(name: &str, value: &str) -> CsiResult<PathBuf> {
    absolute(name, value)?.ok_or_else(|| {
        CsiError::invalid(format!(
            "{name} {value:?} must be an absolute path without '..'"
        ))
    })
}

/// INVALID_ARGUMENT for the first of `fields` (name, value) that is empty: every required field
/// is checked for presence before any is judged (a missing one outranks a wrong one).
pub fn present(fields: &[(&str, &str)]) -> CsiResult<()> {
    match fields.iter().find(|(_, value)| value.is_empty()) {
        Some((name, _)) => Err(CsiError::invalid(format!("{name} is required"))),
        None => Ok(()),
    }
}

/// The `volume_path` of NodeGetVolumeStats and NodeExpandVolume: required, and NOT_FOUND when
/// it cannot hold a volume (relative, or with `..`); the caller checks that it does.
pub fn volume_path(value: &str) -> CsiResult<PathBuf> {
    absolute("volume_path", value)?.ok_or_else(|| {
        CsiError::NotFound(format!(
            "volume_path {value:?} holds no volume (a volume path is absolute)"
        ))
    })
}

/// A required path: INVALID_ARGUMENT when missing, `None` when not absolute or with `..`.
fn absolute(name: &str, value: &str) -> CsiResult<Option<PathBuf>> {
    if value.is_empty() {
        return Err(CsiError::invalid(format!("{name} is required")));
    }
    let path = PathBuf::from(value);
    let fine = path.is_absolute()
        && !path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
    Ok(fine.then_some(path))
}

/// The volume an id names; NOT_FOUND for one this driver never made.
pub fn volume(volume_id: &str) -> CsiResult<VolumeId> {
    if volume_id.is_empty() {
        return Err(CsiError::invalid("volume_id is required"));
    }
    VolumeId::decode(volume_id)
        .ok_or_else(|| CsiError::NotFound(format!("{volume_id} is not a volume of this driver")))
}

pub fn capability(capability: Option<&VolumeCapability>) -> CsiResult<&VolumeCapability> {
    let capability =
        capability.ok_or_else(|| CsiError::invalid("volume_capability is required"))?;
    if capability.access_type.is_none() {
        return Err(CsiError::invalid(
            "volume_capability has neither mount nor block access",
        ));
    }
    if capability
        .access_mode
        .as_ref()
        .is_none_or(|m| m.mode == Mode::Unknown as i32)
    {
        return Err(CsiError::invalid("volume_capability has no access mode"));
    }
    Ok(capability)
}

pub fn is_block(capability: &VolumeCapability) -> bool {
    matches!(
        capability.access_type,
        Some(volume_capability::AccessType::Block(_))
    )
}

pub fn mode(capability: &VolumeCapability) -> Mode {
    capability
        .access_mode
        .as_ref()
        .and_then(|m| Mode::try_from(m.mode).ok())
        .unwrap_or(Mode::Unknown)
}

pub fn read_only_mode(capability: &VolumeCapability) -> bool {
    matches!(
        mode(capability),
        Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly
    )
}

/// The mount flags of a mount capability, one option each.
pub fn mount_flags(capability: &VolumeCapability) -> Vec<String> {
    match &capability.access_type {
        Some(volume_capability::AccessType::Mount(m)) => m
            .mount_flags
            .iter()
            .flat_map(|f| f.split(','))
            .filter(|o| !o.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_ranges() {
        let r = |req, lim| csi::CapacityRange {
            required_bytes: req,
            limit_bytes: lim,
        };
        assert_eq!(wanted_capacity(None).unwrap(), (0, 0));
        assert_eq!(wanted_capacity(Some(&r(10, 0))).unwrap(), (10, 0));
        assert_eq!(wanted_capacity(Some(&r(0, 20))).unwrap(), (20, 20));
        assert!(matches!(
            wanted_capacity(Some(&r(30, 20))),
            Err(CsiError::Capacity(_))
        ));
        assert!(matches!(
            wanted_capacity(Some(&r(-1, 0))),
            Err(CsiError::Invalid(_))
        ));
        assert!(fits(10, Some(&r(10, 10))));
        assert!(!fits(10, Some(&r(11, 0))));
        assert!(!fits(30, Some(&r(10, 20))));
    }

    #[test]
    fn arguments_are_checked() {
        assert!(required_path("target_path", "").is_err());
        assert!(required_path("target_path", "relative/x").is_err());
        assert!(required_path("target_path", "/a/../b").is_err());
        assert!(required_path("target_path", "/var/lib/kubelet/pods/x").is_ok());
        assert!(matches!(volume(""), Err(CsiError::Invalid(_))));
        assert!(matches!(volume("nonsense"), Err(CsiError::NotFound(_))));
        assert!(capability(None).is_err());
        let no_mode = VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(Default::default())),
            access_mode: None,
        };
        assert!(capability(Some(&no_mode)).is_err());
    }
}
