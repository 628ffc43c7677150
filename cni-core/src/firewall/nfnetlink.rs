//! The NFNETLINK exchange nftables speaks, for the writers that need no `nft` process: messages
//! built attribute by attribute, a batch sent in one `sendmsg` with its acks read back, a dump
//! read to its end, and the attributes of an answer walked.
//!
//! The wire format is the kernel's (`include/uapi/linux/netfilter/nf_tables.h`,
//! `nfnetlink.h`): every message is a netlink header, a `struct nfgenmsg` (family, version,
//! resource id) and attributes. Changes travel between `NFNL_MSG_BATCH_BEGIN` and
//! `NFNL_MSG_BATCH_END`: the kernel applies the whole batch or none of it.

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use super::types::NfFamily;
use super::FirewallError;

pub(super) const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

pub(super) const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_ACK: u16 = 0x4;
pub(super) const NLM_F_DUMP: u16 = 0x300;
pub(super) const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 0x2;
const NLMSG_DONE: u16 = 0x3;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// The kernel's nf_tables numbers (`nf_tables.h`) that more than one module of the firewall
/// layer uses: message types, attributes, flags.
pub(super) mod numbers {
    pub const NFTA_CHAIN_NAME: u16 = 3;
    pub const NFTA_CHAIN_TABLE: u16 = 1;
    pub const NFTA_DATA_VALUE: u16 = 1;
    pub const NFTA_DATA_VERDICT: u16 = 2;
    pub const NFTA_LIST_ELEM: u16 = 1;
    pub const NFTA_RULE_CHAIN: u16 = 2;
    pub const NFTA_RULE_HANDLE: u16 = 3;
    pub const NFTA_RULE_TABLE: u16 = 1;
    pub const NFTA_SET_ELEM_KEY: u16 = 1;
    pub const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
    pub const NFTA_SET_ELEM_LIST_SET: u16 = 2;
    pub const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
    pub const NFTA_SET_FLAGS: u16 = 3;
    pub const NFTA_SET_NAME: u16 = 2;
    pub const NFTA_SET_TABLE: u16 = 1;
    pub const NFTA_TABLE_NAME: u16 = 1;
    pub const NFTA_VERDICT_CHAIN: u16 = 2;
    pub const NFTA_VERDICT_CODE: u16 = 1;
    pub const NFT_JUMP: i32 = -3;
    pub const NFT_MSG_DELSETELEM: u16 = 14;
    pub const NFT_MSG_DELTABLE: u16 = 2;
    pub const NFT_MSG_NEWSETELEM: u16 = 12;
    pub const NFT_SET_ANONYMOUS: u32 = 0x1;
    pub const NFT_SET_MAP: u32 = 0x8;
}

/// A table family as the kernel numbers it (`NFPROTO_*`).
pub(super) fn family_number(family: NfFamily) -> u8 {
    match family {
        NfFamily::INet => 1,
        NfFamily::IP => 2,
        NfFamily::ARP => 3,
        NfFamily::NetDev => 5,
        NfFamily::Bridge => 7,
        NfFamily::IP6 => 10,
    }
}

/// An nf_tables message type (`NFT_MSG_*`) as the netlink header carries it.
pub(super) fn nft_message(kind: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | kind
}

/// A netlink message under construction: attributes appended, lengths patched on close.
pub(super) struct Message {
    bytes: Vec<u8>,
    nests: Vec<usize>,
}

