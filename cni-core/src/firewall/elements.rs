//! Set and map element changes written over an NFNETLINK socket: one nftables transaction (a
//! batch), no `nft` process and no cache of the table; and one set's elements read back the
//! same way. The hot path of the writers whose changes are mostly elements (a pod's address
//! joining or leaving the sets a policy matches, a hostPort mapping); anything else (chains,
//! rules, new sets) goes through [`super::Batch`].
//!
//! A batch is `NFNL_MSG_BATCH_BEGIN`, one `NFT_MSG_NEWSETELEM`/`NFT_MSG_DELSETELEM` per set
//! change and `NFNL_MSG_BATCH_END`, sent in one `sendmsg`; the kernel applies all of it or none,
//! and acks or refuses each message.

use std::net::IpAddr;

use super::nfnetlink::numbers::*;
use super::nfnetlink::{
    self, attributes, family_number, nft_message, Message, Nfnl, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_REQUEST,
};
use super::types::NfFamily;
use super::FirewallError;

const NFT_MSG_GETSETELEM: u16 = 13;

const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
/// nft's user data of an element: type-length-value records, the comment being type 0 (a
/// NUL-terminated string), as `nft` writes and reads it.
const UDATA_COMMENT: u8 = 0;

/// The most element bytes one message carries: its element list is one attribute, whose length
/// is 16 bits (a batch holds as many messages as it needs).
const ELEMENT_BYTES_PER_MESSAGE: usize = 48 << 10;

/// What an element of a map maps its key to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Data {
    /// A plain set's element.
    #[default]
    None,
    /// A verdict map's `jump chain`.
    Jump(String),
    /// A value map's value, laid out as the map's data type.
    Value(Vec<u8>),
}

/// One element: its key (as the set's type lays it out), the end of its range in a set with
/// intervals of concatenations, what it maps to and its comment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub data: Data,
    pub comment: Option<String>,
}

/// Keys and values as nftables lays them out: a concatenation gives each field a 32-bit
/// register, so a protocol (one byte) and a port (two) are padded to four bytes.
pub mod layout {
    use std::net::IpAddr;

    /// An `ipv4_addr` or `ipv6_addr`.
    pub fn address(ip: IpAddr) -> Vec<u8> {
        match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        }
    }

    /// An `inet_proto` in a concatenation.
    pub fn protocol(number: u8) -> Vec<u8> {
        vec![number, 0, 0, 0]
    }

    /// An `inet_service` in a concatenation.
    pub fn port(port: u16) -> Vec<u8> {
        let [hi, lo] = port.to_be_bytes();
        vec![hi, lo, 0, 0]
    }

    /// An `inet_service` standing alone (a map's value).
    pub fn lone_port(port: u16) -> Vec<u8> {
        port.to_be_bytes().to_vec()
    }

    /// Fields joined into one concatenation.
    pub fn concat(fields: &[Vec<u8>]) -> Vec<u8> {
        fields.concat()
    }
}

impl Element {
    /// An element of an `ipv4_addr` or `ipv6_addr` set.
    pub fn address(ip: IpAddr) -> Element {
        Element {
            key: layout::address(ip),
            ..Element::default()
        }
    }

    /// An element of an `ipv4_addr . inet_proto . inet_service` set (or its IPv6 twin).
    pub fn address_protocol_port(ip: IpAddr, protocol: u8, port: u16) -> Element {
        Element {
            key: layout::concat(&[
                layout::address(ip),
                layout::protocol(protocol),
                layout::port(port),
            ]),
            ..Element::default()
        }
    }

    /// An element of an address verdict map: `ip : jump chain`.
    pub fn jump(ip: IpAddr, chain: &str) -> Element {
        Element {
            key: layout::address(ip),
            data: Data::Jump(chain.to_string()),
            ..Element::default()
        }
    }

