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
            ipam_type,
            dns: raw.dns,
            mac,
        })
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
