//! The netlink socket: one request out, its answers back (until the ACK, or until DONE for a
//! dump), and the encoding shared with the detached delete's helper process.

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::{NlError, OpenError, Place};
use crate::netns::NetNs;

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

    pub(super) fn err(
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
    pub(super) fn exchange(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        self.socket.send(&encode(message, flags, self.seq), 0)?;

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
    pub(super) fn set_strict_check(&mut self, on: bool) -> bool {
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

    pub(super) fn change(
        &mut self,
        message: RouteNetlinkMessage,
        extra_flags: u16,
    ) -> io::Result<()> {
        self.exchange(message, NLM_F_ACK | extra_flags).map(drop)
    }
}

/// One request as bytes on the wire: `message` with `NLM_F_REQUEST | flags` and sequence `seq`.
pub(super) fn encode(message: RouteNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

/// The errno carried by an `NLMSG_ERROR` message (0 is the ACK), if `data` holds one. Reads raw
/// bytes without allocating, so that a freshly forked helper process may call it.
pub(super) fn ack_errno(data: &[u8]) -> Option<i32> {
    let mut offset = 0;
    while data.len() >= offset + 20 {
        let word = |at: usize| [data[at], data[at + 1], data[at + 2], data[at + 3]];
        let length = u32::from_ne_bytes(word(offset)) as usize;
        let kind = u16::from_ne_bytes([data[offset + 4], data[offset + 5]]);
        if kind == libc::NLMSG_ERROR as u16 {
            return Some(-i32::from_ne_bytes(word(offset + 16)));
        }
        if length < 16 {
            return None;
        }
        offset += (length + 3) & !3;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_codes_are_read_from_error_messages() {
        // nlmsghdr (len 36, type NLMSG_ERROR) + error -19 + the echoed request header.
        let mut ack = Vec::new();
        ack.extend_from_slice(&36u32.to_ne_bytes());
        ack.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        ack.extend_from_slice(&0u16.to_ne_bytes());
        ack.extend_from_slice(&1u32.to_ne_bytes());
        ack.extend_from_slice(&0u32.to_ne_bytes());
        ack.extend_from_slice(&(-19i32).to_ne_bytes());
        ack.extend_from_slice(&[0u8; 16]);
        assert_eq!(ack_errno(&ack), Some(19));
        ack[16..20].copy_from_slice(&0i32.to_ne_bytes());
        assert_eq!(ack_errno(&ack), Some(0));
        assert_eq!(ack_errno(&ack[..10]), None);
    }
}
