//! A batch's commands as nf_tables netlink messages, so that a batch reaches the kernel without
//! an `nft` process (which starts, then loads a cache of the whole table before a one-rule
//! change: ~6 ms at tether-netpol's 1,205 sets, 145 ms for its whole table as JSON).
//!
//! The encoding is nft's own (what `nft --debug=netlink` prints for the same rule): a match on
//! `ip daddr` in an `inet` table is `meta load nfproto`, `cmp eq 2`, `payload load 4b @ network
//! header + 16`, then a `cmp` or `lookup`; an anonymous set `{ a, b-c }` is a set `__set%d` made
//! in the same batch (flags anonymous, constant, interval) with its intervals as start and end
//! elements. Only what Tether's writers use is encoded: a command outside it makes the whole
//! batch go through `nft` (see [`super::Batch`]), so nothing is ever half-understood.

use std::collections::HashMap;
use std::net::IpAddr;

use nftables::expr::{Expression, MetaKey, NamedExpression, Payload, SetItem, Verdict};
use nftables::schema::{FlushObject, NfCmd, NfListObject, SetFlag, SetType, SetTypeValue};
use nftables::stmt::{Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde_json::Value;

use super::nfnetlink::numbers::*;
use super::nfnetlink::{self, family_number, nft_message, Message, Nfnl, NLM_F_ACK};
use super::nfnetlink::{NLM_F_CREATE, NLM_F_REQUEST};
use super::FirewallError;

mod nat;
mod tcpopt;

/// Why a command is not encoded (it goes to `nft` with the rest of its batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsupported(pub &'static str);

type Encoded<T = ()> = Result<T, Unsupported>;

const NLM_F_APPEND: u16 = 0x800;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;

const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_POSITION: u16 = 6;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_DESC_SIZE: u16 = 1;
const NFTA_SET_DESC_CONCAT: u16 = 2;
const NFTA_SET_FIELD_LEN: u16 = 1;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;

const NFT_SET_CONSTANT: u32 = 0x2;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
const NFT_SET_CONCAT: u32 = 0x80;
const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_REG32_00: u32 = 8;

const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_CONTINUE: i32 = -1;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;

const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;

const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_CMP_LT: u32 = 2;
const NFT_CMP_LTE: u32 = 3;
const NFT_CMP_GT: u32 = 4;
const NFT_CMP_GTE: u32 = 5;
const NFT_RANGE_NEQ: u32 = 1;
const NFT_LOOKUP_F_INV: u32 = 1;

const NFT_META_MARK: u32 = 3;
const NFT_META_IIFNAME: u32 = 6;
const NFT_META_OIFNAME: u32 = 7;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFT_CT_STATE: u32 = 0;

/// nft's user data of a rule: type-length-value records, the comment being type 0.
const UDATA_RULE_COMMENT: u8 = 0;

/// What a loaded value is: its nft datatype, its size and how constants of it are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Addr4,
    Addr6,
    Proto,
    Port,
    Mark,
    Ifname,
    Nfproto,
    TcpFlags,
}

impl Kind {
    fn len(self) -> usize {
        match self {
            Kind::Addr4 | Kind::Mark => 4,
            Kind::Addr6 | Kind::Ifname => 16,
            Kind::Proto | Kind::Nfproto | Kind::TcpFlags => 1,
            Kind::Port => 2,
        }
    }

    /// nft's datatype number (`enum datatypes`), as a set's key type.
    fn type_id(self) -> u32 {
        match self {
            Kind::Addr4 => 7,
            Kind::Addr6 => 8,
            Kind::Proto => 12,
            Kind::Port => 13,
            Kind::Mark => 19,
            Kind::Ifname => 41,
            Kind::Nfproto => 2,
            Kind::TcpFlags => 15,
        }
    }

    fn of_set_type(t: SetType) -> Encoded<Kind> {
        Ok(match t {
            SetType::Ipv4Addr => Kind::Addr4,
            SetType::Ipv6Addr => Kind::Addr6,
            SetType::InetProto => Kind::Proto,
            SetType::InetService => Kind::Port,
            SetType::Mark => Kind::Mark,
            SetType::Ifname => Kind::Ifname,
            SetType::EtherAddr => return Err(Unsupported("ether_addr sets")),
        })
    }

    fn of_name(name: &str) -> Encoded<Kind> {
        Ok(match name {
            "ipv4_addr" => Kind::Addr4,
            "ipv6_addr" => Kind::Addr6,
            "inet_proto" => Kind::Proto,
            "inet_service" => Kind::Port,
            "mark" => Kind::Mark,
            "ifname" => Kind::Ifname,
            _ => return Err(Unsupported("a set type outside the encoded ones")),
        })
    }

    /// A constant of this kind as the kernel compares it.
    fn constant(self, value: &Expression<'_>) -> Encoded<Vec<u8>> {
        let unsupported = Err(Unsupported("a constant of another type"));
        match (self, value) {
            (Kind::Addr4 | Kind::Addr6, Expression::String(text)) => {
                match (self, text.parse::<IpAddr>()) {
                    (Kind::Addr4, Ok(IpAddr::V4(a))) => Ok(a.octets().to_vec()),
                    (Kind::Addr6, Ok(IpAddr::V6(a))) => Ok(a.octets().to_vec()),
                    _ => unsupported,
                }
            }
            (Kind::Proto, Expression::String(name)) => protocol_number(name)
                .map(|n| vec![n])
                .ok_or(Unsupported("a protocol name")),
            (Kind::Proto, Expression::Number(n)) => {
                u8::try_from(*n).map(|n| vec![n]).or(unsupported)
            }
            (Kind::Port, Expression::Number(n)) => u16::try_from(*n)
                .map(|p| p.to_be_bytes().to_vec())
                .or(unsupported),
            (Kind::Port, Expression::String(text)) => text
                .parse::<u16>()
                .map(|p| p.to_be_bytes().to_vec())
                .or(unsupported),
            (Kind::Mark, Expression::Number(n)) => Ok(n.to_ne_bytes().to_vec()),
            (Kind::Ifname, Expression::String(name)) if name.len() < 16 && !name.ends_with('*') => {
                let mut bytes = name.as_bytes().to_vec();
                bytes.resize(16, 0);
                Ok(bytes)
            }
            (Kind::TcpFlags, Expression::String(name)) => tcp_flag(name)
                .map(|bit| vec![bit])
                .ok_or(Unsupported("a TCP flag name")),
            (Kind::TcpFlags, Expression::List(names)) => names
                .iter()
                .map(|n| match n {
                    Expression::String(name) => tcp_flag(name),
                    _ => None,
                })
                .try_fold(0u8, |all, bit| bit.map(|b| all | b))
                .map(|bits| vec![bits])
                .ok_or(Unsupported("a list of TCP flag names")),
            (Kind::Nfproto, Expression::String(name)) => match name.as_ref() {
                "ipv4" => Ok(vec![2]),
                "ipv6" => Ok(vec![10]),
                _ => unsupported,
            },
            _ => unsupported,
        }
    }
}

