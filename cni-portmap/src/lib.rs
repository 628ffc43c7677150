//! Tether's hostPort plugin: hostPort mappings with nftables (DNAT, hairpin and localhost SNAT,
//! UDP conntrack flush), chained after the plugin that made the interface. The executable is
//! `cni-portmap`; cni-overlay links the plugin and can call it in-process.

mod config;
mod error;
mod legacy;
mod plugin;
mod rules;
pub mod table;

pub use plugin::PortmapPlugin;
