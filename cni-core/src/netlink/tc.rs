//! Traffic control: the root qdisc of a link (TBF, or HTB with classes and subnet filters), its
//! ingress qdisc, and redirecting a link's ingress to another device (an ifb). The kernel has
//! no typed TBF/HTB options in `netlink-packet-route`, so their two structs are encoded here
//! from `linux/pkt_sched.h`.

use ipnetwork::IpNetwork;
use netlink_packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::{is_missing, Netlink, NlError};

/// A rate limit: bytes per second and a bucket of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shaping {
    pub rate: u64,
    pub burst: u32,
}

/// One qdisc as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qdisc {
    pub kind: String,
    pub handle: TcHandle,
    pub parent: TcHandle,
}

/// The HTB classes of a shaped link: traffic goes to [`SHAPED`] or [`UNSHAPED`].
pub const SHAPED: u16 = 10;
pub const UNSHAPED: u16 = 20;
/// The rate of the unshaped class: as good as unlimited (100 Gbit/s).
const UNLIMITED: u64 = 100_000_000_000 / 8;

const ROOT_MAJOR: u16 = 1;
/// The parent of a root qdisc.
pub const ROOT: TcHandle = TcHandle::ROOT;
const INGRESS_MAJOR: u16 = 0xffff;
/// How long a packet may wait in a TBF queue before it is dropped (as the reference plugin).
const LATENCY_MS: u64 = 25;

// linux/pkt_sched.h
const TC_LINKLAYER_ETHERNET: u8 = 1;
const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;
const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
const TC_HTB_PROTOVER: u32 = 3;
/// psched ticks are 64 ns (`PSCHED_SHIFT` 6).
const NS_PER_TICK: u64 = 64;
const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// `struct tc_ratespec` for a rate in bytes/s (a larger rate goes in the 64-bit attribute).
fn ratespec(rate: u64) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[1] = TC_LINKLAYER_ETHERNET;
    out[8..12].copy_from_slice(&(rate.min(u64::from(u32::MAX)) as u32).to_ne_bytes());
    out
}

fn nla(kind: u16, value: Vec<u8>) -> TcOption {
    TcOption::Other(DefaultNla::new(kind, value))
}

fn ticks(bytes: u64, rate: u64) -> u32 {
    (bytes.saturating_mul(1_000_000_000) / rate.max(1) / NS_PER_TICK).min(u64::from(u32::MAX))
        as u32
}

fn tbf_options(shaping: &Shaping) -> Vec<TcOption> {
    // The queue holds what the rate drains in LATENCY_MS, plus one burst.
    let limit =
        (shaping.rate * LATENCY_MS / 1000 + u64::from(shaping.burst)).min(u64::from(u32::MAX));
    let mut parms = Vec::with_capacity(36);
    parms.extend_from_slice(&ratespec(shaping.rate));
    parms.extend_from_slice(&[0u8; 12]); // no peak rate
    parms.extend_from_slice(&(limit as u32).to_ne_bytes());
    parms.extend_from_slice(&ticks(u64::from(shaping.burst), shaping.rate).to_ne_bytes());
    parms.extend_from_slice(&0u32.to_ne_bytes()); // mtu: only with a peak rate
    vec![
        nla(TCA_TBF_PARMS, parms),
        nla(TCA_TBF_RATE64, shaping.rate.to_ne_bytes().to_vec()),
        nla(TCA_TBF_BURST, shaping.burst.to_ne_bytes().to_vec()),
    ]
}

fn htb_class_options(shaping: &Shaping) -> Vec<TcOption> {
    let buffer = ticks(u64::from(shaping.burst), shaping.rate);
    let mut parms = Vec::with_capacity(44);
    parms.extend_from_slice(&ratespec(shaping.rate));
    parms.extend_from_slice(&ratespec(shaping.rate)); // ceil = rate
    parms.extend_from_slice(&buffer.to_ne_bytes());
    parms.extend_from_slice(&buffer.to_ne_bytes());
    parms.extend_from_slice(&[0u8; 12]); // quantum (from rate2quantum), level, prio
    vec![
        nla(TCA_HTB_PARMS, parms),
        nla(TCA_HTB_RATE64, shaping.rate.to_ne_bytes().to_vec()),
        nla(TCA_HTB_CEIL64, shaping.rate.to_ne_bytes().to_vec()),
    ]
}

fn message(index: u32, handle: TcHandle, parent: TcHandle, kind: &str) -> TcMessage {
    let mut msg = TcMessage::default();
    msg.header.index = index as i32;
    msg.header.handle = handle;
    msg.header.parent = parent;
    msg.attributes.push(TcAttribute::Kind(kind.to_string()));
    msg
}