/// A TCP flag's bit in the header's flags byte.
fn tcp_flag(name: &str) -> Option<u8> {
    Some(match name {
        "fin" => 0x01,
        "syn" => 0x02,
        "rst" => 0x04,
        "psh" => 0x08,
        "ack" => 0x10,
        "urg" => 0x20,
        "ecn" => 0x40,
        "cwr" => 0x80,
        _ => return None,
    })
}

fn protocol_number(name: &str) -> Option<u8> {
    Some(match name {
        "icmp" => 1,
        "tcp" => 6,
        "udp" => 17,
        "gre" => 47,
        "esp" => 50,
        "ah" => 51,
        "icmpv6" => 58,
        "sctp" => 132,
        "udplite" => 136,
        _ => return None,
    })
}

/// What a map's elements map their keys to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MapData {
    Verdict,
    Value(Kind),
}

/// Where a value is loaded from.
enum Source {
    Payload { base: u32, offset: u32 },
    Meta(u32),
}

/// A value a rule loads, and what the rule must have matched before (`meta nfproto`,
/// `meta l4proto`) for the load to mean it.
struct Load {
    source: Source,
    kind: Kind,
    needs: Option<Need>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Need {
    Nfproto(u8),
    L4proto(u8),
}

fn load_of(family: NfFamily, expr: &Expression<'_>) -> Encoded<Load> {
    let Expression::Named(named) = expr else {
        return Err(Unsupported("a match on a constant"));
    };
    match named {
        NamedExpression::Payload(Payload::PayloadField(f)) => {
            let network = |offset: u32, kind: Kind, v6: bool| -> Encoded<Load> {
                let needs = match (family, v6) {
                    (NfFamily::INet, false) => Some(Need::Nfproto(2)),
                    (NfFamily::INet, true) => Some(Need::Nfproto(10)),
                    (NfFamily::IP, false) | (NfFamily::IP6, true) => None,
                    _ => return Err(Unsupported("a network header field of another family")),
                };
                Ok(Load {
                    source: Source::Payload {
                        base: NFT_PAYLOAD_NETWORK_HEADER,
                        offset,
                    },
                    kind,
                    needs,
                })
            };
            let transport = |offset: u32, kind: Kind, needs: Option<Need>| -> Encoded<Load> {
                if !matches!(family, NfFamily::INet | NfFamily::IP | NfFamily::IP6) {
                    return Err(Unsupported("a transport field outside ip, ip6 and inet"));
                }
                Ok(Load {
                    source: Source::Payload {
                        base: NFT_PAYLOAD_TRANSPORT_HEADER,
                        offset,
                    },
                    kind,
                    needs,
                })
            };
            match (f.protocol.as_ref(), f.field.as_ref()) {
                ("ip", "saddr") => network(12, Kind::Addr4, false),
                ("ip", "daddr") => network(16, Kind::Addr4, false),
                ("ip", "protocol") => network(9, Kind::Proto, false),
                ("ip6", "saddr") => network(8, Kind::Addr6, true),
                ("ip6", "daddr") => network(24, Kind::Addr6, true),
                ("ip6", "nexthdr") => network(6, Kind::Proto, true),
                ("th", "sport") => transport(0, Kind::Port, None),
                ("th", "dport") => transport(2, Kind::Port, None),
                ("tcp", "sport") => transport(0, Kind::Port, Some(Need::L4proto(6))),
                ("tcp", "dport") => transport(2, Kind::Port, Some(Need::L4proto(6))),
                ("udp", "sport") => transport(0, Kind::Port, Some(Need::L4proto(17))),
                ("udp", "dport") => transport(2, Kind::Port, Some(Need::L4proto(17))),
                ("tcp", "flags") => transport(13, Kind::TcpFlags, Some(Need::L4proto(6))),
                _ => Err(Unsupported("a payload field outside the encoded ones")),
            }
        }
        NamedExpression::Meta(meta) => {
            let (key, kind) = match meta.key {
                MetaKey::L4proto => (NFT_META_L4PROTO, Kind::Proto),
                MetaKey::Nfproto => (NFT_META_NFPROTO, Kind::Nfproto),
                MetaKey::Iifname => (NFT_META_IIFNAME, Kind::Ifname),
                MetaKey::Oifname => (NFT_META_OIFNAME, Kind::Ifname),
                MetaKey::Mark => (NFT_META_MARK, Kind::Mark),
                _ => return Err(Unsupported("a meta key outside the encoded ones")),
            };
            Ok(Load {
                source: Source::Meta(key),
                kind,
                needs: None,
            })
        }
        _ => Err(Unsupported("an expression outside the encoded ones")),
    }
}

/// The bits of `ct state` values.
fn ct_state_bit(name: &str) -> Option<u32> {
    Some(match name {
        "invalid" => 1,
        "established" => 2,
        "related" => 4,
        "new" => 8,
        "untracked" => 64,
        _ => return None,
    })
}

fn is_ct_state(expr: &Expression<'_>) -> bool {
    matches!(expr, Expression::Named(NamedExpression::CT(ct)) if ct.key == "state" && ct.dir.is_none() && ct.family.is_none())
}

/// One message of the batch: its bytes (sequence number 0, set when sent) and what it does, to
/// name in an error.
#[derive(Debug, Clone)]
struct Out {
    bytes: Vec<u8>,
    what: String,
}

/// The messages of a batch, built command by command.
#[derive(Debug, Clone, Default)]
pub struct Wire {
    messages: Vec<Out>,
    /// The batch-local id of the next anonymous set.
    next_set_id: u32,
    /// The key fields of the sets this batch creates (to lay out their elements).
    sets: HashMap<String, Vec<Kind>>,
}

fn family_of_name(name: &str) -> Encoded<NfFamily> {
    Ok(match name {
        "inet" => NfFamily::INet,
        "ip" => NfFamily::IP,
        "ip6" => NfFamily::IP6,
        _ => return Err(Unsupported("a family outside ip, ip6 and inet")),
    })
}

fn message(kind: u16, flags: u16, family: NfFamily) -> Message {
    Message::new(
        nft_message(kind),
        NLM_F_REQUEST | flags,
        0,
        family_number(family),
        0,
    )
}

fn be32(m: &mut Message, kind: u16, value: u32) {
    m.attr(kind, &value.to_be_bytes());
}

fn data(m: &mut Message, kind: u16, bytes: &[u8]) {
    m.open(kind);
    m.attr(NFTA_DATA_VALUE, bytes);
    m.close();
}

/// One expression of a rule: `NFTA_LIST_ELEM { NAME, DATA { ... } }`.
fn expr(m: &mut Message, name: &str, body: impl FnOnce(&mut Message)) {
    m.open(NFTA_LIST_ELEM);
    m.string(NFTA_EXPR_NAME, name);
    m.open(NFTA_EXPR_DATA);
    body(m);
    m.close();
    m.close();
}

fn cmp(m: &mut Message, reg: u32, op: u32, value: &[u8]) {
    expr(m, "cmp", |m| {
        be32(m, 1, reg);
        be32(m, 2, op);
        data(m, 3, value);
    });
}

fn verdict(m: &mut Message, code: i32, chain: Option<&str>) {
    expr(m, "immediate", |m| {
        be32(m, 1, NFT_REG_VERDICT);
        m.open(2);
        m.open(NFTA_DATA_VERDICT);
        m.attr(NFTA_VERDICT_CODE, &code.to_be_bytes());
        if let Some(chain) = chain {
            m.string(NFTA_VERDICT_CHAIN, chain);
        }
        m.close();
        m.close();
    });
}

/// A lookup of the key in `sreg` in `set` (made in this batch when `set_id` is given): a
/// match, or with `dreg` the element's value loaded there.
fn lookup(
    m: &mut Message,
    sreg: u32,
    set: &str,
    set_id: Option<u32>,
    dreg: Option<u32>,
    invert: bool,
) {
    expr(m, "lookup", |m| {
        m.string(1, set);
        be32(m, 2, sreg);
        if let Some(dreg) = dreg {
            be32(m, 3, dreg);
        }
        if let Some(id) = set_id {
            be32(m, 4, id);
        }
        if invert {
            be32(m, 5, NFT_LOOKUP_F_INV);
        }
    });
}

/// A value as a number of its size (big-endian bytes), for interval arithmetic.
fn as_number(bytes: &[u8]) -> u128 {
    bytes.iter().fold(0u128, |n, b| (n << 8) | u128::from(*b))
}

fn from_number(n: u128, len: usize) -> Vec<u8> {
    let all = n.to_be_bytes();
    all[16 - len..].to_vec()
}

fn max_of(len: usize) -> u128 {
    if len >= 16 {
        u128::MAX
    } else {
        (1u128 << (len * 8)) - 1
    }
}

/// The interval `[first, last]` an item of an anonymous set (or a right-hand side) stands for.
fn interval(kind: Kind, item: &Expression<'_>) -> Encoded<(u128, u128)> {
    let len = kind.len();
    match item {
        Expression::Range(range) => {
            let [a, b] = &range.range;
            Ok((as_number(&kind.constant(a)?), as_number(&kind.constant(b)?)))
        }
        Expression::Named(NamedExpression::Prefix(prefix)) => {
            if !matches!(kind, Kind::Addr4 | Kind::Addr6) {
                return Err(Unsupported("a prefix of a non-address"));
            }
            let bits = (len * 8) as u32;
            if prefix.len > bits {
                return Err(Unsupported("a prefix longer than its address"));
            }
            let host = if prefix.len == bits {
                0
            } else {
                max_of(len) >> prefix.len
            };
            let net = as_number(&kind.constant(&prefix.addr)?) & !host & max_of(len);
            Ok((net, net | host))
        }
        other => {
            let n = as_number(&kind.constant(other)?);
            Ok((n, n))
        }
    }
}

/// Byte-order-sensitive kinds cannot be put in interval sets or ranges (their bytes do not
/// order like their numbers).
fn orders_by_bytes(kind: Kind) -> bool {
    !matches!(kind, Kind::Mark | Kind::Ifname)
}

impl Wire {
    fn push(&mut self, m: Message, what: impl Into<String>) {
        self.messages.push(Out {
            bytes: m.finish(),
            what: what.into(),
        });
    }

