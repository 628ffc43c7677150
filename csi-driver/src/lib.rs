//! tether-csi: a CSI driver for persistent volumes on NFS shares.

pub mod client;
pub mod controller;
pub mod driver;
pub mod error;
pub mod identity;
pub mod ids;
pub mod image;
pub mod locks;
pub mod mounts;
pub mod nfs;
pub mod node;
pub mod params;
pub mod redact;
pub mod server;
pub mod store;
