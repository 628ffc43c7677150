//! `GET /debug/path?to=<address>`: how this node's kernel would forward a packet to an address,
//! read from the kernel at the moment of asking — the main-table route that matches it
//! (longest prefix), the link it points to, and the entries that route needs (the pod's static
//! neighbour for a routed pod; the neighbour and FDB entries behind a VXLAN route). `tetherctl
//! diagnose` reads it through the API server's node proxy.

use std::net::IpAddr;

use cni_core::netlink::{format_mac, Link, Netlink, RouteEntry};
use serde_json::{json, Value};
use tether_observe::http::Query;

/// The query, for a node whose VXLAN device is `vxlan`.
pub fn query(vxlan: String) -> Query {
    Query {
        path: "/debug/path",
        answer: Box::new(move |query| {
            let to = destination(query)?;
            describe(to, &vxlan).map(|v| v.to_string())
        }),
    }
}

fn destination(query: &str) -> Result<IpAddr, String> {
    let value = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("to="))
        .ok_or("ask with ?to=<address>")?;
    value
        .parse()
        .map_err(|_| format!("{value:?} is not an IP address"))
}

/// What the kernel holds for a packet to `to`.
fn describe(to: IpAddr, vxlan: &str) -> Result<Value, String> {
    let mut nl = Netlink::open().map_err(|e| e.to_string())?;
    let routes = nl.routes(to.is_ipv6()).map_err(|e| e.to_string())?;
    let Some(route) = routes
        .into_iter()
        .filter(|r| r.dst.contains(to))
        .max_by_key(|r| r.dst.prefix())
    else {
        return Ok(json!({"to": to, "via": "none"}));
    };
    let link = match route.oif {
        Some(index) => nl.link_by_index(index).map_err(|e| e.to_string())?,
        None => None,
    };
    let via = kind_of(&route, link.as_ref(), vxlan);
    let mut out = json!({
        "to": to,
        "via": via,
        "route": {
            "dst": route.dst.to_string(),
            "gateway": route.gateway,
            "onlink": route.onlink,
            "source": route.source,
        },
    });
    if let Some(link) = &link {
        let master = match link.master {
            Some(index) => nl
                .link_by_index(index)
                .map_err(|e| e.to_string())?
                .map(|m| m.name),
            None => None,
        };
        out["link"] = json!({
            "name": link.name,
            "kind": link.kind,
            "up": link.up,
            "mtu": link.mtu,
            "master": master,
        });
        // The neighbour the packet is sent to: the gateway, or the address itself.
        let next_hop = route.gateway.unwrap_or(to);
        let neighbours = nl.neighbours(link.index).map_err(|e| e.to_string())?;
        let neighbour = neighbours.iter().find(|n| n.ip == next_hop);
        out["neighbour"] = match neighbour {
            Some(n) => json!({"ip": n.ip, "mac": format_mac(&n.mac)}),
            None => Value::Null,
        };
        if via == "bridge" {
            // Routed pods are no ports: a bridge without ports holds no pod at all.
            let links = nl.links().map_err(|e| e.to_string())?;
            let ports = links
                .iter()
                .filter(|l| l.master == Some(link.index))
                .count();
            out["link"]["ports"] = json!(ports);
        }
        if via == "vxlan" {
            let fdb = nl.fdb(link.index).map_err(|e| e.to_string())?;
            let entry = neighbour.and_then(|n| fdb.iter().find(|f| f.mac == n.mac));
            out["fdb"] = match entry {
                Some(f) => json!({"mac": format_mac(&f.mac), "dst": f.dst}),
                None => Value::Null,
            };
        }
    }
    Ok(out)
}

/// `vxlan` (through the overlay's device), `pod` (a routed pod's host veth), `bridge` (a subnet
/// on the pod bridge), `gateway` (via a router or a peer's underlay address: direct routing) or
/// `connected` (an on-link network).
fn kind_of(route: &RouteEntry, link: Option<&Link>, vxlan: &str) -> &'static str {
    let host_route = route.dst.prefix() == if route.dst.is_ipv4() { 32 } else { 128 };
    match link {
        Some(l) if l.name == vxlan => "vxlan",
        Some(l) if host_route && l.kind.as_deref() == Some("veth") => "pod",
        Some(l) if l.kind.as_deref() == Some("bridge") => "bridge",
        _ if route.gateway.is_some() => "gateway",
        _ => "connected",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_destination_comes_from_the_query() {
        assert_eq!(
            destination("to=10.244.1.5").unwrap(),
            "10.244.1.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            destination("x=1&to=fd00::5").unwrap(),
            "fd00::5".parse::<IpAddr>().unwrap()
        );
        assert!(destination("").is_err());
        assert!(destination("to=nope").unwrap_err().contains("not an IP"));
    }
}