    /// Encodes one command of the crate's schema.
    pub fn command(&mut self, cmd: &NfCmd<'_>) -> Encoded {
        match cmd {
            NfCmd::Add(obj) => self.add(obj, false),
            NfCmd::Insert(obj) => self.add(obj, true),
            NfCmd::Delete(obj) => self.delete(obj),
            NfCmd::Flush(FlushObject::Chain(c)) => {
                let mut m = message(NFT_MSG_DELRULE, 0, c.family);
                m.string(NFTA_RULE_TABLE, &c.table);
                m.string(NFTA_RULE_CHAIN, &c.name);
                self.push(m, format!("flush chain {}", c.name));
                Ok(())
            }
            NfCmd::Flush(FlushObject::Set(s)) => {
                self.flush_set(s.family, &s.table, &s.name);
                Ok(())
            }
            _ => Err(Unsupported(
                "a command outside add, insert, delete and flush",
            )),
        }
    }

    /// Encodes a command written as libnftables-json(5) spells it (maps of one value type,
    /// flushes and deletes of sets and maps by name).
    pub fn raw(&mut self, command: &Value) -> Encoded {
        let Some((verb, body)) = command.as_object().and_then(|o| o.iter().next()) else {
            return Err(Unsupported("a raw command that is not an object"));
        };
        let Some((object, fields)) = body.as_object().and_then(|o| o.iter().next()) else {
            return Err(Unsupported("a raw command without an object"));
        };
        let text = |key: &str| fields.get(key).and_then(Value::as_str);
        let (Some(family), Some(table), Some(name)) = (text("family"), text("table"), text("name"))
        else {
            return Err(Unsupported("a raw command without family, table and name"));
        };
        let family = family_of_name(family)?;
        match (verb.as_str(), object.as_str()) {
            ("flush", "set" | "map") => {
                self.flush_set(family, table, name);
                Ok(())
            }
            ("delete", "set" | "map") => {
                self.delete_set(family, table, name);
                Ok(())
            }
            ("add", "map") => {
                let keys: Vec<Kind> = match fields.get("type") {
                    Some(Value::String(t)) => vec![Kind::of_name(t)?],
                    Some(Value::Array(ts)) => ts
                        .iter()
                        .map(|t| {
                            t.as_str()
                                .map_or(Err(Unsupported("a key type")), Kind::of_name)
                        })
                        .collect::<Encoded<_>>()?,
                    _ => return Err(Unsupported("a map without a key type")),
                };
                if fields.as_object().map_or(0, |o| o.len()) != 5 {
                    return Err(Unsupported("a map with more than its type"));
                }
                let data = match text("map") {
                    Some("verdict") => MapData::Verdict,
                    Some(value) => MapData::Value(Kind::of_name(value)?),
                    None => return Err(Unsupported("a map without a value type")),
                };
                self.new_set(family, table, name, &keys, NFT_SET_MAP, Some(data));
                Ok(())
            }
            _ => Err(Unsupported("a raw command outside the encoded ones")),
        }
    }

