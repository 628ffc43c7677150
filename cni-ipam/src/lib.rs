//! Tether's host-local IPAM plugin: leases addresses from node-local ranges on disk. The
//! executable is `cni-ipam`; cni-bridge links the plugin and calls it in-process.

mod config;
mod dns;
mod error;
mod ipam;
mod range;
mod store;

pub use ipam::HostLocalIpam;
