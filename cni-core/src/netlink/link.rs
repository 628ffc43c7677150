//! Links: lookups, veth pairs, bridges and their ports (hairpin, VLANs), VXLAN devices, flags.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::link::{
    AfSpecBridge, AfSpecInet6, AfSpecUnspec, BridgeFlag, BridgeVlanInfo, BridgeVlanInfoFlags,
    In6AddrGenMode, InfoBridge, InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind,
    InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{is_missing, Netlink, NlError};
use crate::netns::NetNs;

/// Link groups (`IFLA_GROUP`) that mark the links Tether's plugins make, set in the very request
/// that creates the link (the kernel takes a group with RTM_NEWLINK, an alias only afterwards):
/// a link whose creator was killed before naming its owner in the alias is still known as ours,
/// so GC can find it, and a link of our name in another group is known as someone else's.
pub mod group {
    /// The host end of a pod's veth (cni-bridge).
    pub const POD_VETH: u32 = 0x7e7e_0b01;
    /// The ifb a pod's egress is shaped on (cni-bandwidth).
    pub const SHAPING_IFB: u32 = 0x7e7e_0b02;
}

/// What the kernel says about one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_GROUP` (0, the default group, unless set; see [`group`]).
    pub group: u32,
    pub mac: Option<Vec<u8>>,
    pub mtu: u32,
    pub master: Option<u32>,
    pub up: bool,
    pub promisc: bool,
    pub alias: Option<String>,
    pub kind: Option<String>,
    /// For a veth: the peer's index (in its own namespace).
    pub peer_index: Option<u32>,
    pub hairpin: Option<bool>,
    pub vxlan: Option<VxlanInfo>,
}

/// The settings of a VXLAN device that matter for reconciling it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VxlanInfo {
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<IpAddr>,
    pub underlay: Option<u32>,
    pub learning: Option<bool>,
}

/// A VXLAN device to create.
#[derive(Debug, Clone)]
pub struct VxlanSpec<'a> {
    pub name: &'a str,
    pub vni: u32,
    pub port: u16,
    pub local: IpAddr,
    pub underlay: u32,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
}

