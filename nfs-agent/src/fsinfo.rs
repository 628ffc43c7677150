//! What the filesystem under an export can do: its type, whether files clone copy-on-write
//! (probed with two anonymous O_TMPFILE files, so nothing ever appears in the export), and its
//! quota.

use std::ffi::OsStr;
use std::os::fd::AsRawFd;

use tether_csi_proto::agent::CapabilitiesResponse;

use crate::error::{AgentError, AgentResult};
use crate::paths::Root;
use crate::{quota, sys};

fn name_of(magic: i64) -> String {
    match magic {
        0x5846_5342 => "xfs".into(),
        0x9123_683e => "btrfs".into(),
        0xef53 => "ext4".into(),
        0x0102_1994 => "tmpfs".into(),
        0x6573_5546 => "fuse".into(),
        0x2fc1_2fc1 => "zfs".into(),
        other => format!("0x{other:x}"),
    }
}

/// Whether two files of this filesystem can share blocks.
fn reflinks(root: &Root) -> AgentResult<bool> {
    let open = || {
        sys::open_at(
            root.fd(),
            OsStr::new("."),
            libc::O_TMPFILE | libc::O_RDWR,
            0o600,
        )
    };
    let (a, b) = match (open(), open()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            return Ok(false)
        }
        (Err(e), _) | (_, Err(e)) => return Err(AgentError::io("probing for clones")(e)),
    };
    let byte = [0u8; 1];
    // SAFETY: one byte from a valid buffer.
    if unsafe { libc::write(a.as_raw_fd(), byte.as_ptr().cast(), 1) } != 1 {
        return Err(AgentError::io("probing for clones")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(sys::ficlone(&a, &b).is_ok())
}

pub fn capabilities(root: &Root) -> AgentResult<CapabilitiesResponse> {
    let st = sys::fstatfs(root.fd()).map_err(AgentError::io("reading the filesystem"))?;
    let (kind, why) = quota::kind(root);
    let mut out = CapabilitiesResponse {
        filesystem: name_of(st.f_type),
        reflink: reflinks(root)?,
        quota_unavailable: why,
        ..CapabilitiesResponse::default()
    };
    out.set_quota(kind);
    Ok(out)
}
