//! A small typed layer over rtnetlink: links (veth, bridge, VXLAN), neighbours and forwarding
//! entries, addresses and routes, and link deletion that does not wait for the kernel.
//!
//! Synchronous on purpose: plugins are short-lived, single-threaded processes. Every failure names
//! the object and the namespace it concerns; callers never build raw messages. One file per kind
//! of object; [`socket`] holds the request/answer exchange they all use.

mod addr;
pub mod detached;
mod link;
mod neigh;
mod route;
mod socket;
pub mod tc;

use std::fmt;
use std::io;
use std::net::IpAddr;

use netlink_packet_route::AddressFamily;

use crate::netns::NetnsError;

pub use addr::AddressOptions;
pub use detached::{delete_link_detached, UnlinkError};
pub use link::{format_mac, group, parse_mac, Link, VethSpec, VxlanInfo, VxlanSpec};
pub use neigh::{FdbEntry, Neighbour};
pub use route::{RouteEntry, RouteSpec};
pub use socket::Netlink;

/// A failed netlink operation: what was being done, where, and the kernel's answer.
#[derive(Debug, thiserror::Error)]
#[error("{action} {object}{place}: {source}")]
pub struct NlError {
    pub action: &'static str,
    pub object: String,
    place: Place,
    #[source]
    pub source: io::Error,
}

impl NlError {
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// A failure in the calling thread's own namespace.
    pub(crate) fn here(action: &'static str, object: impl fmt::Display, source: io::Error) -> Self {
        NlError {
            action,
            object: object.to_string(),
            place: Place(None),
            source,
        }
    }
}

#[derive(Debug, Clone)]
struct Place(Option<String>);

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(ns) => write!(f, " in netns {ns}"),
            None => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("opening a netlink socket{place}")]
    Socket {
        place: String,
        #[source]
        source: io::Error,
    },
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// Errors that mean "the object is not there": success for deletions, `None` for lookups.
fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENODEV | libc::ENOENT | libc::EADDRNOTAVAIL | libc::ESRCH)
    )
}
