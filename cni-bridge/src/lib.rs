//! Tether's bridge CNI plugin: a Linux bridge, a veth pair per pod, gateway, routes, masquerade.
//! The executable is `cni-bridge`; cni-overlay links the plugin and calls it in-process, and it
//! calls cni-ipam the same way.

mod bridge;
mod config;
mod error;
mod nft;
mod routed;

pub use bridge::BridgePlugin;