impl Link {
    pub fn mac_string(&self) -> Option<String> {
        self.mac.as_ref().map(|m| format_mac(m))
    }
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut out {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// The two ends of a veth pair, created with one request.
#[derive(Debug, Clone)]
pub struct VethSpec<'a> {
    pub host_name: &'a str,
    pub host_alias: Option<&'a str>,
    /// The host end's link group, set as it is created (see [`group`]).
    pub host_group: u32,
    pub host_master: Option<u32>,
    pub peer_name: &'a str,
    pub peer_mac: Option<[u8; 6]>,
    pub peer_netns: &'a NetNs,
    pub mtu: u32,
}

impl Netlink {
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, NlError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.exchange(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(to_link)),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(self.err("looking up link", name)(e)),
        }
    }

    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>, NlError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.exchange(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(to_link)),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(self.err("looking up link", format!("#{index}"))(e)),
        }
    }

    pub fn links(&mut self) -> Result<Vec<Link>, NlError> {
        let replies = self
            .exchange(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(self.err("listing", "links"))?;
        Ok(replies.into_iter().filter_map(to_link).collect())
    }

    /// Creates a bridge; an existing link of that name is left alone. Returns whether it was made.
    pub fn create_bridge(
        &mut self,
        name: &str,
        mtu: Option<u32>,
        vlan_filtering: bool,
    ) -> Result<bool, NlError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        let mut info = vec![LinkInfo::Kind(InfoKind::Bridge)];
        if vlan_filtering {
            info.push(LinkInfo::Data(InfoData::Bridge(vec![
                InfoBridge::VlanFiltering(true),
            ])));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(info));
        match self.change(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(self.err("creating bridge", name)(e)),
        }
    }

    pub fn set_vlan_filtering(&mut self, index: u32, on: bool) -> Result<(), NlError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::VlanFiltering(on)])),
        ]));
        self.change(RouteNetlinkMessage::NewLink(msg), 0)
            .map_err(self.err("setting vlan_filtering on", format!("#{index}")))
    }

    /// Creates both ends of a veth pair in one request: the host end here and the peer straight
    /// inside its namespace; then brings the host end up.
    ///
    /// The host end gets no IPv6 address of its own (a bridge port's addresses are never used, and
    /// a routed pod reaches its gateway through a static neighbour entry): no link-local address,
    /// so no duplicate address detection, router solicitations or per-port fe80::/64 route, work
    /// that otherwise holds the RTNL lock and grows with the number of pods on the node.
    pub fn create_veth(&mut self, spec: &VethSpec<'_>) -> Result<(), NlError> {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(spec.peer_name.to_string()));
        peer.attributes.push(LinkAttribute::Mtu(spec.mtu));
        peer.attributes
            .push(LinkAttribute::NetNsFd(spec.peer_netns.raw_fd()));
        if let Some(mac) = spec.peer_mac {
            peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        let mut host = LinkMessage::default();
        host.attributes
            .push(LinkAttribute::IfName(spec.host_name.to_string()));
        host.attributes.push(LinkAttribute::Group(spec.host_group));
        host.attributes.push(LinkAttribute::Mtu(spec.mtu));
        if let Some(master) = spec.host_master {
            host.attributes.push(LinkAttribute::Controller(master));
        }
        host.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.change(
            RouteNetlinkMessage::NewLink(host),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(self.err(
            "creating veth",
            format!(
                "{} (peer {} in {})",
                spec.host_name,
                spec.peer_name,
                spec.peer_netns.path().display()
            ),
        ))?;
        // Set while the link is down, before IPv6 could make a link-local address.
        let mut settings = LinkMessage::default();
        settings
            .attributes
            .push(LinkAttribute::IfName(spec.host_name.to_string()));
        if let Some(alias) = spec.host_alias {
            settings
                .attributes
                .push(LinkAttribute::IfAlias(alias.to_string()));
        }
        settings
            .attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]));
        self.change(RouteNetlinkMessage::SetLink(settings), 0)
            .map_err(self.err("setting alias and addrgenmode on", spec.host_name))?;
        let mut up = flags_message(LinkFlags::Up, true);
        up.attributes
            .push(LinkAttribute::IfName(spec.host_name.to_string()));
        self.change(RouteNetlinkMessage::SetLink(up), 0)
            .map_err(self.err("bringing up link", spec.host_name))
    }

    /// Deletes a link by name. A link that is already gone is success (returns false).
    pub fn delete_link(&mut self, name: &str) -> Result<bool, NlError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.change(RouteNetlinkMessage::DelLink(msg), 0) {
            Ok(()) => Ok(true),
            Err(e) if is_missing(&e) => Ok(false),
            Err(e) => Err(self.err("deleting link", name)(e)),
        }
    }

    fn set_flags(
        &mut self,
        index: u32,
        flag: LinkFlags,
        on: bool,
        what: &'static str,
    ) -> Result<(), NlError> {
        let mut msg = flags_message(flag, on);
        msg.header.index = index;
        self.change(RouteNetlinkMessage::SetLink(msg), 0)
            .map_err(self.err(what, format!("#{index}")))
    }

    pub fn set_up(&mut self, index: u32) -> Result<(), NlError> {
        self.set_flags(index, LinkFlags::Up, true, "bringing up link")
    }

    /// No IPv6 address of the link's own (`addrgenmode none`): no link-local address, and so no
    /// duplicate address detection, router solicitation or MLD report from it. Set while the
    /// link is down.
    pub fn set_no_ipv6_link_local(&mut self, index: u32) -> Result<(), NlError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]));
        self.change(RouteNetlinkMessage::SetLink(msg), 0)
            .map_err(self.err("setting addrgenmode none on", format!("#{index}")))
    }

    pub fn set_promisc(&mut self, index: u32, on: bool) -> Result<(), NlError> {
        self.set_flags(index, LinkFlags::Promisc, on, "setting promiscuous mode on")
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NlError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.change(RouteNetlinkMessage::SetLink(msg), 0)
            .map_err(self.err("setting MTU on", format!("#{index}")))
    }

    pub fn set_hairpin(&mut self, index: u32, on: bool) -> Result<(), NlError> {
        self.set_bridge_port(
            index,
            InfoBridgePort::HairpinMode(on),
            "setting hairpin mode on",
        )
    }

    /// An isolated bridge port forwards to no other isolated port: only to and from the bridge
    /// itself (and non-isolated ports).
    pub fn set_isolated(&mut self, index: u32, on: bool) -> Result<(), NlError> {
        self.set_bridge_port(index, InfoBridgePort::Isolated(on), "isolating bridge port")
    }

    fn set_bridge_port(
        &mut self,
        index: u32,
        option: InfoBridgePort,
        action: &'static str,
    ) -> Result<(), NlError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![option])),
        ]));
        self.change(RouteNetlinkMessage::NewLink(msg), 0)
            .map_err(self.err(action, format!("#{index}")))
    }

    /// Adds or removes a VLAN on a bridge port (or, with `on_bridge`, on the bridge itself).
    pub fn bridge_vlan(
        &mut self,
        index: u32,
        vid: u16,
        pvid_untagged: bool,
        on_bridge: bool,
        add: bool,
    ) -> Result<(), NlError> {
        let mut msg = LinkMessage::default();
        msg.header.interface_family = AddressFamily::Bridge;
        msg.header.index = index;
        let mut flags = BridgeVlanInfoFlags::empty();
        if pvid_untagged {
            flags |= BridgeVlanInfoFlags::Pvid | BridgeVlanInfoFlags::Untagged;
        }
        let mut spec = Vec::new();
        if on_bridge {
            spec.push(AfSpecBridge::Flags(BridgeFlag::LowerDev));
        }
        spec.push(AfSpecBridge::VlanInfo(BridgeVlanInfo { flags, vid }));
        msg.attributes.push(LinkAttribute::AfSpecBridge(spec));
        let (message, action) = if add {
            (RouteNetlinkMessage::SetLink(msg), "adding VLAN to")
        } else {
            (RouteNetlinkMessage::DelLink(msg), "removing VLAN from")
        };
        match self.change(message, 0) {
            Err(e) if !add && is_missing(&e) => Ok(()),
            other => other.map_err(self.err(action, format!("#{index} (vid {vid})"))),
        }
    }

    /// Creates an ifb device (up, in link group `group`, with `alias`): what a link's ingress is
    /// redirected to so that it can be shaped. A link of that name that exists already is left
    /// untouched and returned, for the caller to judge whether it is its own.
    pub fn create_ifb(
        &mut self,
        name: &str,
        mtu: u32,
        group: u32,
        alias: &str,
    ) -> Result<Option<Link>, NlError> {
        let mut msg = LinkMessage::default();
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Group(group));
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Ifb)]));
        match self.change(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                if let Some(existing) = self.link(name)? {
                    return Ok(Some(existing));
                }
                return Err(self.err("creating ifb", name)(e));
            }
            Err(e) => return Err(self.err("creating ifb", name)(e)),
        };
        self.set_alias(name, alias)?;
        Ok(None)
    }

    /// Sets a link's alias (the kernel takes one only on an existing link).
    pub fn set_alias(&mut self, name: &str, alias: &str) -> Result<(), NlError> {
        let mut named = LinkMessage::default();
        named
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        named
            .attributes
            .push(LinkAttribute::IfAlias(alias.to_string()));
        self.change(RouteNetlinkMessage::SetLink(named), 0)
            .map_err(self.err("setting the alias of", name))
    }

    /// Creates a VXLAN device (learning off); an existing link of that name is left alone
    /// (returns false) for the caller to compare with [`Link::vxlan`].
    pub fn create_vxlan(&mut self, spec: &VxlanSpec<'_>) -> Result<bool, NlError> {
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName(spec.name.to_string()));
        msg.attributes.push(LinkAttribute::Mtu(spec.mtu));
        if let Some(mac) = spec.mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        let local = match spec.local {
            IpAddr::V4(v4) => InfoVxlan::Local(v4),
            IpAddr::V6(v6) => InfoVxlan::Local6(v6),
        };
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(spec.vni),
                local,
                InfoVxlan::Link(spec.underlay),
                InfoVxlan::Port(spec.port),
                InfoVxlan::Learning(false),
            ])),
        ]));
        match self.change(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(self.err(
                "creating vxlan",
                format!("{} (vni {})", spec.name, spec.vni),
            )(e)),
        }
    }
}

