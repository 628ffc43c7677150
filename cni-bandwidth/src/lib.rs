//! Tether's traffic shaping plugin, chained after the plugin that made the veth. The executable
//! is `cni-bandwidth`; cni-overlay links the plugin and can call it in-process.

mod config;
mod error;
mod plugin;
mod shape;

pub use plugin::BandwidthPlugin;
