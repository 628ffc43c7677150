//! The verbs of the portmap plugin.

use std::collections::HashSet;
use std::net::IpAddr;

use cni_core::netlink::Netlink;
use cni_core::{conntrack, sysctl, Attachment, CniResult, Plugin, Request};

use crate::config::{targets, PortmapConf, Target};
use crate::error::{Failures, PortmapError};
use crate::rules::{self, Select};

pub struct PortmapPlugin;

fn owner_of(req: &Request) -> String {
    rules::owner(&req.config.name, &req.container_id, &req.ifname)
}

/// Stale UDP flows of the mapped ports go, so that clients already sending reach the new
/// target (and, after DEL, stop reaching the old one).
fn flush_udp(ports: &[(u16, Option<IpAddr>)], failures: &mut Failures) {
    for v6 in [false, true] {
        let of_family: Vec<(u16, Option<IpAddr>)> = ports
            .iter()
            .filter(|(_, host_ip)| host_ip.is_none_or(|ip| ip.is_ipv6() == v6))
            .copied()
            .collect();
        failures.note(conntrack::flush_udp(v6, &of_family));
    }
}

/// Connections from 127.0.0.1 are routed to the container only if the interface towards it
/// accepts loopback sources (`route_localnet`); they are masqueraded on their way out.
fn allow_localnet(target: &Target) -> Result<(), PortmapError> {
    let mut nl = Netlink::open()?;
    let Some(oif) = nl.route_to(target.ip())? else {
        return Ok(());
    };
    if let Some(link) = nl.link_by_index(oif)? {
        sysctl::set(
            format!("/proc/sys/net/ipv4/conf/{}/route_localnet", link.name),
            "1",
        )?;
    }
    Ok(())
}

impl Plugin for PortmapPlugin {
    type Error = PortmapError;

    fn add(&self, req: &Request) -> Result<CniResult, PortmapError> {
        let conf = PortmapConf::from_request(req)?;
        let prev = req.prev_result.clone().ok_or_else(|| {
            PortmapError::InvalidConfig(
                "cni-portmap runs chained after the plugin that makes the interface (no prevResult)"
                    .into(),
            )
        })?;
        if conf.mappings.is_empty() {
            return Ok(prev);
        }
        let found = targets(&prev);
        if found.0.is_none() && found.1.is_none() {
            return Err(PortmapError::InvalidConfig(
                "prevResult holds no address of the container to map ports to".into(),
            ));
        }
        let owner = owner_of(req);
        let udp = rules::add(&owner, &conf, found)?;
        if conf.snat {
            if let Some(v4) = &found.0 {
                allow_localnet(v4)?;
            }
        }
        let mut failures = Failures::new("conntrack flush");
        flush_udp(&udp, &mut failures);
        failures.finish_with(PortmapError::Several)?;
        tracing::info!(%owner, mappings = conf.mappings.len(), "ports mapped");
        Ok(prev)
    }

    fn del(&self, req: &Request) -> Result<(), PortmapError> {
        // Everything the attachment owns goes, found by its owner: neither the netns nor the
        // mappings (nor a readable configuration) are needed.
        let owner = owner_of(req);
        let mut failures = Failures::new("teardown step");
        if let Some(udp) = failures.note(rules::remove(&Select::Owner(&owner))) {
            flush_udp(&udp, &mut failures);
        }
        failures.finish_with(PortmapError::Several)
    }

    fn check(&self, req: &Request) -> Result<(), PortmapError> {
        let conf = PortmapConf::from_request(req)?;
        let prev = req
            .prev_result
            .as_ref()
            .ok_or_else(|| PortmapError::InvalidConfig("CHECK needs prevResult".into()))?;
        rules::check(&owner_of(req), &conf, targets(prev))
    }

    fn gc(&self, req: &Request, valid: &[Attachment]) -> Result<(), PortmapError> {
        let valid: HashSet<String> = valid
            .iter()
            .map(|a| rules::owner(&req.config.name, &a.container_id, &a.ifname))
            .collect();
        let mut failures = Failures::new("GC step");
        let select = Select::AllBut {
            network: &req.config.name,
            valid: &valid,
        };
        if let Some(udp) = failures.note(rules::remove(&select)) {
            flush_udp(&udp, &mut failures);
        }
        failures.finish_with(PortmapError::Several)
    }

    fn status(&self, _req: &Request) -> Result<(), PortmapError> {
        cni_core::firewall::probe()
            .map_err(|e| PortmapError::NotAvailable(cni_core::error::chain(&e)))
    }
}
