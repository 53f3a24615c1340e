//! Remote path → local relative path. Hostile paths are rejected with a reason, never "fixed up":
//! nothing can escape the local root, overwrite it, or land in the reserved `.mountd` directory.
use std::fmt;

/// Name of the reserved directory inside the local root (temp files, default state DB).
pub const RESERVED_DIR: &str = ".mountd";
const MAX_SEGMENT: usize = 255;
const MAX_PATH: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected(pub String);

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Normalise the configured remote root: `/`, `/docs`, `docs/` all work; hostile roots are refused.
pub fn normalize_root(root: &str) -> Result<String, Rejected> {
    let trimmed = root.trim_matches('/');
    if trimmed.is_empty() {
        return Ok("/".into());
    }
    check_relative(trimmed)?;
    Ok(format!("/{trimmed}"))
}

/// Map a remote path under `root` to a path relative to the local root (never empty).
pub fn to_local(root: &str, remote: &str) -> Result<String, Rejected> {
    if !remote.starts_with('/') {
        return Err(Rejected("not an absolute path".into()));
    }
    let rel = if root == "/" {
        &remote[1..]
    } else {
        match remote.strip_prefix(root) {
            Some(rest) if rest.starts_with('/') => &rest[1..],
            _ => return Err(Rejected(format!("outside the remote root {root}"))),
        }
    };
    if rel.is_empty() {
        return Err(Rejected("would overwrite the mirror root".into()));
    }
    check_relative(rel)?;
    if rel == RESERVED_DIR || rel.starts_with(&format!("{RESERVED_DIR}/")) {
        return Err(Rejected(format!(
            "{RESERVED_DIR} is reserved for mountd's own files"
        )));
    }
    Ok(rel.to_string())
}

/// True when `remote` lies strictly below `root` (which [`normalize_root`] produced).
pub fn is_under(root: &str, remote: &str) -> bool {
    root == "/" && remote.starts_with('/')
        || remote
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The remote path of a local relative path (the inverse of [`to_local`]).
pub fn to_remote(root: &str, rel: &str) -> String {
    if rel.is_empty() {
        return root.to_string();
    }
    if root == "/" {
        format!("/{rel}")
    } else {
        format!("{root}/{rel}")
    }
}

fn check_relative(rel: &str) -> Result<(), Rejected> {
    if rel.len() > MAX_PATH {
        return Err(Rejected(format!("path longer than {MAX_PATH} bytes")));
    }
    for seg in rel.split('/') {
        match seg {
            "" => return Err(Rejected("empty path segment".into())),
            "." | ".." => return Err(Rejected(format!("{seg:?} segment"))),
            _ => {}
        }
        if seg.len() > MAX_SEGMENT {
            return Err(Rejected(format!("segment longer than {MAX_SEGMENT} bytes")));
        }
        if seg.contains('\0') {
            return Err(Rejected("NUL byte in name".into()));
        }
        if seg.chars().any(|c| c.is_control()) {
            return Err(Rejected("control character in name".into()));
        }
        if seg.contains('\\') {
            return Err(Rejected("backslash in name".into()));
        }
    }
    Ok(())
}

/// Parent of a relative path ("" for top-level entries).
pub fn parent(rel: &str) -> &str {
    rel.rfind('/').map_or("", |i| &rel[..i])
}

/// Last segment of a relative path.
pub fn name(rel: &str) -> &str {
    rel.rfind('/').map_or(rel, |i| &rel[i + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_plain_paths() {
        assert_eq!(to_local("/", "/a/b.txt").unwrap(), "a/b.txt");
        assert_eq!(to_local("/docs", "/docs/a").unwrap(), "a");
        assert_eq!(to_remote("/docs", "a"), "/docs/a");
        assert_eq!(to_remote("/", "a/b"), "/a/b");
        assert_eq!(to_local("/", "/ünï/çødé").unwrap(), "ünï/çødé");
    }

    #[test]
    fn rejects_hostile_paths() {
        for bad in [
            "a",
            "/",
            "/..",
            "/a/../../etc/passwd",
            "/./a",
            "/a//b",
            "/a/",
            "/a\0b",
            "/a\\..\\b",
            "/.mountd/tmp/x",
            "/.mountd",
            "/a\nb",
        ] {
            assert!(to_local("/", bad).is_err(), "{bad:?} accepted");
        }
        assert!(to_local("/", &format!("/{}", "x".repeat(256))).is_err());
        assert!(to_local("/docs", "/docsx/a").is_err());
        assert!(to_local("/docs", "/docs").is_err());
        assert!(normalize_root("/../x").is_err());
        assert_eq!(normalize_root("docs/").unwrap(), "/docs");
    }

    #[test]
    fn under_root() {
        assert!(is_under("/docs", "/docs/a"));
        assert!(!is_under("/docs", "/docsx/a"));
        assert!(!is_under("/docs", "/docs"));
        assert!(is_under("/", "/x"));
    }

    #[test]
    fn parent_and_name() {
        assert_eq!(parent("a/b/c"), "a/b");
        assert_eq!(parent("a"), "");
        assert_eq!(name("a/b/c"), "c");
    }
}
