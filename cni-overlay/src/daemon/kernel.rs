//! The node's kernel side: the underlay, the VXLAN device, and reconciling neighbour, FDB and route
//! entries against the desired state. Only the difference is applied: after a change in the
//! cluster, the difference from what the kernel was last brought to, without reading the kernel's
//! tables (so a change costs the same in a cluster of 100 nodes as in one of 5,000); on the
//! resync timer, the difference from what the kernel's tables hold.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use cni_core::netlink::{FdbEntry, Link, Neighbour, Netlink, NlError, RouteSpec, VxlanSpec};
use cni_core::teardown::Failures;
use ipnetwork::IpNetwork;

use super::error::DaemonError;
use super::state::{Desired, RouteWant};

/// The interface that carries encapsulated traffic between nodes.
#[derive(Debug, Clone)]
pub struct Underlay {
    pub name: String,
    pub index: u32,
    pub address: IpNetwork,
    pub mtu: u32,
    /// The networks of the interface's addresses (link-local ones aside): the nodes it reaches
    /// without a router.
    pub on_link: Vec<IpNetwork>,
}

impl Underlay {
    pub fn ip(&self) -> IpAddr {
        self.address.ip()
    }

    /// VXLAN over IPv4 costs 50 bytes of headers, over IPv6 70.
    pub fn vxlan_mtu(&self) -> u32 {
        self.mtu - if self.ip().is_ipv4() { 50 } else { 70 }
    }
}

/// Counts of what one reconciliation changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    pub added: usize,
    pub removed: usize,
}

/// One kernel entry, as a failure names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Neighbour(IpAddr),
    Fdb(Vec<u8>),
    Route(IpNetwork),
    /// Reading the kernel's entries of one kind failed: none of that kind were compared.
    Listing(&'static str),
}

/// An entry the kernel refused; the others were applied.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct EntryError {
    pub entry: Entry,
    pub error: NlError,
}

/// One reconciliation in progress: what it changed, what the kernel refused.
struct Run {
    changes: Changes,
    failures: Failures<EntryError>,
}

impl Run {
    fn note<T>(&mut self, entry: Entry, result: Result<T, NlError>) -> Option<T> {
        self.failures
            .note(result.map_err(|error| EntryError { entry, error }))
    }

    fn added(&mut self, entry: Entry, result: Result<(), NlError>) {
        if self.note(entry, result).is_some() {
            self.changes.added += 1;
        }
    }

    fn removed(&mut self, entry: Entry, result: Result<(), NlError>) {
        if self.note(entry, result).is_some() {
            self.changes.removed += 1;
        }
    }
}

/// What one reconciliation did, and every entry it could not apply.
#[derive(Debug, Default)]
pub struct Outcome {
    pub changes: Changes,
    pub failures: Vec<EntryError>,
}

pub struct Kernel {
    nl: Netlink,
    pub underlay: Underlay,
    /// The VTEP address asked for on the command line, if any.
    underlay_address: Option<IpAddr>,
    vxlan_name: String,
    vni: u32,
    port: u16,
    mac: [u8; 6],
    tx_checksum_off: bool,
}

impl Kernel {
    pub fn new(
        iface: Option<&str>,
        underlay_address: Option<IpAddr>,
        vxlan_name: String,
        vni: u32,
        port: u16,
        node_name: &str,
        tx_checksum_off: bool,
    ) -> Result<Kernel, DaemonError> {
        let mut nl = Netlink::open()?;
        let underlay = detect_underlay(&mut nl, iface, underlay_address)?;
        Ok(Kernel {
            nl,
            underlay,
            underlay_address,
            vxlan_name,
            vni,
            port,
            mac: vtep_mac(node_name, vni),
            tx_checksum_off,
        })
    }

