//! `cni-bridge`: Tether's bridge CNI plugin.

mod bridge;
mod config;
mod error;
mod nft;

fn main() -> std::process::ExitCode {
    cni_core::run(&bridge::BridgePlugin)
}
