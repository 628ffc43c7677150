//! The kernel side: a root qdisc on the host end of the pod's veth shapes what the pod receives;
//! what the pod sends is redirected from that veth's ingress to an ifb device whose root qdisc
//! shapes it. A TBF when everything is shaped; an HTB with a shaped and an unshaped class, and a
//! u32 filter per subnet, when only some traffic is.
//!
//! The ifb is named from the attachment (`bwp` + a hash), is made in link group
//! [`group::SHAPING_IFB`] and carries the alias `tether-bandwidth:<network>/<containerID>/<ifname>
//! <host veth>`, so DEL and GC find it, and the veth, without the netns or prevResult. A link of
//! that name is ours only if it is an ifb of that group whose alias is this attachment's (or
//! missing: its ADD was killed before setting it); anything else is never used or deleted.

use std::collections::HashSet;

use cni_core::netlink::tc::{Shaping, SHAPED, UNSHAPED};
use cni_core::netlink::{group, Link, Netlink};
use cni_core::netns::NetNs;

use crate::config::{Limits, Scope};
use crate::error::{BandwidthError, Failures};

const ALIAS_PREFIX: &str = "tether-bandwidth:";

pub fn owner(network: &str, container_id: &str, ifname: &str) -> String {
    format!("{network}/{container_id}/{ifname}")
}

/// `bwp` + 12 hex digits: 15 bytes, the longest interface name.
pub fn ifb_name(owner: &str) -> String {
    format!("bwp{:012x}", cni_core::names::hash64(owner.bytes()) >> 16)
}

/// Whether `link` (found under the name of `owner`'s ifb) is that ifb: Err says what it is instead.
fn ours(link: &Link, owner: &str) -> Result<(), BandwidthError> {
    // Our alias proves it (ifbs of earlier releases have no group); without an alias, the group
    // set when it was made does.
    let named_ours = match link.alias.as_deref() {
        Some(alias) => parse_alias(alias).is_some_and(|(o, _)| o == owner),
        None => link.group == group::SHAPING_IFB,
    };
    if link.kind.as_deref() == Some("ifb") && named_ours {
        return Ok(());
    }
    Err(BandwidthError::NotOurs {
        name: link.name.clone(),
        what: format!(
            "kind {}, group {:#x}, alias {:?}",
            link.kind.as_deref().unwrap_or("none"),
            link.group,
            link.alias.as_deref().unwrap_or("")
        ),
    })
}

/// The host end of the pod's interface `ifname`: the peer of the veth inside the pod.
pub fn host_veth(netns: &NetNs, ifname: &str) -> Result<Link, BandwidthError> {
    let missing = |why: String| BandwidthError::NoHostVeth {
        ifname: ifname.to_string(),
        why,
    };
    let mut pod = Netlink::open_in(netns)?;
    let inside = pod
        .link(ifname)?
        .ok_or_else(|| missing(format!("{ifname} is not in {}", netns.path().display())))?;
    let peer = inside
        .peer_index
        .filter(|_| inside.kind.as_deref() == Some("veth"))
        .ok_or_else(|| missing(format!("{ifname} is not a veth")))?;
    Netlink::open()?
        .link_by_index(peer)?
        .ok_or_else(|| missing(format!("its peer #{peer} is not in this namespace")))
}

fn shape_root(
    nl: &mut Netlink,
    link: &Link,
    shaping: &Shaping,
    scope: &Scope,
    by_source: bool,
) -> Result<(), BandwidthError> {
    match scope {
        Scope::All => nl.replace_tbf(link.index, shaping)?,
        Scope::Except(nets) | Scope::Only(nets) => {
            let (default, listed) = match scope {
                Scope::Except(_) => (SHAPED, UNSHAPED),
                _ => (UNSHAPED, SHAPED),
            };
            // Filters cannot be replaced one by one: start from an empty root.
            nl.del_qdisc(link.index, false)?;
            nl.replace_htb(link.index, shaping, default)?;
            for (i, net) in nets.iter().enumerate() {
                nl.classify_subnet(link.index, 1 + i as u16, *net, by_source, listed)?;
            }
        }
    }
    Ok(())
}

/// Shapes the attachment whose host veth is `host` as `limits` say (replacing earlier shaping).
pub fn apply(host: &Link, limits: &Limits, owner: &str) -> Result<(), BandwidthError> {
    let mut nl = Netlink::open()?;
    match &limits.ingress {
        Some(shaping) => shape_root(&mut nl, host, shaping, &limits.scope, true)?,
        None => nl.del_qdisc(host.index, false)?,
    }
    let ifb = ifb_name(owner);
    match &limits.egress {
        Some(shaping) => {
            let alias = format!("{ALIAS_PREFIX}{owner} {}", host.name);
            if let Some(existing) = nl.create_ifb(&ifb, host.mtu, group::SHAPING_IFB, &alias)? {
                ours(&existing, owner)?;
                if existing.alias.is_none() {
                    nl.set_alias(&ifb, &alias)?;
                }
            }
            let device = nl.link(&ifb)?.ok_or_else(|| BandwidthError::NoHostVeth {
                ifname: ifb.clone(),
                why: "the ifb vanished after creation".into(),
            })?;
            shape_root(&mut nl, &device, shaping, &limits.scope, false)?;
            nl.add_ingress_qdisc(host.index)?;
            nl.redirect_ingress(host.index, device.index)?;
        }
        None => {
            nl.del_qdisc(host.index, true)?;
            if let Some(existing) = nl.link(&ifb)? {
                ours(&existing, owner)?;
                nl.delete_link(&ifb)?;
            }
        }
    }
    Ok(())
}

