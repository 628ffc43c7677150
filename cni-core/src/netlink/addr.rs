//! Interface addresses.

use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::{family, is_missing, Netlink, NlError};

/// How an address is added.
#[derive(Debug, Clone, Copy, Default)]
pub struct AddressOptions {
    /// IPv6: usable at once, without duplicate address detection.
    pub nodad: bool,
    /// No route to the address's subnet through the link (the kernel adds one otherwise).
    pub no_prefix_route: bool,
}

impl Netlink {
    /// Adds an address; one that is already there is success (returns false). With `nodad`, an
    /// IPv6 address is usable at once instead of after duplicate address detection.
    pub fn add_address(
        &mut self,
        index: u32,
        addr: IpNetwork,
        nodad: bool,
    ) -> Result<bool, NlError> {
        self.add_address_with(
            index,
            addr,
            AddressOptions {
                nodad,
                no_prefix_route: false,
            },
        )
    }

    /// [`Netlink::add_address`] with every option.
    pub fn add_address_with(
        &mut self,
        index: u32,
        addr: IpNetwork,
        options: AddressOptions,
    ) -> Result<bool, NlError> {
        let mut msg = address_message(index, addr);
        let mut flags = AddressFlags::empty();
        if options.nodad && addr.is_ipv6() {
            msg.header.flags = AddressHeaderFlags::Nodad;
            flags |= AddressFlags::Nodad;
        }
        if options.no_prefix_route {
            flags |= AddressFlags::Noprefixroute;
        }
        if !flags.is_empty() {
            msg.attributes.push(AddressAttribute::Flags(flags));
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
