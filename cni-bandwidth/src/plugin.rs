//! The verbs of the bandwidth plugin.

use std::collections::HashSet;
use std::path::Path;

use cni_core::netns::NetNs;
use cni_core::{Attachment, CniResult, Plugin, Request};

use crate::config::Limits;
use crate::error::BandwidthError;
use crate::shape;

pub struct BandwidthPlugin;

fn owner_of(req: &Request) -> String {
    shape::owner(&req.config.name, &req.container_id, &req.ifname)
}

fn pod_netns(req: &Request) -> Result<NetNs, BandwidthError> {
    NetNs::open(req.netns.as_deref().unwrap_or(Path::new(""))).map_err(BandwidthError::NoNetns)
}

/// The host-side interfaces of prevResult (no sandbox): where the veth may be, for a DEL that
/// finds no ifb to name it.
fn host_hint(req: &Request) -> Option<String> {
    let prev = req.prev_result.as_ref()?;
    let hosts: Vec<&cni_core::Interface> = prev
        .interfaces
        .iter()
        .filter(|i| i.sandbox.as_deref().is_none_or(str::is_empty))
        .collect();
    // A bridge plugin lists the bridge first and the veth second.
    hosts.last().map(|i| i.name.clone())
}

impl Plugin for BandwidthPlugin {
    type Error = BandwidthError;

    fn add(&self, req: &Request) -> Result<CniResult, BandwidthError> {
        let limits = Limits::from_request(req)?;
        let prev = req.prev_result.clone().ok_or_else(|| {
            BandwidthError::InvalidConfig(
                "cni-bandwidth runs chained after the plugin that makes the interface (no prevResult)"
                    .into(),
            )
        })?;
        if limits.is_empty() {
            return Ok(prev);
        }
        let host = shape::host_veth(&pod_netns(req)?, &req.ifname)?;
        shape::apply(&host, &limits, &owner_of(req))?;
        tracing::info!(host = %host.name, ?limits, "shaped");
        Ok(prev)
    }

    fn del(&self, req: &Request) -> Result<(), BandwidthError> {
        shape::remove(&owner_of(req), host_hint(req).as_deref())
    }

    fn check(&self, req: &Request) -> Result<(), BandwidthError> {
        let limits = Limits::from_request(req)?;
        if limits.is_empty() {
            return Ok(());
        }
        let host = shape::host_veth(&pod_netns(req)?, &req.ifname)?;
        shape::check(&host, &limits, &owner_of(req))
    }

    fn gc(&self, req: &Request, valid: &[Attachment]) -> Result<(), BandwidthError> {
        let valid: HashSet<String> = valid
            .iter()
            .map(|a| shape::owner(&req.config.name, &a.container_id, &a.ifname))
            .collect();
        shape::gc(&req.config.name, &valid)
    }

    fn status(&self, _req: &Request) -> Result<(), BandwidthError> {
        cni_core::netlink::Netlink::open()?;
        Ok(())
    }
}