/// The owner and host veth an ifb's alias names, if it is one of ours.
fn parse_alias(alias: &str) -> Option<(&str, &str)> {
    alias.strip_prefix(ALIAS_PREFIX)?.split_once(' ')
}

/// Undoes one attachment's shaping: its ifb, and the qdiscs of its host veth if that still
/// exists (it usually goes with the pod). Missing things are success.
fn undo(nl: &mut Netlink, ifb: &str, host: Option<&str>, failures: &mut Failures) {
    if let Some(host) = host {
        if let Some(Some(link)) = failures.note(nl.link(host)) {
            failures.note(nl.del_qdisc(link.index, false));
            failures.note(nl.del_qdisc(link.index, true));
        }
    }
    // Returns once the kernel has unlisted the ifb; its RCU wait is left to a helper process.
    failures.note(cni_core::netlink::delete_link_detached(ifb));
}

/// DEL: the attachment's ifb (found by name) and its host veth's qdiscs (named by the ifb, or
/// `host_hint` from prevResult).
pub fn remove(owner: &str, host_hint: Option<&str>) -> Result<(), BandwidthError> {
    let mut failures = Failures::new("teardown step");
    let Some(mut nl) = failures.note(Netlink::open()) else {
        return failures.finish_with(BandwidthError::Several);
    };
    let ifb = ifb_name(owner);
    let found = failures.note(nl.link(&ifb)).flatten();
    if let Some(link) = &found {
        if let Err(e) = ours(link, owner) {
            // Someone else's link under our name: our own shaping is gone with the host veth or
            // was never made; theirs is not ours to remove.
            failures.note(Err::<(), _>(e));
            return failures.finish_with(BandwidthError::Several);
        }
    }
    let from_alias = found
        .and_then(|l| l.alias)
        .and_then(|a| parse_alias(&a).map(|(_, host)| host.to_string()));
    undo(
        &mut nl,
        &ifb,
        from_alias.as_deref().or(host_hint),
        &mut failures,
    );
    failures.finish_with(BandwidthError::Several)
}

/// GC: every ifb of this network whose attachment is not in `valid`.
pub fn gc(network: &str, valid: &HashSet<String>) -> Result<(), BandwidthError> {
    let mut failures = Failures::new("GC step");
    let Some(mut nl) = failures.note(Netlink::open()) else {
        return failures.finish_with(BandwidthError::Several);
    };
    let links = failures.note(nl.links()).unwrap_or_default();
    // An ifb of ours without an alias was made by an ADD killed before naming it: a leftover
    // unless its name is a valid attachment's.
    let valid_ifbs: HashSet<String> = valid.iter().map(|o| ifb_name(o)).collect();
    for link in links {
        if link.kind.as_deref() != Some("ifb") {
            continue;
        }
        match link.alias.as_deref() {
            Some(alias) => {
                let Some((owner, host)) = parse_alias(alias) else {
                    continue;
                };
                if owner.starts_with(&format!("{network}/")) && !valid.contains(owner) {
                    let host = host.to_string();
                    undo(&mut nl, &link.name, Some(&host), &mut failures);
                }
            }
            None if link.group == group::SHAPING_IFB && !valid_ifbs.contains(&link.name) => {
                undo(&mut nl, &link.name, None, &mut failures);
            }
            None => {}
        }
    }
    failures.finish_with(BandwidthError::Several)
}

/// CHECK: the qdiscs (and the ifb with its redirect) that `limits` call for are there.
pub fn check(host: &Link, limits: &Limits, owner: &str) -> Result<(), BandwidthError> {
    let mismatch = |m: String| Err(BandwidthError::CheckMismatch(m));
    let mut nl = Netlink::open()?;
    let root_kind = match limits.scope {
        Scope::All => "tbf",
        _ => "htb",
    };
    let has_root = |nl: &mut Netlink, link: &Link| -> Result<bool, BandwidthError> {
        Ok(nl
            .qdiscs(link.index)?
            .iter()
            .any(|q| q.kind == root_kind && q.parent == cni_core::netlink::tc::ROOT))
    };
    if limits.ingress.is_some() && !has_root(&mut nl, host)? {
        return mismatch(format!("{} has no {root_kind} root qdisc", host.name));
    }
    if limits.egress.is_some() {
        let ifb = ifb_name(owner);
        let Some(device) = nl.link(&ifb)? else {
            return mismatch(format!("ifb {ifb} is missing"));
        };
        if !has_root(&mut nl, &device)? {
            return mismatch(format!("{ifb} has no {root_kind} root qdisc"));
        }
        if !nl.qdiscs(host.index)?.iter().any(|q| q.kind == "ingress") {
            return mismatch(format!("{} has no ingress qdisc", host.name));
        }
    }
    Ok(())
}
