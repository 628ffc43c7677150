//! Main-table routes.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric,
    RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{family, Netlink, NlError};

/// One route as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub table: u32,
    pub mtu: Option<u32>,
    pub onlink: bool,
    pub source: Option<IpAddr>,
}

/// A route to add.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub dst: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub oif: u32,
    pub mtu: Option<u32>,
    pub priority: Option<u32>,
    pub onlink: bool,
    /// The source address the node picks for its own packets along the route (`src`).
    pub source: Option<IpAddr>,
}

impl Netlink {
    /// Adds a route to the main table; an identical one already there is success (returns false).
    pub fn add_route(&mut self, spec: &RouteSpec) -> Result<bool, NlError> {
        match self.change(
            RouteNetlinkMessage::NewRoute(route_message(spec)),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(self.err("adding route", describe_route(spec))(e)),
        }
    }

    /// Adds the route, or replaces the one to the same destination.
    pub fn replace_route(&mut self, spec: &RouteSpec) -> Result<(), NlError> {
        self.change(
            RouteNetlinkMessage::NewRoute(route_message(spec)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map_err(self.err("replacing route", describe_route(spec)))
    }

    /// Deletes the main-table route to `dst`; a missing one is success.
    pub fn del_route(&mut self, dst: IpNetwork) -> Result<(), NlError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(dst.ip());
        msg.header.destination_prefix_length = dst.prefix();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.scope = RouteScope::NoWhere;
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                dst.network(),
            )));
        match self.change(RouteNetlinkMessage::DelRoute(msg), 0) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ESRCH | libc::ENOENT)) => Ok(()),
            other => other.map_err(self.err("deleting route", dst)),
        }
    }

    /// The interface the kernel would send a packet to `dst` out of (`ip route get`).
    pub fn route_to(&mut self, dst: IpAddr) -> Result<Option<u32>, NlError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(dst);
        msg.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        match self.exchange(RouteNetlinkMessage::GetRoute(msg), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => {
                    r.attributes.into_iter().find_map(|a| match a {
                        RouteAttribute::Oif(oif) => Some(oif),
                        _ => None,
                    })
                }
                _ => None,
            })),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(self.err("looking up the route to", dst)(e)),
        }
    }

    /// Routes of the main table for one family.
    pub fn routes(&mut self, ipv6: bool) -> Result<Vec<RouteEntry>, NlError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = if ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let replies = self
            .exchange(RouteNetlinkMessage::GetRoute(msg), NLM_F_DUMP)
            .map_err(self.err("listing", "routes"))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => to_route(r, ipv6),
                _ => None,
            })
            .filter(|r| r.table == u32::from(RouteHeader::RT_TABLE_MAIN))
            .collect())
    }
}

fn route_message(spec: &RouteSpec) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family(spec.dst.ip());
    msg.header.destination_prefix_length = spec.dst.prefix();
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Boot;
    msg.header.kind = RouteType::Unicast;
    msg.header.scope = if spec.gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    if spec.onlink {
        msg.header.flags = RouteFlags::Onlink;
    }
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(
            spec.dst.network(),
        )));
    if let Some(gw) = spec.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    msg.attributes.push(RouteAttribute::Oif(spec.oif));
    if let Some(source) = spec.source {
        msg.attributes
            .push(RouteAttribute::PrefSource(RouteAddress::from(source)));
    }
    if let Some(priority) = spec.priority {
        msg.attributes.push(RouteAttribute::Priority(priority));
    }
    if let Some(mtu) = spec.mtu {
        msg.attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
    }
    msg
}

fn describe_route(spec: &RouteSpec) -> String {
    match spec.gateway {
        Some(gw) => format!("{} via {gw} dev #{}", spec.dst, spec.oif),
        None => format!("{} dev #{}", spec.dst, spec.oif),
    }
}

fn to_route(msg: RouteMessage, ipv6: bool) -> Option<RouteEntry> {
    let mut dst_ip: Option<IpAddr> = None;
    let mut entry = RouteEntry {
        dst: IpNetwork::new(
            if ipv6 {
                IpAddr::from([0u16; 8])
            } else {
                IpAddr::from([0u8; 4])
            },
            0,
        )
        .ok()?,
        gateway: None,
        oif: None,
        table: u32::from(msg.header.table),
        mtu: None,
        onlink: msg.header.flags.contains(RouteFlags::Onlink),
        source: None,
    };
    for attr in msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst_ip = route_ip(a),
            RouteAttribute::Gateway(a) => entry.gateway = route_ip(a),
            RouteAttribute::Oif(i) => entry.oif = Some(i),
            RouteAttribute::PrefSource(a) => entry.source = route_ip(a),
            RouteAttribute::Table(t) => entry.table = t,
            RouteAttribute::Metrics(metrics) => {
                entry.mtu = metrics.iter().find_map(|m| match m {
                    RouteMetric::Mtu(mtu) => Some(*mtu),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    if let Some(ip) = dst_ip {
        entry.dst = IpNetwork::new(ip, msg.header.destination_prefix_length).ok()?;
    }
    Some(entry)
}

fn route_ip(address: RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(v6)),
        _ => None,
    }
}
