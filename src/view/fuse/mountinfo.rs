//! The mount table (`/proc/self/mountinfo`, parsed by the `procfs` crate): which mount sits on top of
//! a path, and whether it is a mountd FUSE mount.
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// One mount, as mountd needs it.
#[derive(Debug, Clone)]
pub struct MountInfo {
    pub id: u64,
    pub dev: (u32, u32),
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Undo the octal escapes the kernel writes in mountinfo (`\040` for a space, `\134` for `\`...);
/// `procfs` leaves them in place.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The current mounts of this process's namespace (empty if /proc cannot be read).
pub fn mountinfo() -> Vec<MountInfo> {
    let infos = match procfs::process::Process::myself().and_then(|p| p.mountinfo()) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read /proc/self/mountinfo");
            return Vec::new();
        }
    };
    infos
        .0
        .into_iter()
        .filter_map(|m| {
            let (ma, mi) = m.majmin.split_once(':')?;
            Some(MountInfo {
                id: u64::try_from(m.mnt_id).ok()?,
                dev: (ma.parse().ok()?, mi.parse().ok()?),
                mountpoint: PathBuf::from(OsStr::from_bytes(&unescape(
                    &m.mount_point.to_string_lossy(),
                ))),
                fstype: m.fs_type,
                source: String::from_utf8_lossy(&unescape(m.mount_source.as_deref().unwrap_or("")))
                    .into_owned(),
            })
        })
        .collect()
}

/// (mount id, device) of the top-most mount at `p`, if `p` is a mountpoint.
pub fn mounted_top(p: &Path) -> Option<(u64, (u32, u32))> {
    mountinfo()
        .into_iter()
        .rev()
        .find(|m| m.mountpoint == p)
        .map(|m| (m.id, m.dev))
}

/// True for a FUSE mount made by mountd.
pub fn is_mountd_fuse(m: &MountInfo) -> bool {
    (m.fstype == "fuse" || m.fstype.starts_with("fuse.") || m.fstype == "fuseblk")
        && (m.source.starts_with("mountd") || m.fstype == "fuse.mountd")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_and_reads_the_table() {
        assert_eq!(unescape(r"/a\040b\134c"), b"/a b\\c");
        assert_eq!(unescape(r"/x\04"), b"/x\\04");
        assert!(mountinfo().iter().any(|m| m.mountpoint == Path::new("/")));
    }
}
