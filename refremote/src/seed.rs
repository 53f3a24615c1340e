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
