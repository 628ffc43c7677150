//! The verbs of the bridge plugin.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

use cni_core::delegate::{self, Delegates};
use cni_core::names;
use cni_core::netlink::detached as unlink;
use cni_core::netlink::{AddressOptions, Link, Netlink, RouteSpec, VethSpec};
use cni_core::netns::NetNs;
use cni_core::sysctl;
use cni_core::{CniResult, Command, Interface, IpConfig, Plugin, Request, Route};
use ipnetwork::IpNetwork;
use serde_json::Value;

use crate::config::BridgeConf;
use crate::error::{finish, BridgeError, Failures};
use crate::nft;
use crate::routed;

/// Used when neither the config nor the host's default-route interface gives an MTU.
const FALLBACK_MTU: u32 = 1500;

pub struct BridgePlugin;

/// cni-ipam is called in-process (the IPAM executable of another name is run as one).
const DELEGATES: Delegates = Delegates::linking(&[("cni-ipam", &cni_ipam::HostLocalIpam)]);

impl Plugin for BridgePlugin {
    type Error = BridgeError;

    fn add(&self, req: &Request) -> Result<CniResult, BridgeError> {
        let conf = BridgeConf::from_request(req)?;
        let netns_path = req.netns.as_deref().unwrap_or(Path::new(""));
        let pod_ns = NetNs::open(netns_path).map_err(BridgeError::NoNetns)?;
        let mut pod_nl = Netlink::open_in(&pod_ns)?;
        if pod_nl.link(&req.ifname)?.is_some() {
            return Err(BridgeError::InterfaceExists {
                ifname: req.ifname.clone(),
                netns: netns_path.display().to_string(),
            });
        }
        let mut host_nl = Netlink::open()?;
        let mtu = match conf.mtu {
            Some(mtu) => mtu,
            None => default_mtu(&mut host_nl)?,
        };
        let bridge = ensure_bridge(&mut host_nl, &conf, mtu)?;

        // IPAM runs in its own process or thread; the veth pair, which needs no address, is made
        // meanwhile.
        let ipam_run = conf
            .ipam_type
            .as_deref()
            .map(|plugin| DELEGATES.start(req, plugin, Command::Add, &full_config(req)))
            .transpose()?;
        let attached = PodAttachment::new(req, &conf, &pod_ns, mtu);
        let link = attached.create_link(&mut host_nl, &bridge);
        let ipam = match ipam_run.map(delegate::Running::finish).transpose() {
            Ok(ipam) => ipam.flatten().unwrap_or_default(),
            Err(e) => {
                // IPAM handed out nothing; only the veth pair goes: by name, whether or not its
                // setup got to the end (a pair made but not configured must not stay behind).
                if let Err(undo) = unlink::delete_link_detached(&attached.host_veth) {
                    tracing::warn!(error = %undo, "removing the veth after IPAM failed");
                }
                return Err(e.into());
            }
        };
        match link.and_then(|host_link| {
            attached.configure(&mut host_nl, &mut pod_nl, &bridge, host_link, ipam)
        }) {
            Ok(result) => Ok(result),
            Err(e) => {
                tracing::warn!(error = %e, "ADD failed after IPAM, undoing it");
                if let Err(undo) = teardown(req, &conf) {
                    tracing::warn!(error = %undo, "undoing the failed ADD was incomplete");
                }
                Err(e)
            }
        }
    }

    fn del(&self, req: &Request) -> Result<(), BridgeError> {
        let conf = BridgeConf::from_request(req)?;
        teardown(req, &conf)
    }

    fn check(&self, req: &Request) -> Result<(), BridgeError> {
        let conf = BridgeConf::from_request(req)?;
        let prev = req
            .prev_result
            .as_ref()
            .ok_or_else(|| BridgeError::InvalidConfig("CHECK needs prevResult".into()))?;
        if let Some(plugin) = &conf.ipam_type {
            DELEGATES.invoke(req, plugin, Command::Check, &full_config(req))?;
        }
        check_attachment(req, &conf, prev)
    }

