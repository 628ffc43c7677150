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
    #[error("{tool} on {path} failed: {output}")]
    Tool {
        tool: String,
        path: PathBuf,
        output: String,
    },
    #[error("{path} holds a {found} filesystem, not {wanted}")]
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

/// Detaches the loop device serving `image`, if any.
pub fn detach(image: &Path) -> Result<(), ImageError> {
    let Some(device) = find_loop(image)? else {
        return Ok(());
    };
    let file = File::open(&device).map_err(io("opening", &device))?;
    match ioctl(&file, LOOP_CLR_FD, 0) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(()),
        Err(e) => Err(io("detaching", &device)(e)),
    }
}

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

/// The filesystem on `device`, from its superblock: `ext4` (any ext), `xfs`, or `None`.
pub fn detect_filesystem(device: &Path) -> Result<Option<&'static str>, ImageError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(device).map_err(io("opening", device))?;
    let mut head = [0u8; 4];
    file.read_exact(&mut head).map_err(io("reading", device))?;
    if &head == b"XFSB" {
        return Ok(Some("xfs"));
    }
    let mut magic = [0u8; 2];
    file.seek(SeekFrom::Start(1024 + 56))
        .and_then(|_| file.read_exact(&mut magic))
        .map_err(io("reading", device))?;
    if magic == [0x53, 0xEF] {
        return Ok(Some("ext4"));
    }
    Ok(None)
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

/// Formats `device` with `fs_type` unless it holds a filesystem already; a filesystem of
/// another type is an error (never reformatted: that would lose the data).
pub fn ensure_filesystem(device: &Path, fs_type: &str) -> Result<bool, ImageError> {
    match detect_filesystem(device)? {
        Some(found) if found == fs_type => Ok(false),
        Some(found) => Err(ImageError::WrongFilesystem {
            path: device.into(),
            found: found.into(),
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
    fn filesystems_are_recognised_by_their_superblock() {
        let dir = tempfile::tempdir().unwrap();
        let ext = dir.path().join("ext");
        let mut block = vec![0u8; 4096];
        block[1080] = 0x53;
        block[1081] = 0xEF;
        std::fs::write(&ext, &block).unwrap();
        assert_eq!(detect_filesystem(&ext).unwrap(), Some("ext4"));
        let xfs = dir.path().join("xfs");
        let mut block = vec![0u8; 4096];
        block[..4].copy_from_slice(b"XFSB");
        std::fs::write(&xfs, &block).unwrap();
        assert_eq!(detect_filesystem(&xfs).unwrap(), Some("xfs"));
        let blank = dir.path().join("blank");
        std::fs::write(&blank, vec![0u8; 4096]).unwrap();
        assert_eq!(detect_filesystem(&blank).unwrap(), None);
        assert!(matches!(
            ensure_filesystem(&xfs, "ext4"),
            Err(ImageError::WrongFilesystem { .. })
        ));
    }
}
