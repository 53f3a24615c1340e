//! `mountd conflicts` (list, resolve) and `mountd outbox` (list, allow-deletes): the operator's side of
//! two-way sync. They work on the state database whether or not a service runs: settling a conflict
//! only moves files in the mirror directory (the running service's watcher, or the next run's scan,
//! records what that changes) and removes the conflict's row.
use crate::cli::args::{
    ConflictsAction, ConflictsArgs, Keep, MirrorArgs, OutboxAction, OutboxArgs,
};
use crate::cli::exit;
use crate::cli::safety::abs_path;
use crate::store::db::{Conflict, MetaKey, State};
use std::path::{Path, PathBuf};

/// The state database and the mirror root named by `m`.
fn open(m: &MirrorArgs, cmd: &str) -> Result<(State, PathBuf), i32> {
    let db = m.state_db().map_err(|e| {
        eprintln!("mountd {cmd}: {e}");
        exit::USAGE
    })?;
    let st = State::open_existing(&db).map_err(|e| {
        eprintln!("mountd {cmd}: {e}");
        exit::USAGE
    })?;
    let root = match (&m.local_dir, st.meta(MetaKey::IdentityLocalDir)) {
        (Some(d), _) => abs_path(d),
        (None, Ok(Some(d))) => PathBuf::from(d),
        _ => {
            eprintln!(
                "mountd {cmd}: the state DB does not name its mirror directory: pass --local-dir"
            );
            return Err(exit::USAGE);
        }
    };
    Ok((st, root))
}

/// `mountd conflicts [resolve PATH --keep local|remote]`.
pub fn conflicts(a: &ConflictsArgs) -> i32 {
    let (mut st, root) = match open(&a.mirror, "conflicts") {
        Ok(v) => v,
        Err(code) => return code,
    };
    let list = match st.conflicts() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mountd conflicts: {e}");
            return exit::FAILED;
        }
    };
    match &a.action {
        None => {
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).expect("conflicts serialize")
                );
            } else if list.is_empty() {
                println!("no conflicts");
            } else {
                for c in &list {
                    println!(
                        "{}  {}  ({}; local version made on {}, remote {})\n    local copy: {}",
                        c.id,
                        c.path,
                        c.reason,
                        c.base_revision.as_deref().unwrap_or("(new file)"),
                        c.remote_revision.as_deref().unwrap_or("(unknown)"),
                        root.join(&c.copy).display()
                    );
                }
                println!("settle one with: mountd conflicts resolve PATH --keep local|remote");
            }
            exit::OK
        }
        Some(ConflictsAction::Resolve { path, keep }) => {
            let want = path.trim_start_matches('/');
            let found = list
                .iter()
                .filter(|c| c.path == want || c.id.to_string() == *path)
                .max_by_key(|c| c.id)
                .cloned();
            let Some(c) = found else {
                eprintln!(
                    "mountd conflicts: no conflict for {path:?} (`mountd conflicts` lists them)"
                );
                return exit::USAGE;
            };
            match resolve(&mut st, &root, &c, *keep) {
                Ok(msg) => {
                    println!("mountd conflicts: {msg}");
                    exit::OK
                }
                Err(e) => {
                    eprintln!("mountd conflicts: {e}");
                    exit::FAILED
                }
            }
        }
    }
}

/// Settle `c`: its local copy goes back to its path (`Keep::Local`) or away (`Keep::Remote`), and its
/// row goes.
fn resolve(st: &mut State, root: &Path, c: &Conflict, keep: Keep) -> Result<String, String> {
    let copy = root.join(&c.copy);
    let msg = match keep {
        Keep::Local => {
            let target = root.join(&c.path);
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            std::fs::rename(&copy, &target).map_err(|e| {
                format!(
                    "cannot put {} back at {}: {e}",
                    copy.display(),
                    target.display()
                )
            })?;
            format!(
                "the local version is back at {}; it is pushed on top of the remote's current revision (by the running service, or by the next run)",
                target.display()
            )
        }
        Keep::Remote => {
            match std::fs::remove_file(&copy) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot remove {}: {e}", copy.display())),
            }
            format!(
                "kept the remote version of {}; the local copy is gone",
                c.path
            )
        }
    };
    let mut b = st.batch().map_err(|e| e.to_string())?;
    b.conflict_remove(c.id).map_err(|e| e.to_string())?;
    b.commit().map_err(|e| e.to_string())?;
    Ok(msg)
}

/// `mountd outbox [allow-deletes]`.
pub fn outbox(a: &OutboxArgs) -> i32 {
    let (mut st, _) = match open(&a.mirror, "outbox") {
        Ok(v) => v,
        Err(code) => return code,
    };
    match a.action {
        None => match st.outbox() {
            Ok(rows) => {
                println!("{} local change(s) pending", rows.len());
                for r in rows {
                    println!(
                        "  {:?} {}{}",
                        r.op,
                        r.path,
                        r.held
                            .or(r.last_error)
                            .map_or(String::new(), |w| format!(": {w}"))
                    );
                }
                exit::OK
            }
            Err(e) => {
                eprintln!("mountd outbox: {e}");
                exit::FAILED
            }
        },
        Some(OutboxAction::AllowDeletes) => {
            let held = st.outbox_summary().map(|s| s.held).unwrap_or(0);
            let r = st.batch().and_then(|mut b| {
                b.set_meta(MetaKey::AllowDeletes, "1")?;
                b.commit().map(|_| ())
            });
            match r {
                Ok(()) => {
                    println!("mountd outbox: {held} held local delete(s) allowed: pushed by the running service at its next push, or by the next run");
                    exit::OK
                }
                Err(e) => {
                    eprintln!("mountd outbox: {e}");
                    exit::FAILED
                }
            }
        }
    }
}