    fn gc(&self, req: &Request, valid: &[cni_core::Attachment]) -> Result<(), BridgeError> {
        let conf = BridgeConf::from_request(req)?;
        let mut failures = Failures::default();
        if let Some(plugin) = &conf.ipam_type {
            failures.note(DELEGATES.invoke(req, plugin, Command::Gc, &full_config(req)));
        }
        let valid_owners: HashSet<String> = valid
            .iter()
            .map(|a| nft::owner(&a.container_id, &a.ifname))
            .collect();
        // A veth that names no owner in its alias was made by an ADD killed before it could:
        // its link group says it is ours, and it belongs to no valid attachment unless its name
        // is one of theirs.
        let valid_veths: HashSet<String> = valid
            .iter()
            .map(|a| host_veth_name(&a.container_id, &a.ifname))
            .collect();
        if let Some(mut nl) = failures.note(Netlink::open()) {
            let prefix = alias_prefix(&req.config.name);
            if let Some(links) = failures.note(nl.links()) {
                for link in links {
                    let leftover = match link.alias.as_deref() {
                        Some(alias) => alias
                            .strip_prefix(&prefix)
                            .is_some_and(|owner| !valid_owners.contains(owner)),
                        None => {
                            link.group == cni_core::netlink::group::POD_VETH
                                && link.kind.as_deref() == Some("veth")
                                && !valid_veths.contains(&link.name)
                        }
                    };
                    if leftover {
                        tracing::info!(link = %link.name, alias = ?link.alias, "GC removes leftover veth");
                        failures.note(nl.delete_link(&link.name));
                    }
                }
            }
        }
        failures.note(nft::gc_masquerade(&req.config.name, &valid_owners));
        failures.note(nft::gc_spoofcheck(&req.config.name, &valid_owners));
        finish(failures)
    }

    fn status(&self, req: &Request) -> Result<(), BridgeError> {
        let conf = BridgeConf::from_request(req)?;
        if let Some(plugin) = &conf.ipam_type {
            DELEGATES.invoke(req, plugin, Command::Status, &full_config(req))?;
        }
        let unavailable = |e: BridgeError| BridgeError::NotAvailable(cni_core::error::chain(&e));
        let mut nl = Netlink::open().map_err(|e| unavailable(e.into()))?;
        let mtu = match conf.mtu {
            Some(mtu) => mtu,
            None => default_mtu(&mut nl).map_err(unavailable)?,
        };
        ensure_bridge(&mut nl, &conf, mtu).map_err(unavailable)?;
        Ok(())
    }
}

/// The configuration as received: the IPAM plugin reads its own `ipam` section from it.
fn full_config(req: &Request) -> Value {
    Value::Object(req.raw_config.clone())
}

/// A stable host-side name, so that DEL finds the veth from the container ID and interface name
/// alone (the netns may be gone): `veth` + 11 hex digits of a hash, 15 bytes in all.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let hash = names::hash64(container_id.bytes().chain([0]).chain(ifname.bytes()));
    format!("veth{:011x}", hash >> 20)
}

/// `tether-bridge:<network>:` + `<containerID>/<ifname>` marks a host veth as ours (for GC).
fn alias_prefix(network: &str) -> String {
    format!("tether-bridge:{network}:")
}

fn default_mtu(nl: &mut Netlink) -> Result<u32, BridgeError> {
    let oif = nl
        .routes(false)?
        .into_iter()
        .find(|r| r.dst.prefix() == 0)
        .and_then(|r| r.oif);
    Ok(match oif {
        Some(index) => nl.link_by_index(index)?.map_or(FALLBACK_MTU, |l| l.mtu),
        None => FALLBACK_MTU,
    })
}

