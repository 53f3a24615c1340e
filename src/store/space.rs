//! Room on the local disk, said the way a full disk's message needs it: which file system (its mount
//! point), how much it has left, and how much the failed write needed ([`Need`]).
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// How much room a failed write needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The whole file, whose size was known before it was written (its decoded content).
    Exact(u64),
    /// A file written as it streamed in: `received` bytes of it had been written (or kept in memory
    /// to be written) when the write failed; the remote lists it at `listed` bytes (a hint: for
    /// base64 content that is the encoded length).
    Streaming { received: u64, listed: Option<u64> },
}

impl Need {
    /// "it needs 100.0 KiB", or `None` when nothing honest can be said.
    pub fn describe(&self) -> Option<String> {
        match *self {
            Need::Exact(n) => Some(format!("it needs {}", human_bytes(n))),
            Need::Streaming {
                received,
                listed: Some(l),
            } if l > received => Some(if received > 0 {
                format!(
                    "it needs about {} (the size the remote lists for it; {} had arrived when the write failed)",
                    human_bytes(l),
                    human_bytes(received)
                )
            } else {
                format!(
                    "it needs about {} (the size the remote lists for it)",
                    human_bytes(l)
                )
            }),
            Need::Streaming { received, .. } if received > 0 => Some(format!(
                "it needs more than {} (what had arrived when the write failed)",
                human_bytes(received)
            )),
            Need::Streaming { .. } => None,
        }
    }
}

/// The file system holding a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Space {
    /// Bytes available to an unprivileged writer.
    pub avail: u64,
    pub total: u64,
    /// Where it is mounted (the highest ancestor on the same device), when that could be found.
    pub mount: Option<PathBuf>,
}

/// The file system holding `path` (its nearest existing ancestor).
pub fn space_of(path: &Path) -> Option<Space> {
    let mut p = path;
    loop {
        if let Ok(s) = nix::sys::statvfs::statvfs(p) {
            let f = s.fragment_size();
            return Some(Space {
                avail: s.blocks_available() * f,
                total: s.blocks() * f,
                mount: mount_point(p),
            });
        }
        p = p.parent()?;
    }
}

/// The mount point of the file system holding the existing path `p`: walk up while the parent is on
/// the same device.
fn mount_point(p: &Path) -> Option<PathBuf> {
    let p = p.canonicalize().ok()?;
    let dev = std::fs::metadata(&p).ok()?.dev();
    let mut top = p.as_path();
    while let Some(parent) = top.parent() {
        match std::fs::metadata(parent) {
            Ok(m) if m.dev() == dev => top = parent,
            _ => break,
        }
    }
    Some(top.to_path_buf())
}

/// "the file system mounted at /srv now has 1.2 MiB available of 2.0 MiB" (at the time of the call:
/// a failed write's temp file is gone by then).
pub fn describe_space(path: &Path) -> Option<String> {
    let s = space_of(path)?;
    let which = match &s.mount {
        Some(m) => format!("the file system mounted at {}", m.display()),
        None => format!("the file system holding {}", path.display()),
    };
    Some(format!(
        "{which} now has {} available of {}",
        human_bytes(s.avail),
        human_bytes(s.total)
    ))
}

/// 1536 → "1.5 KiB".
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_are_said_honestly() {
        assert_eq!(
            Need::Exact(102_400).describe().as_deref(),
            Some("it needs 100.0 KiB")
        );
        let s = Need::Streaming {
            received: 1 << 20,
            listed: Some(3 << 20),
        }
        .describe()
        .unwrap();
        assert!(
            s.contains("about 3.0 MiB") && s.contains("1.0 MiB had arrived"),
            "{s}"
        );
        // A listed size smaller than what arrived is not believed.
        let s = Need::Streaming {
            received: 2 << 20,
            listed: Some(1 << 20),
        }
        .describe()
        .unwrap();
        assert!(s.contains("more than 2.0 MiB"), "{s}");
        assert_eq!(
            Need::Streaming {
                received: 0,
                listed: None
            }
            .describe(),
            None
        );
    }

    #[test]
    fn the_mount_point_is_found() {
        let d = tempfile::tempdir().unwrap();
        let s = space_of(&d.path().join("not/yet/there")).unwrap();
        assert!(s.total > 0);
        let m = s.mount.unwrap();
        assert!(d.path().canonicalize().unwrap().starts_with(&m), "{m:?}");
        assert!(describe_space(d.path())
            .unwrap()
            .starts_with("the file system mounted at "));
    }
}
