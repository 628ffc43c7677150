//! Connection tracking entries: removing the UDP flows of a port, so that a new port mapping is
//! not black-holed by an entry the kernel made before the mapping existed (UDP has no handshake:
//! a client that keeps sending keeps its old, un-NATed entry alive for ever).

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple,
};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

#[derive(Debug, thiserror::Error)]
#[error("{action} conntrack entries: {source}")]
pub struct ConntrackError {
    pub action: &'static str,
    #[source]
    pub source: io::Error,
}

fn err(action: &'static str) -> impl FnOnce(io::Error) -> ConntrackError {
    move |source| ConntrackError { action, source }
}

/// One flow's original direction.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Flow {
    tuple: Vec<Tuple>,
    protocol: Option<Protocol>,
    dst: Option<IpAddr>,
    dst_port: Option<u16>,
}

/// Removes every UDP entry of the family of `ipv6` whose original destination matches one of
/// `ports`: a port, and the destination address when one is given. One dump of the table,
/// however many ports (a node's conntrack table can hold hundreds of thousands of entries).
/// Returns how many went.
pub fn flush_udp(ipv6: bool, ports: &[(u16, Option<IpAddr>)]) -> Result<usize, ConntrackError> {
    if ports.is_empty() {
        return Ok(0);
    }
    let family = if ipv6 {
        NetfilterProtoFamily::IPv6
    } else {
        NetfilterProtoFamily::IPv4
    };
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(err("opening a socket for"))?;
    socket.bind_auto().map_err(err("opening a socket for"))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(err("opening a socket for"))?;
    let flows = exchange(
        &mut socket,
        family,
        ConntrackMessage::Get(Vec::new()),
        NLM_F_DUMP,
        1,
    )
    .map_err(err("listing"))?;
    let wanted = |flow: &Flow| {
        flow.protocol == Some(Protocol::Udp)
            && ports.iter().any(|(port, dst)| {
                flow.dst_port == Some(*port) && dst.is_none_or(|d| flow.dst == Some(d))
            })
    };
    let mut removed = 0;
    for (seq, flow) in flows
        .into_iter()
        .filter_map(flow_of)
        .filter(wanted)
        .enumerate()
    {
        let delete = ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(flow.tuple)]);
        match exchange(&mut socket, family, delete, NLM_F_ACK, seq as u32 + 2) {
            Ok(_) => removed += 1,
            // Gone meanwhile (it timed out, or another DEL took it).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(err("deleting")(e)),
        }
    }
    Ok(removed)
}

fn flow_of(message: ConntrackMessage) -> Option<Flow> {
    let ConntrackMessage::New(attributes) = message else {
        return None;
    };
    let tuple = attributes.into_iter().find_map(|a| match a {
        ConntrackAttribute::CtaTupleOrig(t) => Some(t),
        _ => None,
    })?;
    let mut flow = Flow {
        tuple: tuple.clone(),
        protocol: None,
        dst: None,
        dst_port: None,
    };
    for part in &tuple {
        match part {
            Tuple::Ip(ips) => {
                for ip in ips {
                    if let IPTuple::DestinationAddress(a) = ip {
                        flow.dst = Some(*a);
                    }
                }
            }
            Tuple::Proto(protos) => {
                for p in protos {
                    match p {
                        ProtoTuple::Protocol(proto) => flow.protocol = Some(*proto),
                        ProtoTuple::DestinationPort(port) => flow.dst_port = Some(*port),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(flow)
}

/// One request; the answers until DONE (dump) or the ACK.
fn exchange(
    socket: &mut Socket,
    family: NetfilterProtoFamily,
    message: ConntrackMessage,
    flags: u16,
    seq: u32,
) -> io::Result<Vec<ConntrackMessage>> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            message,
        )),
    );
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
    let mut out = Vec::new();
    loop {
        let (data, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset < data.len() {
            let reply = NetlinkMessage::<NetfilterMessage>::deserialize(&data[offset..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let length = reply.header.length as usize;
            if length == 0 {
                return Ok(out);
            }
            offset += (length + 3) & !3;
            if reply.header.sequence_number != seq {
                continue;
            }
            match reply.payload {
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(out),
                        Some(_) => Err(e.to_io()),
                    }
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::InnerMessage(m) => {
                    if let netlink_packet_netfilter::NetfilterMessageInner::Conntrack(c) = m.inner {
                        out.push(c);
                    }
                    if !dump {
                        continue;
                    }
                }
                _ => {}
            }
        }
    }
}