    /// An element with this key and nothing else (yet).
    pub fn key(key: Vec<u8>) -> Element {
        Element {
            key,
            ..Element::default()
        }
    }

    pub fn with_value(mut self, value: Vec<u8>) -> Element {
        self.data = Data::Value(value);
        self
    }

    pub fn with_end(mut self, key_end: Vec<u8>) -> Element {
        self.key_end = Some(key_end);
        self
    }

    pub fn with_comment(mut self, comment: &str) -> Element {
        self.comment = Some(comment.to_string());
        self
    }

    /// Whether two elements name the same member (what a delete needs to match).
    pub fn same_member(&self, other: &Element) -> bool {
        self.key == other.key && self.key_end == other.key_end
    }
}

/// Elements added to or deleted from one set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub set: String,
    pub delete: bool,
    pub elements: Vec<Element>,
}

fn user_data(comment: &str) -> Vec<u8> {
    // Type, length (the string and its NUL, one byte), the string.
    let text: Vec<u8> = comment.bytes().take(254).collect();
    let mut out = vec![UDATA_COMMENT, (text.len() + 1) as u8];
    out.extend(text);
    out.push(0);
    out
}

fn comment_of(user_data: &[u8]) -> Option<String> {
    let mut at = 0;
    while at + 2 <= user_data.len() {
        let (kind, len) = (user_data[at], user_data[at + 1] as usize);
        let value = user_data.get(at + 2..at + 2 + len)?;
        if kind == UDATA_COMMENT {
            return Some(nfnetlink::string(value));
        }
        at += 2 + len;
    }
    None
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
    let mut m = Message::new(nft_message(kind), flags, seq, family_number(family), 0);
    m.string(NFTA_SET_ELEM_LIST_TABLE, table);
    m.string(NFTA_SET_ELEM_LIST_SET, set);
    m.open(NFTA_SET_ELEM_LIST_ELEMENTS);
    for element in elements {
        m.open(NFTA_LIST_ELEM);
        m.open(NFTA_SET_ELEM_KEY);
        m.attr(NFTA_DATA_VALUE, &element.key);
        m.close();
        if let Some(end) = &element.key_end {
            m.open(NFTA_SET_ELEM_KEY_END);
            m.attr(NFTA_DATA_VALUE, end);
            m.close();
        }
        // A deleted element is named by its key (and end) alone.
        if !delete {
            match &element.data {
                Data::None => {}
                Data::Jump(chain) => {
                    m.open(NFTA_SET_ELEM_DATA);
                    m.open(NFTA_DATA_VERDICT);
                    m.attr(NFTA_VERDICT_CODE, &NFT_JUMP.to_be_bytes());
                    m.string(NFTA_VERDICT_CHAIN, chain);
                    m.close();
                    m.close();
                }
                Data::Value(value) => {
                    m.open(NFTA_SET_ELEM_DATA);
                    m.attr(NFTA_DATA_VALUE, value);
                    m.close();
                }
            }
            if let Some(comment) = &element.comment {
                m.attr(NFTA_SET_ELEM_USERDATA, &user_data(comment));
            }
        }
        m.close();
    }
    m.close();
    m.finish()
}