    fn flush_set(&mut self, family: NfFamily, table: &str, name: &str) {
        let mut m = message(NFT_MSG_DELSETELEM, 0, family);
        m.string(NFTA_SET_ELEM_LIST_TABLE, table);
        m.string(NFTA_SET_ELEM_LIST_SET, name);
        self.push(m, format!("flush set {name}"));
    }

    fn delete_set(&mut self, family: NfFamily, table: &str, name: &str) {
        let mut m = message(NFT_MSG_DELSET, 0, family);
        m.string(NFTA_SET_TABLE, table);
        m.string(NFTA_SET_NAME, name);
        self.push(m, format!("delete set {name}"));
    }

    fn new_set(
        &mut self,
        family: NfFamily,
        table: &str,
        name: &str,
        keys: &[Kind],
        flags: u32,
        data: Option<MapData>,
    ) {
        // An interval set of concatenations is flagged as one (its own set backend) and
        // carries its fields' lengths (the kernel refuses them on any other set).
        let concat_intervals = keys.len() > 1 && flags & NFT_SET_INTERVAL != 0;
        let flags = if concat_intervals {
            flags | NFT_SET_CONCAT
        } else {
            flags
        };
        let mut m = message(NFT_MSG_NEWSET, NLM_F_CREATE, family);
        m.string(NFTA_SET_TABLE, table);
        m.string(NFTA_SET_NAME, name);
        if flags != 0 {
            be32(&mut m, NFTA_SET_FLAGS, flags);
        }
        let key_type = keys.iter().fold(0u32, |t, k| (t << 6) | k.type_id());
        let key_len: usize = if keys.len() == 1 {
            keys[0].len()
        } else {
            keys.iter().map(|k| k.len().div_ceil(4) * 4).sum()
        };
        be32(&mut m, NFTA_SET_KEY_TYPE, key_type);
        be32(&mut m, NFTA_SET_KEY_LEN, key_len as u32);
        match data {
            Some(MapData::Verdict) => be32(&mut m, NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT),
            Some(MapData::Value(kind)) => {
                be32(&mut m, NFTA_SET_DATA_TYPE, kind.type_id());
                be32(&mut m, NFTA_SET_DATA_LEN, kind.len() as u32);
            }
            None => {}
        }
        // Every new set has a batch-local id (the kernel requires one).
        self.next_set_id += 1;
        be32(&mut m, NFTA_SET_ID, self.next_set_id);
        if concat_intervals {
            m.open(NFTA_SET_DESC);
            m.open(NFTA_SET_DESC_CONCAT);
            for key in keys {
                m.open(NFTA_LIST_ELEM);
                be32(&mut m, NFTA_SET_FIELD_LEN, key.len() as u32);
                m.close();
            }
            m.close();
            m.close();
        }
        self.sets.insert(name.to_string(), keys.to_vec());
        self.push(m, format!("add set {name}"));
    }

    fn add(&mut self, obj: &NfListObject<'_>, insert: bool) -> Encoded {
        match obj {
            NfListObject::Table(t) if !insert => {
                let mut m = message(NFT_MSG_NEWTABLE, NLM_F_CREATE, t.family);
                m.string(NFTA_TABLE_NAME, &t.name);
                self.push(m, format!("add table {}", t.name));
                Ok(())
            }
            NfListObject::Chain(c) if !insert => {
                if c.dev.is_some() || c.newname.is_some() {
                    return Err(Unsupported("a chain with a device or a new name"));
                }
                let mut m = message(NFT_MSG_NEWCHAIN, NLM_F_CREATE, c.family);
                m.string(NFTA_CHAIN_TABLE, &c.table);
                m.string(NFTA_CHAIN_NAME, &c.name);
                match (c.hook, c.prio, c._type) {
                    (None, None, None) => {}
                    (Some(hook), Some(prio), Some(kind)) => {
                        let number = match hook {
                            NfHook::Prerouting => 0,
                            NfHook::Input => 1,
                            NfHook::Forward => 2,
                            NfHook::Output => 3,
                            NfHook::Postrouting => 4,
                            _ => return Err(Unsupported("an ingress or egress hook")),
                        };
                        m.open(NFTA_CHAIN_HOOK);
                        be32(&mut m, NFTA_HOOK_HOOKNUM, number);
                        m.attr(NFTA_HOOK_PRIORITY, &prio.to_be_bytes());
                        m.close();
                        if let Some(policy) = c.policy {
                            let code = match policy {
                                NfChainPolicy::Accept => NF_ACCEPT,
                                NfChainPolicy::Drop => NF_DROP,
                            };
                            m.attr(NFTA_CHAIN_POLICY, &code.to_be_bytes());
                        }
                        m.string(
                            NFTA_CHAIN_TYPE,
                            match kind {
                                NfChainType::Filter => "filter",
                                NfChainType::NAT => "nat",
                                NfChainType::Route => "route",
                            },
                        );
                    }
                    _ => return Err(Unsupported("a base chain without hook, priority or type")),
                }
                self.push(m, format!("add chain {}", c.name));
                Ok(())
            }
            NfListObject::Set(s) if !insert => {
                if s.policy.is_some()
                    || s.timeout.is_some()
                    || s.gc_interval.is_some()
                    || s.size.is_some()
                    || s.comment.is_some()
                {
                    return Err(Unsupported("a set with a policy, timeout, size or comment"));
                }
                let keys: Vec<Kind> = match &s.set_type {
                    SetTypeValue::Single(t) => vec![Kind::of_set_type(*t)?],
                    SetTypeValue::Concatenated(ts) => ts
                        .iter()
                        .map(|t| Kind::of_set_type(*t))
                        .collect::<Encoded<_>>()?,
                };
                let mut flags = 0;
                for flag in s.flags.iter().flatten() {
                    flags |= match flag {
                        SetFlag::Constant => NFT_SET_CONSTANT,
                        SetFlag::Interval => NFT_SET_INTERVAL,
                        SetFlag::Timeout => NFT_SET_TIMEOUT,
                        SetFlag::Dynamic => NFT_SET_EVAL,
                    };
                }
                if flags & NFT_SET_INTERVAL != 0 && s.elem.is_some() {
                    return Err(Unsupported("initial elements of an interval set"));
                }
                self.new_set(s.family, &s.table, &s.name, &keys, flags, None);
                if let Some(elements) = &s.elem {
                    self.elements(s.family, &s.table, &s.name, elements, false)?;
                }
                Ok(())
            }
            NfListObject::Element(e) if !insert => {
                self.elements(e.family, &e.table, &e.name, &e.elem, false)
            }
            NfListObject::Rule(r) => self.rule(r, insert),
            _ => Err(Unsupported(
                "an object outside tables, chains, sets, elements and rules",
            )),
        }
    }

