//! A small typed layer over rtnetlink: links, addresses, routes and bridge ports.
//!
//! Synchronous on purpose: plugins are short-lived, single-threaded processes. Every failure names
//! the object and the namespace it concerns; callers never build raw messages.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use ipnetwork::IpNetwork;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{
    AfSpecBridge, AfSpecInet6, AfSpecUnspec, BridgeFlag, BridgeVlanInfo, BridgeVlanInfoFlags,
    In6AddrGenMode, InfoBridge, InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind,
    InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric,
    RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::netns::{NetNs, NetnsError};

/// A failed netlink operation: what was being done, where, and the kernel's answer.
#[derive(Debug, thiserror::Error)]
#[error("{action} {object}{place}: {source}")]
pub struct NlError {
    pub action: &'static str,
    pub object: String,
    place: Place,
    #[source]
    pub source: io::Error,
}

impl NlError {
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// A failure in the calling thread's own namespace.
    pub(crate) fn here(action: &'static str, object: impl fmt::Display, source: io::Error) -> Self {
        NlError {
            action,
            object: object.to_string(),
            place: Place(None),
            source,
        }
    }
}

#[derive(Debug, Clone)]
struct Place(Option<String>);

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(ns) => write!(f, " in netns {ns}"),
            None => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("opening a netlink socket{place}")]
    Socket {
        place: String,
        #[source]
        source: io::Error,
    },
}

/// What the kernel says about one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
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

/// One route as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub table: u32,
    pub mtu: Option<u32>,
    pub onlink: bool,
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
}

/// The two ends of a veth pair, created with one request.
#[derive(Debug, Clone)]
pub struct VethSpec<'a> {
    pub host_name: &'a str,
    pub host_alias: Option<&'a str>,
    pub host_master: Option<u32>,
    pub peer_name: &'a str,
    pub peer_mac: Option<[u8; 6]>,
    pub peer_netns: &'a NetNs,
    pub mtu: u32,
}

pub struct Netlink {
    socket: Socket,
    seq: u32,
    place: Place,
}

impl Netlink {
    /// A socket in the calling thread's namespace.
    pub fn open() -> Result<Netlink, OpenError> {
        Self::open_here(Place(None))
    }

    /// A socket inside `ns`; it keeps acting there after the thread has returned.
    pub fn open_in(ns: &NetNs) -> Result<Netlink, OpenError> {
        let place = Place(Some(ns.path().display().to_string()));
        ns.run(|| Self::open_here(place))?
    }

    fn open_here(place: Place) -> Result<Netlink, OpenError> {
        let socket = (|| {
            let mut socket = Socket::new(NETLINK_ROUTE)?;
            socket.bind_auto()?;
            socket.connect(&SocketAddr::new(0, 0))?;
            Ok(socket)
        })()
        .map_err(|source| OpenError::Socket {
            place: place.to_string(),
            source,
        })?;
        Ok(Netlink {
            socket,
            seq: 0,
            place,
        })
    }

    fn err(
        &self,
        action: &'static str,
        object: impl fmt::Display,
    ) -> impl FnOnce(io::Error) -> NlError {
        let place = self.place.clone();
        let object = object.to_string();
        move |source| NlError {
            action,
            object,
            place,
            source,
        }
    }

