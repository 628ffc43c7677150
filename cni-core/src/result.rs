//! The ADD result, held in the 1.1.0 shape and rendered for whichever version the caller asked for.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::version::Version;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(
        rename = "socketPath",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_path: Option<String>,
    #[serde(rename = "pciID", default, skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with the prefix length of its subnet, e.g. `10.1.0.5/24`.
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

impl Route {
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Self {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

const FIELDS_NEW_IN_1_1_INTERFACE: [&str; 3] = ["mtu", "socketPath", "pciID"];
const FIELDS_NEW_IN_1_1_ROUTE: [&str; 5] = ["mtu", "advmss", "priority", "table", "scope"];

impl CniResult {
    /// Parses a result of any supported version (e.g. a `prevResult` or a delegate's output).
    /// `ips[].version` of pre-1.0 results is implied by the address and ignored.
    pub fn from_value(value: &Value) -> Result<CniResult, serde_json::Error> {
        CniResult::deserialize(value)
    }

    /// Renders the result as the given spec version expects it, `cniVersion` included.
    pub fn to_value(&self, version: Version) -> Value {
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        if !self.interfaces.is_empty() {
            let interfaces = self
                .interfaces
                .iter()
                .map(|i| strip_new_fields(i, version, &FIELDS_NEW_IN_1_1_INTERFACE))
                .collect();
            out.insert("interfaces".into(), Value::Array(interfaces));
        }
        if !self.ips.is_empty() {
            let ips = self
                .ips
                .iter()
                .map(|ip| {
                    let mut entry = to_object(ip);
                    if version.ip_entries_carry_version() {
                        let family = if ip.address.is_ipv4() { "4" } else { "6" };
                        entry.insert("version".into(), json!(family));
                    }
                    Value::Object(entry)
                })
                .collect();
            out.insert("ips".into(), Value::Array(ips));
        }
        if !self.routes.is_empty() {
            let routes = self
                .routes
                .iter()
                .map(|r| strip_new_fields(r, version, &FIELDS_NEW_IN_1_1_ROUTE))
                .collect();
            out.insert("routes".into(), Value::Array(routes));
        }
        if !self.dns.is_empty() {
            out.insert("dns".into(), Value::Object(to_object(&self.dns)));
        }
        Value::Object(out)
    }
}

fn to_object<T: Serialize>(item: &T) -> Map<String, Value> {
    match serde_json::to_value(item) {
        Ok(Value::Object(map)) => map,
        // Every type passed here is a struct, which serializes to an object.
        _ => Map::new(),
    }
}

fn strip_new_fields<T: Serialize>(item: &T, version: Version, new_fields: &[&str]) -> Value {
    let mut entry = to_object(item);
    if !version.has_1_1_fields() {
        for field in new_fields {
            entry.remove(*field);
        }
    }
    Value::Object(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: Some("0a:58:0a:01:00:05".into()),
                mtu: Some(1350),
                sandbox: Some("/var/run/netns/x".into()),
                socket_path: None,
                pci_id: None,
            }],
            ips: vec![
                IpConfig {
                    address: "10.1.0.5/24".parse().unwrap(),
                    gateway: Some("10.1.0.1".parse().unwrap()),
                    interface: Some(0),
                },
                IpConfig {
                    address: "fd00::5/64".parse().unwrap(),
                    gateway: None,
                    interface: Some(0),
                },
            ],
            routes: vec![Route {
                mtu: Some(1300),
                ..Route::new("0.0.0.0/0".parse().unwrap(), None)
            }],
            dns: Dns {
                nameservers: vec!["10.96.0.10".into()],
                ..Dns::default()
            },
        }
    }

    #[test]
    fn version_1_1_keeps_everything_without_ip_version() {
        let v = sample().to_value(Version::V1_1_0);
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["interfaces"][0]["mtu"], 1350);
        assert_eq!(v["routes"][0]["mtu"], 1300);
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["ips"][0]["address"], "10.1.0.5/24");
        assert_eq!(v["dns"]["nameservers"][0], "10.96.0.10");
    }

    #[test]
    fn version_1_0_drops_1_1_fields() {
        let v = sample().to_value(Version::V1_0_0);
        assert!(v["interfaces"][0].get("mtu").is_none());
        assert!(v["routes"][0].get("mtu").is_none());
        assert_eq!(v["interfaces"][0]["sandbox"], "/var/run/netns/x");
        assert!(v["ips"][0].get("version").is_none());
    }

    #[test]
    fn versions_below_1_0_add_ip_version() {
        for version in [Version::V0_3_0, Version::V0_3_1, Version::V0_4_0] {
            let v = sample().to_value(version);
            assert_eq!(v["cniVersion"], version.as_str());
            assert_eq!(v["ips"][0]["version"], "4");
            assert_eq!(v["ips"][1]["version"], "6");
            assert!(v["routes"][0].get("mtu").is_none());
        }
    }

    #[test]
    fn ipam_results_have_no_interfaces_key() {
        let mut r = sample();
        r.interfaces.clear();
        let v = r.to_value(Version::V1_1_0);
        assert!(v.get("interfaces").is_none());
    }

    #[test]
    fn parses_old_and_new_results() {
        let old = json!({"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.1.0.5/24", "gateway": "10.1.0.1"}]});
        let r = CniResult::from_value(&old).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.1.0.5/24");
        let round = CniResult::from_value(&sample().to_value(Version::V1_1_0)).unwrap();
        assert_eq!(round, sample());
    }
}
