//! Requests as they may be logged: every `secrets` map (the fields the CSI spec marks
//! `csi_secret`) and every mount option list (which the spec says may hold sensitive values) is
//! replaced before anything is formatted.

use std::collections::HashMap;
use std::fmt::Debug;

use tether_csi_proto::v1::{self as csi, volume_capability, VolumeCapability};

const HIDDEN: &str = "<redacted>";

pub trait Redact: Clone + Debug {
    /// Blanks sensitive fields in place.
    fn redact(&mut self);

    /// The request formatted for a log line, with sensitive fields blanked.
    fn redacted(&self) -> String {
        let mut copy = self.clone();
        copy.redact();
        format!("{copy:?}")
    }
}

fn hide(secrets: &mut HashMap<String, String>) {
    for value in secrets.values_mut() {
        *value = HIDDEN.into();
    }
}

fn hide_flags(capability: &mut VolumeCapability) {
    if let Some(volume_capability::AccessType::Mount(mount)) = &mut capability.access_type {
        for flag in &mut mount.mount_flags {
            *flag = HIDDEN.into();
        }
    }
}

macro_rules! redact_secrets {
    ($($ty:ty),* $(,)?) => {
        $(impl Redact for $ty {
            fn redact(&mut self) {
                hide(&mut self.secrets);
            }
        })*
    };
}

macro_rules! nothing_to_redact {
    ($($ty:ty),* $(,)?) => {
        $(impl Redact for $ty {
            fn redact(&mut self) {}
        })*
    };
}

redact_secrets!(
    csi::DeleteVolumeRequest,
    csi::ControllerUnpublishVolumeRequest,
    csi::CreateSnapshotRequest,
    csi::DeleteSnapshotRequest,
    csi::ListSnapshotsRequest,
    csi::GetSnapshotRequest,
    csi::ControllerModifyVolumeRequest,
);

nothing_to_redact!(
    csi::GetPluginInfoRequest,
    csi::GetPluginCapabilitiesRequest,
    csi::ProbeRequest,
    csi::ListVolumesRequest,
    csi::ControllerGetCapabilitiesRequest,
    csi::ControllerGetVolumeRequest,
    csi::NodeUnstageVolumeRequest,
    csi::NodeUnpublishVolumeRequest,
    csi::NodeGetVolumeStatsRequest,
    csi::NodeGetCapabilitiesRequest,
    csi::NodeGetInfoRequest,
);

impl Redact for csi::CreateVolumeRequest {
    fn redact(&mut self) {
        hide(&mut self.secrets);
        self.volume_capabilities.iter_mut().for_each(hide_flags);
    }
}

impl Redact for csi::ValidateVolumeCapabilitiesRequest {
    fn redact(&mut self) {
        hide(&mut self.secrets);
        self.volume_capabilities.iter_mut().for_each(hide_flags);
    }
}

impl Redact for csi::GetCapacityRequest {
    fn redact(&mut self) {
        self.volume_capabilities.iter_mut().for_each(hide_flags);
    }
}

impl Redact for csi::ControllerPublishVolumeRequest {
    fn redact(&mut self) {
        hide(&mut self.secrets);
        self.volume_capability.iter_mut().for_each(hide_flags);
    }
}

impl Redact for csi::ControllerExpandVolumeRequest {
    fn redact(&mut self) {
        hide(&mut self.secrets);
        self.volume_capability.iter_mut().for_each(hide_flags);
    }
}

impl Redact for csi::NodeStageVolumeRequest {
    fn redact(&mut self) {
        hide(&mut self.secrets);
        self.volume_capability.iter_mut().for_each(hide_flags);
    }
}

impl Redact for csi::NodePublishVolumeRequest {
    fn redact(&mut self) {
        hide(&mut self.secrets);
        self.volume_capability.iter_mut().for_each(hide_flags);
    }
}

impl Redact for csi::NodeExpandVolumeRequest {
    fn redact(&mut self) {
        hide(&mut self.secrets);
        self.volume_capability.iter_mut().for_each(hide_flags);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_mount_options_never_reach_the_text() {
        let request = csi::CreateVolumeRequest {
            name: "pvc-1".into(),
            secrets: HashMap::from([("password".to_string(), "hunter2".to_string())]),
            volume_capabilities: vec![VolumeCapability {
                access_type: Some(volume_capability::AccessType::Mount(
                    volume_capability::MountVolume {
                        mount_flags: vec!["sec=krb5,password=hunter3".into()],
                        ..Default::default()
                    },
                )),
                access_mode: None,
            }],
            ..Default::default()
        };
        let text = request.redacted();
        assert!(
            !text.contains("hunter2") && !text.contains("hunter3"),
            "{text}"
        );
        assert!(
            text.contains("password") && text.contains("pvc-1"),
            "{text}"
        );
        // The original is untouched.
        assert_eq!(request.secrets["password"], "hunter2");
    }
}
