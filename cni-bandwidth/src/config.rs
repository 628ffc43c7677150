//! The bandwidth configuration, field-compatible with the reference `bandwidth` plugin: rates in
//! bits per second and bursts in bits, in the configuration or in `runtimeConfig.bandwidth`
//! (which wins), and optionally the subnets that are (or are not) shaped.

use cni_core::netlink::tc::Shaping;
use cni_core::Request;
use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;

use crate::error::BandwidthError;

/// What containerd and CRI-O send as the burst when a pod gives only a rate (2^32 - 1 bits and
/// more): no burst was asked for.
const UNSPECIFIED_BURST_BITS: u64 = u32::MAX as u64;
/// A burst's smallest size: a full 64 KiB segment (GSO) must fit.
const MIN_BURST: u64 = 64 * 1024;
/// Without a burst, the bucket holds what the rate sends in this long.
const DEFAULT_BURST_MS: u64 = 50;

/// The keys of a limit, as the reference plugin spells them.
const FIELDS: [&str; 6] = [
    "ingressRate",
    "ingressBurst",
    "egressRate",
    "egressBurst",
    "unshapedSubnets",
    "shapedSubnets",
];

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LimitsIn {
    ingress_rate: Option<u64>,
    ingress_burst: Option<u64>,
    egress_rate: Option<u64>,
    egress_burst: Option<u64>,
    unshaped_subnets: Option<Vec<String>>,
    shaped_subnets: Option<Vec<String>>,
}

/// Which traffic a limit applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    /// Everything but traffic with these subnets.
    Except(Vec<IpNetwork>),
    /// Only traffic with these subnets.
    Only(Vec<IpNetwork>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Traffic to the pod (shaped on the host end of its veth).
    pub ingress: Option<Shaping>,
    /// Traffic from the pod (redirected through an ifb and shaped there).
    pub egress: Option<Shaping>,
    pub scope: Scope,
}

impl Limits {
    pub fn from_request(req: &Request) -> Result<Limits, BandwidthError> {
        let invalid = |e: String| BandwidthError::InvalidConfig(e);
        let top: LimitsIn = req.parse_config().map_err(|e| invalid(e.to_string()))?;
        let runtime: Option<LimitsIn> = match req.config.runtime_config.get("bandwidth") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let mut v = v.clone();
                cni_core::config::fold_keys(&mut v, &FIELDS);
                Some(
                    serde_json::from_value(v)
                        .map_err(|e| invalid(format!("runtimeConfig.bandwidth: {e}")))?,
                )
            }
        };
        // runtimeConfig replaces the configuration's limits as a whole (as the reference plugin).
        let chosen = match runtime {
            Some(r) if r.ingress_rate.is_some() || r.egress_rate.is_some() => LimitsIn {
                unshaped_subnets: r.unshaped_subnets.or(top.unshaped_subnets),
                shaped_subnets: r.shaped_subnets.or(top.shaped_subnets),
                ..r
            },
            _ => top,
        };
        let scope = match (chosen.unshaped_subnets, chosen.shaped_subnets) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "unshapedSubnets and shapedSubnets exclude each other".into(),
                ))
            }
            (Some(u), None) if !u.is_empty() => Scope::Except(subnets("unshapedSubnets", &u)?),
            (None, Some(s)) if !s.is_empty() => Scope::Only(subnets("shapedSubnets", &s)?),
            _ => Scope::All,
        };
        Ok(Limits {
            ingress: shaping("ingress", chosen.ingress_rate, chosen.ingress_burst)?,
            egress: shaping("egress", chosen.egress_rate, chosen.egress_burst)?,
            scope,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.ingress.is_none() && self.egress.is_none()
    }
}

fn subnets(key: &str, list: &[String]) -> Result<Vec<IpNetwork>, BandwidthError> {
    list.iter()
        .map(|s| {
            s.parse::<IpNetwork>()
                .map(|n| IpNetwork::new(n.network(), n.prefix()).unwrap_or(n))
                .map_err(|_| BandwidthError::InvalidConfig(format!("{key}: {s:?} is not a CIDR")))
        })
        .collect()
}

/// A rate (bits/s) and burst (bits) as bytes. A rate of 0 means no limit; a rate without a
/// burst gets the default burst.
fn shaping(
    which: &str,
    rate_bits: Option<u64>,
    burst_bits: Option<u64>,
) -> Result<Option<Shaping>, BandwidthError> {
    let rate = match rate_bits {
        None | Some(0) => {
            if burst_bits.is_some_and(|b| b > 0 && b < UNSPECIFIED_BURST_BITS) {
                return Err(BandwidthError::InvalidConfig(format!(
                    "{which}Burst is set but {which}Rate is not"
                )));
            }
            return Ok(None);
        }
        Some(bits) if bits < 8 => {
            return Err(BandwidthError::InvalidConfig(format!(
                "{which}Rate {bits} bit/s is below one byte per second"
            )))
        }
        Some(bits) => bits / 8,
    };
    let burst = match burst_bits {
        None | Some(0) => default_burst(rate),
        Some(bits) if bits >= UNSPECIFIED_BURST_BITS => default_burst(rate),
        Some(bits) => (bits / 8).max(MIN_BURST),
    };
    Ok(Some(Shaping {
        rate,
        burst: burst.min(u64::from(u32::MAX)) as u32,
    }))
}

fn default_burst(rate: u64) -> u64 {
    (rate * DEFAULT_BURST_MS / 1000).max(MIN_BURST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_bursts_and_the_runtimes_unbounded_burst() {
        let s = shaping("ingress", Some(80_000_000), Some(u64::from(u32::MAX)))
            .unwrap()
            .unwrap();
        assert_eq!(s.rate, 10_000_000);
        assert_eq!(
            u64::from(s.burst),
            500_000,
            "50 ms of the rate, not 512 MiB"
        );
        let s = shaping("egress", Some(8_000), Some(8_000))
            .unwrap()
            .unwrap();
        assert_eq!(
            (s.rate, s.burst),
            (1_000, 64 * 1024),
            "at least one 64 KiB segment"
        );
        assert!(shaping("ingress", None, None).unwrap().is_none());
        assert!(shaping("ingress", Some(0), None).unwrap().is_none());
        assert!(shaping("ingress", None, Some(8_000)).is_err());
        assert!(shaping("ingress", Some(4), None).is_err());
    }
}
