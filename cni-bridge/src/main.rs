//! `cni-bridge`: Tether's bridge CNI plugin.

fn main() -> std::process::ExitCode {
    cni_core::run(&cni_bridge::BridgePlugin)
}
