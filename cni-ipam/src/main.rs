//! `cni-ipam`: Tether's host-local IPAM plugin.

mod config;
mod dns;
mod error;
mod ipam;
mod range;
mod store;

fn main() -> std::process::ExitCode {
    cni_core::run(&ipam::HostLocalIpam)
}