/// An upper bound of an element's bytes in a message.
fn element_bytes(element: &Element) -> usize {
    let data = match &element.data {
        Data::None => 0,
        Data::Jump(chain) => 24 + chain.len(),
        Data::Value(value) => 12 + value.len(),
    };
    16 + element.key.len()
        + element.key_end.as_ref().map_or(0, |end| 12 + end.len())
        + data
        + element.comment.as_ref().map_or(0, |c| 8 + c.len())
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

/// The messages of one change (sequence number 0: the batch sets it), in runs that each fit
/// one message.
pub(super) fn messages(family: NfFamily, table: &str, change: &Change) -> Vec<Vec<u8>> {
    chunks(&change.elements)
        .into_iter()
        .map(|chunk| element_message(family, table, &change.set, change.delete, chunk, 0))
        .collect()
}

/// The bytes of one batch, and the sequence numbers of the messages the kernel answers.
fn encode(family: NfFamily, table: &str, changes: &[&Change]) -> (Vec<u8>, Vec<u32>) {
    let mut batch = nfnetlink::Batch::new();
    for change in changes {
        for chunk in chunks(&change.elements) {
            let message = element_message(
                family,
                table,
                &change.set,
                change.delete,
                chunk,
                batch.next_seq(),
            );
            batch.push(message);
        }
    }
    batch.finish()
}

/// Applies `changes` to the sets and maps of `table` in one transaction: all of them, or (the
/// kernel refusing one: a missing set, an element deleted that is not there, an element of the
/// wrong size) none, with the kernel's reason.
pub fn apply(family: NfFamily, table: &str, changes: &[Change]) -> Result<(), FirewallError> {
    let changes: Vec<&Change> = changes.iter().filter(|c| !c.elements.is_empty()).collect();
    if changes.is_empty() {
        return Ok(());
    }
    let (bytes, answered) = encode(family, table, &changes);
    let refused = Nfnl::open()?.transact(&bytes, &answered)?;
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

/// The elements of `set` in `table`, with their ends, values and comments; `None` when the
/// table or the set does not exist.
pub fn list(
    family: NfFamily,
    table: &str,
    set: &str,
) -> Result<Option<Vec<Element>>, FirewallError> {
    let mut request = Message::new(
        nft_message(NFT_MSG_GETSETELEM),
        NLM_F_REQUEST | NLM_F_DUMP,
        1,
        family_number(family),
        0,
    );
    request.string(NFTA_SET_ELEM_LIST_TABLE, table);
    request.string(NFTA_SET_ELEM_LIST_SET, set);
    let Some(payloads) = Nfnl::dump_existing(request.finish(), "listing set elements", || {
        format!("set {set} of table {table}")
    })?
    else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for payload in &payloads {
        for (kind, value) in attributes(payload) {
            if kind != NFTA_SET_ELEM_LIST_ELEMENTS {
                continue;
            }
            for (kind, element) in attributes(value) {
                if kind == NFTA_LIST_ELEM {
                    out.push(decode_element(element));
                }
            }
        }
    }
    Ok(Some(out))
}

fn decode_element(bytes: &[u8]) -> Element {
    let value_of = |nested: &[u8]| {
        attributes(nested)
            .into_iter()
            .find(|(kind, _)| *kind == NFTA_DATA_VALUE)
            .map(|(_, v)| v.to_vec())
    };
    let mut element = Element::default();
    for (kind, value) in attributes(bytes) {
        match kind {
            NFTA_SET_ELEM_KEY => element.key = value_of(value).unwrap_or_default(),
            NFTA_SET_ELEM_KEY_END => element.key_end = value_of(value),
            NFTA_SET_ELEM_USERDATA => element.comment = comment_of(value),
            NFTA_SET_ELEM_DATA => {
                for (kind, data) in attributes(value) {
                    match kind {
                        NFTA_DATA_VALUE => element.data = Data::Value(data.to_vec()),
                        NFTA_DATA_VERDICT => {
                            let chain = attributes(data)
                                .into_iter()
                                .find(|(k, _)| *k == NFTA_VERDICT_CHAIN)
                                .map(|(_, c)| nfnetlink::string(c));
                            if let Some(chain) = chain {
                                element.data = Data::Jump(chain);
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    element
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
        let (bytes, answered) = encode(NfFamily::INet, "t", &changes);
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
                0x10,
                (10 << 8) | NFT_MSG_NEWSETELEM,
                (10 << 8) | NFT_MSG_NEWSETELEM,
                (10 << 8) | NFT_MSG_DELSETELEM,
                0x11
            ]
        );
        assert_eq!(message_set(&changes, 1), "a");
        assert_eq!(message_set(&changes, 2), "m");
    }
}
