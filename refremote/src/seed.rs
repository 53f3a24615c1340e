//! Filling the reference remote's store: from a local directory or with synthetic files.

use std::path::Path;

use super::Shared;

/// Walks `dir` recursively; each regular file becomes remote path `/` + relative path
/// (UTF-8 content → text, else base64). Symlinks are skipped.
pub(crate) fn seed_dir(shared: &Shared, dir: &Path) -> std::io::Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for ent in std::fs::read_dir(&d)? {
            let ent = ent?;
            let ft = ent.file_type()?;
            let p = ent.path();
            if ft.is_symlink() {
                continue;
            } else if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let rel = p.strip_prefix(dir).expect("walked below the seed dir");
                let rel = rel
                    .to_string_lossy()
                    .replace(std::path::MAIN_SEPARATOR, "/");
                let bytes = std::fs::read(&p)?;
                shared.put_bytes(&format!("/{rel}"), &bytes, false);
            }
        }
    }
    Ok(())
}

/// `n` files of `file_size` bytes spread over `dirs` directories, deterministic content.
pub(crate) fn generate(shared: &Shared, n: usize, file_size: usize, dirs: usize) {
    let dirs = dirs.max(1);
    for i in 0..n {
        let path = format!("/d{:03}/f{:07}.txt", i % dirs, i);
        let line = format!("file {i} of {n}: the quick brown fox jumps over the lazy dog\n");
        let mut content = String::with_capacity(file_size);
        while content.len() < file_size {
            content.push_str(&line);
        }
        content.truncate(file_size);
        shared.put_bytes(&path, content.as_bytes(), false);
    }
}

/// A large file of `size` decoded bytes with deterministic content, built straight into the stored
/// string (no second copy): numbered text lines, or (`base64`) pseudo-random bytes stored as base64.
/// Returns the hex SHA-256 of the decoded bytes.
pub(crate) fn big_file(shared: &Shared, path: &str, size: usize, base64: bool) -> String {
    use base64::Engine as _;
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    let (content, ct) = if base64 {
        let mut out = String::with_capacity(size.div_ceil(3) * 4);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ size as u64;
        let mut buf = vec![0u8; 3 << 16];
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len());
            for b in buf[..n].chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
            }
            hash.update(&buf[..n]);
            base64::engine::general_purpose::STANDARD.encode_string(&buf[..n], &mut out);
            left -= n;
        }
        (out, "application/octet-stream")
    } else {
        let mut out = String::with_capacity(size);
        let mut i = 0u64;
        while out.len() < size {
            let line =
                format!("{path} line {i:010}: the quick brown fox jumps over the lazy dog\n");
            let take = line.len().min(size - out.len());
            out.push_str(&line[..take]);
            i += 1;
        }
        hash.update(out.as_bytes());
        (out, "text/plain")
    };
    let hex = hex::encode(hash.finalize());
    shared
        .store()
        .put(path, content, base64, ct.to_string(), hex.clone());
    hex
}
