//! Deleting a link without waiting for the kernel to free it.
//!
//! `RTM_DELLINK` of a veth returns only after the kernel has unlisted the pair, sent the
//! notifications, released the RTNL lock, *and* waited in `rcu_barrier()` for every pending RCU
//! callback so that the device's memory can be freed. The last step is most of the call: 12-27 ms
//! on this project's machines, against well under a millisecond for everything before it. Once
//! the kernel has sent `RTM_DELLINK`, the device is gone for every observer: its name and
//! addresses are free, its bridge port is removed, and its peer is gone from the pod's namespace.
//!
//! [`delete_link_detached`] therefore lets a short-lived helper process (forked, not executed, so
//! it costs about a tenth of a millisecond) make the call, and returns as soon as the kernel's
//! `RTM_DELLINK` notification for the device arrives. The helper finishes the kernel's bookkeeping
//! on its own and exits; it is double-forked so that the caller never leaves a zombie, and
//! whichever process adopts it (init, or the runtime if it is a subreaper) reaps it. If the helper
//! cannot be made, or dies without an answer, the link is deleted synchronously instead.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK};
use netlink_packet_route::link::{LinkHeader, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::{socket, Netlink, NlError, OpenError};

/// The multicast group of link notifications (`RTMGRP_LINK`).
const RTMGRP_LINK: u32 = 1;
/// How often the caller double-checks the kernel's link table while it waits.
const RECHECK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum UnlinkError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Netlink(#[from] NlError),
    #[error("waiting for the kernel to delete link {name}: {source}")]
    Wait {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Deletes link `name` in the calling thread's namespace and returns once the kernel reports it
/// deleted, leaving the kernel's post-deletion wait to a helper process. A link that does not
/// exist is success (returns false), as with [`Netlink::delete_link`].
pub fn delete_link_detached(name: &str) -> Result<bool, UnlinkError> {
    let mut nl = Netlink::open()?;
    let Some(link) = nl.link(name)? else {
        return Ok(false);
    };
    let wait_err = |source| UnlinkError::Wait {
        name: name.to_string(),
        source,
    };
    // Subscribe before the helper exists, so that the notification cannot be missed.
    let monitor = link_monitor().map_err(wait_err)?;
    let request = dellink_request(link.index);
    let Some(answer) = spawn_helper(&request).map_err(wait_err)? else {
        tracing::debug!(link = name, "no helper process; deleting synchronously");
        return Ok(nl.delete_link(name)?);
    };
    match wait_for_deletion(&monitor, &answer, &mut nl, link.index).map_err(wait_err)? {
        Outcome::Deleted => Ok(true),
        Outcome::Missing => Ok(false),
        Outcome::Failed(errno) => {
            Err(NlError::here("deleting link", name, io::Error::from_raw_os_error(errno)).into())
        }
        Outcome::NoAnswer => {
            tracing::debug!(link = name, "helper gave no answer; deleting synchronously");
            Ok(nl.delete_link(name)?)
        }
    }
}

enum Outcome {
    Deleted,
    Missing,
    Failed(i32),
    NoAnswer,
}

fn link_monitor() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
    Ok(socket)
}

/// `RTM_DELLINK` for one interface index, asking for an acknowledgement.
fn dellink_request(index: u32) -> Vec<u8> {
    let mut msg = LinkMessage::default();
    msg.header = LinkHeader {
        index,
        ..LinkHeader::default()
    };
    socket::encode(RouteNetlinkMessage::DelLink(msg), NLM_F_ACK, 1)
}

/// Forks the helper that sends `request`; returns the read end of the pipe on which the helper
/// writes the kernel's answer (a native-endian i32 errno, 0 for success), or None when no helper
/// could be made.
fn spawn_helper(request: &[u8]) -> io::Result<Option<OwnedFd>> {
    let devnull = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };

    // SAFETY: the children call only async-signal-safe functions (fork, close, dup2, socket,
    // send, recv, write, _exit) on memory prepared before the fork, so they are correct even if
    // the caller has other threads.
    let first = unsafe { libc::fork() };
    if first < 0 {
        return Ok(None);
    }
    if first == 0 {
        // SAFETY: see above; this branch never returns.
        unsafe {
            let second = libc::fork();
            if second == 0 {
                helper(
                    request,
                    read_end.as_raw_fd(),
                    write_end.as_raw_fd(),
                    devnull.as_raw_fd(),
                );
            }
            libc::_exit(if second < 0 { 1 } else { 0 });
        }
    }
    drop(write_end);
    let mut status = 0;
    loop {
        // SAFETY: reaps the intermediate child, which exits right after forking the helper.
        let reaped = unsafe { libc::waitpid(first, &mut status, 0) };
        if reaped >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    // If the intermediate child could not fork, the pipe reports end-of-file with no answer and
    // the caller falls back to deleting synchronously.
    Ok(Some(read_end))
}

/// The helper: stdio to /dev/null (the runtime waits for our stdout to close), one netlink
/// request, the answer written to the pipe.
///
/// # Safety
/// Runs in a freshly forked child; uses only async-signal-safe calls and never returns.
unsafe fn helper(request: &[u8], read_end: RawFd, write_end: RawFd, devnull: RawFd) -> ! {
    libc::close(read_end);
    for fd in 0..3 {
        libc::dup2(devnull, fd);
    }
    let errno = send_and_ack(request);
    let bytes = errno.to_ne_bytes();
    libc::write(write_end, bytes.as_ptr().cast(), bytes.len());
    libc::_exit(0)
}

/// Sends the request on a new netlink socket and returns the kernel's errno (0 for success).
///
/// # Safety
/// Async-signal-safe: no allocation, raw system calls only.
unsafe fn send_and_ack(request: &[u8]) -> i32 {
    let errno = || {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };
    let fd = libc::socket(
        libc::AF_NETLINK,
        libc::SOCK_RAW | libc::SOCK_CLOEXEC,
        libc::NETLINK_ROUTE,
    );
    if fd < 0 {
        return errno();
    }
    // An unconnected netlink socket sends to the kernel.
    if libc::send(fd, request.as_ptr().cast(), request.len(), 0) < 0 {
        return errno();
    }
    let mut buf = [0u8; 4096];
    loop {
        let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return errno();
        }
        if let Some(code) = socket::ack_errno(&buf[..n as usize]) {
            return code;
        }
    }
}

/// Waits for the kernel's `RTM_DELLINK` for `index`, or for the helper's answer, whichever comes
/// first.
fn wait_for_deletion(
    monitor: &Socket,
    answer: &OwnedFd,
    nl: &mut Netlink,
    index: u32,
) -> io::Result<Outcome> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: monitor.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: answer.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of two pollfd structures.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, RECHECK.as_millis() as libc::c_int) };
        if ready < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(err);
        }
        if fds[0].revents != 0 {
            match monitor.recv(&mut &mut buf[..], 0) {
                Ok(n) => {
                    if announces_deletion(&buf[..n], index) {
                        return Ok(Outcome::Deleted);
                    }
                }
                // Notifications were dropped (socket buffer overrun): ask the kernel directly.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    if gone(nl, index)? {
                        return Ok(Outcome::Deleted);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if fds[1].revents != 0 {
            let mut bytes = [0u8; 4];
            // SAFETY: reads at most four bytes into a four-byte buffer.
            let n = unsafe { libc::read(answer.as_raw_fd(), bytes.as_mut_ptr().cast(), 4) };
            return Ok(match (n, i32::from_ne_bytes(bytes)) {
                (4, 0) => Outcome::Deleted,
                (4, libc::ENODEV | libc::ENOENT) => Outcome::Missing,
                (4, e) => Outcome::Failed(e),
                _ => Outcome::NoAnswer,
            });
        }
        if ready == 0 && gone(nl, index)? {
            return Ok(Outcome::Deleted);
        }
    }
}

fn gone(nl: &mut Netlink, index: u32) -> io::Result<bool> {
    match nl.link_by_index(index) {
        Ok(link) => Ok(link.is_none()),
        Err(e) => Err(e.source),
    }
}

/// Whether a batch of link notifications holds `RTM_DELLINK` for `index` (the device itself,
/// not the bridge's port notification, which has family `AF_BRIDGE`).
fn announces_deletion(data: &[u8], index: u32) -> bool {
    let mut offset = 0;
    while offset < data.len() {
        let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
        else {
            return false;
        };
        let length = message.header.length as usize;
        if length == 0 {
            return false;
        }
        offset += (length + 3) & !3;
        if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) = message.payload {
            if link.header.index == index && link.header.interface_family == AddressFamily::Unspec {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_names_the_index() {
        let request = dellink_request(42);
        assert_eq!(request.len(), 32);
        assert_eq!(u16::from_ne_bytes([request[4], request[5]]), 17); // RTM_DELLINK
        assert_eq!(
            i32::from_ne_bytes([request[20], request[21], request[22], request[23]]),
            42
        );
    }
}