    /// Sends one request and collects the replies: until the ACK for a change, until DONE for a dump.
    fn exchange(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let length = reply.header.length as usize;
                if length == 0 {
                    break;
                }
                offset += length;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(_) => Err(e.to_io()),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => {
                        replies.push(m);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(replies);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// NETLINK_GET_STRICT_CHK: dump requests are validated and their header fields filter the
    /// answer. Returns whether the kernel took the option (it is unknown before Linux 4.20).
    fn set_strict_check(&mut self, on: bool) -> bool {
        let value = libc::c_int::from(on);
        // SAFETY: a plain setsockopt on a socket this struct owns, with a pointer to a local int
        // and its exact size.
        let rc = unsafe {
            libc::setsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_NETLINK,
                libc::NETLINK_GET_STRICT_CHK,
                std::ptr::addr_of!(value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        rc == 0
    }

    fn change(&mut self, message: RouteNetlinkMessage, extra_flags: u16) -> io::Result<()> {
        self.exchange(message, NLM_F_ACK | extra_flags).map(drop)
    }

    // ---- links ----

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
    /// A host end that is a bridge port (`host_master`) gets no IPv6 address of its own (a bridge
    /// port's addresses are never used): no link-local address, so no duplicate address detection,
    /// router solicitations or per-port fe80::/64 route, work that otherwise holds the RTNL lock
    /// and grows with the number of pods on the node.
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
        let mut settings = Vec::new();
        if let Some(alias) = spec.host_alias {
            settings.push(LinkAttribute::IfAlias(alias.to_string()));
        }
        if spec.host_master.is_some() {
            settings.push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]));
        }
        if !settings.is_empty() {
            let mut msg = LinkMessage::default();
            msg.attributes
                .push(LinkAttribute::IfName(spec.host_name.to_string()));
            msg.attributes.extend(settings);
            self.change(RouteNetlinkMessage::SetLink(msg), 0)
                .map_err(self.err("setting alias and addrgenmode on", spec.host_name))?;
        }
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
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                on,
            )])),
        ]));
        self.change(RouteNetlinkMessage::NewLink(msg), 0)
            .map_err(self.err("setting hairpin mode on", format!("#{index}")))
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

    // ---- addresses ----

    /// Adds an address; one that is already there is success (returns false). With `nodad`, an
    /// IPv6 address is usable at once instead of after duplicate address detection.
    pub fn add_address(
        &mut self,
        index: u32,
        addr: IpNetwork,
        nodad: bool,
    ) -> Result<bool, NlError> {
        let mut msg = address_message(index, addr);
        if nodad && addr.is_ipv6() {
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match self.change(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(self.err("adding address", format!("{addr} to #{index}"))(e)),
        }
    }

    pub fn del_address(&mut self, index: u32, addr: IpNetwork) -> Result<(), NlError> {
        match self.change(
            RouteNetlinkMessage::DelAddress(address_message(index, addr)),
            0,
        ) {
            Err(e) if is_missing(&e) => Ok(()),
            other => other.map_err(self.err("removing address", format!("{addr} from #{index}"))),
        }
    }

    /// Addresses of one link (global and link scope), with their prefix length.
    ///
    /// The kernel filters the dump by link when the socket asks for strict checking (Linux 4.20+),
    /// so a node with hundreds of pod veths answers with one link's addresses, not all of them;
    /// the replies are filtered here too, for older kernels.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<IpNetwork>, NlError> {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        let strict = self.set_strict_check(true);
        let replies = self.exchange(RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP);
        if strict {
            self.set_strict_check(false);
        }
        let replies = replies.map_err(self.err("listing addresses of", format!("#{index}")))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    let ip = a.attributes.iter().find_map(|attr| match attr {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })?;
                    IpNetwork::new(ip, a.header.prefix_len).ok()
                }
                _ => None,
            })
            .collect())
    }

    // ---- routes ----

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

/// A link change that turns `flag` on or off and leaves the other flags alone; the caller names
/// the link (by index or by name).
fn flags_message(flag: LinkFlags, on: bool) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.flags = if on { flag } else { LinkFlags::empty() };
    msg.header.change_mask = flag;
    msg
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

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENODEV | libc::ENOENT | libc::EADDRNOTAVAIL | libc::ESRCH)
    )
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

fn address_message(index: u32, addr: IpNetwork) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family(addr.ip());
    msg.header.prefix_len = addr.prefix();
    msg.header.index = index;
    msg.header.scope = AddressScope::Universe;
    if addr.is_ipv4() {
        msg.attributes.push(AddressAttribute::Local(addr.ip()));
    }
    msg.attributes.push(AddressAttribute::Address(addr.ip()));
    msg
}

fn to_link(message: RouteNetlinkMessage) -> Option<Link> {
    let RouteNetlinkMessage::NewLink(msg) = message else {
        return None;
    };
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
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
    };
    for attr in msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst_ip = route_ip(a),
            RouteAttribute::Gateway(a) => entry.gateway = route_ip(a),
            RouteAttribute::Oif(i) => entry.oif = Some(i),
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
