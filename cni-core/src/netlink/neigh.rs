//! Permanent neighbour (ARP/NDP) entries and the forwarding (FDB) entries of VXLAN devices.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::link::format_mac;
use super::{family, is_missing, Netlink, NlError};

/// A permanent neighbour (ARP/NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Neighbour {
    pub ip: IpAddr,
    pub mac: Vec<u8>,
}

/// A bridge forwarding entry of a VXLAN device: frames for `mac` go to underlay address `dst`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbEntry {
    pub mac: Vec<u8>,
    pub dst: Option<IpAddr>,
}

impl Netlink {
    /// Permanent neighbour entries of one device.
    pub fn neighbours(&mut self, index: u32) -> Result<Vec<Neighbour>, NlError> {
        let replies = self
            .exchange(
                RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(self.err("listing neighbours of", format!("#{index}")))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n)
                    if n.header.ifindex == index
                        && n.header.state == NeighbourState::Permanent
                        && n.header.family != AddressFamily::Bridge =>
                {
                    let mut ip = None;
                    let mut mac = None;
                    for attr in &n.attributes {
                        match attr {
                            NeighbourAttribute::Destination(a) => ip = neighbour_ip(a),
                            NeighbourAttribute::LinkLayerAddress(m) => mac = Some(m.clone()),
                            _ => {}
                        }
                    }
                    Some(Neighbour { ip: ip?, mac: mac? })
                }
                _ => None,
            })
            .collect())
    }

    /// Adds or replaces a permanent neighbour entry.
    pub fn set_neighbour(&mut self, index: u32, entry: &Neighbour) -> Result<(), NlError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family(entry.ip);
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.attributes
            .push(NeighbourAttribute::Destination(entry.ip.into()));
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(entry.mac.clone()));
        self.change(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map_err(self.err(
            "setting neighbour",
            format!("{} lladdr {} on #{index}", entry.ip, format_mac(&entry.mac)),
        ))
    }

    pub fn del_neighbour(&mut self, index: u32, ip: IpAddr) -> Result<(), NlError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family(ip);
        msg.header.ifindex = index;
        msg.attributes
            .push(NeighbourAttribute::Destination(ip.into()));
        match self.change(RouteNetlinkMessage::DelNeighbour(msg), 0) {
            Err(e) if is_missing(&e) => Ok(()),
            other => other.map_err(self.err("deleting neighbour", format!("{ip} on #{index}"))),
        }
    }

    /// Permanent forwarding entries (with their remote address) of a VXLAN device.
    pub fn fdb(&mut self, index: u32) -> Result<Vec<FdbEntry>, NlError> {
        let mut request = NeighbourMessage::default();
        request.header.family = AddressFamily::Bridge;
        let replies = self
            .exchange(RouteNetlinkMessage::GetNeighbour(request), NLM_F_DUMP)
            .map_err(self.err("listing forwarding entries of", format!("#{index}")))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n)
                    if n.header.ifindex == index
                        && n.header.family == AddressFamily::Bridge
                        && n.header.state == NeighbourState::Permanent =>
                {
                    let mut entry = FdbEntry {
                        mac: Vec::new(),
                        dst: None,
                    };
                    for attr in &n.attributes {
                        match attr {
                            NeighbourAttribute::LinkLayerAddress(m) => entry.mac = m.clone(),
                            NeighbourAttribute::Destination(a) => entry.dst = neighbour_ip(a),
                            _ => {}
                        }
                    }
                    (!entry.mac.is_empty()).then_some(entry)
                }
                _ => None,
            })
            .collect())
    }

    /// Adds or replaces the forwarding entry for `entry.mac`.
    pub fn set_fdb(&mut self, index: u32, entry: &FdbEntry) -> Result<(), NlError> {
        let msg = fdb_message(index, entry);
        self.change(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map_err(self.err(
            "setting forwarding entry",
            format!("{} on #{index}", format_mac(&entry.mac)),
        ))
    }

    pub fn del_fdb(&mut self, index: u32, entry: &FdbEntry) -> Result<(), NlError> {
        match self.change(
            RouteNetlinkMessage::DelNeighbour(fdb_message(index, entry)),
            0,
        ) {
            Err(e) if is_missing(&e) => Ok(()),
            other => other.map_err(self.err(
                "deleting forwarding entry",
                format!("{} on #{index}", format_mac(&entry.mac)),
            )),
        }
    }
}

fn fdb_message(index: u32, entry: &FdbEntry) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(entry.mac.clone()));
    if let Some(dst) = entry.dst {
        msg.attributes
            .push(NeighbourAttribute::Destination(dst.into()));
    }
    msg
}

fn neighbour_ip(address: &NeighbourAddress) -> Option<IpAddr> {
    match address {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        // AF_BRIDGE entries (VXLAN FDB) carry the remote address as raw bytes.
        NeighbourAddress::Other(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(bytes.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(bytes.as_slice())
                .ok()
                .map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}
