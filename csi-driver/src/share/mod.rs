//! The NFS side: what a volume is on a share and how to reach it. `nfs` is the user-space NFS
//! client the controller works through (no kernel mount), `store` the records, claims and
//! snapshots kept under `.tether/` on each share, `ids` the volume and snapshot ids and the
//! names and paths they are made of, `params` the StorageClass parameters a volume is made
//! with, and `mutable` the ones a VolumeAttributesClass may change later.

pub mod ids;
pub(crate) mod mutable;
pub(crate) mod nfs;
pub(crate) mod params;
pub mod store;
