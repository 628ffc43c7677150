//! The portmap configuration (field-compatible with the reference `portmap` plugin) and the
//! mappings of one attachment: `runtimeConfig.portMappings` and the container's addresses from
//! `prevResult`.

use std::net::IpAddr;

use cni_core::{CniResult, Request};
use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;

use crate::error::PortmapError;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortmapConfIn {
    snat: Option<bool>,
    mark_masq_bit: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// The IANA protocol number, as nftables keys it.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    pub fn from_number(number: u8) -> Option<Protocol> {
        [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
            .into_iter()
            .find(|p| p.number() == number)
    }

    pub fn parse(text: &str) -> Option<Protocol> {
        match text.to_ascii_lowercase().as_str() {
            "" | "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "sctp" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

/// One `portMappings` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
    /// A specific address of the node, or None for all of them (`""`, `0.0.0.0`, `::` alike,
    /// limited to that family for the latter two).
    pub host_ip: Option<IpAddr>,
    /// With `0.0.0.0` or `::`: only that family.
    pub family: Option<bool>,
}

/// The container's address in one family, with its subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub address: IpNetwork,
}

impl Target {
    pub fn ip(&self) -> IpAddr {
        self.address.ip()
    }

    pub fn subnet(&self) -> IpNetwork {
        IpNetwork::new(self.address.network(), self.address.prefix()).unwrap_or(self.address)
    }
}

pub struct PortmapConf {
    /// Masquerade what needs it to work: connections from the node's own 127.0.0.0/8, and from
    /// pods on the same bridge (the container itself through the node's address included).
    pub snat: bool,
    /// The packet mark bit meaning "masquerade this" (13, as the reference plugin).
    pub mark_bit: u32,
    pub mappings: Vec<Mapping>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MappingIn {
    host_port: i64,
    container_port: i64,
    #[serde(default)]
    protocol: String,
    #[serde(default, rename = "hostIP")]
    host_ip: String,
}

impl PortmapConf {
    pub fn from_request(req: &Request) -> Result<PortmapConf, PortmapError> {
        let raw: PortmapConfIn = req
            .parse_config()
            .map_err(|e| PortmapError::InvalidConfig(e.to_string()))?;
        let mark_bit = raw.mark_masq_bit.unwrap_or(13);
        if mark_bit > 31 {
            return Err(PortmapError::InvalidConfig(format!(
                "markMasqBit {mark_bit} is outside 0-31"
            )));
        }
        let mappings = match req.config.runtime_config.get("portMappings") {
            None | Some(Value::Null) => Vec::new(),
            Some(value) => {
                let mut value = value.clone();
                cni_core::config::fold_keys(
                    &mut value,
                    &["hostPort", "containerPort", "protocol", "hostIP"],
                );
                let entries: Vec<MappingIn> = serde_json::from_value(value).map_err(|e| {
                    PortmapError::InvalidConfig(format!("runtimeConfig.portMappings: {e}"))
                })?;
                entries
                    .into_iter()
                    .map(mapping)
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        Ok(PortmapConf {
            snat: raw.snat.unwrap_or(true),
            mark_bit,
            mappings,
        })
    }
}

fn port(what: &str, value: i64) -> Result<u16, PortmapError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| PortmapError::InvalidConfig(format!("{what} {value} is outside 1-65535")))
}

fn mapping(m: MappingIn) -> Result<Mapping, PortmapError> {
    let protocol = Protocol::parse(&m.protocol).ok_or_else(|| {
        PortmapError::InvalidConfig(format!(
            "protocol {:?} is not one of tcp, udp, sctp",
            m.protocol
        ))
    })?;
    let (host_ip, family) = match m.host_ip.as_str() {
        "" => (None, None),
        text => {
            let ip: IpAddr = text.parse().map_err(|_| {
                PortmapError::InvalidConfig(format!("hostIP {text:?} is not an IP address"))
            })?;
            if ip.is_unspecified() {
                (None, Some(ip.is_ipv6()))
            } else {
                (Some(ip), Some(ip.is_ipv6()))
            }
        }
    };
    Ok(Mapping {
        host_port: port("hostPort", m.host_port)?,
        container_port: port("containerPort", m.container_port)?,
        protocol,
        host_ip,
        family,
    })
}

/// The container's first address of each family in `prev`: those of interfaces inside the
/// sandbox, or, when no address names its interface, all of them.
pub fn targets(prev: &CniResult) -> (Option<Target>, Option<Target>) {
    let in_sandbox = |ip: &&cni_core::IpConfig| match ip.interface {
        Some(i) => prev
            .interfaces
            .get(i)
            .is_some_and(|iface| iface.sandbox.as_deref().is_some_and(|s| !s.is_empty())),
        None => true,
    };
    let first = |v6: bool| {
        prev.ips
            .iter()
            .filter(in_sandbox)
            .find(|ip| ip.address.is_ipv6() == v6)
            .map(|ip| Target {
                address: ip.address,
            })
    };
    (first(false), first(true))
}
