//! Reachability probes for policy tests: `probe.py` (next to this crate) serves TCP and UDP on
//! some ports inside a pod's namespace, and tries connections from one.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};

use crate::Netns;

/// The probe script's path.
pub fn script() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/probe.py").to_string()
}

/// Servers (TCP and UDP echo) on `ports` inside `pod`, until dropped.
pub struct Servers(Child);

impl Drop for Servers {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn serve(pod: &Netns, ports: &[u16]) -> Servers {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let child = Command::new("ip")
        .args(["netns", "exec", &pod.name, "python3", &script(), "serve"])
        .args(&ports)
        .stdout(Stdio::null())
        .spawn()
        .expect("starting the probe servers");
    Servers(child)
}

/// Tries every `ip:proto:port` target from `from` at once; which answered.
pub fn reach(from: &Netns, targets: &[String]) -> BTreeMap<String, bool> {
    let out = Command::new("ip")
        .args(["netns", "exec", &from.name, "python3", &script(), "probe"])
        .args(targets)
        .output()
        .expect("running the probe");
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Whether `target` (`ip:proto:port`) answers from `from`.
pub fn open(from: &Netns, target: &str) -> bool {
    reach(from, &[target.to_string()])
        .get(target)
        .copied()
        .unwrap_or(false)
}
