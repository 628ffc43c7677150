//! tether-csi: a CSI driver for persistent volumes on NFS shares.

pub mod controller;
pub mod driver;
pub mod error;
pub mod identity;
pub mod ids;
pub mod locks;
pub mod nfs;
pub mod params;
pub mod redact;
pub mod server;
pub mod store;
