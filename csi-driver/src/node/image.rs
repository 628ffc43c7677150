//! Disk images for `layout: image`: loop devices (attach, find by backing file, grow, detach)
//! and the filesystem on them (detect, format on first use, grow online).
//!
//! Which loop device serves which image is read back from the kernel
//! (`/sys/block/loop*/loop/backing_file`), never kept in memory.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no free loop device (is the loop module loaded?)")]
    NoLoopDevice,
    #[error(
        "{device} still serves the image (the kernel detaches it when its last user closes it)"
    )]
    StillAttached { device: PathBuf },
    #[error("{tool} on {path} failed: {output}")]
    Tool {
        tool: String,
        path: PathBuf,
        output: String,
    },
    #[error("{path} holds {found}, not a {wanted} filesystem: it is never formatted over")]
    WrongFilesystem {
        path: PathBuf,
        found: String,
        wanted: String,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ImageError + 'a {
    move |source| ImageError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

// Loop ioctls (linux/loop.h) and BLKGETSIZE64 (linux/fs.h).
const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_CAPACITY: libc::c_ulong = 0x4C07;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

fn ioctl(file: &File, request: libc::c_ulong, arg: libc::c_ulong) -> std::io::Result<libc::c_int> {
    // SAFETY: the loop ioctls used here take an integer argument (a file descriptor or nothing)
    // and write nothing through it; the file stays open for the duration of the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request as _, arg) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The loop device whose backing file is `image`, if one is attached.
pub fn find_loop(image: &Path) -> Result<Option<PathBuf>, ImageError> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Ok(None);
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let backing = entry.path().join("loop/backing_file");
        let Ok(text) = std::fs::read_to_string(&backing) else {
            continue;
        };
        if Path::new(text.trim_end_matches('\n')) == image {
            return Ok(Some(PathBuf::from("/dev").join(name)));
        }
    }
    Ok(None)
}

/// Attaches `image` to a free loop device (or returns the one it is attached to already).
pub fn attach(image: &Path) -> Result<PathBuf, ImageError> {
    if let Some(existing) = find_loop(image)? {
        return Ok(existing);
    }
    let backing = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(io("opening image", image))?;
    let control_path = Path::new("/dev/loop-control");
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(control_path)
        .map_err(io("opening", control_path))?;
    // Another process may take the free device between the two calls: try a few times.
    for _ in 0..16 {
        let n = ioctl(&control, LOOP_CTL_GET_FREE, 0)
            .map_err(io("finding a free loop device", control_path))?;
        let device = PathBuf::from(format!("/dev/loop{n}"));
        wait_for_node(&device);
        let loop_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&device)
            .map_err(io("opening", &device))?;
        match ioctl(
            &loop_file,
            LOOP_SET_FD,
            backing.as_raw_fd() as libc::c_ulong,
        ) {
            Ok(_) => return Ok(device),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => continue,
            Err(e) => return Err(io("attaching to", &device)(e)),
        }
    }
    Err(ImageError::NoLoopDevice)
}

/// devtmpfs creates /dev/loopN shortly after LOOP_CTL_GET_FREE adds it.
fn wait_for_node(device: &Path) {
    for _ in 0..100 {
        if device.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Detaches the loop device serving `image`, if any, and waits until it is gone: while
/// something else still has the device open (a filesystem being released), the kernel only
/// marks it to detach on the last close.
pub fn detach(image: &Path) -> Result<(), ImageError> {
    let Some(device) = find_loop(image)? else {
        return Ok(());
    };
    let file = File::open(&device).map_err(io("opening", &device))?;
    match ioctl(&file, LOOP_CLR_FD, 0) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(()),
        Err(e) => return Err(io("detaching", &device)(e)),
    }
    drop(file);
    for _ in 0..DETACH_POLLS {
        if find_loop(image)?.is_none() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(ImageError::StillAttached { device })
}

/// How long `detach` waits for the kernel: DETACH_POLLS x 20 ms.
const DETACH_POLLS: u32 = 250;

/// Makes the loop device see its image's current size.
pub fn refresh_capacity(device: &Path) -> Result<(), ImageError> {
    let file = File::open(device).map_err(io("opening", device))?;
    ioctl(&file, LOOP_SET_CAPACITY, 0).map_err(io("resizing", device))?;
    Ok(())
}

/// The size of a block device in bytes.
pub fn device_size(device: &Path) -> Result<u64, ImageError> {
    let file = File::open(device).map_err(io("opening", device))?;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `size`.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if rc < 0 {
        return Err(io("reading the size of", device)(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(size)
}

/// What is on a device, as `blkid -p` (util-linux, low-level probing of superblocks, partition
/// tables, LUKS and LVM headers) reads it: `None` when there is no signature at all.
pub fn probe(device: &Path) -> Result<Option<Signature>, ImageError> {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(device)
        .output()
        .map_err(io("running blkid -p on", device))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    };
    match out.status.code() {
        Some(0) => Ok(Some(match (value("TYPE"), value("PTTYPE")) {
            (Some(kind), _) => Signature::Type(kind),
            (None, Some(table)) => Signature::PartitionTable(table),
            (None, None) => Signature::Unknown(text.trim().replace('\n', " ")),
        })),
        // Nothing found.
        Some(2) => Ok(None),
        // Several signatures that contradict each other.
        Some(8) => Ok(Some(Signature::Ambivalent)),
        _ => Err(ImageError::Tool {
            tool: "blkid -p".into(),
            path: device.into(),
            output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }),
    }
}

/// A signature `blkid -p` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// A filesystem or container: `ext4`, `xfs`, `btrfs`, `crypto_LUKS`, `LVM2_member`, ...
    Type(String),
    /// A partition table (`dos`, `gpt`).
    PartitionTable(String),
    /// Several signatures at once.
    Ambivalent,
    Unknown(String),
}

impl std::fmt::Display for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signature::Type(kind) => write!(f, "a {kind} signature"),
            Signature::PartitionTable(table) => write!(f, "a {table} partition table"),
            Signature::Ambivalent => write!(f, "several contradicting signatures"),
            Signature::Unknown(what) => write!(f, "an unrecognised signature ({what})"),
        }
    }
}