    fn delete(&mut self, obj: &NfListObject<'_>) -> Encoded {
        match obj {
            NfListObject::Table(t) => {
                let mut m = message(NFT_MSG_DELTABLE, 0, t.family);
                m.string(NFTA_TABLE_NAME, &t.name);
                self.push(m, format!("delete table {}", t.name));
            }
            NfListObject::Chain(c) => {
                let mut m = message(NFT_MSG_DELCHAIN, 0, c.family);
                m.string(NFTA_CHAIN_TABLE, &c.table);
                m.string(NFTA_CHAIN_NAME, &c.name);
                self.push(m, format!("delete chain {}", c.name));
            }
            NfListObject::Set(s) => self.delete_set(s.family, &s.table, &s.name),
            NfListObject::Rule(r) => {
                let Some(handle) = r.handle else {
                    return Err(Unsupported("a rule deleted without its handle"));
                };
                let mut m = message(NFT_MSG_DELRULE, 0, r.family);
                m.string(NFTA_RULE_TABLE, &r.table);
                m.string(NFTA_RULE_CHAIN, &r.chain);
                m.attr(NFTA_RULE_HANDLE, &u64::from(handle).to_be_bytes());
                self.push(m, format!("delete rule {handle} of chain {}", r.chain));
            }
            NfListObject::Element(e) => {
                return self.elements(e.family, &e.table, &e.name, &e.elem, true)
            }
            _ => return Err(Unsupported("a delete outside the encoded objects")),
        }
        Ok(())
    }