/// `info` of a filter: priority and protocol (network byte order).
fn filter_info(priority: u16, protocol: u16) -> u32 {
    (u32::from(priority) << 16) | u32::from(protocol.to_be())
}

impl Netlink {
    /// The qdiscs of one link.
    pub fn qdiscs(&mut self, index: u32) -> Result<Vec<Qdisc>, NlError> {
        let mut request = TcMessage::default();
        request.header.index = index as i32;
        let replies = self
            .exchange(RouteNetlinkMessage::GetQueueDiscipline(request), NLM_F_DUMP)
            .map_err(self.err("listing qdiscs of", format!("#{index}")))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewQueueDiscipline(q) if q.header.index == index as i32 => {
                    let kind = q.attributes.iter().find_map(|a| match a {
                        TcAttribute::Kind(k) => Some(k.clone()),
                        _ => None,
                    })?;
                    Some(Qdisc {
                        kind,
                        handle: q.header.handle,
                        parent: q.header.parent,
                    })
                }
                _ => None,
            })
            .collect())
    }

    fn put_qdisc(&mut self, msg: TcMessage, what: &'static str, index: u32) -> Result<(), NlError> {
        self.change(
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map_err(self.err(what, format!("#{index}")))
    }

    /// A TBF root qdisc (handle 1:) shaping everything the link sends.
    pub fn replace_tbf(&mut self, index: u32, shaping: &Shaping) -> Result<(), NlError> {
        let mut msg = message(
            index,
            TcHandle {
                major: ROOT_MAJOR,
                minor: 0,
            },
            TcHandle::ROOT,
            "tbf",
        );
        msg.attributes
            .push(TcAttribute::Options(tbf_options(shaping)));
        self.put_qdisc(msg, "setting a tbf qdisc on", index)
    }

    /// An HTB root qdisc (handle 1:) with class 1:[`SHAPED`] at `shaping` and class
    /// 1:[`UNSHAPED`] unlimited; traffic no filter picks goes to `default_class`.
    pub fn replace_htb(
        &mut self,
        index: u32,
        shaping: &Shaping,
        default_class: u16,
    ) -> Result<(), NlError> {
        let mut msg = message(
            index,
            TcHandle {
                major: ROOT_MAJOR,
                minor: 0,
            },
            TcHandle::ROOT,
            "htb",
        );
        let mut glob = Vec::with_capacity(20);
        for word in [TC_HTB_PROTOVER, 10, u32::from(default_class), 0, 0] {
            glob.extend_from_slice(&word.to_ne_bytes());
        }
        msg.attributes
            .push(TcAttribute::Options(vec![nla(TCA_HTB_INIT, glob)]));
        self.put_qdisc(msg, "setting an htb qdisc on", index)?;
        let unshaped = Shaping {
            rate: UNLIMITED,
            burst: shaping.burst.max(64 * 1024),
        };
        for (minor, class) in [(SHAPED, shaping), (UNSHAPED, &unshaped)] {
            let mut msg = message(
                index,
                TcHandle {
                    major: ROOT_MAJOR,
                    minor,
                },
                TcHandle {
                    major: ROOT_MAJOR,
                    minor: 0,
                },
                "htb",
            );
            msg.attributes
                .push(TcAttribute::Options(htb_class_options(class)));
            self.change(
                RouteNetlinkMessage::NewTrafficClass(msg),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .map_err(self.err("setting an htb class on", format!("#{index} (1:{minor})")))?;
        }
        Ok(())
    }

    /// Sends traffic whose source (or destination) lies in `subnet` to HTB class 1:`class`.
    pub fn classify_subnet(
        &mut self,
        index: u32,
        priority: u16,
        subnet: IpNetwork,
        by_source: bool,
        class: u16,
    ) -> Result<(), NlError> {
        let (protocol, keys) = subnet_keys(subnet, by_source);
        let mut msg = message(
            index,
            TcHandle::UNSPEC,
            TcHandle {
                major: ROOT_MAJOR,
                minor: 0,
            },
            "u32",
        );
        msg.header.info = filter_info(priority, protocol);
        let mut selector = TcU32Selector::default();
        selector.flags = TcU32SelectorFlags::Terminal;
        selector.nkeys = keys.len() as u8;
        selector.keys = keys;
        msg.attributes.push(TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::ClassId(TcHandle {
                major: ROOT_MAJOR,
                minor: class,
            })),
            TcOption::U32(TcFilterU32Option::Selector(selector)),
        ]));
        self.change(
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(self.err("adding a u32 filter for", format!("{subnet} on #{index}")))
    }

    /// The ingress qdisc (ffff:) of a link; one that exists is success.
    pub fn add_ingress_qdisc(&mut self, index: u32) -> Result<(), NlError> {
        let msg = message(
            index,
            TcHandle {
                major: INGRESS_MAJOR,
                minor: 0,
            },
            TcHandle::INGRESS,
            "ingress",
        );
        match self.change(
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other.map_err(self.err("adding an ingress qdisc to", format!("#{index}"))),
        }
    }

    /// Redirects everything link `index` receives to the egress of link `to` (a u32 filter
    /// matching every packet, as `tc filter ... u32 match u32 0 0 action mirred egress redirect`;
    /// `matchall` is not built into every kernel), replacing an earlier redirect.
    pub fn redirect_ingress(&mut self, index: u32, to: u32) -> Result<(), NlError> {
        let parent = TcHandle {
            major: INGRESS_MAJOR,
            minor: 0,
        };
        // Replacing a u32 filter in place is not reliable: drop an earlier one first.
        let mut old = TcMessage::default();
        old.header.index = index as i32;
        old.header.parent = parent;
        old.header.info = filter_info(1, ETH_P_ALL);
        match self.change(RouteNetlinkMessage::DelTrafficFilter(old), 0) {
            Err(e) if !is_missing(&e) && e.raw_os_error() != Some(libc::EINVAL) => {
                return Err(self.err("replacing the redirect of", format!("#{index}"))(
                    e,
                ))
            }
            _ => {}
        }
        let mut msg = message(index, TcHandle::UNSPEC, parent, "u32");
        msg.header.info = filter_info(1, ETH_P_ALL);
        let mut generic = TcActionGeneric::default();
        generic.action = TcActionType::Stolen;
        let mut parms = TcMirror::default();
        parms.generic = generic;
        parms.eaction = TcMirrorActionType::EgressRedir;
        parms.ifindex = to;
        let mut mirred = TcAction::default();
        mirred.tab = 1;
        mirred.attributes = vec![
            TcActionAttribute::Kind("mirred".to_string()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                parms,
            ))]),
        ];
        let mut selector = TcU32Selector::default();
        selector.flags = TcU32SelectorFlags::Terminal;
        selector.nkeys = 1;
        selector.keys = vec![u32_key(0, 0, 0)];
        msg.attributes.push(TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(selector)),
            TcOption::U32(TcFilterU32Option::Action(vec![mirred])),
        ]));
        self.change(
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(self.err("redirecting the ingress of", format!("#{index} to #{to}")))
    }

    /// Removes the root (or, with `ingress`, the ingress) qdisc of a link and everything under
    /// it; a missing one, or a missing link, is success.
    pub fn del_qdisc(&mut self, index: u32, ingress: bool) -> Result<(), NlError> {
        let (handle, parent) = if ingress {
            (
                TcHandle {
                    major: INGRESS_MAJOR,
                    minor: 0,
                },
                TcHandle::INGRESS,
            )
        } else {
            (
                TcHandle {
                    major: ROOT_MAJOR,
                    minor: 0,
                },
                TcHandle::ROOT,
            )
        };
        let mut msg = TcMessage::default();
        msg.header.index = index as i32;
        msg.header.handle = handle;
        msg.header.parent = parent;
        match self.change(RouteNetlinkMessage::DelQueueDiscipline(msg), 0) {
            Err(e) if is_missing(&e) || e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            other => other.map_err(self.err("removing a qdisc of", format!("#{index}"))),
        }
    }
}