/// Makes sure the bridge exists and is up. Parallel ADDs race here harmlessly: creation of an
/// existing bridge is a no-op.
fn ensure_bridge(nl: &mut Netlink, conf: &BridgeConf, mtu: u32) -> Result<Link, BridgeError> {
    let bridge = match nl.link(&conf.bridge)? {
        Some(existing) => existing,
        None => {
            if nl.create_bridge(&conf.bridge, Some(mtu), false)? {
                // Before it goes up: its IPv6 addresses need no duplicate address detection, so
                // the gateway answers neighbour solicitations as soon as the first ADD returns.
                let dad = format!("/proc/sys/net/ipv6/conf/{}/accept_dad", conf.bridge);
                if sysctl::get(&dad).is_some() {
                    sysctl::set(&dad, "0")?;
                }
            }
            nl.link(&conf.bridge)?.ok_or_else(|| {
                BridgeError::BridgeConflict(format!(
                    "bridge {} vanished while being set up",
                    conf.bridge
                ))
            })?
        }
    };
    if bridge.kind.as_deref() != Some("bridge") {
        return Err(BridgeError::BridgeConflict(format!(
            "{} exists but is a {} device, not a bridge",
            conf.bridge,
            bridge.kind.as_deref().unwrap_or("plain")
        )));
    }
    if !bridge.up {
        nl.set_up(bridge.index)?;
    }
    if conf.promisc_mode && !bridge.promisc {
        nl.set_promisc(bridge.index, true)?;
    }
    if conf.vlan != 0 {
        match nl.set_vlan_filtering(bridge.index, true) {
            Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => {
                return Err(BridgeError::Unsupported(format!(
                    "vlan {} (bridge VLAN filtering; the kernel needs CONFIG_BRIDGE_VLAN_FILTERING)",
                    conf.vlan
                )))
            }
            other => other?,
        }
    }
    Ok(bridge)
}

/// One pod attachment being set up.
struct PodAttachment<'a> {
    req: &'a Request,
    conf: &'a BridgeConf,
    pod_ns: &'a NetNs,
    mtu: u32,
    host_veth: String,
}

impl<'a> PodAttachment<'a> {
    fn new(req: &'a Request, conf: &'a BridgeConf, pod_ns: &'a NetNs, mtu: u32) -> Self {
        PodAttachment {
            req,
            conf,
            pod_ns,
            mtu,
            host_veth: host_veth_name(&req.container_id, &req.ifname),
        }
    }

    /// The veth pair: the pod end straight into the pod's namespace, the host end on the bridge.
    fn create_link(&self, host_nl: &mut Netlink, bridge: &Link) -> Result<Link, BridgeError> {
        let (req, conf) = (self.req, self.conf);
        let alias = format!(
            "{}{}",
            alias_prefix(&req.config.name),
            nft::owner(&req.container_id, &req.ifname)
        );
        host_nl
            .create_veth(&VethSpec {
                host_name: &self.host_veth,
                host_alias: Some(&alias),
                host_group: cni_core::netlink::group::POD_VETH,
                host_master: (!conf.routed).then_some(bridge.index),
                peer_name: &req.ifname,
                peer_mac: conf.mac,
                peer_netns: self.pod_ns,
                mtu: self.mtu,
            })
            .map_err(|e| {
                if e.is_exists() {
                    BridgeError::InterfaceExists {
                        ifname: self.host_veth.clone(),
                        netns: "the host (a leftover of this container? DEL it first)".into(),
                    }
                } else {
                    e.into()
                }
            })?;
        let host_link = host_nl.link(&self.host_veth)?.ok_or_else(|| {
            BridgeError::BridgeConflict(format!("veth {} vanished after creation", self.host_veth))
        })?;
        if conf.hairpin_mode && !conf.routed {
            host_nl.set_hairpin(host_link.index, true)?;
        }
        if conf.port_isolation {
            host_nl.set_isolated(host_link.index, true)?;
        }
        if conf.vlan != 0 {
            host_nl.bridge_vlan(host_link.index, 1, false, false, false)?;
            host_nl.bridge_vlan(host_link.index, conf.vlan, true, false, true)?;
            if conf.is_gateway {
                host_nl.bridge_vlan(bridge.index, conf.vlan, true, true, true)?;
            }
        }
        Ok(host_link)
    }

