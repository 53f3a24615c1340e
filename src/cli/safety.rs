//! Dangerous configurations, refused before anything is written: a mountpoint that overlaps the
//! mirror or the state DB's directory, a non-empty mountpoint or one another live mountd serves, and a
//! first bootstrap into a non-empty directory mountd does not own. Also where the state DB lives.
use crate::store::paths::RESERVED_DIR;
use sha2::Digest;
use std::path::{Component, Path, PathBuf};

/// `p` made absolute: the longest existing ancestor canonicalized (symlinks resolved), the rest
/// appended with `.` and `..` resolved lexically. Equal to `canonicalize` once the path exists.
pub fn abs_path(p: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(p)
    };
    let mut lexical = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            other => lexical.push(other.as_os_str()),
        }
    }
    let mut existing = lexical.clone();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut out = c;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return out;
        }
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return lexical,
        }
    }
}

/// The state DB: `--state-db`; else under `--state-dir` as
/// `<state-dir>/<workspace>-<first 16 hex digits of sha256(absolute local dir)>.db`; else
/// `<local-dir>/.mountd/state.db`.
pub fn state_db_for(
    local_dir: &Path,
    state_db: Option<&PathBuf>,
    state_dir: Option<&PathBuf>,
    workspace: Option<&str>,
) -> Result<PathBuf, String> {
    if let Some(p) = state_db {
        return Ok(p.clone());
    }
    if let Some(dir) = state_dir {
        let ws = workspace
            .filter(|w| !w.is_empty())
            .ok_or("--state-dir needs --workspace to name the state DB")?;
        let safe: String = ws
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        let local = abs_path(local_dir);
        let h = sha2::Sha256::digest(local.as_os_str().as_encoded_bytes());
        return Ok(dir.join(format!("{safe}-{}.db", &hex::encode(h)[..16])));
    }
    Ok(local_dir.join(RESERVED_DIR).join("state.db"))
}

fn relation(inner: &Path, outer: &Path) -> Option<&'static str> {
    if inner == outer {
        Some("is the same directory as")
    } else if inner.starts_with(outer) {
        Some("is inside")
    } else if outer.starts_with(inner) {
        Some("contains")
    } else {
        None
    }
}

/// A FUSE mount at `mp` that answers (not a dead connection), with its source, from the mount table.
fn live_mount_at(mp: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mp.as_os_str().as_encoded_bytes();
    let found = text.lines().rev().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let point = unescape(fields.get(4)?);
        let sep = fields.iter().position(|f| *f == "-")?;
        let fstype = fields.get(sep + 1)?.to_string();
        let source = String::from_utf8_lossy(&unescape(fields.get(sep + 2)?)).into_owned();
        (point == want).then_some((fstype, source))
    })?;
    match std::fs::metadata(mp) {
        Err(e) if crate::view::fuse::is_dead_mount(&e) => None,
        _ => Some(found),
    }
}

fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                out.push((oct[0] - b'0') * 64 + (oct[1] - b'0') * 8 + (oct[2] - b'0'));
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// True when `dir` has at least one entry (a missing directory, or a dead FUSE mount, is "empty").
fn non_empty(dir: &Path) -> bool {
    match std::fs::read_dir(dir) {
        Ok(mut it) => it.next().is_some(),
        Err(_) => false,
    }
}

/// What the checks need to know.
pub struct Plan<'a> {
    pub local_dir: &'a Path,
    pub state_db: &'a Path,
    /// The FUSE mountpoint, when this run will mount one.
    pub mountpoint: Option<&'a Path>,
    pub allow_non_empty: bool,
    pub adopt: bool,
}

/// Refuse a dangerous configuration (the caller exits 2). Reads only; writes nothing.
pub fn check(p: &Plan) -> Result<(), String> {
    let mirror = abs_path(p.local_dir);
    let db = abs_path(p.state_db);
    let db_dir = db.parent().map(Path::to_path_buf).unwrap_or(db.clone());
    if let Some(mp) = p.mountpoint {
        let mp = abs_path(mp);
        for (what, dir) in [
            ("the mirror (--local-dir)", &mirror),
            ("the state DB's directory", &db_dir),
        ] {
            if let Some(rel) = relation(&mp, dir) {
                return Err(format!(
                    "--mountpoint {} {rel} {what} {}: the mount would hide or loop over mountd's own files. Use a separate empty directory outside both (e.g. /mnt/relayfile/<workspace>)",
                    mp.display(),
                    dir.display()
                ));
            }
        }
        if let Some((fstype, source)) = live_mount_at(&mp) {
            if source.starts_with("mountd") && fstype.starts_with("fuse") {
                return Err(format!(
                    "--mountpoint {} is served by another live mountd ({source}); stop it first (systemctl stop mountd@..., or umount {})",
                    mp.display(),
                    mp.display()
                ));
            }
        }
        if !p.allow_non_empty && non_empty(&mp) {
            return Err(format!(
                "--mountpoint {} is not empty: mounting over it would hide its files (or another file system mounted there). Empty it, choose another directory, or pass --allow-non-empty",
                mp.display()
            ));
        }
    }
    let owned = mirror.join(RESERVED_DIR).exists();
    if !p.adopt && !db.exists() && !owned && non_empty(&mirror) {
        return Err(format!(
            "--local-dir {} is not empty and is not a mountd mirror (no {RESERVED_DIR}/ in it, no state DB at {}): a first sync would replace files that differ from the remote. Use an empty or new directory, or pass --adopt to take the existing files over (each verified by hash and replaced only when different; files the remote does not have are reported, not deleted)",
            mirror.display(),
            db.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relations() {
        let a = Path::new("/a");
        assert!(relation(a, a).is_some());
        assert_eq!(relation(Path::new("/a/b"), a), Some("is inside"));
        assert_eq!(relation(a, Path::new("/a/b")), Some("contains"));
        assert_eq!(relation(Path::new("/ab"), a), None);
    }

    #[test]
    fn abs_paths() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().canonicalize().unwrap();
        assert_eq!(abs_path(&t.path().join("x/../y/./z")), base.join("y/z"));
        assert_eq!(abs_path(t.path()), base);
    }

    #[test]
    fn state_dir_name_is_stable_and_readable() {
        let t = tempfile::tempdir().unwrap();
        let d = PathBuf::from("/var/lib/st");
        let a = state_db_for(t.path(), None, Some(&d), Some("ws/1")).unwrap();
        let b = state_db_for(&t.path().join("."), None, Some(&d), Some("ws/1")).unwrap();
        assert_eq!(a, b);
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("ws_1-") && name.ends_with(".db"), "{name}");
        assert!(state_db_for(t.path(), None, Some(&d), None).is_err());
    }
}
