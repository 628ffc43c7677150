//! tether-nfs-agent: runs on the host that serves an NFS share, next to the exported
//! filesystem, and does for tether-csi's controller what NFS cannot — copy-on-write clones of a
//! file (a point-in-time snapshot of an image volume in one step) or of a tree, and directory
//! limits with project quotas — over gRPC with mutual TLS. It acts only below the export roots
//! it is given ([`paths`]).

pub mod clone;
pub mod error;
pub mod fsinfo;
pub mod paths;
pub mod quota;
pub mod service;
mod sys;