    /// Everything that needs IPAM's answer: addresses, routes, gateway, nftables; the result.
    fn configure(
        &self,
        host_nl: &mut Netlink,
        pod_nl: &mut Netlink,
        bridge: &Link,
        host_link: Link,
        ipam: CniResult,
    ) -> Result<CniResult, BridgeError> {
        let (req, conf) = (self.req, self.conf);
        let (pod_link, routes) = self.address_pod(pod_nl, &ipam)?;
        if conf.is_gateway {
            self.ensure_gateway(host_nl, bridge, &ipam)?;
        }
        if conf.routed {
            routed::connect(host_nl, &host_link, pod_nl, &pod_link, &ipam)?;
        }
        if conf.ip_masq {
            let addresses: Vec<IpNetwork> = ipam.ips.iter().map(|ip| ip.address).collect();
            nft::add_masquerade(
                &req.config.name,
                &nft::owner(&req.container_id, &req.ifname),
                &addresses,
            )?;
        }
        let pod_mac = pod_link.mac_string().unwrap_or_default();
        if conf.macspoofchk {
            nft::add_spoofcheck(
                &req.config.name,
                &nft::owner(&req.container_id, &req.ifname),
                &self.host_veth,
                &pod_mac,
            )?;
        }

        self.result(host_nl, bridge, &host_link, pod_mac, ipam, routes)
    }

    /// The pod's side: link up, IPAM's addresses (no DAD) and routes. Returns the pod's link.
    fn address_pod(
        &self,
        pod_nl: &mut Netlink,
        ipam: &CniResult,
    ) -> Result<(Link, Vec<Route>), BridgeError> {
        let req = self.req;
        let has_v6 = ipam.ips.iter().any(|ip| ip.address.is_ipv6());
        if has_v6 {
            // Addresses are added with NODAD; also skip DAD for the link-local address, so that
            // IPv6 is usable as soon as ADD returns.
            let path = format!("/proc/sys/net/ipv6/conf/{}/accept_dad", req.ifname);
            self.pod_ns
                .run(|| sysctl::set(&path, "0"))
                .map_err(BridgeError::Netns)??;
        }
        let pod_link = pod_nl.link(&req.ifname)?.ok_or_else(|| {
            BridgeError::BridgeConflict(format!(
                "{} vanished from the pod after creation",
                req.ifname
            ))
        })?;
        if !has_v6 {
            // An IPv4-only pod gets no IPv6 link-local address: its DAD, router solicitation and
            // MLD reports would be flooded by the bridge to every other pod of the node, which
            // made each ADD cost more the more pods the node had.
            pod_nl.set_no_ipv6_link_local(pod_link.index)?;
        }
        if self.conf.port_isolation {
            self.refuse_redirects(ipam)?;
        }
        let via_gateway = self.conf.subnet_via_gateway();
        pod_nl.set_up(pod_link.index)?;
        for ip in &ipam.ips {
            let options = AddressOptions {
                nodad: true,
                // The subnet is reached through the gateway, not on the link.
                no_prefix_route: via_gateway,
            };
            pod_nl.add_address_with(pod_link.index, ip.address, options)?;
        }
        let routes = self.pod_routes(ipam);
        for route in &routes {
            let gateway = route.gw.or_else(|| gateway_for(ipam, route.dst.ip()));
            pod_nl.add_route(&RouteSpec {
                dst: route.dst,
                gateway,
                oif: pod_link.index,
                mtu: route.mtu,
                priority: route.priority,
                // Without a subnet route, the gateway is on the link by declaration.
                onlink: via_gateway && gateway.is_some(),
                source: None,
            })?;
        }

        Ok((pod_link, routes))
    }

