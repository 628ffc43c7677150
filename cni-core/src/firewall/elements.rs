//! Set and map element changes written over an NFNETLINK socket: one nftables transaction (a
//! batch), no `nft` process and no cache of the table. The hot path of the writers whose changes
//! are mostly elements (a pod's address joining or leaving the sets a policy matches); anything
//! else (chains, rules, new sets) goes through [`super::Batch`].
//!
//! The wire format is the kernel's (`include/uapi/linux/netfilter/nf_tables.h`): a batch is
//! `NFNL_MSG_BATCH_BEGIN`, one `NFT_MSG_NEWSETELEM`/`NFT_MSG_DELSETELEM` per set change and
//! `NFNL_MSG_BATCH_END`, sent in one `sendmsg`; the kernel applies all of it or none, and acks or
//! refuses each message.

use std::net::IpAddr;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use super::types::NfFamily;
use super::FirewallError;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 0x2;
const NLA_F_NESTED: u16 = 0x8000;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_JUMP: i32 = -3;

/// The most element bytes one message carries: its element list is one attribute, whose length
/// is 16 bits (a batch holds as many messages as it needs).
const ELEMENT_BYTES_PER_MESSAGE: usize = 48 << 10;

/// A table family as the kernel numbers it (`NFPROTO_*`).
fn family_number(family: NfFamily) -> u8 {
    match family {
        NfFamily::INet => 1,
        NfFamily::IP => 2,
        NfFamily::ARP => 3,
        NfFamily::NetDev => 5,
        NfFamily::Bridge => 7,
        NfFamily::IP6 => 10,
    }
}

/// One element: its key (as the set's type lays it out) and, in a verdict map, the chain it
/// jumps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub key: Vec<u8>,
    pub jump: Option<String>,
}

impl Element {
    /// An element of an `ipv4_addr` or `ipv6_addr` set.
    pub fn address(ip: IpAddr) -> Element {
        Element {
            key: address_bytes(ip),
            jump: None,
        }
    }

    /// An element of an `ipv4_addr . inet_proto . inet_service` set (or its IPv6 twin): each
    /// field takes a 32-bit register, so the protocol and the port are padded to four bytes.
    pub fn address_protocol_port(ip: IpAddr, protocol: u8, port: u16) -> Element {
        let mut key = address_bytes(ip);
        key.extend_from_slice(&[protocol, 0, 0, 0]);
        key.extend_from_slice(&port.to_be_bytes());
        key.extend_from_slice(&[0, 0]);
        Element { key, jump: None }
    }

    /// An element of an address verdict map: `ip : jump chain`.
    pub fn jump(ip: IpAddr, chain: &str) -> Element {
        Element {
            key: address_bytes(ip),
            jump: Some(chain.to_string()),
        }
    }
}

fn address_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Elements added to or deleted from one set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub set: String,
    pub delete: bool,
    pub elements: Vec<Element>,
}

/// A netlink message under construction: attributes appended, lengths patched on close.
struct Message {
    bytes: Vec<u8>,
    nests: Vec<usize>,
}

