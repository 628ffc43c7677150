//! The verbs of the host-local IPAM plugin.

use std::collections::BTreeSet;
use std::net::IpAddr;

use cni_core::{Attachment, CniResult, Dns, IpConfig, Plugin, Request};

use crate::config::{lease_dir, requested_ips, IpamConfig};
use crate::dns::read_resolv_conf;
use crate::error::IpamError;
use crate::range::RangeSet;
use crate::store::Store;

pub struct HostLocalIpam;

impl Plugin for HostLocalIpam {
    type Error = IpamError;

    fn add(&self, req: &Request) -> Result<CniResult, IpamError> {
        let cfg = IpamConfig::from_request(req)?;
        let wanted = assign_requests(&cfg.range_sets, &requested_ips(req)?)?;
        let dns = match &cfg.resolv_conf {
            Some(path) => read_resolv_conf(path)?,
            None => Dns::default(),
        };

        let store = Store::open(&cfg.dir)?;
        let held = store.held_by(&req.container_id, &req.ifname)?;
        if !held.is_empty() {
            return Err(IpamError::AlreadyAllocated {
                network: cfg.network,
                container: req.container_id.clone(),
                ifname: req.ifname.clone(),
                ips: join(&held),
            });
        }
        let mut leases = Vec::with_capacity(cfg.range_sets.len());
        for (index, set) in cfg.range_sets.iter().enumerate() {
            let ip = match wanted[index] {
                Some(ip) => {
                    if let Some(owner) = store.owner(ip)? {
                        return Err(IpamError::AddressInUse {
                            ip,
                            owner: owner.to_string(),
                        });
                    }
                    ip
                }
                None => set
                    .candidates(store.last_reserved(index))
                    .map(|(ip, _)| ip)
                    .find(|ip| !store.is_leased(*ip))
                    .ok_or_else(|| IpamError::RangeExhausted {
                        network: cfg.network.clone(),
                        set: set.to_string(),
                    })?,
            };
            leases.push((index, ip));
        }
        let unsynced = store.reserve(&req.container_id, &req.ifname, &leases)?;
        // The lock goes before the flush (see `Unsynced`); success only once it is durable.
        drop(store);
        unsynced.sync()?;
        tracing::info!(container = %req.container_id, ifname = %req.ifname, ips = %join(&leases.iter().map(|l| l.1).collect::<Vec<_>>()), "leased");

        let ips = leases
            .iter()
            .map(|&(index, ip)| {
                let range = cfg.range_sets[index].range_of(ip);
                IpConfig {
                    address: range.map_or_else(|| ip.into(), |r| r.with_prefix(ip)),
                    gateway: range.and_then(|r| r.gateway),
                    interface: None,
                }
            })
            .collect();
        Ok(CniResult {
            interfaces: Vec::new(),
            ips,
            routes: cfg.routes,
            dns,
        })
    }

    fn del(&self, req: &Request) -> Result<(), IpamError> {
        if let Some(store) = Store::open_existing(&lease_dir(req)?)? {
            let (freed, unsynced) = store.release(&req.container_id, &req.ifname)?;
            drop(store);
            unsynced.sync()?;
            tracing::info!(container = %req.container_id, ifname = %req.ifname, ips = %join(&freed), "released");
        }
        Ok(())
    }

    fn check(&self, req: &Request) -> Result<(), IpamError> {
        let cfg = IpamConfig::from_request(req)?;
        let unknown = || IpamError::UnknownContainer {
            network: cfg.network.clone(),
            container: req.container_id.clone(),
            ifname: req.ifname.clone(),
        };
        let store = Store::open_existing(&cfg.dir)?.ok_or_else(unknown)?;
        let held = store.held_by(&req.container_id, &req.ifname)?;
        if held.is_empty() {
            return Err(unknown());
        }
        for set in &cfg.range_sets {
            if !held.iter().any(|ip| set.range_of(*ip).is_some()) {
                return Err(IpamError::CheckMismatch(format!(
                    "container {} holds no lease in range set {set}",
                    req.container_id
                )));
            }
        }
        if let Some(prev) = &req.prev_result {
            let reported: BTreeSet<IpAddr> = prev.ips.iter().map(|c| c.address.ip()).collect();
            if let Some(missing) = held.iter().find(|ip| !reported.contains(ip)) {
                return Err(IpamError::CheckMismatch(format!(
                    "leased address {missing} is missing from prevResult"
                )));
            }
            let ours = |ip: &IpAddr| cfg.range_sets.iter().any(|s| s.range_of(*ip).is_some());
            if let Some(extra) = reported
                .iter()
                .filter(|ip| ours(ip))
                .find(|ip| !held.contains(ip))
            {
                return Err(IpamError::CheckMismatch(format!(
                    "prevResult address {extra} is not leased to container {}",
                    req.container_id
                )));
            }
        }
        Ok(())
    }

    fn gc(&self, req: &Request, valid: &[Attachment]) -> Result<(), IpamError> {
        if let Some(store) = Store::open_existing(&lease_dir(req)?)? {
            let freed = store.collect_garbage(valid)?;
            tracing::info!(network = %req.config.name, freed = freed.len(), "GC done");
        }
        Ok(())
    }

    fn status(&self, req: &Request) -> Result<(), IpamError> {
        let cfg = IpamConfig::from_request(req)?;
        let unavailable = |e: IpamError| IpamError::NotAvailable(e.to_string());
        let store = Store::open(&cfg.dir).map_err(unavailable)?;
        store.probe_writable().map_err(unavailable)?;
        for (index, set) in cfg.range_sets.iter().enumerate() {
            let free = set
                .candidates(store.last_reserved(index))
                .any(|(ip, _)| !store.is_leased(ip));
            if !free {
                return Err(IpamError::NotAvailable(format!(
                    "range set {set} of network {} has no free address",
                    cfg.network
                )));
            }
        }
        Ok(())
    }
}

/// Places each requested address in its range set (at most one per set).
fn assign_requests(
    sets: &[RangeSet],
    requested: &[IpAddr],
) -> Result<Vec<Option<IpAddr>>, IpamError> {
    let mut wanted: Vec<Option<IpAddr>> = vec![None; sets.len()];
    for &ip in requested {
        let index = sets
            .iter()
            .position(|s| s.range_of(ip).is_some_and(|r| r.can_hand_out(ip)))
            .ok_or(IpamError::NotInRange { ip })?;
        if let Some(first) = wanted[index] {
            return Err(IpamError::TwoRequestsForOneSet { first, second: ip });
        }
        wanted[index] = Some(ip);
    }
    Ok(wanted)
}

fn join(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
