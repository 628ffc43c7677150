//! `cni-bandwidth`: Tether's traffic shaping plugin (chained after the plugin that made the veth).

mod config;
mod error;
mod plugin;
mod shape;

fn main() -> std::process::ExitCode {
    cni_core::run(&plugin::BandwidthPlugin)
}
