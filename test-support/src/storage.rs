//! Filesystems in loop-mounted sparse images (XFS, btrfs, ext4), unmounted when dropped.

use std::path::PathBuf;
use std::process::Command;

use crate::run_ok;

/// A filesystem of `kind` in a sparse image, mounted at `mnt`.
pub struct LoopFs {
    pub mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopFs {
    pub fn new(kind: &str, megabytes: u64, options: &str) -> LoopFs {
        crate::require_root();
        let dir = tempfile::Builder::new()
            .prefix("tt-agent-")
            .tempdir()
            .unwrap();
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(megabytes << 20)
            .unwrap();
        let image_s = image.to_str().unwrap();
        match kind {
            "xfs" => run_ok("mkfs.xfs", &["-q", "-f", "-m", "reflink=1", image_s]),
            "btrfs" => run_ok("mkfs.btrfs", &["-q", "-f", image_s]),
            "ext4" => run_ok("mkfs.ext4", &["-q", "-F", image_s]),
            other => panic!("no mkfs for {other}"),
        }
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let opts = if options.is_empty() {
            "loop".to_string()
        } else {
            format!("loop,{options}")
        };
        run_ok("mount", &["-o", &opts, image_s, mnt.to_str().unwrap()]);
        LoopFs { mnt, _dir: dir }
    }

    /// Free bytes on the filesystem.
    pub fn free(&self) -> u64 {
        let c = std::ffi::CString::new(self.mnt.to_str().unwrap()).unwrap();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st.f_bavail * st.f_frsize
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let mnt = self.mnt.to_str().unwrap().to_string();
        if Command::new("umount")
            .arg(&mnt)
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            let _ = Command::new("umount").args(["-l", &mnt]).status();
        }
    }
}
