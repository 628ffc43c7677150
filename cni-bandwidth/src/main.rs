//! `cni-bandwidth`: Tether's traffic shaping plugin (chained after the plugin that made the veth).

fn main() -> std::process::ExitCode {
    cni_core::run(&cni_bandwidth::BandwidthPlugin)
}
