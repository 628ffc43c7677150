//! Address ranges and the order in which their addresses are handed out.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// One contiguous range inside a subnet, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The subnet, in network form (host bits zero).
    pub subnet: IpNetwork,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: Option<IpAddr>,
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}-{})", self.subnet, self.start, self.end)
    }
}

/// Ranges of one address family from which one address is handed out per container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    pub ranges: Vec<Range>,
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.ranges.iter().map(Range::to_string).collect();
        f.write_str(&parts.join(", "))
    }
}

pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(value: u128, v4: bool) -> IpAddr {
    if v4 {
        // Callers only pass values that came from IPv4 addresses of the same range.
        IpAddr::V4(Ipv4Addr::from(value as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(value))
    }
}

impl Range {
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.start.is_ipv4()
            && (to_u128(self.start)..=to_u128(self.end)).contains(&to_u128(ip))
    }

    /// Addresses that belong to the range but are never handed out: the gateway, the network
    /// address and (IPv4) the broadcast address.
    pub fn is_reserved(&self, ip: IpAddr) -> bool {
        Some(ip) == self.gateway
            || ip == self.subnet.network()
            || (matches!(self.subnet, IpNetwork::V4(_)) && ip == self.subnet.broadcast())
    }

    pub fn can_hand_out(&self, ip: IpAddr) -> bool {
        self.contains(ip) && !self.is_reserved(ip)
    }

    /// The address as it appears in a result: with the subnet's prefix length.
    pub fn with_prefix(&self, ip: IpAddr) -> IpNetwork {
        // The prefix comes from a valid network of the same family, so this cannot fail.
        IpNetwork::new(ip, self.subnet.prefix()).unwrap_or(self.subnet)
    }
}

impl RangeSet {
    pub fn range_of(&self, ip: IpAddr) -> Option<&Range> {
        self.ranges.iter().find(|r| r.contains(ip))
    }

    pub fn is_ipv4(&self) -> bool {
        self.ranges.first().is_some_and(|r| r.start.is_ipv4())
    }

    /// Every address of the set in hand-out order: starting right after `last` (when it is in the
    /// set), wrapping around, ending with `last` itself. Reserved addresses are skipped.
    pub fn candidates(&self, last: Option<IpAddr>) -> impl Iterator<Item = (IpAddr, &Range)> + '_ {
        let v4 = self.is_ipv4();
        let spans: Vec<(u128, u128, &Range)> = self
            .ranges
            .iter()
            .map(|r| (to_u128(r.start), to_u128(r.end), r))
            .collect();
        let (first_span, first_value) = last
            .and_then(|ip| {
                let value = to_u128(ip);
                spans
                    .iter()
                    .position(|(s, e, _)| (*s..=*e).contains(&value))
                    .map(|i| (i, value))
            })
            .map(|(i, value)| {
                if value < spans[i].1 {
                    (i, value + 1)
                } else {
                    ((i + 1) % spans.len(), spans[(i + 1) % spans.len()].0)
                }
            })
            .unwrap_or((0, spans.first().map_or(0, |s| s.0)));
        // Walk from the starting point to the end of its span, through every other span in turn,
        // and finally the start of the first span up to the starting point.
        let count = spans.len();
        let tail = spans[first_span].0..first_value;
        let first_range = spans[first_span].2;
        (0..count)
            .flat_map(move |k| {
                let idx = (first_span + k) % count;
                let (s, e, r) = spans[idx];
                let from = if k == 0 { first_value } else { s };
                (from..=e).map(move |v| (v, r))
            })
            .chain(tail.map(move |v| (v, first_range)))
            .map(move |(v, r)| (from_u128(v, v4), r))
            .filter(|(ip, r)| !r.is_reserved(*ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(subnet: &str, start: &str, end: &str, gw: Option<&str>) -> Range {
        Range {
            subnet: subnet.parse().unwrap(),
            start: start.parse().unwrap(),
            end: end.parse().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
        }
    }

    fn ips(set: &RangeSet, last: Option<&str>) -> Vec<String> {
        set.candidates(last.map(|l| l.parse().unwrap()))
            .map(|(ip, _)| ip.to_string())
            .collect()
    }

    #[test]
    fn walks_from_after_last_and_wraps() {
        let set = RangeSet {
            ranges: vec![range(
                "10.0.0.0/29",
                "10.0.0.1",
                "10.0.0.6",
                Some("10.0.0.1"),
            )],
        };
        assert_eq!(
            ips(&set, None),
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        assert_eq!(
            ips(&set, Some("10.0.0.4")),
            ["10.0.0.5", "10.0.0.6", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
        );
        assert_eq!(
            ips(&set, Some("10.0.0.6")),
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        assert_eq!(ips(&set, Some("192.168.0.1")), ips(&set, None));
    }

    #[test]
    fn crosses_ranges_in_a_set() {
        let set = RangeSet {
            ranges: vec![
                range("10.0.0.0/24", "10.0.0.10", "10.0.0.11", None),
                range("10.0.1.0/24", "10.0.1.20", "10.0.1.21", None),
            ],
        };
        assert_eq!(
            ips(&set, Some("10.0.0.11")),
            ["10.0.1.20", "10.0.1.21", "10.0.0.10", "10.0.0.11"]
        );
        assert_eq!(
            ips(&set, Some("10.0.1.21")),
            ["10.0.0.10", "10.0.0.11", "10.0.1.20", "10.0.1.21"]
        );
    }

    #[test]
    fn never_offers_network_broadcast_or_gateway() {
        let set = RangeSet {
            ranges: vec![range(
                "10.0.0.0/30",
                "10.0.0.0",
                "10.0.0.3",
                Some("10.0.0.1"),
            )],
        };
        assert_eq!(ips(&set, None), ["10.0.0.2"]);
    }

    #[test]
    fn ipv6_ranges() {
        let set = RangeSet {
            ranges: vec![range("fd00::/120", "fd00::1", "fd00::ff", Some("fd00::1"))],
        };
        let got = ips(&set, Some("fd00::fe"));
        assert_eq!(got[0], "fd00::ff");
        assert_eq!(got[1], "fd00::2");
        assert_eq!(got.len(), 254);
    }
}
