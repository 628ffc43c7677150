//! `cni-ipam`: Tether's host-local IPAM plugin.

fn main() -> std::process::ExitCode {
    cni_core::run(&cni_ipam::HostLocalIpam)
}
