//! `cni-bridge`: Tether's bridge CNI plugin.

mod bridge;
mod config;
mod error;
mod nft;
mod routed;

fn main() -> std::process::ExitCode {
    cni_core::run(&bridge::BridgePlugin)
}