impl Message {
    fn new(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Message {
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in finish
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&flags.to_ne_bytes());
        bytes.extend_from_slice(&seq.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
                                                      // struct nfgenmsg: family, version, resource id (big-endian).
        bytes.push(family);
        bytes.push(0);
        bytes.extend_from_slice(&res_id.to_be_bytes());
        Message {
            bytes,
            nests: Vec::new(),
        }
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn attr(&mut self, kind: u16, value: &[u8]) {
        let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
        self.bytes.extend_from_slice(&len.to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(value);
        self.pad();
    }

    fn string(&mut self, kind: u16, value: &str) {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.attr(kind, &bytes);
    }

    fn open(&mut self, kind: u16) {
        self.nests.push(self.bytes.len());
        self.bytes.extend_from_slice(&0u16.to_ne_bytes());
        self.bytes
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }

    fn close(&mut self) {
        if let Some(start) = self.nests.pop() {
            let len = u16::try_from(self.bytes.len() - start).unwrap_or(u16::MAX);
            self.bytes[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.bytes.len() as u32;
        self.bytes[0..4].copy_from_slice(&len.to_ne_bytes());
        self.bytes
    }
}

fn element_message(
    family: NfFamily,
    table: &str,
    set: &str,
    delete: bool,
    elements: &[Element],
    seq: u32,
) -> Vec<u8> {
    let (kind, flags) = if delete {
        (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK)
    } else {
        (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE)
    };
    let mut m = Message::new(
        (NFNL_SUBSYS_NFTABLES << 8) | kind,
        flags,
        seq,
        family_number(family),
        0,
    );
    m.string(NFTA_SET_ELEM_LIST_TABLE, table);
    m.string(NFTA_SET_ELEM_LIST_SET, set);
    m.open(NFTA_SET_ELEM_LIST_ELEMENTS);
    for element in elements {
        m.open(NFTA_LIST_ELEM);
        m.open(NFTA_SET_ELEM_KEY);
        m.attr(NFTA_DATA_VALUE, &element.key);
        m.close();
        // A deleted map element is named by its key alone.
        if let (Some(chain), false) = (&element.jump, delete) {
            m.open(NFTA_SET_ELEM_DATA);
            m.open(NFTA_DATA_VERDICT);
            m.attr(NFTA_VERDICT_CODE, &NFT_JUMP.to_be_bytes());
            m.string(NFTA_VERDICT_CHAIN, chain);
            m.close();
            m.close();
        }
        m.close();
    }
    m.close();
    m.finish()
}

/// An upper bound of an element's bytes in a message.
fn element_bytes(element: &Element) -> usize {
    16 + element.key.len() + element.jump.as_ref().map_or(0, |chain| 24 + chain.len())
}

/// `elements` in runs that each fit one message.
fn chunks(elements: &[Element]) -> Vec<&[Element]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, element) in elements.iter().enumerate() {
        let size = element_bytes(element);
        if i > start && bytes + size > ELEMENT_BYTES_PER_MESSAGE {
            out.push(&elements[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < elements.len() {
        out.push(&elements[start..]);
    }
    out
}

/// The bytes of one batch, and the sequence numbers of the messages the kernel answers.
fn encode(
    family: NfFamily,
    table: &str,
    changes: &[&Change],
    first_seq: u32,
) -> (Vec<u8>, Vec<u32>) {
    let mut seq = first_seq;
    let mut bytes = Message::new(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
    )
    .finish();
    let mut answered = Vec::new();
    for change in changes {
        for chunk in chunks(&change.elements) {
            seq += 1;
            bytes.extend(element_message(
                family,
                table,
                &change.set,
                change.delete,
                chunk,
                seq,
            ));
            answered.push(seq);
        }
    }
    seq += 1;
    bytes.extend(
        Message::new(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        )
        .finish(),
    );
    (bytes, answered)
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> FirewallError {
    move |e| FirewallError::Netlink { what, source: e }
}

/// Applies `changes` to the sets and maps of `table` in one transaction: all of them, or (the
/// kernel refusing one: a missing set, an element deleted that is not there, an element of the
/// wrong size) none, with the kernel's reason.
pub fn apply(family: NfFamily, table: &str, changes: &[Change]) -> Result<(), FirewallError> {
    let changes: Vec<&Change> = changes.iter().filter(|c| !c.elements.is_empty()).collect();
    if changes.is_empty() {
        return Ok(());
    }
    let (bytes, answered) = encode(family, table, &changes, 1);
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(io("opening a netlink socket"))?;
    socket.bind_auto().map_err(io("opening a netlink socket"))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(io("opening a netlink socket"))?;
    // A big batch needs a send buffer as big (root may exceed the default limit).
    let wanted = i32::try_from(bytes.len() + 4096).unwrap_or(i32::MAX);
    if bytes.len() > 100 << 10 {
        set_send_buffer(&socket, wanted);
    }
    socket.send(&bytes, 0).map_err(io("sending the batch"))?;
    set_receive_timeout(&socket, std::time::Duration::from_secs(10));
    let mut pending: std::collections::BTreeSet<u32> = answered.into_iter().collect();
    let mut refused: Option<(u32, i32)> = None;
    while !pending.is_empty() {
        let buf = match socket.recv_from_full() {
            Ok((data, _)) => data,
            // Every message answered that the kernel will answer: a refusal is known.
            Err(_) if refused.is_some() => break,
            Err(e) => return Err(io("reading the kernel's answer")(e)),
        };
        let n = buf.len();
        let mut at = 0;
        while at + 16 <= n {
            let len = u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
            let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
            let seq = u32::from_ne_bytes([buf[at + 8], buf[at + 9], buf[at + 10], buf[at + 11]]);
            if len < 16 || at + len > n {
                break;
            }
            if kind == NLMSG_ERROR && len >= 20 {
                let code =
                    i32::from_ne_bytes([buf[at + 16], buf[at + 17], buf[at + 18], buf[at + 19]]);
                pending.remove(&seq);
                if code != 0 && refused.is_none() {
                    refused = Some((seq, -code));
                }
            }
            at += (len + 3) & !3;
        }
    }
    match refused {
        None => Ok(()),
        Some((seq, errno)) => {
            let index = (seq as usize).saturating_sub(2);
            let which = message_set(&changes, index);
            Err(FirewallError::Nft {
                action: "changing set elements",
                detail: format!(
                    "the kernel refused the change of set {which} in table {table}: {}",
                    std::io::Error::from_raw_os_error(errno)
                ),
            })
        }
    }
}

/// The set the `index`th element message changes.
fn message_set(changes: &[&Change], index: usize) -> String {
    let mut seen = 0;
    for change in changes {
        let messages = chunks(&change.elements).len();
        if index < seen + messages {
            return change.set.clone();
        }
        seen += messages;
    }
    "?".into()
}

fn set_receive_timeout(socket: &Socket, limit: std::time::Duration) {
    use std::os::fd::AsRawFd;
    let value = libc::timeval {
        tv_sec: limit.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a valid fd and a pointer to a timeval that lives across the call.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&value as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
}

fn set_send_buffer(socket: &Socket, bytes: i32) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt with a valid fd and a pointer to an i32 that lives across the call.
    unsafe {
        let value = bytes;
        let ptr = (&value as *const i32).cast();
        let size = std::mem::size_of::<i32>() as libc::socklen_t;
        if libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            ptr,
            size,
        ) != 0
        {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                ptr,
                size,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_laid_out_as_the_set_types_want() {
        let v4: IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(Element::address(v4).key, [10, 0, 0, 7]);
        assert_eq!(
            Element::address_protocol_port(v4, 6, 8080).key,
            [10, 0, 0, 7, 6, 0, 0, 0, 0x1f, 0x90, 0, 0]
        );
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(Element::address_protocol_port(v6, 17, 53).key.len(), 24);
    }

    #[test]
    fn long_chain_names_split_messages_before_an_attribute_overflows() {
        let elements: Vec<Element> = (0..1000u32)
            .map(|i| Element::jump(IpAddr::from(i.to_be_bytes()), &"c".repeat(250)))
            .collect();
        let runs = chunks(&elements);
        assert!(runs.len() >= 6, "{}", runs.len());
        assert_eq!(runs.iter().map(|r| r.len()).sum::<usize>(), 1000);
        for run in runs {
            let message = element_message(NfFamily::INet, "t", "m", false, run, 1);
            assert!(message.len() < u16::MAX as usize, "{}", message.len());
        }
    }

    #[test]
    fn a_batch_is_begin_messages_end_with_lengths_that_add_up() {
        let changes = [
            Change {
                set: "a".into(),
                delete: false,
                elements: (0..3000u32)
                    .map(|i| Element::address(IpAddr::from(i.to_be_bytes())))
                    .collect(),
            },
            Change {
                set: "m".into(),
                delete: true,
                elements: vec![Element::jump("10.0.0.1".parse().unwrap(), "c")],
            },
        ];
        let changes: Vec<&Change> = changes.iter().collect();
        let (bytes, answered) = encode(NfFamily::INet, "t", &changes, 1);
        // 3,000 addresses (20 bytes each at most) take two messages, the delete one.
        assert_eq!(answered, [2, 3, 4]);
        let mut at = 0;
        let mut kinds = Vec::new();
        while at < bytes.len() {
            let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            kinds.push(u16::from_ne_bytes(
                bytes[at + 4..at + 6].try_into().unwrap(),
            ));
            at += len;
        }
        assert_eq!(at, bytes.len());
        assert_eq!(
            kinds,
            [
                NFNL_MSG_BATCH_BEGIN,
                (10 << 8) | NFT_MSG_NEWSETELEM,
                (10 << 8) | NFT_MSG_NEWSETELEM,
                (10 << 8) | NFT_MSG_DELSETELEM,
                NFNL_MSG_BATCH_END
            ]
        );
        assert_eq!(message_set(&changes, 1), "a");
        assert_eq!(message_set(&changes, 2), "m");
    }
}
