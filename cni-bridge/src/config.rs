//! The bridge plugin's configuration, field-compatible with the reference `bridge` plugin.

use cni_core::netlink::parse_mac;
use cni_core::{Dns, Request};
use serde::Deserialize;
use serde_json::Value;

use crate::error::BridgeError;

pub const DEFAULT_BRIDGE: &str = "cni0";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BridgeConfIn {
    bridge: Option<String>,
    #[serde(default)]
    is_gateway: bool,
    #[serde(default)]
    is_default_gateway: bool,
    #[serde(default)]
    force_address: bool,
    #[serde(default)]
    ip_masq: bool,
    mtu: Option<u32>,
    #[serde(default)]
    hairpin_mode: bool,
    #[serde(default)]
    promisc_mode: bool,
    #[serde(default)]
    vlan: u16,
    #[serde(default)]
    macspoofchk: bool,
    #[serde(default)]
    port_isolation: bool,
    #[serde(default)]
    routed: bool,
    ipam: Option<Value>,
    dns: Option<Dns>,
}

#[derive(Debug, Clone)]
pub struct BridgeConf {
    pub bridge: String,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub force_address: bool,
    pub ip_masq: bool,
    pub mtu: Option<u32>,
    pub hairpin_mode: bool,
    pub promisc_mode: bool,
    /// 0 = no VLAN.
    pub vlan: u16,
    pub macspoofchk: bool,
    /// Pods of the bridge reach each other only through the host (isolated bridge ports, the
    /// pod's subnet routed via the gateway), so netfilter sees that traffic as routed: policies
    /// and Service NAT apply between pods of one node without br_netfilter.
    pub port_isolation: bool,
    /// Each pod's host veth is a routed link of its own, not a bridge port: a host route per pod
    /// address, static neighbours on both ends, the bridge only holding the gateway addresses.
    /// Every packet of a pod enters and leaves through the node's IP stack, so Service and
    /// hostPort DNAT, hairpin and policies work the same whatever br_netfilter says.
    pub routed: bool,
    /// The IPAM plugin to run; it gets the whole configuration and reads its `ipam` section.
    pub ipam_type: Option<String>,
    pub dns: Option<Dns>,
    /// Pod interface MAC from `runtimeConfig.mac` or `CNI_ARGS` `MAC=`.
    pub mac: Option<[u8; 6]>,
}

impl BridgeConf {
    pub fn from_request(req: &Request) -> Result<BridgeConf, BridgeError> {
        let raw: BridgeConfIn = req
            .parse_config()
            .map_err(|e| BridgeError::InvalidConfig(e.to_string()))?;
        let bridge = raw.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        if !cni_core::config::is_valid_ifname(&bridge) {
            return Err(BridgeError::InvalidConfig(format!(
                "bridge name {bridge:?} is not a valid interface name"
            )));
        }
        if let Some(mtu) = raw.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(BridgeError::InvalidConfig(format!(
                    "mtu {mtu} is outside 68-65535"
                )));
            }
        }
        if raw.vlan > 4094 {
            return Err(BridgeError::InvalidConfig(format!(
                "vlan {} is outside 0-4094",
                raw.vlan
            )));
        }
        let ipam_type = match &raw.ipam {
            None => None,
            Some(ipam) => Some(
                ipam.get("type")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| BridgeError::InvalidConfig("ipam.type is missing".into()))?
                    .to_string(),
            ),
        };
        // A default gateway is only meaningful if the bridge is that gateway.
        let is_gateway = raw.is_gateway || raw.is_default_gateway;
        if is_gateway && raw.ipam.is_none() {
            return Err(BridgeError::InvalidConfig(
                "isGateway needs an ipam section to know the gateway address".into(),
            ));
        }
        if raw.port_isolation && !is_gateway {
            return Err(BridgeError::InvalidConfig(
                "portIsolation needs isGateway: isolated pods reach each other through the bridge's gateway address".into(),
            ));
        }
        if raw.routed && !is_gateway {
            return Err(BridgeError::InvalidConfig(
                "routed needs isGateway: the bridge holds the routed pods' gateway addresses"
                    .into(),
            ));
        }
        if raw.routed {
            let bridge_port_only = [
                ("portIsolation", raw.port_isolation),
                ("vlan", raw.vlan != 0),
                ("macspoofchk", raw.macspoofchk),
            ];
            if let Some((field, _)) = bridge_port_only.iter().find(|(_, set)| *set) {
                return Err(BridgeError::InvalidConfig(format!(
                    "routed cannot be combined with {field}: it applies to bridge ports, and a routed pod's veth is none"
                )));
            }
        }
        let mac = pod_mac(req)?;
        Ok(BridgeConf {
            bridge,
            is_gateway,
            is_default_gateway: raw.is_default_gateway,
            force_address: raw.force_address,
            ip_masq: raw.ip_masq,
            mtu: raw.mtu,
            hairpin_mode: raw.hairpin_mode,
            promisc_mode: raw.promisc_mode,
            vlan: raw.vlan,
            macspoofchk: raw.macspoofchk,
            port_isolation: raw.port_isolation,
            routed: raw.routed,
            ipam_type,
            dns: raw.dns,
            mac,
        })
    }
}

impl BridgeConf {
    /// Pods reach their own subnet through the gateway, not on the link.
    pub fn subnet_via_gateway(&self) -> bool {
        self.port_isolation || self.routed
    }
}

fn pod_mac(req: &Request) -> Result<Option<[u8; 6]>, BridgeError> {
    let from_runtime = req
        .config
        .runtime_config
        .get("mac")
        .and_then(Value::as_str)
        .map(str::to_string);
    let Some(text) = from_runtime.or_else(|| req.args.get("MAC").map(str::to_string)) else {
        return Ok(None);
    };
    let mac = parse_mac(&text)
        .ok_or_else(|| BridgeError::InvalidConfig(format!("MAC {text:?} is not a MAC address")))?;
    if mac[0] & 1 == 1 {
        return Err(BridgeError::InvalidConfig(format!(
            "MAC {text} is a multicast address"
        )));
    }
    Ok(Some(mac))
}
