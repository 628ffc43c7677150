//! The `ipam` section, compatible with the reference host-local plugin, validated into range sets.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;

use cni_core::{Request, Route};
use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;

use crate::error::IpamError;
use crate::range::{to_u128, Range, RangeSet};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

#[derive(Debug, Deserialize)]
struct NetConfIn {
    ipam: Option<IpamIn>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IpamIn {
    #[serde(default)]
    ranges: Vec<Vec<RangeIn>>,
    // The legacy single-range form.
    subnet: Option<String>,
    range_start: Option<IpAddr>,
    range_end: Option<IpAddr>,
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<RouteIn>,
    data_dir: Option<PathBuf>,
    resolv_conf: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RangeIn {
    subnet: String,
    range_start: Option<IpAddr>,
    range_end: Option<IpAddr>,
    gateway: Option<IpAddr>,
}

#[derive(Debug, Deserialize)]
struct RouteIn {
    dst: IpNetwork,
    gw: Option<IpAddr>,
}

/// A validated IPAM configuration.
#[derive(Debug)]
pub struct IpamConfig {
    pub network: String,
    pub range_sets: Vec<RangeSet>,
    pub routes: Vec<Route>,
    /// `dataDir/<network name>`.
    pub dir: PathBuf,
    pub resolv_conf: Option<PathBuf>,
}

impl IpamConfig {
    pub fn from_request(req: &Request) -> Result<IpamConfig, IpamError> {
        let parsed: NetConfIn = req
            .parse_config()
            .map_err(|e| IpamError::InvalidConfig(format!("cannot read the ipam section: {e}")))?;
        let ipam = parsed.ipam.ok_or_else(|| {
            IpamError::InvalidConfig("the configuration has no ipam section".into())
        })?;

        let mut raw_sets = Vec::new();
        if let Some(subnet) = ipam.subnet {
            raw_sets.push(vec![RangeIn {
                subnet,
                range_start: ipam.range_start,
                range_end: ipam.range_end,
                gateway: ipam.gateway,
            }]);
        }
        raw_sets.extend(ipam.ranges);
        if raw_sets.is_empty() {
            return Err(IpamError::InvalidConfig(
                "no address ranges: set ipam.ranges (or the legacy ipam.subnet)".into(),
            ));
        }
        let range_sets = raw_sets
            .into_iter()
            .enumerate()
            .map(|(i, set)| validate_set(i, set))
            .collect::<Result<Vec<_>, _>>()?;
        check_sets_disjoint(&range_sets)?;

        let data_dir = data_dir(ipam.data_dir)?;
        for route in &ipam.routes {
            if let Some(gw) = route.gw.filter(|gw| gw.is_ipv4() != route.dst.is_ipv4()) {
                return Err(IpamError::InvalidConfig(format!(
                    "route to {} has gateway {gw} of the other address family",
                    route.dst
                )));
            }
        }
        Ok(IpamConfig {
            network: req.config.name.clone(),
            dir: data_dir.join(&req.config.name),
            range_sets,
            routes: ipam
                .routes
                .into_iter()
                .map(|r| Route::new(r.dst, r.gw))
                .collect(),
            resolv_conf: ipam.resolv_conf,
        })
    }
}

fn validate_set(index: usize, set: Vec<RangeIn>) -> Result<RangeSet, IpamError> {
    if set.is_empty() {
        return Err(IpamError::InvalidConfig(format!(
            "range set {index} is empty"
        )));
    }
    let ranges = set
        .into_iter()
        .map(validate_range)
        .collect::<Result<Vec<_>, _>>()?;
    let v4 = ranges[0].start.is_ipv4();
    if ranges.iter().any(|r| r.start.is_ipv4() != v4) {
        return Err(IpamError::InvalidConfig(format!(
            "range set {index} mixes IPv4 and IPv6 ranges; use one range set per family"
        )));
    }
    for (i, a) in ranges.iter().enumerate() {
        for b in &ranges[i + 1..] {
            if overlaps(a, b) {
                return Err(IpamError::InvalidConfig(format!(
                    "ranges {a} and {b} in range set {index} overlap"
                )));
            }
        }
    }
    Ok(RangeSet { ranges })
}

fn validate_range(r: RangeIn) -> Result<Range, IpamError> {
    let invalid = |msg: String| IpamError::InvalidConfig(format!("range {}: {msg}", r.subnet));
    let subnet: IpNetwork = r
        .subnet
        .parse()
        .map_err(|e| invalid(format!("not a CIDR subnet ({e})")))?;
    let max_prefix = if subnet.is_ipv4() { 32 } else { 128 };
    if subnet.prefix() >= max_prefix - 1 {
        return Err(invalid(format!(
            "/{} is too small to hand out addresses from (a /{} has no usable host address \
             besides the gateway); use a /{} or a larger subnet",
            subnet.prefix(),
            subnet.prefix(),
            max_prefix - 2
        )));
    }
    if subnet.ip() != subnet.network() {
        return Err(invalid(format!(
            "has host bits set; did you mean {}/{}?",
            subnet.network(),
            subnet.prefix()
        )));
    }
    let net =
        IpNetwork::new(subnet.network(), subnet.prefix()).map_err(|e| invalid(e.to_string()))?;
    let first_host = offset(net.network(), 1);
    let last_host = if net.is_ipv4() {
        offset(net.broadcast(), -1)
    } else {
        net.broadcast()
    };
    let gateway = Some(r.gateway.unwrap_or(first_host));
    let start = r.range_start.unwrap_or(first_host);
    let end = r.range_end.unwrap_or(last_host);
    for (what, ip) in [
        ("rangeStart", Some(start)),
        ("rangeEnd", Some(end)),
        ("gateway", gateway),
    ] {
        if let Some(ip) = ip {
            if !net.contains(ip) {
                return Err(invalid(format!("{what} {ip} is outside the subnet")));
            }
        }
    }
    if to_u128(start) > to_u128(end) {
        return Err(invalid(format!(
            "rangeStart {start} is after rangeEnd {end}"
        )));
    }
    Ok(Range {
        subnet: net,
        start,
        end,
        gateway,
    })
}

fn offset(ip: IpAddr, delta: i8) -> IpAddr {
    let value = to_u128(ip).wrapping_add_signed(i128::from(delta));
    match ip {
        IpAddr::V4(_) => IpAddr::V4((value as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(value.into()),
    }
}

fn overlaps(a: &Range, b: &Range) -> bool {
    a.start.is_ipv4() == b.start.is_ipv4()
        && to_u128(a.start) <= to_u128(b.end)
        && to_u128(b.start) <= to_u128(a.end)
}

fn check_sets_disjoint(sets: &[RangeSet]) -> Result<(), IpamError> {
    for (i, a) in sets.iter().enumerate() {
        for (j, b) in sets.iter().enumerate().skip(i + 1) {
            for ra in &a.ranges {
                if let Some(rb) = b.ranges.iter().find(|rb| overlaps(ra, rb)) {
                    return Err(IpamError::InvalidConfig(format!(
                        "range sets {i} and {j} overlap ({ra} and {rb})"
                    )));
                }
            }
        }
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct LocationIn {
    ipam: Option<LocationIpamIn>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LocationIpamIn {
    data_dir: Option<PathBuf>,
}

/// Where the network's leases live: all DEL and GC need, so that they work even when the ranges
/// in the configuration are missing or no longer valid.
pub fn lease_dir(req: &Request) -> Result<PathBuf, IpamError> {
    let parsed: LocationIn = req
        .parse_config()
        .map_err(|e| IpamError::InvalidConfig(format!("cannot read the ipam section: {e}")))?;
    let ipam = parsed
        .ipam
        .ok_or_else(|| IpamError::InvalidConfig("the configuration has no ipam section".into()))?;
    Ok(data_dir(ipam.data_dir)?.join(&req.config.name))
}

/// `dataDir`, or the default: an absolute path (an empty or relative one would put leases
/// wherever the runtime happens to run the plugin).
fn data_dir(configured: Option<PathBuf>) -> Result<PathBuf, IpamError> {
    match configured {
        None => Ok(PathBuf::from(DEFAULT_DATA_DIR)),
        Some(dir) if dir.is_absolute() => Ok(dir),
        Some(dir) => Err(IpamError::InvalidConfig(format!(
            "dataDir {:?} must be an absolute path",
            dir.display().to_string()
        ))),
    }
}

/// Addresses the runtime asked for: `runtimeConfig.ips`, `args.cni.ips` and `CNI_ARGS` `IP=`
/// (comma separated). A prefix length, if given, is ignored: the range decides it.
pub fn requested_ips(req: &Request) -> Result<Vec<IpAddr>, IpamError> {
    let mut raw: Vec<String> = Vec::new();
    let mut take = |value: Option<&Value>, source: &str| -> Result<(), IpamError> {
        match value {
            None | Some(Value::Null) => Ok(()),
            Some(Value::Array(items)) => items.iter().try_for_each(|item| match item.as_str() {
                Some(s) => {
                    raw.push(s.to_string());
                    Ok(())
                }
                None => Err(IpamError::InvalidConfig(format!(
                    "{source} must be a list of strings"
                ))),
            }),
            Some(_) => Err(IpamError::InvalidConfig(format!(
                "{source} must be a list of strings"
            ))),
        }
    };
    take(req.config.runtime_config.get("ips"), "runtimeConfig.ips")?;
    take(
        req.config.args.get("cni").and_then(|cni| cni.get("ips")),
        "args.cni.ips",
    )?;
    if let Some(ips) = req.args.get("IP") {
        raw.extend(ips.split(',').filter(|s| !s.is_empty()).map(str::to_string));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for item in raw {
        let addr = item.split('/').next().unwrap_or_default();
        let ip: IpAddr = addr.parse().map_err(|_| {
            IpamError::InvalidConfig(format!("requested address {item:?} is not an IP address"))
        })?;
        if seen.insert(ip) {
            out.push(ip);
        }
    }
    Ok(out)
}
