//! `cni-portmap`: Tether's hostPort plugin (chained after the plugin that made the interface).

fn main() -> std::process::ExitCode {
    cni_core::run(&cni_portmap::PortmapPlugin)
}