    /// The result ADD prints: bridge, host veth and pod interface, the addresses on the pod's.
    fn result(
        &self,
        host_nl: &mut Netlink,
        bridge: &Link,
        host_link: &Link,
        pod_mac: String,
        ipam: CniResult,
        routes: Vec<Route>,
    ) -> Result<CniResult, BridgeError> {
        let (req, conf) = (self.req, self.conf);
        let bridge_now = host_nl
            .link(&conf.bridge)?
            .unwrap_or_else(|| bridge.clone());
        let ips = ipam
            .ips
            .iter()
            .map(|ip| IpConfig {
                interface: Some(2),
                ..ip.clone()
            })
            .collect();
        Ok(CniResult {
            interfaces: vec![
                Interface {
                    name: bridge_now.name.clone(),
                    mac: bridge_now.mac_string(),
                    ..Interface::default()
                },
                Interface {
                    name: self.host_veth.clone(),
                    mac: host_link.mac_string(),
                    ..Interface::default()
                },
                Interface {
                    name: req.ifname.clone(),
                    mac: Some(pod_mac),
                    mtu: Some(self.mtu),
                    sandbox: Some(self.pod_ns.path().display().to_string()),
                    ..Interface::default()
                },
            ],
            ips,
            routes,
            dns: if ipam.dns.is_empty() {
                conf.dns.clone().unwrap_or_default()
            } else {
                ipam.dns
            },
        })
    }

    /// An isolated pod ignores ICMP redirects: the host, forwarding a packet back out of the
    /// bridge it came from, tells the sender the destination is on the link, which isolation
    /// makes untrue.
    fn refuse_redirects(&self, ipam: &CniResult) -> Result<(), BridgeError> {
        let ifname = &self.req.ifname;
        let mut paths = Vec::new();
        for (v6, family) in [(false, "ipv4"), (true, "ipv6")] {
            if ipam.ips.iter().any(|ip| ip.address.is_ipv6() == v6) {
                for conf in ["all", ifname.as_str()] {
                    paths.push(format!(
                        "/proc/sys/net/{family}/conf/{conf}/accept_redirects"
                    ));
                }
            }
        }
        self.pod_ns
            .run(|| {
                paths
                    .iter()
                    .try_for_each(|path| sysctl::set(path, "0").map(drop))
            })
            .map_err(BridgeError::Netns)??;
        Ok(())
    }

    /// IPAM's routes, plus a default route per family via the gateway with isDefaultGateway;
    /// isolated or routed, first each address's subnet via its gateway.
    fn pod_routes(&self, ipam: &CniResult) -> Vec<Route> {
        let mut routes = Vec::new();
        if self.conf.subnet_via_gateway() {
            for ip in &ipam.ips {
                let Some(gw) = ip.gateway else { continue };
                if let Ok(subnet) = IpNetwork::new(ip.address.network(), ip.address.prefix()) {
                    routes.push(Route::new(subnet, Some(gw)));
                }
            }
        }
        routes.extend(ipam.routes.iter().cloned());
        if self.conf.is_default_gateway {
            for ip in &ipam.ips {
                let Some(gw) = ip.gateway else { continue };
                let default: IpNetwork = if gw.is_ipv4() {
                    IpNetwork::new(IpAddr::from([0u8; 4]), 0)
                } else {
                    IpNetwork::new(IpAddr::from([0u16; 8]), 0)
                }
                .unwrap_or(ip.address);
                if !routes.iter().any(|r| r.dst == default) {
                    routes.push(Route::new(default, Some(gw)));
                }
            }
        }
        routes
    }

