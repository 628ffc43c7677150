//! `cni-overlay`: delegates to cni-bridge with the node's overlay subnet.

fn main() -> std::process::ExitCode {
    cni_core::run(&cni_overlay::plugin::OverlayPlugin)
}
