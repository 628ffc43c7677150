//! `--leave --purge`: what Tether's CNI chain left on a node that is switching to another CNI
//! (drain it first: pods still on the bridge lose their network). Read from the conflist the
//! node was given, so that the names are the ones in use: the bridge (`cni0` unless set), the
//! IPAM lease directory of the network, cni-overlay's state directory, and Tether's nftables
//! tables (cni-bridge's `inet tether` and `bridge tether`, cni-portmap's `inet tether-hostports`, and `inet tether-portmap` of its earlier layout).
//! Every step is tried; the failures are reported together.

use std::path::{Path, PathBuf};

use cni_core::firewall::types::NfFamily;
use cni_core::firewall::{build, list_table, Batch};
use cni_core::netlink::Netlink;
use cni_core::teardown::Failures;
use serde_json::Value;

use super::error::DaemonError;

/// cni-ipam's default lease directory (its `DEFAULT_DATA_DIR`) and the bridge cni-overlay
/// delegates to unless the conflist names one (`plugin::delegate_config`).
const IPAM_DATA_DIR: &str = "/var/lib/cni/networks";
const BRIDGE: &str = "cni0";

/// The names the chain used, from the conflist (defaults where it sets none).
#[derive(Debug, PartialEq, Eq)]
pub struct Leftovers {
    pub bridge: String,
    pub lease_dir: PathBuf,
    pub state_dir: PathBuf,
}

impl Leftovers {
    pub fn from_conflist(text: &str) -> Result<Leftovers, DaemonError> {
        let conflist: Value = serde_json::from_str(text)
            .map_err(|e| DaemonError::Config(format!("the conflist is not JSON: {e}")))?;
        let network = conflist
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| DaemonError::Config("the conflist has no name".into()))?;
        let overlay = conflist
            .get("plugins")
            .and_then(Value::as_array)
            .and_then(|p| {
                p.iter()
                    .find(|p| p.get("type").and_then(Value::as_str) == Some("cni-overlay"))
            })
            .ok_or_else(|| DaemonError::Config("the conflist chains no cni-overlay".into()))?;
        let text_of = |value: Option<&Value>, default: &str| {
            value.and_then(Value::as_str).unwrap_or(default).to_string()
        };
        let data_dir = text_of(
            overlay.get("ipam").and_then(|i| i.get("dataDir")),
            IPAM_DATA_DIR,
        );
        Ok(Leftovers {
            bridge: text_of(overlay.get("bridge"), BRIDGE),
            lease_dir: Path::new(&data_dir).join(network),
            state_dir: PathBuf::from(text_of(
                overlay.get("stateDir"),
                crate::plugin::DEFAULT_STATE_DIR,
            )),
        })
    }

    /// Removes them all (what is gone already is fine).
    pub fn remove(&self) -> Result<(), DaemonError> {
        let mut failures: Failures<DaemonError> = Failures::new("purge step");
        failures.note(remove_bridge(&self.bridge));
        for (family, table) in [
            (NfFamily::INet, "tether"),
            (NfFamily::Bridge, "tether"),
            (NfFamily::INet, "tether-hostports"),
            (NfFamily::INet, "tether-portmap"),
        ] {
            failures.note(remove_table(family, table));
        }
        for dir in [&self.lease_dir, &self.state_dir] {
            failures.note(remove_dir(dir));
        }
        failures.finish_with(DaemonError::Several)?;
        tracing::info!(bridge = %self.bridge, leases = %self.lease_dir.display(), state = %self.state_dir.display(), "purged the CNI chain's leftovers");
        Ok(())
    }
}

fn remove_bridge(name: &str) -> Result<(), DaemonError> {
    let mut nl = Netlink::open()?;
    if nl.delete_link(name)? {
        tracing::info!(bridge = name, "bridge removed");
    }
    Ok(())
}

fn remove_table(family: NfFamily, name: &str) -> Result<(), DaemonError> {
    if !list_table(family, name)?.exists {
        return Ok(());
    }
    let mut batch = Batch::new();
    batch.delete(build::table(family, name));
    batch.apply()?;
    tracing::info!(table = name, ?family, "nftables table removed");
    Ok(())
}

fn remove_dir(dir: &Path) -> Result<(), DaemonError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {
            tracing::info!(dir = %dir.display(), "removed");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DaemonError::KernelState(format!(
            "removing {}: {e}",
            dir.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_conflist() {
        let deployed = r#"{"cniVersion":"1.0.0","name":"tether","plugins":[
            {"type":"cni-overlay","stateDir":"/var/lib/cni/tether-overlay"},
            {"type":"cni-portmap"}]}"#;
        assert_eq!(
            Leftovers::from_conflist(deployed).unwrap(),
            Leftovers {
                bridge: "cni0".into(),
                lease_dir: "/var/lib/cni/networks/tether".into(),
                state_dir: "/var/lib/cni/tether-overlay".into(),
            }
        );
        let custom = r#"{"name":"pods","plugins":[{"type":"cni-overlay","bridge":"br-pods",
            "ipam":{"dataDir":"/srv/leases"}}]}"#;
        let custom = Leftovers::from_conflist(custom).unwrap();
        assert_eq!(custom.bridge, "br-pods");
        assert_eq!(custom.lease_dir, PathBuf::from("/srv/leases/pods"));
        assert!(Leftovers::from_conflist(r#"{"name":"x","plugins":[]}"#).is_err());
    }
}