    /// Puts each family's gateway address on the bridge and enables forwarding.
    fn ensure_gateway(
        &self,
        nl: &mut Netlink,
        bridge: &Link,
        ipam: &CniResult,
    ) -> Result<(), BridgeError> {
        let gateways: Vec<IpNetwork> = ipam
            .ips
            .iter()
            .filter_map(|ip| {
                ip.gateway
                    .and_then(|gw| IpNetwork::new(gw, ip.address.prefix()).ok())
            })
            .collect();
        if gateways.is_empty() {
            return Err(BridgeError::NoGateway);
        }
        let existing = nl.addresses(bridge.index)?;
        for gw in &gateways {
            if existing.contains(gw) {
                continue;
            }
            let conflicting: Vec<&IpNetwork> = existing
                .iter()
                .filter(|a| {
                    a.is_ipv4() == gw.is_ipv4()
                        && a.prefix() == gw.prefix()
                        && a.network() == gw.network()
                })
                .collect();
            for old in conflicting {
                if !self.conf.force_address {
                    return Err(BridgeError::BridgeConflict(format!(
                        "bridge {} already has {old} in the subnet of gateway {gw}; set forceAddress to replace it",
                        bridge.name
                    )));
                }
                nl.del_address(bridge.index, *old)?;
            }
            nl.add_address(bridge.index, *gw, true)?;
        }
        if gateways.iter().any(IpNetwork::is_ipv4) {
            sysctl::enable_forwarding(false)?;
        }
        if gateways.iter().any(IpNetwork::is_ipv6) {
            sysctl::enable_forwarding(true)?;
        }
        Ok(())
    }
}

fn gateway_for(ipam: &CniResult, dst: IpAddr) -> Option<IpAddr> {
    ipam.ips
        .iter()
        .filter(|ip| ip.address.is_ipv4() == dst.is_ipv4())
        .find_map(|ip| ip.gateway)
}

/// Everything DEL undoes, best effort: the veth pair, then IPAM, masquerade and spoof-check
/// state. The pair goes first: a DEL killed in between must not leave the pod holding an
/// address that IPAM already handed back (the next ADD would get it too).
fn teardown(req: &Request, conf: &BridgeConf) -> Result<(), BridgeError> {
    let mut failures = Failures::default();
    let host_veth = host_veth_name(&req.container_id, &req.ifname);
    // Deleting the host end removes the pair; the name is derived, so this works without the netns.
    // It returns once the kernel has unlisted the pair; a helper process waits out the kernel's
    // RCU barrier that follows (most of the cost of deleting a veth), see cni_core::netlink.
    let pair_gone = failures
        .note(unlink::delete_link_detached(&host_veth))
        .is_some();
    // While the pair may still exist, the address stays leased: the retried DEL releases it.
    if let Some(plugin) = conf.ipam_type.as_deref().filter(|_| pair_gone) {
        failures.note(DELEGATES.invoke(req, plugin, Command::Del, &full_config(req)));
    }
    let owner = nft::owner(&req.container_id, &req.ifname);
    if conf.ip_masq {
        failures.note(nft::remove_masquerade(&req.config.name, &owner));
    }
    if conf.macspoofchk {
        failures.note(nft::remove_spoofcheck(&req.config.name, &owner));
    }
    finish(failures)
}

