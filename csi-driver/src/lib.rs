//! tether-csi: a CSI driver for persistent volumes on NFS shares.
//!
//! - `grpc`: the gRPC boundary (services, errors and their status table, request checks);
//! - `controller`: the Controller service's workflows (volumes, snapshots, modify, copies);
//! - `node`: the Node service (mounts, disk images, usage);
//! - `share`: the NFS side (the user-space client, records on the share, ids, parameters);
//! - `agent`: the client of tether-nfs-agent on the NFS server;
//! - `driver`, `server`, `locks`, `metrics`, `client`: the process around them.

pub(crate) mod agent;
pub mod client;
pub(crate) mod controller;
pub(crate) mod driver;
pub(crate) mod grpc;
pub(crate) mod locks;
pub mod metrics;
pub mod node;
pub mod server;
pub mod share;
