//! The Container Storage Interface, v1.12 (`csi.v1`): messages and the Identity, Controller,
//! Node and GroupController services, generated from `proto/csi.proto` at build time; and the
//! part of the Container Runtime Interface (`runtime.v1`) Tether's tests drive a runtime with,
//! from `proto/cri.proto`.

#![allow(clippy::all, clippy::pedantic, clippy::unwrap_used)] // Generated code.

/// Package `csi.v1`.
pub mod v1 {
    tonic::include_proto!("csi.v1");
}

/// Package `runtime.v1` (the CRI), clients only.
pub mod cri {
    tonic::include_proto!("runtime.v1");
}

/// Package `tether.agent.v1`: tether-nfs-agent, on the host that serves an NFS share.
pub mod agent {
    tonic::include_proto!("tether.agent.v1");
}

/// The CSI version this crate implements.
pub const CSI_VERSION: &str = "1.12.0";