/// The u32 keys matching `subnet` as the source or destination address of an IPv4 or IPv6
/// header, and the filter's protocol.
fn subnet_keys(subnet: IpNetwork, by_source: bool) -> (u16, Vec<TcU32Key>) {
    let prefix = u32::from(subnet.prefix());
    match subnet {
        IpNetwork::V4(net) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            let key = u32_key(
                mask,
                u32::from(net.network()) & mask,
                if by_source { 12 } else { 16 },
            );
            (ETH_P_IP, vec![key])
        }
        IpNetwork::V6(net) => {
            let base = if by_source { 8 } else { 24 };
            let words = u128::from(net.network());
            let keys = (0..4u32)
                .filter_map(|i| {
                    let bits = prefix.saturating_sub(i * 32).min(32);
                    (bits > 0).then(|| {
                        let mask = u32::MAX << (32 - bits);
                        let word = (words >> (96 - 32 * i)) as u32;
                        u32_key(mask, word & mask, base + 4 * i as i32)
                    })
                })
                .collect();
            (ETH_P_IPV6, keys)
        }
    }
}

/// A u32 key comparing the 32-bit word at `offset` of the network header with `value`.
fn u32_key(mask: u32, value: u32, offset: i32) -> TcU32Key {
    let mut key = TcU32Key::default();
    // The crate writes these two in network byte order itself.
    key.mask = mask;
    key.val = value;
    key.off = offset;
    key
}
