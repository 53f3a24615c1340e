//! One daemon per mirror: an exclusive lock (`flock`) on `<state-db>.lock`, held for the life of the
//! process. The holder writes its pid into the file, so `mountd status` can say which process holds the
//! mirror ([`probe`]: a non-blocking shared try-lock, released at once).
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct MirrorLock {
    _file: std::fs::File,
    pub path: PathBuf,
}

/// `<state-db>.lock`.
pub fn lock_path(state_db: &Path) -> PathBuf {
    let mut p = state_db.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// How long `acquire` keeps trying while the lock is held: `mountd status` holds a shared lock for a
/// few microseconds, which must not make a starting daemon think another one runs.
const CONTENDED_FOR: Duration = Duration::from_millis(300);

pub fn acquire(state_db: &Path) -> Result<MirrorLock, String> {
    let path = lock_path(state_db);
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    // Not truncated on open: the file holds the running holder's pid until we own the lock.
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open lock file {}: {e}", path.display()))?;
    let start = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < CONTENDED_FOR => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = read_pid(&path).map_or(String::new(), |p| format!(" by pid {p}"));
                return Err(format!(
                    "another mountd is already running on this mirror (lock {} is held{holder}); stop it first or use a different --local-dir/--state-db",
                    path.display()
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(format!("cannot lock {}: {e}", path.display()))
            }
        }
    }
    let write_pid = |f: &mut std::fs::File| -> std::io::Result<()> {
        f.set_len(0)?;
        f.rewind()?;
        writeln!(f, "{}", std::process::id())?;
        f.flush()
    };
    write_pid(&mut file)
        .map_err(|e| format!("cannot write the pid into {}: {e}", path.display()))?;
    Ok(MirrorLock { _file: file, path })
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Who holds a mirror's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// No process holds it (no daemon or `--once` run on this mirror).
    Free,
    /// A process holds it; its pid, when it wrote one.
    Held(Option<u32>),
}

/// Check the lock without waiting and without creating anything: a shared try-lock, released at once.
pub fn probe(state_db: &Path) -> std::io::Result<Holder> {
    let path = lock_path(state_db);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Holder::Free),
        Err(e) => return Err(e),
    };
    match file.try_lock_shared() {
        Ok(()) => Ok(Holder::Free),
        Err(std::fs::TryLockError::WouldBlock) => Ok(Holder::Held(read_pid(&path))),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_is_seen_with_its_pid_and_the_probe_does_not_block_a_start() {
        let d = tempfile::tempdir().unwrap();
        let db = d.path().join("state.db");
        assert_eq!(probe(&db).unwrap(), Holder::Free);
        assert!(!lock_path(&db).exists(), "probing creates nothing");
        let lock = acquire(&db).unwrap();
        assert_eq!(probe(&db).unwrap(), Holder::Held(Some(std::process::id())));
        let second = acquire(&db).err().unwrap();
        assert!(second.contains("already running"), "{second}");
        assert!(second.contains(&std::process::id().to_string()), "{second}");
        drop(lock);
        assert_eq!(probe(&db).unwrap(), Holder::Free);
        // A probe holding its shared lock for a moment does not make a starting daemon fail.
        let f = std::fs::File::open(lock_path(&db)).unwrap();
        f.lock_shared().unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(f);
        });
        acquire(&db).unwrap();
        t.join().unwrap();
    }
}
