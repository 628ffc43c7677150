//! What a share's listings and lookups tell about an object, and a share's space.

/// NFS object types (the same numbers in NFSv3 and NFSv4).
const TYPE_FILE: u32 = 1;
const TYPE_DIR: u32 = 2;
const TYPE_SYMLINK: u32 = 5;

/// A directory entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub kind: Kind,
    pub mode: u32,
    pub size: u64,
    pub uid: u32,
    pub gid: u32,
    /// Hard links to the object (1 for most files).
    pub nlink: u32,
    /// The object's number on the server (equal for hard links of one file).
    pub fileid: u64,
    pub atime: nfs_rs::Time,
    pub mtime: nfs_rs::Time,
}

impl Entry {
    pub(super) fn new(name: String, attr: &nfs_rs::Attr) -> Entry {
        Entry {
            name,
            kind: kind_of(attr.type_),
            mode: attr.file_mode & 0o7777,
            size: attr.filesize,
            uid: attr.uid,
            gid: attr.gid,
            nlink: attr.nlink,
            fileid: attr.fileid,
            atime: attr.atime,
            mtime: attr.mtime,
        }
    }

    /// An entry the server listed without attributes.
    pub(super) fn bare(name: String, fileid: u64) -> Entry {
        Entry {
            name,
            kind: Kind::Other,
            mode: 0,
            size: 0,
            uid: 0,
            gid: 0,
            nlink: 1,
            fileid,
            atime: nfs_rs::Time::default(),
            mtime: nfs_rs::Time::default(),
        }
    }

    /// Seconds since the epoch of the last change of content.
    pub fn modified_unix(&self) -> u64 {
        u64::from(self.mtime.seconds)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

fn kind_of(type_: u32) -> Kind {
    match type_ {
        TYPE_FILE => Kind::File,
        TYPE_DIR => Kind::Dir,
        TYPE_SYMLINK => Kind::Symlink,
        _ => Kind::Other,
    }
}

/// Space on a share.
#[derive(Debug, Clone, Copy)]
pub struct Space {
    pub total_bytes: u64,
    pub available_bytes: u64,
}
