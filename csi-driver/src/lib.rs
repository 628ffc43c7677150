//! tether-csi: a CSI driver for persistent volumes on NFS shares.

pub mod agent;
pub mod authority;
pub mod client;
pub mod controller;
pub mod copies;
pub mod create;
pub mod driver;
pub mod error;
pub mod ids;
pub mod image;
pub mod locks;
pub mod metrics;
pub mod mounts;
pub mod nfs;
pub mod nfs_mount;
pub mod node;
pub mod node_stats;
pub mod params;
pub mod redact;
pub mod rpc;
pub mod server;
pub mod snapshots;
pub mod store;
pub mod sweep;
pub mod validate;
pub mod wire;