    /// Elements added to or deleted from a named set, laid out from their expressions (an
    /// address, `address . protocol . port`, `address : jump chain`, each maybe commented).
    fn elements(
        &mut self,
        family: NfFamily,
        table: &str,
        set: &str,
        elems: &[Expression<'_>],
        delete: bool,
    ) -> Encoded {
        let known = self.sets.get(set);
        let elements = elems
            .iter()
            .map(|e| element(e, known.map(Vec::as_slice)))
            .collect::<Encoded<Vec<_>>>()?;
        let change = super::elements::Change {
            set: set.to_string(),
            delete,
            elements,
        };
        for message in super::elements::messages(family, table, &change) {
            self.messages.push(Out {
                bytes: message,
                what: format!(
                    "{} elements of set {set}",
                    if delete { "delete" } else { "add" }
                ),
            });
        }
        Ok(())
    }

    fn rule(&mut self, r: &nftables::schema::Rule<'_>, insert: bool) -> Encoded {
        if r.index.is_some() {
            return Err(Unsupported("a rule placed by index"));
        }
        let flags = if insert {
            NLM_F_CREATE
        } else {
            NLM_F_CREATE | NLM_F_APPEND
        };
        let mut m = message(NFT_MSG_NEWRULE, flags, r.family);
        m.string(NFTA_RULE_TABLE, &r.table);
        m.string(NFTA_RULE_CHAIN, &r.chain);
        if let Some(handle) = r.handle {
            m.attr(NFTA_RULE_POSITION, &u64::from(handle).to_be_bytes());
        }
        m.open(NFTA_RULE_EXPRESSIONS);
        let mut rule = RuleState::default();
        for statement in r.expr.iter() {
            self.statement(&mut m, &mut rule, r.family, &r.table, statement)?;
        }
        m.close();
        if let Some(comment) = &r.comment {
            let text: Vec<u8> = comment.bytes().take(254).collect();
            let mut udata = vec![UDATA_RULE_COMMENT, (text.len() + 1) as u8];
            udata.extend(text);
            udata.push(0);
            m.attr(NFTA_RULE_USERDATA, &udata);
        }
        self.push(m, format!("add rule to chain {}", r.chain));
        Ok(())
    }

    /// Loads `expr` into the first register(s), after the matches its meaning depends on.
    fn load(
        m: &mut Message,
        rule: &mut RuleState,
        family: NfFamily,
        expr: &Expression<'_>,
    ) -> Encoded<Vec<Kind>> {
        Self::load_into(m, rule, family, expr, NFT_REG_1)
    }

    /// Loads `expr` from the 16-byte register `base` on (a concatenation's later fields in the
    /// 32-bit registers after it), after the matches its meaning depends on.
    fn load_into(
        m: &mut Message,
        rule: &mut RuleState,
        family: NfFamily,
        expr: &Expression<'_>,
        base: u32,
    ) -> Encoded<Vec<Kind>> {
        let loads = match expr {
            Expression::Named(NamedExpression::Concat(parts)) => parts
                .iter()
                .map(|p| load_of(family, p))
                .collect::<Encoded<Vec<_>>>()?,
            other => vec![load_of(family, other)?],
        };
        for need in loads.iter().filter_map(|l| l.needs) {
            rule.require(m, need);
        }
        let mut word = 0u32;
        for load in &loads {
            let reg = if word == 0 {
                base
            } else {
                NFT_REG32_00 + (base - NFT_REG_1) * 4 + word
            };
            match load.source {
                Source::Payload { base, offset } => expr_payload(m, reg, base, offset, load.kind),
                Source::Meta(key) => meta_load(m, key, reg),
            }
            word += (load.kind.len() as u32).div_ceil(4);
        }
        Ok(loads.iter().map(|l| l.kind).collect())
    }

    fn statement(
        &mut self,
        m: &mut Message,
        rule: &mut RuleState,
        family: NfFamily,
        table: &str,
        statement: &Statement<'_>,
    ) -> Encoded {
        match statement {
            Statement::Accept(_) => verdict(m, NF_ACCEPT, None),
            Statement::Drop(_) => verdict(m, NF_DROP, None),
            Statement::Return(_) => verdict(m, NFT_RETURN, None),
            Statement::Continue(_) => verdict(m, NFT_CONTINUE, None),
            Statement::Jump(target) => verdict(m, NFT_JUMP, Some(&target.target)),
            Statement::Goto(target) => verdict(m, NFT_GOTO, Some(&target.target)),
            Statement::Counter(nftables::stmt::Counter::Anonymous(None)) => {
                expr(m, "counter", |_| {})
            }
            Statement::Limit(limit) => {
                let unit = match limit.per.as_deref() {
                    Some("second") | None => 1u64,
                    Some("minute") => 60,
                    Some("hour") => 3600,
                    Some("day") => 86400,
                    Some(_) => return Err(Unsupported("a limit per another unit")),
                };
                if limit.rate_unit.is_some() || limit.burst_unit.is_some() {
                    return Err(Unsupported("a limit of bytes"));
                }
                let invert = limit.inv == Some(true);
                expr(m, "limit", |m| {
                    m.attr(1, &u64::from(limit.rate).to_be_bytes());
                    m.attr(2, &unit.to_be_bytes());
                    be32(m, 3, limit.burst.unwrap_or(5));
                    be32(m, 4, 0);
                    be32(m, 5, u32::from(invert));
                });
            }
            Statement::Log(log) => {
                let Some(log) = log else {
                    expr(m, "log", |_| {});
                    return Ok(());
                };
                if log.snaplen.is_some()
                    || log.queue_threshold.is_some()
                    || log.level.is_some()
                    || log.flags.is_some()
                {
                    return Err(Unsupported("a log with more than a prefix and a group"));
                }
                let group = match log.group {
                    Some(g) => Some(u16::try_from(g).map_err(|_| Unsupported("a log group"))?),
                    None => None,
                };
                expr(m, "log", |m| {
                    if let Some(group) = group {
                        m.attr(1, &group.to_be_bytes());
                    }
                    if let Some(prefix) = &log.prefix {
                        m.string(2, prefix);
                    }
                });
            }
            Statement::VerdictMap(vmap) => {
                let Some(name) = named_set(&vmap.data) else {
                    return Err(Unsupported("an anonymous verdict map"));
                };
                Self::load(m, rule, family, &vmap.key)?;
                lookup(m, NFT_REG_1, name, None, Some(NFT_REG_VERDICT), false);
            }
            Statement::Masquerade(None) => expr(m, "masq", |_| {}),
            Statement::DNAT(Some(to)) => nat::dnat_by_maps(m, rule, family, to)?,
            Statement::Mangle(mangle) if tcpopt::is_tcp_option(mangle) => {
                tcpopt::set_mss_from_route(m, rule, mangle)?
            }
            Statement::Mangle(mangle) => nat::set_mark_bits(m, mangle)?,
            Statement::Match(matched) => self.matched(
                m,
                rule,
                family,
                table,
                &matched.left,
                matched.op,
                &matched.right,
            )?,
            _ => return Err(Unsupported("a statement outside the encoded ones")),
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn matched(
        &mut self,
        m: &mut Message,
        rule: &mut RuleState,
        family: NfFamily,
        table: &str,
        left: &Expression<'_>,
        op: Operator,
        right: &Expression<'_>,
    ) -> Encoded {
        if is_ct_state(left) {
            return ct_state(m, op, right);
        }
        match left {
            Expression::Named(NamedExpression::Fib(fib)) => return nat::fib(m, fib, op, right),
            Expression::Named(NamedExpression::CT(ct)) if ct.key == "status" => {
                return nat::ct_status(m, ct, op, right)
            }
            Expression::BinaryOperation(binary) => {
                return nat::masked(m, rule, family, binary, op, right)
            }
            _ => {}
        }
        let negate = match op {
            Operator::EQ | Operator::IN => false,
            Operator::NEQ => true,
            Operator::LT | Operator::GT | Operator::LEQ | Operator::GEQ => {
                let kinds = Self::load(m, rule, family, left)?;
                let [kind] = kinds[..] else {
                    return Err(Unsupported("an ordering of a concatenation"));
                };
                if !orders_by_bytes(kind) {
                    return Err(Unsupported("an ordering of a host-order value"));
                }
                let code = match op {
                    Operator::LT => NFT_CMP_LT,
                    Operator::GT => NFT_CMP_GT,
                    Operator::LEQ => NFT_CMP_LTE,
                    _ => NFT_CMP_GTE,
                };
                cmp(m, NFT_REG_1, code, &kind.constant(right)?);
                return Ok(());
            }
            _ => return Err(Unsupported("an operator outside ==, !=, in, <, >, <=, >=")),
        };
        if let Some(set) = named_set(right) {
            Self::load(m, rule, family, left)?;
            lookup(m, NFT_REG_1, set, None, None, negate);
            return Ok(());
        }
        let kinds = Self::load(m, rule, family, left)?;
        let [kind] = kinds[..] else {
            return Err(Unsupported("a concatenation matched without a named set"));
        };
        let eq_or_ne = if negate { NFT_CMP_NEQ } else { NFT_CMP_EQ };
        let items = items_of(right)?;
        match items[..] {
            [] => Err(Unsupported("an empty anonymous set")),
            [Expression::Range(_)] | [Expression::Named(NamedExpression::Prefix(_))]
                if !orders_by_bytes(kind) =>
            {
                Err(Unsupported("a range of a host-order value"))
            }
            [Expression::Range(_)] => {
                let (first, last) = interval(kind, items[0])?;
                let (first, last) = (
                    from_number(first, kind.len()),
                    from_number(last, kind.len()),
                );
                if negate {
                    expr(m, "range", |m| {
                        be32(m, 1, NFT_REG_1);
                        be32(m, 2, NFT_RANGE_NEQ);
                        data(m, 3, &first);
                        data(m, 4, &last);
                    });
                } else {
                    cmp(m, NFT_REG_1, NFT_CMP_GTE, &first);
                    cmp(m, NFT_REG_1, NFT_CMP_LTE, &last);
                }
                Ok(())
            }
            [Expression::Named(NamedExpression::Prefix(_))] => {
                let (first, last) = interval(kind, items[0])?;
                let len = kind.len();
                let mask = from_number(!(first ^ last) & max_of(len), len);
                bitwise(m, &mask, &vec![0; len]);
                cmp(m, NFT_REG_1, eq_or_ne, &from_number(first, len));
                Ok(())
            }
            [single] => {
                cmp(m, NFT_REG_1, eq_or_ne, &kind.constant(single)?);
                Ok(())
            }
            _ => {
                let id = self.anonymous_set(family, table, kind, &items)?;
                lookup(m, NFT_REG_1, "__set%d", Some(id), None, negate);
                Ok(())
            }
        }
    }

    /// An anonymous set of `items` made in this batch (before the rule that uses it); its id.
    fn anonymous_set(
        &mut self,
        family: NfFamily,
        table: &str,
        kind: Kind,
        items: &[&Expression<'_>],
    ) -> Encoded<u32> {
        let len = kind.len();
        let mut intervals = items
            .iter()
            .map(|item| interval(kind, item))
            .collect::<Encoded<Vec<_>>>()?;
        let ranged = intervals.iter().any(|(a, b)| a != b);
        if ranged && !orders_by_bytes(kind) {
            return Err(Unsupported("a range of a host-order value"));
        }
        intervals.sort_unstable();
        // Overlapping and touching intervals become one (the kernel refuses overlaps).
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(intervals.len());
        for (a, b) in intervals {
            match merged.last_mut() {
                Some((_, last)) if ranged && a <= last.saturating_add(1) => *last = (*last).max(b),
                Some((first, last)) if !ranged && a == *first && b == *last => {}
                _ => merged.push((a, b)),
            }
        }
        self.next_set_id += 1;
        let id = self.next_set_id;
        let mut flags = NFT_SET_ANONYMOUS | NFT_SET_CONSTANT;
        if ranged {
            flags |= NFT_SET_INTERVAL;
        }
        let mut m = message(NFT_MSG_NEWSET, NLM_F_CREATE, family);
        m.string(NFTA_SET_TABLE, table);
        m.string(NFTA_SET_NAME, "__set%d");
        be32(&mut m, NFTA_SET_FLAGS, flags);
        be32(&mut m, NFTA_SET_KEY_TYPE, kind.type_id());
        be32(&mut m, NFTA_SET_KEY_LEN, len as u32);
        be32(&mut m, NFTA_SET_ID, id);
        m.open(NFTA_SET_DESC);
        be32(&mut m, NFTA_SET_DESC_SIZE, merged.len() as u32);
        m.close();
        self.push(m, "add an anonymous set");
        // Keys, with an interval's end (the first value after it) flagged; as nft writes it,
        // an interval set starts with an end at zero unless its first interval starts there.
        let mut keys: Vec<(u128, bool)> = Vec::new();
        if ranged {
            if merged.first().is_some_and(|(a, _)| *a != 0) {
                keys.push((0, true));
            }
            for (a, b) in &merged {
                keys.push((*a, false));
                if *b < max_of(len) {
                    keys.push((b + 1, true));
                }
            }
        } else {
            keys.extend(merged.iter().map(|(a, _)| (*a, false)));
        }
        let mut m = message(NFT_MSG_NEWSETELEM, NLM_F_CREATE, family);
        m.string(NFTA_SET_ELEM_LIST_TABLE, table);
        m.string(NFTA_SET_ELEM_LIST_SET, "__set%d");
        be32(&mut m, NFTA_SET_ELEM_LIST_SET_ID, id);
        m.open(NFTA_SET_ELEM_LIST_ELEMENTS);
        for (key, end) in keys {
            m.open(NFTA_LIST_ELEM);
            data(&mut m, NFTA_SET_ELEM_KEY, &from_number(key, len));
            if end {
                be32(&mut m, NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
            }
            m.close();
        }
        m.close();
        self.push(m, "add the elements of an anonymous set");
        Ok(id)
    }

    /// Sends every message in one transaction; the kernel's refusal names the command.
    pub fn apply(&self) -> Result<(), FirewallError> {
        let mut batch = nfnetlink::Batch::new();
        let first = batch.next_seq();
        let count = self.messages.len();
        for (i, out) in self.messages.iter().enumerate() {
            let mut bytes = out.bytes.clone();
            let seq = batch.next_seq();
            bytes[8..12].copy_from_slice(&seq.to_ne_bytes());
            // Only the last message is acked: errors come back for any message, and the
            // acks of thousands of messages would overflow the socket's receive buffer.
            let mut flags = u16::from_ne_bytes([bytes[6], bytes[7]]) & !NLM_F_ACK;
            if i + 1 == count {
                flags |= NLM_F_ACK;
            }
            bytes[6..8].copy_from_slice(&flags.to_ne_bytes());
            batch.push(bytes);
        }
        let (bytes, answered) = batch.finish();
        let last = answered.last().copied().into_iter().collect::<Vec<_>>();
        match Nfnl::open()?.transact(&bytes, &last)? {
            None => Ok(()),
            Some((seq, errno)) => {
                let what = seq
                    .checked_sub(first)
                    .and_then(|i| self.messages.get(i as usize))
                    .map_or("the batch", |o| o.what.as_str());
                Err(FirewallError::Nft {
                    action: "applying a batch over netlink",
                    detail: format!(
                        "the kernel refused {what}: {}",
                        std::io::Error::from_raw_os_error(errno)
                    ),
                })
            }
        }
    }
}

/// What a rule has matched so far (dependencies are written once per rule).
#[derive(Default)]
struct RuleState {
    met: std::collections::HashSet<Need>,
}

impl RuleState {
    /// Matches what a later load depends on (`meta nfproto`, `meta l4proto`), once per rule.
    fn require(&mut self, m: &mut Message, need: Need) {
        if self.met.insert(need) {
            let (key, value) = match need {
                Need::Nfproto(p) => (NFT_META_NFPROTO, p),
                Need::L4proto(p) => (NFT_META_L4PROTO, p),
            };
            meta_load(m, key, NFT_REG_1);
            cmp(m, NFT_REG_1, NFT_CMP_EQ, &[value]);
        }
    }
}

fn meta_load(m: &mut Message, key: u32, reg: u32) {
    expr(m, "meta", |m| {
        be32(m, 1, reg);
        be32(m, 2, key);
    });
}

fn expr_payload(m: &mut Message, reg: u32, base: u32, offset: u32, kind: Kind) {
    expr(m, "payload", |m| {
        be32(m, 1, reg);
        be32(m, 2, base);
        be32(m, 3, offset);
        be32(m, 4, kind.len() as u32);
    });
}

/// The name of the set or map `@name` refers to.
fn named_set<'a>(expr: &'a Expression<'_>) -> Option<&'a str> {
    match expr {
        Expression::String(text) => text.strip_prefix('@'),
        _ => None,
    }
}

/// The values a right-hand side stands for: an anonymous set's or a list's items, or itself.
fn items_of<'a, 'b>(right: &'a Expression<'b>) -> Encoded<Vec<&'a Expression<'b>>> {
    match right {
        Expression::List(items) => Ok(items.iter().collect()),
        Expression::Named(NamedExpression::Set(items)) => items
            .iter()
            .map(|item| match item {
                SetItem::Element(e) => Ok(e),
                _ => Err(Unsupported("a mapping in an anonymous set")),
            })
            .collect(),
        other => Ok(vec![other]),
    }
}

/// `ct state established,related` (or `in { ... }`, or one state): the state's bits tested.
fn ct_state(m: &mut Message, op: Operator, right: &Expression<'_>) -> Encoded {
    let names = items_of(right)?;
    let mut mask = 0u32;
    for name in names {
        let Expression::String(name) = name else {
            return Err(Unsupported("a ct state that is not a name"));
        };
        mask |= ct_state_bit(name).ok_or(Unsupported("a ct state name"))?;
    }
    let matched_is_nonzero = match op {
        Operator::EQ | Operator::IN => true,
        Operator::NEQ => false,
        _ => return Err(Unsupported("a ct state operator")),
    };
    ct_bits(m, NFT_CT_STATE, mask, matched_is_nonzero);
    Ok(())
}

/// A test of bits of a conntrack key (`ct state`, `ct status`): any of `mask` set, or none.
fn ct_bits(m: &mut Message, key: u32, mask: u32, any_set: bool) {
    expr(m, "ct", |m| {
        be32(m, 1, NFT_REG_1);
        be32(m, 2, key);
    });
    bitwise(m, &mask.to_ne_bytes(), &[0; 4]);
    let op = if any_set { NFT_CMP_NEQ } else { NFT_CMP_EQ };
    cmp(m, NFT_REG_1, op, &[0; 4]);
}

/// The first register as `(reg & mask) ^ xor`.
fn bitwise(m: &mut Message, mask: &[u8], xor: &[u8]) {
    expr(m, "bitwise", |m| {
        be32(m, 1, NFT_REG_1);
        be32(m, 2, NFT_REG_1);
        be32(m, 3, mask.len() as u32);
        data(m, 4, mask);
        data(m, 5, xor);
    });
}

/// A named set's element from its expression: `known` is the set's key when this batch made
/// it; otherwise the expression alone decides (an address; `address . protocol . port`). Such
/// an element is a plain key: an element of an interval set this batch did not make would need
/// its end too, and no writer adds single addresses to one (cni-portmap's interval sets are
/// concatenations of two addresses, which are not inferred and go through `nft`).
fn element(expr: &Expression<'_>, known: Option<&[Kind]>) -> Encoded<super::elements::Element> {
    use super::elements::{layout, Element};
    match expr {
        Expression::Named(NamedExpression::Elem(elem)) => {
            let mut e = element(&elem.val, known)?;
            if elem.timeout.is_some() || elem.expires.is_some() || elem.counter.is_some() {
                return Err(Unsupported("an element with a timeout or counter"));
            }
            e.comment = elem.comment.as_ref().map(|c| c.to_string());
            Ok(e)
        }
        Expression::List(pair) if pair.len() == 2 => {
            let Expression::Verdict(Verdict::Jump(target)) = &pair[1] else {
                return Err(Unsupported("a map element of another value"));
            };
            let key = element(&pair[0], known)?;
            Ok(Element {
                data: super::elements::Data::Jump(target.target.to_string()),
                ..key
            })
        }
        Expression::Named(NamedExpression::Concat(parts)) => {
            let kinds: Vec<Kind> = match known {
                Some(kinds) if kinds.len() == parts.len() => kinds.to_vec(),
                Some(_) => return Err(Unsupported("an element of another shape")),
                None => match parts.as_slice() {
                    [Expression::String(a), Expression::String(_), Expression::Number(_)] => {
                        let address = match a.parse::<IpAddr>() {
                            Ok(IpAddr::V4(_)) => Kind::Addr4,
                            Ok(IpAddr::V6(_)) => Kind::Addr6,
                            Err(_) => return Err(Unsupported("a concatenation's first field")),
                        };
                        vec![address, Kind::Proto, Kind::Port]
                    }
                    _ => return Err(Unsupported("a concatenation of unknown fields")),
                },
            };
            let fields = kinds
                .iter()
                .zip(parts.iter())
                .map(|(k, p)| {
                    let mut bytes = k.constant(p)?;
                    bytes.resize(k.len().div_ceil(4) * 4, 0);
                    Ok(bytes)
                })
                .collect::<Encoded<Vec<_>>>()?;
            Ok(Element::key(layout::concat(&fields)))
        }
        other => {
            let kind = match known {
                Some([kind]) => *kind,
                Some(_) => return Err(Unsupported("an element of another shape")),
                None => match other {
                    Expression::String(text) => match text.parse::<IpAddr>() {
                        Ok(IpAddr::V4(_)) => Kind::Addr4,
                        Ok(IpAddr::V6(_)) => Kind::Addr6,
                        Err(_) => return Err(Unsupported("an element of an unknown type")),
                    },
                    _ => return Err(Unsupported("an element of an unknown type")),
                },
            };
            if matches!(other, Expression::Range(_))
                || matches!(other, Expression::Named(NamedExpression::Prefix(_)))
            {
                return Err(Unsupported("an interval element"));
            }
            Ok(Element::key(kind.constant(other)?))
        }
    }
}
