//! `cni-portmap`: Tether's hostPort plugin (chained after the plugin that made the interface).

mod config;
mod error;
mod legacy;
mod plugin;
mod rules;
mod table;

fn main() -> std::process::ExitCode {
    cni_core::run(&plugin::PortmapPlugin)
}