impl Message {
    pub(super) fn new(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Message {
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in finish
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&flags.to_ne_bytes());
        bytes.extend_from_slice(&seq.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        bytes.push(family);
        bytes.push(0); // NFNETLINK_V0
        bytes.extend_from_slice(&res_id.to_be_bytes());
        Message {
            bytes,
            nests: Vec::new(),
        }
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    pub(super) fn attr(&mut self, kind: u16, value: &[u8]) {
        let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
        self.bytes.extend_from_slice(&len.to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(value);
        self.pad();
    }

    pub(super) fn string(&mut self, kind: u16, value: &str) {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.attr(kind, &bytes);
    }

    pub(super) fn open(&mut self, kind: u16) {
        self.nests.push(self.bytes.len());
        self.bytes.extend_from_slice(&0u16.to_ne_bytes());
        self.bytes
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }

    pub(super) fn close(&mut self) {
        if let Some(start) = self.nests.pop() {
            let len = u16::try_from(self.bytes.len() - start).unwrap_or(u16::MAX);
            self.bytes[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
    }

    pub(super) fn finish(mut self) -> Vec<u8> {
        let len = self.bytes.len() as u32;
        self.bytes[0..4].copy_from_slice(&len.to_ne_bytes());
        self.bytes
    }
}

/// A batch of change messages, framed by BEGIN and END, with the sequence numbers the kernel
/// answers.
pub(super) struct Batch {
    bytes: Vec<u8>,
    seq: u32,
    pub(super) answered: Vec<u32>,
}

impl Batch {
    pub(super) fn new() -> Batch {
        let bytes = Message::new(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            1,
            0,
            NFNL_SUBSYS_NFTABLES,
        )
        .finish();
        Batch {
            bytes,
            seq: 1,
            answered: Vec::new(),
        }
    }

    /// The next message's sequence number (to build it with).
    pub(super) fn next_seq(&self) -> u32 {
        self.seq + 1
    }

    pub(super) fn push(&mut self, message: Vec<u8>) {
        self.seq += 1;
        self.answered.push(self.seq);
        self.bytes.extend(message);
    }

    pub(super) fn finish(mut self) -> (Vec<u8>, Vec<u32>) {
        self.seq += 1;
        self.bytes.extend(
            Message::new(
                NFNL_MSG_BATCH_END,
                NLM_F_REQUEST,
                self.seq,
                0,
                NFNL_SUBSYS_NFTABLES,
            )
            .finish(),
        );
        (self.bytes, self.answered)
    }
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> FirewallError {
    move |e| FirewallError::Netlink { what, source: e }
}

/// One netlink message of an answer: its type, flags-free header fields and its payload after
/// the `nfgenmsg`.
pub(super) struct Answer {
    pub(super) kind: u16,
    pub(super) seq: u32,
    pub(super) payload: Vec<u8>,
}

/// A socket to the kernel's nf_tables: this thread's, kept for its next use in the same
/// network namespace (see [`release`]).
pub(super) struct Nfnl {
    /// Kept or closed by [`Nfnl`]'s drop.
    socket: std::mem::ManuallyDrop<Socket>,
    /// The network namespace it was opened in (a socket stays in it; a thread may move).
    netns: Option<u64>,
    /// Nothing went wrong on it: what it reads next answers what it sends next.
    healthy: bool,
}

thread_local! {
    /// This thread's socket, with its network namespace.
    static KEPT: std::cell::RefCell<Option<Kept>> = const { std::cell::RefCell::new(None) };
}

/// A thread's kept socket; closed as [`close`] does when dropped (the thread ends, or a socket
/// of another namespace takes its place).
struct Kept {
    netns: u64,
    socket: Option<Socket>,
}

impl Drop for Kept {
    fn drop(&mut self) {
        if let Some(socket) = self.socket.take() {
            close(socket);
        }
    }
}

/// The network namespace of the calling thread (the inode of its `ns/net`).
fn netns_of_thread() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino())
}

/// Closes this thread's kept socket (a short-lived process calls it before it exits: see
/// [`Nfnl`]'s drop for why the last close of a socket is not left to the exit).
pub fn release() {
    // Dropping it closes it.
    let _ = KEPT.try_with(|kept| kept.borrow_mut().take());
}

/// Closes `socket`: by a helper once this process has deleted something.
fn close(socket: Socket) {
    if FREEING.load(std::sync::atomic::Ordering::Relaxed) {
        close_after_helper(socket);
    }
}

/// Reads and drops whatever is waiting on `socket` (answers a failed exchange left behind).
fn drain(socket: &Socket) {
    // SAFETY: the descriptor is the socket's own, open for the call.
    unsafe { drain_fd(socket.as_raw_fd()) }
}

/// [`drain`] on a bare descriptor.
///
/// # Safety
/// `fd` must be open. Only async-signal-safe calls and no allocation: the close helper uses it.
unsafe fn drain_fd(fd: std::os::fd::RawFd) {
    let mut buf = [0u8; 4096];
    while libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) > 0 {}
}

/// This process committed a deletion: closing a socket waits (see [`Nfnl`]'s drop).
static FREEING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether `bytes` (a batch) holds a deletion: a table, chain, rule, set or element deleted
/// (`NFT_MSG_DEL*`, `NFT_MSG_DESTROY*`).
fn deletes(bytes: &[u8]) -> bool {
    let mut at = 0;
    while at + 16 <= bytes.len() {
        let len = u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let kind = u16::from_ne_bytes([bytes[at + 4], bytes[at + 5]]);
        if kind >> 8 == NFNL_SUBSYS_NFTABLES && matches!(kind & 0xff, 2 | 5 | 8 | 11 | 14 | 26..=32)
        {
            return true;
        }
        if len < 16 {
            break;
        }
        at += (len as usize + 3) & !3;
    }
    false
}

impl Drop for Nfnl {
    /// A socket is kept for the thread's next use in the same namespace: a daemon never closes
    /// it. Closing one matters because after a committed deletion, closing an nf_tables socket
    /// waits (in the kernel's NETLINK_URELEASE handler of nf_tables, which flushes the deferred
    /// freeing of what batches replaced, holding the commit mutex) for an RCU grace period: 8-25
    /// ms on this VM, against well under a millisecond for the batch itself, which is committed
    /// and seen by every packet before that. Once this process has deleted something, a helper process
    /// (double-forked, as [`crate::netlink::detached`]'s) holds the last reference and makes
    /// that close once the namespace's nf_tables have been quiet for a while, when the freeing
    /// is done ([`wait_until_quiet`]); this process closes its own at once.
    fn drop(&mut self) {
        // SAFETY: the socket is taken once, here, and never used again.
        let socket = unsafe { std::mem::ManuallyDrop::take(&mut self.socket) };
        let (Some(netns), true) = (self.netns, self.healthy) else {
            return close(socket);
        };
        // Kept for this thread's next use; one kept before (another namespace) is closed as
        // it drops. Past the thread's end, `kept` drops (and closes) here.
        let kept = Kept {
            netns,
            socket: Some(socket),
        };
        let mut kept = Some(kept);
        let _ = KEPT.try_with(|slot| {
            if let Some(k) = kept.take() {
                let old = slot.borrow_mut().replace(k);
                drop(old);
            }
        });
    }
}

/// Closes `socket` with a double-forked helper holding it, the helper closing it last (see
/// [`Nfnl`]'s drop); if no helper can be made, this close is the last one and waits instead.
fn close_after_helper(socket: Socket) {
    use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
    let fd = socket.into_raw_fd();
    // SAFETY: `fd` was just released by the socket; it is owned here alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null");
    let mut pipe = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    let piped = unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } == 0;
    let (Ok(devnull), true) = (devnull, piped) else {
        return;
    };
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    let keep = [fd.as_raw_fd(), read_end.as_raw_fd(), devnull.as_raw_fd()];
    // SAFETY: the children call only async-signal-safe functions (fork, dup2, close,
    // close_range, read, _exit) on values prepared before the fork, so they are correct even if
    // the caller has other threads.
    let first = unsafe { libc::fork() };
    if first < 0 {
        return;
    }
    if first == 0 {
        // SAFETY: see above; this branch never returns.
        unsafe {
            if libc::fork() == 0 {
                helper_close(keep, write_end.as_raw_fd());
            }
            libc::_exit(0);
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: reaps the intermediate child, which exits right after forking the helper.
        let reaped = unsafe { libc::waitpid(first, &mut status, 0) };
        if reaped >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    // Ours first; then the pipe's end tells the helper that its close is the last.
    drop(fd);
    drop(write_end);
}

/// The helper: stdio to /dev/null (a runtime waits for a plugin's stdout to close) and every
/// other descriptor closed (a lock held through one would stay held), then, once the pipe says
/// the caller has closed its own and the node's nf_tables have been quiet long enough for the
/// kernel to have freed what was deleted ([`wait_until_quiet`]), the socket's last close.
///
/// # Safety
/// Runs in a freshly forked child; uses only async-signal-safe calls and never returns.
unsafe fn helper_close(keep: [std::os::fd::RawFd; 3], write_end: std::os::fd::RawFd) -> ! {
    let [socket, read_end, devnull] = keep;
    libc::close(write_end);
    for std in 0..3 {
        libc::dup2(devnull, std);
    }
    let mut kept = [socket, read_end, devnull];
    kept.sort_unstable();
    let mut from: u32 = 3;
    for fd in kept {
        let fd = u32::try_from(fd).unwrap_or(0);
        if fd > from {
            libc::syscall(libc::SYS_close_range, from, fd - 1, 0u32);
        }
        from = from.max(fd + 1);
    }
    libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32);
    let mut byte = 0u8;
    while libc::read(read_end, (&mut byte as *mut u8).cast(), 1) < 0 {}
    wait_until_quiet(socket);
    libc::close(socket);
    libc::_exit(0)
}

/// How long the node's nf_tables must have been unchanged before the helper's close: past the
/// grace period (8-25 ms on this VM) of the kernel's deferred freeing of the last commit. The
/// generation is read this often (a node deleting many pods at once has a helper for each).
const QUIET_MS: i64 = 60;
/// The longest a helper waits for quiet (a node whose rules never rest for that long).
const QUIET_CAP_MS: i64 = 10_000;
/// `NFT_MSG_GETGEN` and the answer `NFT_MSG_NEWGEN`.
const NFT_MSG_GETGEN: u16 = 16;
const NFT_MSG_NEWGEN: u16 = 15;

/// Returns once the namespace's nf_tables generation has not moved over [`QUIET_MS`] (or after
/// [`QUIET_CAP_MS`], or when the socket fails). The kernel's deferred freeing after a commit
/// (an RCU grace period) is then done, so the close that follows finds nothing to wait for:
/// waiting there would hold the namespace's nf_tables commit mutex, which every other batch and
/// every deletion of a network device of the namespace (under the RTNL lock, so every link
/// change of the node) needs. A fixed pause is not enough on a node deleting pods back to back:
/// each deletion queues new freeing, so a close at any fixed time meets some.
///
/// # Safety
/// Called by the forked helper: only async-signal-safe calls, no allocation.
unsafe fn wait_until_quiet(socket: std::os::fd::RawFd) {
    let mut request = [0u8; 20];
    request[..4].copy_from_slice(&20u32.to_ne_bytes());
    request[4..6].copy_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN).to_ne_bytes());
    request[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    let now_ms = || {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t);
        t.tv_sec * 1000 + t.tv_nsec / 1_000_000
    };
    // Answers of earlier exchanges still waiting are not the generation's.
    drain_fd(socket);
    let mut buf = [0u8; 512];
    let start = now_ms();
    let mut last = [0u8; 512];
    let mut last_len = 0usize;
    loop {
        if libc::send(socket, request.as_ptr().cast(), request.len(), 0) != 20 {
            return;
        }
        let mut ready = libc::pollfd {
            fd: socket,
            events: libc::POLLIN,
            revents: 0,
        };
        if libc::poll(&mut ready, 1, 1000) != 1 {
            return;
        }
        let got = libc::recv(socket, buf.as_mut_ptr().cast(), buf.len(), 0);
        let Ok(got) = usize::try_from(got) else {
            return;
        };
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if got < 20 || kind != NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN {
            return;
        }
        // The answer past its header: the generation (and this helper's pid and name), the
        // same as [`QUIET_MS`] ago: no commit since.
        if got == last_len && buf[16..got] == last[16..got] {
            return;
        }
        last[..got].copy_from_slice(&buf[..got]);
        last_len = got;
        if now_ms() - start >= QUIET_CAP_MS {
            return;
        }
        let pause = libc::timespec {
            tv_sec: 0,
            tv_nsec: QUIET_MS * 1_000_000,
        };
        libc::nanosleep(&pause, std::ptr::null_mut());
    }
}

impl Nfnl {
    pub(super) fn open() -> Result<Nfnl, FirewallError> {
        let netns = netns_of_thread();
        let kept = KEPT
            .try_with(|kept| {
                let mut kept = kept.borrow_mut();
                match kept.as_mut() {
                    Some(k) if Some(k.netns) == netns => k.socket.take(),
                    _ => None,
                }
            })
            .ok()
            .flatten();
        if let Some(socket) = kept {
            drain(&socket);
            return Ok(Nfnl {
                socket: std::mem::ManuallyDrop::new(socket),
                netns,
                healthy: true,
            });
        }
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(io("opening a netlink socket"))?;
        socket.bind_auto().map_err(io("opening a netlink socket"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(io("opening a netlink socket"))?;
        set_receive_timeout(&socket, Duration::from_secs(10));
        Ok(Nfnl {
            socket: std::mem::ManuallyDrop::new(socket),
            netns,
            healthy: true,
        })
    }

    /// Reads one datagram and splits it into messages.
    fn receive(&mut self) -> std::io::Result<Vec<Answer>> {
        let (buf, _) = self.socket.recv_from_full()?;
        let mut out = Vec::new();
        let mut at = 0;
        while at + 16 <= buf.len() {
            let len = u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
            let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
            let seq = u32::from_ne_bytes([buf[at + 8], buf[at + 9], buf[at + 10], buf[at + 11]]);
            if len < 16 || at + len > buf.len() {
                break;
            }
            out.push(Answer {
                kind,
                seq,
                payload: buf[at + 16..at + len].to_vec(),
            });
            at += (len + 3) & !3;
        }
        Ok(out)
    }

    /// Sends a batch and reads the kernel's answer to every message: the first refusal as
    /// (sequence number, errno), or none.
    pub(super) fn transact(
        &mut self,
        bytes: &[u8],
        answered: &[u32],
    ) -> Result<Option<(u32, i32)>, FirewallError> {
        // Until every answer is read, the socket is not one to use again.
        self.healthy = false;
        // A big batch needs a send buffer as big (root may exceed the default limit).
        if bytes.len() > 100 << 10 {
            set_send_buffer(
                &self.socket,
                i32::try_from(bytes.len() + 4096).unwrap_or(i32::MAX),
            );
        }
        self.socket
            .send(bytes, 0)
            .map_err(io("sending the batch"))?;
        // Sent is processed (netlink to the kernel runs in this call): a refused batch freed
        // nothing, but it is cheaper to assume it did than to wait.
        if deletes(bytes) {
            FREEING.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let mut pending: BTreeSet<u32> = answered.iter().copied().collect();
        let mut refused: Option<(u32, i32)> = None;
        while !pending.is_empty() {
            let answers = match self.receive() {
                Ok(answers) => answers,
                // Every message answered that the kernel will answer: a refusal is known.
                Err(_) if refused.is_some() => return Ok(refused),
                Err(e) => return Err(io("reading the kernel's answer")(e)),
            };
            for answer in answers {
                if answer.kind == NLMSG_ERROR && answer.payload.len() >= 4 {
                    let code = error_code(&answer.payload);
                    pending.remove(&answer.seq);
                    if code != 0 && refused.is_none() {
                        refused = Some((answer.seq, -code));
                    }
                }
            }
        }
        self.healthy = true;
        Ok(refused)
    }

    /// Sends one dump request and reads every answer up to DONE: the payloads (after the
    /// `nfgenmsg`) of its messages, or the kernel's errno.
    pub(super) fn dump(
        &mut self,
        request: Vec<u8>,
    ) -> Result<Result<Vec<Vec<u8>>, i32>, FirewallError> {
        self.healthy = false;
        self.socket
            .send(&request, 0)
            .map_err(io("sending a dump request"))?;
        let mut payloads = Vec::new();
        loop {
            for answer in self.receive().map_err(io("reading a dump"))? {
                match answer.kind {
                    NLMSG_DONE => {
                        self.healthy = true;
                        return Ok(Ok(payloads));
                    }
                    NLMSG_ERROR => {
                        self.healthy = true;
                        let code = error_code(&answer.payload);
                        if code != 0 {
                            return Ok(Err(-code));
                        }
                        return Ok(Ok(payloads));
                    }
                    _ => payloads.push(answer.payload.get(4..).unwrap_or_default().to_vec()),
                }
            }
        }
    }

    /// [`Nfnl::dump`] of an object that may not exist: `None` when the kernel answers ENOENT;
    /// another refusal is an error naming `action` and `what` was listed.
    pub(super) fn dump_existing(
        request: Vec<u8>,
        action: &'static str,
        what: impl FnOnce() -> String,
    ) -> Result<Option<Vec<Vec<u8>>>, FirewallError> {
        match Nfnl::open()?.dump(request)? {
            Ok(payloads) => Ok(Some(payloads)),
            Err(errno) if errno == libc::ENOENT => Ok(None),
            Err(errno) => Err(FirewallError::Nft {
                action,
                detail: format!(
                    "the kernel refused to list {}: {}",
                    what(),
                    std::io::Error::from_raw_os_error(errno)
                ),
            }),
        }
    }

    /// Sends one request that the kernel acks (or refuses with an errno).
    pub(super) fn request(&mut self, request: Vec<u8>) -> Result<Result<(), i32>, FirewallError> {
        self.healthy = false;
        self.socket
            .send(&request, 0)
            .map_err(io("sending a request"))?;
        loop {
            for answer in self.receive().map_err(io("reading the kernel's answer"))? {
                if answer.kind == NLMSG_ERROR {
                    self.healthy = true;
                    let code = error_code(&answer.payload);
                    return Ok(if code == 0 { Ok(()) } else { Err(-code) });
                }
            }
        }
    }
}

fn error_code(payload: &[u8]) -> i32 {
    match payload.get(..4) {
        Some(b) => i32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

/// The attributes in `bytes`: (type without the nested flag, value).
pub(super) fn attributes(bytes: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let len = u16::from_ne_bytes([bytes[at], bytes[at + 1]]) as usize;
        let kind = u16::from_ne_bytes([bytes[at + 2], bytes[at + 3]]) & NLA_TYPE_MASK;
        if len < 4 || at + len > bytes.len() {
            break;
        }
        out.push((kind, &bytes[at + 4..at + len]));
        at += (len + 3) & !3;
    }
    out
}

/// A NUL-terminated string attribute.
pub(super) fn string(value: &[u8]) -> String {
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

fn set_receive_timeout(socket: &Socket, limit: Duration) {
    let value = libc::timeval {
        tv_sec: limit.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a valid fd and a pointer to a timeval that lives across the call.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&value as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
}

fn set_send_buffer(socket: &Socket, bytes: i32) {
    // SAFETY: setsockopt with a valid fd and a pointer to an i32 that lives across the call.
    unsafe {
        let value = bytes;
        let ptr = (&value as *const i32).cast();
        let size = std::mem::size_of::<i32>() as libc::socklen_t;
        if libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            ptr,
            size,
        ) != 0
        {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                ptr,
                size,
            );
        }
    }
}