/// A link change that turns `flag` on or off and leaves the other flags alone; the caller names
/// the link (by index or by name).
fn flags_message(flag: LinkFlags, on: bool) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.flags = if on { flag } else { LinkFlags::empty() };
    msg.header.change_mask = flag;
    msg
}

fn to_link(message: RouteNetlinkMessage) -> Option<Link> {
    let RouteNetlinkMessage::NewLink(msg) = message else {
        return None;
    };
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        group: 0,
        mac: None,
        mtu: 0,
        master: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        promisc: msg.header.flags.contains(LinkFlags::Promisc),
        alias: None,
        kind: None,
        peer_index: None,
        hairpin: None,
        vxlan: None,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Group(g) => link.group = g,
            LinkAttribute::Address(a) => link.mac = Some(a),
            LinkAttribute::Mtu(m) => link.mtu = m,
            LinkAttribute::Controller(m) => link.master = Some(m),
            LinkAttribute::IfAlias(a) => link.alias = Some(a),
            LinkAttribute::Link(peer) => link.peer_index = Some(peer),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(attrs)) => {
                            link.vxlan = Some(vxlan_info(&attrs))
                        }
                        LinkInfo::PortData(InfoPortData::BridgePort(port)) => {
                            link.hairpin = port.iter().find_map(|p| match p {
                                InfoBridgePort::HairpinMode(on) => Some(*on),
                                _ => None,
                            });
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(link)
}

fn vxlan_info(attrs: &[InfoVxlan]) -> VxlanInfo {
    let mut info = VxlanInfo::default();
    for attr in attrs {
        match attr {
            InfoVxlan::Id(vni) => info.vni = Some(*vni),
            InfoVxlan::Port(port) => info.port = Some(*port),
            InfoVxlan::Local(ip) => info.local = Some(IpAddr::V4(*ip)),
            InfoVxlan::Local6(ip) => info.local = Some(IpAddr::V6(*ip)),
            InfoVxlan::Link(index) => info.underlay = Some(*index),
            InfoVxlan::Learning(on) => info.learning = Some(*on),
            _ => {}
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip() {
        let mac = parse_mac("0a:58:0A:f4:01:02").unwrap();
        assert_eq!(format_mac(&mac), "0a:58:0a:f4:01:02");
        assert!(parse_mac("0a:58:0a").is_none());
        assert!(parse_mac("0a:58:0a:f4:01:02:03").is_none());
        assert!(parse_mac("zz:58:0a:f4:01:02").is_none());
    }
}