/// CHECK: the kernel state matches prevResult and the configuration.
fn check_attachment(req: &Request, conf: &BridgeConf, prev: &CniResult) -> Result<(), BridgeError> {
    let mismatch = |msg: String| Err(BridgeError::CheckMismatch(msg));
    let mut host_nl = Netlink::open()?;
    let Some(bridge) = host_nl.link(&conf.bridge)? else {
        return mismatch(format!("bridge {} does not exist", conf.bridge));
    };
    if bridge.kind.as_deref() != Some("bridge") {
        return mismatch(format!("{} is not a bridge", conf.bridge));
    }
    let host_veth = host_veth_name(&req.container_id, &req.ifname);
    let Some(host_link) = host_nl.link(&host_veth)? else {
        return mismatch(format!("host veth {host_veth} does not exist"));
    };
    if conf.routed {
        let addresses: Vec<IpAddr> = prev.ips.iter().map(|ip| ip.address.ip()).collect();
        routed::check(&mut host_nl, &host_link, &addresses)?;
    } else if host_link.master != Some(bridge.index) {
        return mismatch(format!(
            "host veth {host_veth} is not attached to bridge {}",
            conf.bridge
        ));
    }
    let netns = req.netns.as_deref().unwrap_or(Path::new(""));
    let pod_ns = NetNs::open(netns).map_err(BridgeError::NoNetns)?;
    let mut pod_nl = Netlink::open_in(&pod_ns)?;
    let Some(pod_link) = pod_nl.link(&req.ifname)? else {
        return mismatch(format!(
            "interface {} does not exist in {}",
            req.ifname,
            netns.display()
        ));
    };
    if host_link.peer_index != Some(pod_link.index) {
        return mismatch(format!(
            "{} is not the peer of host veth {host_veth}",
            req.ifname
        ));
    }
    if !pod_link.up {
        return mismatch(format!("{} is down", req.ifname));
    }
    if conf.port_isolation {
        let flag = format!("/sys/class/net/{host_veth}/brport/isolated");
        if sysctl::get(&flag).as_deref() != Some("1") {
            return mismatch(format!(
                "host veth {host_veth} is not an isolated bridge port (portIsolation)"
            ));
        }
    }
    check_pod(req, conf, prev, &mut pod_nl, &pod_link)?;
    let owner = nft::owner(&req.container_id, &req.ifname);
    if conf.ip_masq {
        let addresses: Vec<IpNetwork> = prev.ips.iter().map(|ip| ip.address).collect();
        nft::check_masquerade(&req.config.name, &owner, &addresses)?;
    }
    if conf.macspoofchk {
        nft::check_spoofcheck(&req.config.name, &owner)?;
    }
    if conf.is_gateway {
        let bridge_addrs = host_nl.addresses(bridge.index)?;
        for ip in &prev.ips {
            if let Some(gw) = ip
                .gateway
                .and_then(|gw| IpNetwork::new(gw, ip.address.prefix()).ok())
            {
                if !bridge_addrs.contains(&gw) {
                    return mismatch(format!(
                        "gateway {gw} is missing from bridge {}",
                        conf.bridge
                    ));
                }
            }
        }
    }
    Ok(())
}

/// CHECK of the pod's side against prevResult: MTU, MAC, addresses, routes.
fn check_pod(
    req: &Request,
    conf: &BridgeConf,
    prev: &CniResult,
    pod_nl: &mut Netlink,
    pod_link: &Link,
) -> Result<(), BridgeError> {
    let mismatch = |msg: String| Err(BridgeError::CheckMismatch(msg));
    let prev_pod = prev
        .interfaces
        .iter()
        .position(|i| i.name == req.ifname && i.sandbox.is_some());
    let prev_iface = prev_pod.map(|i| &prev.interfaces[i]);
    let expected_mtu = conf.mtu.or(prev_iface.and_then(|i| i.mtu));
    if let Some(mtu) = expected_mtu.filter(|m| *m != pod_link.mtu) {
        return mismatch(format!(
            "{} has MTU {}, expected {mtu}",
            req.ifname, pod_link.mtu
        ));
    }
    if let Some(mac) = prev_iface.and_then(|i| i.mac.as_deref()) {
        if pod_link.mac_string().as_deref() != Some(&mac.to_ascii_lowercase()) {
            return mismatch(format!(
                "{} has MAC {}, prevResult says {mac}",
                req.ifname,
                pod_link.mac_string().unwrap_or_default()
            ));
        }
    }
    let addresses = pod_nl.addresses(pod_link.index)?;
    for ip in prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none() || ip.interface == prev_pod)
    {
        if !addresses.contains(&ip.address) {
            return mismatch(format!(
                "address {} is missing from {}",
                ip.address, req.ifname
            ));
        }
    }
    for route in &prev.routes {
        let routes = pod_nl.routes(route.dst.is_ipv6())?;
        let found = routes.iter().any(|r| {
            r.dst.network() == route.dst.network()
                && r.dst.prefix() == route.dst.prefix()
                && route.gw.is_none_or(|gw| r.gateway == Some(gw))
        });
        if !found {
            return mismatch(format!("route to {} is missing in the pod", route.dst));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_stable_short_and_distinct() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("veth"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(a, host_veth_name("abd", "eth0"));
        assert_ne!(host_veth_name("ab", "ceth0"), host_veth_name("abc", "eth0"));
    }
}
