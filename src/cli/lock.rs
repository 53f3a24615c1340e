//! One daemon per mirror: an exclusive lock (`flock`) on `<state-db>.lock`, held for the life of the
//! process.
use std::path::{Path, PathBuf};

pub struct MirrorLock {
    _file: std::fs::File,
    pub path: PathBuf,
}

pub fn acquire(state_db: &Path) -> Result<MirrorLock, String> {
    let mut p = state_db.as_os_str().to_owned();
    p.push(".lock");
    let path = PathBuf::from(p);
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open lock file {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(MirrorLock { _file: file, path }),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "another mountd is already running on this mirror (lock {} is held); stop it first or use a different --local-dir/--state-db",
            path.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(format!("cannot lock {}: {e}", path.display()))
        }
    }
}