fn run(tool: &str, args: &[&str], path: &Path) -> Result<(), ImageError> {
    let out = Command::new(tool)
        .args(args)
        .arg(path)
        .output()
        .map_err(io("running a filesystem tool on", path))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ImageError::Tool {
            tool: tool.into(),
            path: path.into(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
            .trim()
            .to_string(),
        })
    }
}

/// Formats `device` with `fs_type` only when it holds no signature at all; a filesystem of
/// `fs_type` is used as it is, and anything else (another filesystem, LUKS, LVM, a partition
/// table) is an error: never formatted over, that would lose the data.
pub fn ensure_filesystem(device: &Path, fs_type: &str) -> Result<bool, ImageError> {
    match probe(device)? {
        Some(Signature::Type(found)) if found == fs_type => Ok(false),
        Some(found) => Err(ImageError::WrongFilesystem {
            path: device.into(),
            found: found.to_string(),
            wanted: fs_type.into(),
        }),
        None => {
            match fs_type {
                "xfs" => run("mkfs.xfs", &["-q", "-f"], device)?,
                _ => run(
                    "mkfs.ext4",
                    &["-q", "-F", "-m", "0", "-E", "nodiscard"],
                    device,
                )?,
            }
            Ok(true)
        }
    }
}

/// Grows the filesystem on `device` (mounted at `mount_point`) to the device's size, online.
pub fn grow_filesystem(device: &Path, mount_point: &Path, fs_type: &str) -> Result<(), ImageError> {
    match fs_type {
        "xfs" => run("xfs_growfs", &[], mount_point),
        _ => run("resize2fs", &[], device).map_err(|e| match e {
            ImageError::Tool { tool, path, output } if output.contains("Permission denied") => {
                ImageError::Tool {
                    tool,
                    path,
                    output: format!("{output} (growing a mounted ext4 needs CAP_SYS_RESOURCE)"),
                }
            }
            other => other,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_device_without_any_signature_is_formatted() {
        let dir = tempfile::tempdir().unwrap();
        let image = |name: &str| {
            let path = dir.path().join(name);
            std::fs::File::create(&path)
                .unwrap()
                .set_len(64 << 20)
                .unwrap();
            path
        };
        let blank = image("blank");
        assert_eq!(probe(&blank).unwrap(), None);
        assert!(ensure_filesystem(&blank, "ext4").unwrap(), "formatted");
        assert_eq!(probe(&blank).unwrap(), Some(Signature::Type("ext4".into())));
        assert!(!ensure_filesystem(&blank, "ext4").unwrap(), "used as it is");
        let err = ensure_filesystem(&blank, "xfs").unwrap_err().to_string();
        assert!(
            err.contains("a ext4 signature") && err.contains("never formatted"),
            "{err}"
        );
        // What a pod writing a raw block volume may leave: a partition table, LUKS, LVM.
        use std::os::unix::fs::FileExt;
        let write = |path: &Path, at: u64, bytes: &[u8]| {
            let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            file.write_at(bytes, at).unwrap();
        };
        let table = image("table");
        let mut mbr = vec![0u8; 512];
        mbr[446 + 4] = 0x83; // one Linux partition
        mbr[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        mbr[446 + 12..446 + 16].copy_from_slice(&100_000u32.to_le_bytes());
        mbr[510..].copy_from_slice(&[0x55, 0xAA]);
        write(&table, 0, &mbr);
        let luks = image("luks");
        write(&luks, 0, b"LUKS\xba\xbe\x00\x01aes\x00");
        let lvm = image("lvm");
        let mut label = vec![0u8; 512];
        label[..8].copy_from_slice(b"LABELONE");
        label[8..16].copy_from_slice(&1u64.to_le_bytes());
        label[20..24].copy_from_slice(&32u32.to_le_bytes());
        label[24..32].copy_from_slice(b"LVM2 001");
        label[32..64].copy_from_slice(&[b'x'; 32]);
        let crc = lvm_crc(&label[20..]);
        label[16..20].copy_from_slice(&crc.to_le_bytes());
        write(&lvm, 512, &label);
        for (path, expected) in [
            (&table, "dos partition table"),
            (&luks, "crypto_LUKS"),
            (&lvm, "LVM2_member"),
        ] {
            let err = ensure_filesystem(path, "ext4").unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
            let err = ensure_filesystem(path, "xfs").unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }

    /// LVM's label checksum: CRC-32 (reflected, 0xEDB88320) from 0xf597a6cf, no final xor.
    fn lvm_crc(data: &[u8]) -> u32 {
        let mut crc = 0xf597_a6cfu32;
        for byte in data {
            crc ^= u32::from(*byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        crc
    }
}