    /// Takes the interface holding `ip` as the underlay, with `ip` as the VTEP address (the
    /// Node's InternalIP), instead of the default-route interface. False, changing nothing, when
    /// no interface holds it.
    pub fn adopt_underlay_address(&mut self, ip: IpAddr) -> Result<bool, DaemonError> {
        match detect_underlay(&mut self.nl, None, Some(ip)) {
            Ok(underlay) => {
                self.underlay = underlay;
                self.underlay_address = Some(ip);
                Ok(true)
            }
            Err(DaemonError::Config(why)) => {
                tracing::warn!(%ip, %why, "the Node's InternalIP is not usable as the underlay address");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Re-reads the underlay interface; true when its address (and so our VTEP) changed.
    pub fn refresh_underlay(&mut self, iface: Option<&str>) -> Result<bool, DaemonError> {
        let now = detect_underlay(&mut self.nl, iface, self.underlay_address)?;
        let changed =
            now.address.ip() != self.underlay.address.ip() || now.index != self.underlay.index;
        if changed {
            tracing::warn!(old = %self.underlay.address, new = %now.address, "underlay address changed");
        }
        self.underlay = now;
        Ok(changed)
    }

    pub fn vtep_mac(&self) -> String {
        cni_core::netlink::format_mac(&self.mac)
    }

    pub fn vxlan_name(&self) -> &str {
        &self.vxlan_name
    }

    /// Makes sure the VXLAN device exists with our settings and is up; recreates it if it was
    /// deleted or differs. A healthy device is never touched. The MAC is derived from the node
    /// name, so a recreated device keeps it and peers' entries stay valid.
    pub fn ensure_vxlan(&mut self, own_subnets: &[IpNetwork]) -> Result<Link, DaemonError> {
        let existing = self.nl.link(&self.vxlan_name)?;
        let wanted_mtu = self.underlay.vxlan_mtu();
        let fits = existing.as_ref().is_some_and(|l| {
            let info = l.vxlan.clone().unwrap_or_default();
            l.kind.as_deref() == Some("vxlan")
                && info.vni == Some(self.vni)
                && info.port == Some(self.port)
                && info.local == Some(self.underlay.ip())
                && info.underlay == Some(self.underlay.index)
                && l.mac.as_deref() == Some(&self.mac[..])
        });
        if existing.is_some() && !fits {
            tracing::warn!(device = %self.vxlan_name, "VXLAN device differs from the configuration; recreating it");
            self.nl.delete_link(&self.vxlan_name)?;
        }
        if !fits {
            self.nl.create_vxlan(&VxlanSpec {
                name: &self.vxlan_name,
                vni: self.vni,
                port: self.port,
                local: self.underlay.ip(),
                underlay: self.underlay.index,
                mtu: wanted_mtu,
                mac: Some(self.mac),
            })?;
            if self.tx_checksum_off {
                set_tx_checksum(&self.vxlan_name, false)?;
            }
            tracing::info!(device = %self.vxlan_name, vni = self.vni, port = self.port, mtu = wanted_mtu, "VXLAN device created");
        }
        let link = self.nl.link(&self.vxlan_name)?.ok_or_else(|| {
            DaemonError::KernelState(format!("{} vanished after creation", self.vxlan_name))
        })?;
        if link.mtu != wanted_mtu {
            self.nl.set_mtu(link.index, wanted_mtu)?;
        }
        // Each own subnet's network address as a host address: what peers' neighbour entries
        // point at. Other addresses go, except IPv6 link-local ones (the kernel's own).
        let own: Vec<IpNetwork> = own_subnets
            .iter()
            .filter_map(|s| IpNetwork::new(s.network(), if s.is_ipv4() { 32 } else { 128 }).ok())
            .collect();
        for old in self.nl.addresses(link.index)? {
            let link_local =
                matches!(old.ip(), IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
            if !link_local && !own.contains(&old) {
                self.nl.del_address(link.index, old)?;
            }
        }
        for address in own {
            self.nl.add_address(link.index, address, true)?;
        }
        if !link.up {
            self.nl.set_up(link.index)?;
        }
        Ok(link)
    }

    /// Brings the kernel to `desired`, touching only entries that differ. Routes considered ours
    /// are main-table routes into `cluster` (other than `own_subnet`) through the VXLAN device or
    /// the underlay. Every entry that can be applied is: one the kernel refuses is reported in
    /// the outcome and the rest carry on.
    pub fn reconcile(
        &mut self,
        vxlan: &Link,
        desired: &Desired,
        clusters: &[IpNetwork],
        own_subnets: &[IpNetwork],
    ) -> Outcome {
        let mut run = Run {
            changes: Changes::default(),
            failures: Failures::new("kernel entry"),
        };
        self.reconcile_neighbours(vxlan.index, desired, &mut run);
        self.reconcile_fdb(vxlan.index, desired, &mut run);
        self.reconcile_routes(vxlan.index, desired, clusters, own_subnets, &mut run);
        Outcome {
            changes: run.changes,
            failures: run.failures.into_errors(),
        }
    }

    /// Writes what differs between `before` (what the kernel was brought to) and `after`,
    /// without reading the kernel: entries gone or changed are removed, new or changed ones
    /// added. Whatever was changed behind the daemon's back is repaired by the next full run.
    pub fn apply_difference(&mut self, vxlan: &Link, before: &Desired, after: &Desired) -> Outcome {
        let mut run = Run {
            changes: Changes::default(),
            failures: Failures::new("kernel entry"),
        };
        let index = vxlan.index;
        for (ip, _) in stale(&before.neighbours, &after.neighbours) {
            let done = self.nl.del_neighbour(index, *ip);
            run.removed(Entry::Neighbour(*ip), done);
        }
        for (ip, mac) in stale(&after.neighbours, &before.neighbours) {
            let entry = Neighbour {
                ip: *ip,
                mac: mac.clone(),
            };
            let done = self.nl.set_neighbour(index, &entry);
            run.added(Entry::Neighbour(*ip), done);
        }
        for (mac, dst) in stale(&before.fdb, &after.fdb) {
            let entry = FdbEntry {
                mac: mac.clone(),
                dst: Some(*dst),
            };
            let done = self.nl.del_fdb(index, &entry);
            run.removed(Entry::Fdb(mac.clone()), done);
        }
        for (mac, dst) in stale(&after.fdb, &before.fdb) {
            let entry = FdbEntry {
                mac: mac.clone(),
                dst: Some(*dst),
            };
            let done = self.nl.set_fdb(index, &entry);
            run.added(Entry::Fdb(mac.clone()), done);
        }
        for (dst, _) in stale(&before.routes, &after.routes) {
            if !after.routes.contains_key(dst) {
                let done = self.nl.del_route(*dst);
                run.removed(Entry::Route(*dst), done);
            }
        }
        for (dst, want) in stale(&after.routes, &before.routes) {
            let done = self.nl.replace_route(&self.route_spec(index, *dst, want));
            run.added(Entry::Route(*dst), done);
        }
        Outcome {
            changes: run.changes,
            failures: run.failures.into_errors(),
        }
    }

    fn route_spec(&self, vxlan: u32, dst: IpNetwork, want: &RouteWant) -> RouteSpec {
        RouteSpec {
            dst,
            gateway: Some(want.gateway),
            oif: if want.via_vxlan {
                vxlan
            } else {
                self.underlay.index
            },
            mtu: None,
            priority: None,
            onlink: want.via_vxlan,
            source: None,
        }
    }

    fn reconcile_neighbours(&mut self, index: u32, desired: &Desired, run: &mut Run) {
        let Some(actual) = run.note(Entry::Listing("neighbours"), self.nl.neighbours(index)) else {
            return;
        };
        let actual: BTreeSet<Neighbour> = actual.into_iter().collect();
        for n in &actual {
            if desired.neighbours.get(&n.ip) != Some(&n.mac) {
                let done = self.nl.del_neighbour(index, n.ip);
                run.removed(Entry::Neighbour(n.ip), done);
            }
        }
        for (ip, mac) in &desired.neighbours {
            let entry = Neighbour {
                ip: *ip,
                mac: mac.clone(),
            };
            if !actual.contains(&entry) {
                let done = self.nl.set_neighbour(index, &entry);
                run.added(Entry::Neighbour(*ip), done);
            }
        }
    }

    fn reconcile_fdb(&mut self, index: u32, desired: &Desired, run: &mut Run) {
        let Some(actual) = run.note(Entry::Listing("forwarding entries"), self.nl.fdb(index))
        else {
            return;
        };
        let actual: BTreeSet<FdbEntry> = actual.into_iter().filter(|e| e.dst.is_some()).collect();
        for e in &actual {
            if desired.fdb.get(&e.mac) != e.dst.as_ref() {
                let done = self.nl.del_fdb(index, e);
                run.removed(Entry::Fdb(e.mac.clone()), done);
            }
        }
        for (mac, dst) in &desired.fdb {
            let entry = FdbEntry {
                mac: mac.clone(),
                dst: Some(*dst),
            };
            if !actual.contains(&entry) {
                let done = self.nl.set_fdb(index, &entry);
                run.added(Entry::Fdb(mac.clone()), done);
            }
        }
    }

    fn reconcile_routes(
        &mut self,
        index: u32,
        desired: &Desired,
        clusters: &[IpNetwork],
        own_subnets: &[IpNetwork],
        run: &mut Run,
    ) {
        let underlay = self.underlay.index;
        let ours = |dst: &IpNetwork, oif: Option<u32>| {
            clusters.iter().any(|cluster| {
                cluster.is_ipv4() == dst.is_ipv4()
                    && dst.prefix() > cluster.prefix()
                    && cluster.contains(dst.network())
            }) && !own_subnets.contains(dst)
                && (oif == Some(index) || oif == Some(underlay))
        };
        let mut actual = Vec::new();
        let mut listed_all = true;
        for ipv6 in [false, true] {
            if clusters.iter().any(|c| c.is_ipv6() == ipv6) {
                match run.note(Entry::Listing("routes"), self.nl.routes(ipv6)) {
                    Some(routes) => {
                        actual.extend(routes.into_iter().filter(|r| ours(&r.dst, r.oif)))
                    }
                    None => listed_all = false,
                }
            }
        }
        // Without the full list a route could be taken for a stale one: remove nothing then.
        if listed_all {
            for r in &actual {
                if !desired.routes.contains_key(&r.dst) {
                    let done = self.nl.del_route(r.dst);
                    run.removed(Entry::Route(r.dst), done);
                }
            }
        }
        let present: HashSet<_> = actual
            .iter()
            .map(|r| (r.dst, r.gateway, r.oif, r.onlink))
            .collect();
        for (dst, want) in &desired.routes {
            let spec = self.route_spec(index, *dst, want);
            if !present.contains(&(spec.dst, spec.gateway, Some(spec.oif), spec.onlink)) {
                let done = self.nl.replace_route(&spec);
                run.added(Entry::Route(*dst), done);
            }
        }
    }

    /// Removes the VXLAN device (and with it every entry on it) when the node leaves.
    pub fn remove_vxlan(&mut self) -> Result<(), DaemonError> {
        self.nl.delete_link(&self.vxlan_name)?;
        Ok(())
    }
}

/// The entries of `a` that `b` does not hold with the same value.
fn stale<'a, K: Ord, V: PartialEq>(
    a: &'a BTreeMap<K, V>,
    b: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = (&'a K, &'a V)> {
    a.iter().filter(move |(k, v)| b.get(k) != Some(v))
}

fn detect_underlay(
    nl: &mut Netlink,
    iface: Option<&str>,
    wanted: Option<IpAddr>,
) -> Result<Underlay, DaemonError> {
    let holding = |nl: &mut Netlink, ip: IpAddr| -> Result<Option<Link>, DaemonError> {
        for link in nl.links()? {
            if nl.addresses(link.index)?.iter().any(|a| a.ip() == ip) {
                return Ok(Some(link));
            }
        }
        Ok(None)
    };
    let link = match (iface, wanted) {
        (Some(name), _) => nl
            .link(name)?
            .ok_or_else(|| DaemonError::Config(format!("--iface {name}: no such interface")))?,
        (None, Some(ip)) => holding(nl, ip)?.ok_or_else(|| {
            DaemonError::Config(format!(
                "underlay address {ip} is not an address of this node"
            ))
        })?,
        (None, None) => {
            // The interface of the default route (IPv4, else IPv6).
            let mut oif = None;
            for ipv6 in [false, true] {
                oif = nl
                    .routes(ipv6)?
                    .into_iter()
                    .find(|r| r.dst.prefix() == 0)
                    .and_then(|r| r.oif);
                if oif.is_some() {
                    break;
                }
            }
            let oif = oif.ok_or_else(|| {
                DaemonError::Config(
                    "no default route: name the underlay interface with --iface".into(),
                )
            })?;
            nl.link_by_index(oif)?.ok_or_else(|| {
                DaemonError::Config(format!("default route interface #{oif} vanished"))
            })?
        }
    };
    let addresses = nl.addresses(link.index)?;
    let global_v6 =
        |a: &IpNetwork| matches!(a.ip(), IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 != 0xfe80);
    let address = match wanted {
        Some(ip) => addresses
            .iter()
            .find(|a| a.ip() == ip)
            .copied()
            .ok_or_else(|| {
                DaemonError::Config(format!(
                    "underlay address {ip} is not an address of {}",
                    link.name
                ))
            })?,
        None => addresses
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addresses.iter().find(|a| global_v6(a)))
            .copied()
            .ok_or_else(|| {
                DaemonError::Config(format!(
                    "underlay interface {} has no IPv4 or global IPv6 address",
                    link.name
                ))
            })?,
    };
    let mut on_link: Vec<IpNetwork> = addresses
        .iter()
        .filter(|a| a.is_ipv4() || global_v6(a))
        .filter_map(|a| IpNetwork::new(a.network(), a.prefix()).ok())
        .collect();
    on_link.sort();
    on_link.dedup();
    Ok(Underlay {
        name: link.name,
        index: link.index,
        address,
        mtu: link.mtu,
        on_link,
    })
}

/// A stable, locally administered unicast MAC for the node's VTEP.
fn vtep_mac(node_name: &str, vni: u32) -> [u8; 6] {
    let b = cni_core::names::hash64(node_name.bytes().chain(vni.to_be_bytes())).to_be_bytes();
    [0x0e, b[0], b[1], b[2], b[3], b[4]]
}

/// ETHTOOL_STXCSUM through the SIOCETHTOOL ioctl.
fn set_tx_checksum(device: &str, on: bool) -> Result<(), DaemonError> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [libc::c_char; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    const ETHTOOL_STXCSUM: u32 = 0x17;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: u32::from(on),
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 16],
    };
    for (dst, src) in req
        .name
        .iter_mut()
        .zip(device.bytes().take(libc::IFNAMSIZ - 1))
    {
        *dst = src as libc::c_char;
    }
    // SAFETY: a datagram socket only serves as an ioctl handle; `req` and `value` outlive the call.
    let result = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            -1
        } else {
            let r = libc::ioctl(fd, SIOCETHTOOL, &mut req);
            libc::close(fd);
            r
        }
    };
    if result < 0 {
        return Err(DaemonError::KernelState(format!(
            "setting TX checksum offload on {device}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_macs_are_stable_local_unicast() {
        let a = vtep_mac("node-a", 1);
        assert_eq!(a, vtep_mac("node-a", 1));
        assert_ne!(a, vtep_mac("node-b", 1));
        assert_ne!(a, vtep_mac("node-a", 2));
        assert_eq!(a[0] & 0x01, 0, "unicast");
        assert_eq!(a[0] & 0x02, 0x02, "locally administered");
    }
}
