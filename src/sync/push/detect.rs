//! Local changes of the plain-directory mirror, found by comparing the disk with the records and
//! recorded in the outbox.
//!
//! A file whose identity (inode, change time, size) is the recorded one is unchanged without reading
//! it; otherwise its SHA-256 decides (a touched file is not a change). A file without a record is
//! new, unless mountd itself is writing it (the `pending` journal). A record without a file is a
//! delete. Directories are walked one at a time, each under the engine's exclusive lock and in one
//! transaction, so the pull never writes a path while it is being compared. Empty directories stay
//! local (the remote has none). What the remote cannot hold (symlinks, devices, FIFOs, sockets, a
//! second hard link to a file already seen, names that are not UTF-8 or that mountd could not mirror
//! back) is noted once as a write issue and never pushed.
use crate::store::db::{FileRecord, IssueKind, Kind, LocalVersion, OpKind, State};
use crate::store::mirror::key_of;
use crate::store::paths::{self, RESERVED_DIR};
use crate::store::LocalStore;
use crate::sync::engine::{Engine, SyncError};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::sync::Arc;

/// What a detection pass recorded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Detected {
    pub puts: u64,
    pub deletes: u64,
    /// Paths newly noted as impossible to push.
    pub unsupported: u64,
    /// Changed files whose change was already pending (recorded by the pull's guard, say, which wakes
    /// no pusher): the pusher must still be woken for them.
    pub pending: u64,
    /// Files still settling, to look at again (see [`Engine::record_local_settled`]).
    pub deferred: Vec<String>,
}

impl Detected {
    pub fn changes(&self) -> u64 {
        self.puts + self.deletes
    }

    fn add(&mut self, o: &Detected) {
        self.puts += o.puts;
        self.deletes += o.deletes;
        self.unsupported += o.unsupported;
        self.pending += o.pending;
        self.deferred.extend(o.deferred.iter().cloned());
    }
}

/// Paths (files, or directories each visited without their subdirectories) compared per transaction.
const PATHS_PER_PASS: usize = 256;

/// Hard-linked files met so far in a pass: (device, inode) → the first path.
type Links = HashMap<(u64, u64), String>;

impl Engine {
    /// Compare the local tree at or below each of `rels` ("" = the whole mirror) with the records and
    /// record what changed in the outbox. Nothing in pull-only mode.
    pub async fn record_local(&self, rels: Vec<String>) -> Result<Detected, SyncError> {
        self.record_local_settled(rels, None).await
    }

    /// [`Engine::record_local`] for the watcher: a file met while walking a directory that changed
    /// within `settle` (still being written, most likely: a directory moved in or created with files
    /// being filled) is not recorded now but returned in [`Detected::deferred`], to be looked at once
    /// it settled; the paths the watcher names are recorded as they are.
    pub async fn record_local_settled(
        &self,
        rels: Vec<String>,
        settle: Option<std::time::Duration>,
    ) -> Result<Detected, SyncError> {
        let mut total = Detected::default();
        if !self.config().push.two_way() {
            return Ok(total);
        }
        let mut stack = rels;
        stack.sort();
        stack.dedup();
        let mut links = Links::new();
        while !stack.is_empty() {
            // Up to a batch of paths (a burst of new files, say) per lock and transaction.
            let batch = stack.split_off(stack.len().saturating_sub(PATHS_PER_PASS));
            let _exclusive = self.exclusive().await;
            let store = self.store().clone();
            let root = self.config().remote_root.clone();
            let mut l = std::mem::take(&mut links);
            let (subdirs, d, l) = self
                .db()
                .run(move |st: &mut State| -> Result<_, SyncError> {
                    let outbox_empty = st.outbox_is_empty()?;
                    let mut pass = Pass {
                        outbox_empty,
                        settle,
                        deferred: Vec::new(),
                        st,
                        store: &store,
                        root: &root,
                        links: &mut l,
                        out: Vec::new(),
                    };
                    let mut subdirs = Vec::new();
                    for rel in &batch {
                        subdirs.extend(pass.visit(rel)?);
                    }
                    let d = pass.commit()?;
                    Ok((subdirs, d, l))
                })
                .await?;
            links = l;
            total.add(&d);
            stack.extend(subdirs);
        }
        if total.changes() > 0 {
            tracing::info!(
                puts = total.puts,
                deletes = total.deletes,
                "local changes recorded in the outbox"
            );
        }
        Ok(total)
    }
}

/// One decision of a pass.
enum Note {
    Put(LocalVersion),
    Delete {
        rel: String,
        base: Option<String>,
    },
    Unchanged {
        rel: String,
        stat: Option<String>,
    },
    Unsupported {
        rel: String,
        detail: String,
        stat: Option<String>,
    },
}

/// One directory (or file) compared on the database thread.
struct Pass<'a> {
    /// Nothing pending: an unchanged file needs no look at the outbox.
    outbox_empty: bool,
    /// Files met in a directory walk that changed more recently than this are deferred.
    settle: Option<std::time::Duration>,
    deferred: Vec<String>,
    st: &'a mut State,
    store: &'a Arc<LocalStore>,
    root: &'a str,
    links: &'a mut Links,
    out: Vec<Note>,
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn kind_name(ft: &std::fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

impl Pass<'_> {
    fn local(&self, rel: &str, e: std::io::Error) -> SyncError {
        SyncError::local(&self.store.abs(rel), &e)
    }

    /// Compare `rel` with its records; returns the subdirectories still to visit.
    fn visit(&mut self, rel: &str) -> Result<Vec<String>, SyncError> {
        if rel == RESERVED_DIR || rel.starts_with(&format!("{RESERVED_DIR}/")) {
            return Ok(Vec::new());
        }
        let meta = match self.store.lstat(rel) {
            Ok(m) => m,
            Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => {
                // The file system holds it, but no path to it can be spelled (over PATH_MAX).
                self.unsupported(
                    rel,
                    "its path is longer than the system allows (PATH_MAX)",
                    None,
                )?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(self.local(rel, e)),
        };
        match meta {
            None => {
                self.gone(rel)?;
                Ok(Vec::new())
            }
            Some(m) if m.is_dir() => self.dir(rel),
            Some(m) if m.is_file() => {
                let rec = self.st.file(rel)?;
                self.file(rel, &m, rec.as_ref())?;
                Ok(Vec::new())
            }
            Some(m) => {
                self.unsupported(rel, kind_name(&m.file_type()), None)?;
                Ok(Vec::new())
            }
        }
    }

    /// Every recorded file at or below `rel` is gone locally; a new file recorded but never pushed
    /// (a temp file renamed away, a lock file deleted) has nothing left to push.
    fn gone(&mut self, rel: &str) -> Result<(), SyncError> {
        for (path, base) in self.st.files_under(rel)? {
            self.out.push(Note::Delete { rel: path, base });
        }
        if !self.outbox_empty {
            for path in self.st.unrecorded_puts_under(rel)? {
                self.out.push(Note::Unchanged {
                    rel: path,
                    stat: None,
                });
            }
        }
        Ok(())
    }

    fn dir(&mut self, rel: &str) -> Result<Vec<String>, SyncError> {
        if !rel.is_empty() {
            // A file replaced by a directory: the file is deleted, what is inside is new.
            if let Some(r) = self.st.file(rel)?.filter(|r| r.kind == Kind::File) {
                self.out.push(Note::Delete {
                    rel: rel.to_string(),
                    base: r.revision,
                });
            }
        }
        let records: HashMap<String, FileRecord> = self.st.files_in(rel)?.into_iter().collect();
        let mut on_disk = HashSet::new();
        let mut subdirs = Vec::new();
        let entries = std::fs::read_dir(self.store.abs(rel)).map_err(|e| self.local(rel, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| self.local(rel, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                let lossy = join(rel, &entry.file_name().to_string_lossy());
                self.unsupported(&lossy, "its name is not UTF-8", None)?;
                continue;
            };
            if rel.is_empty() && name == RESERVED_DIR {
                continue;
            }
            let child = join(rel, &name);
            let ft = entry.file_type().map_err(|e| self.local(&child, e))?;
            on_disk.insert(name.clone());
            let rec = records.get(&name);
            if ft.is_dir() {
                subdirs.push(child);
            } else if ft.is_file() {
                if let Some(r) = rec.filter(|r| r.kind == Kind::Dir) {
                    // A directory replaced by a file.
                    let _ = r;
                    self.gone(&child)?;
                }
                let m = entry.metadata().map_err(|e| self.local(&child, e))?;
                if self.settling(&m) {
                    self.deferred.push(child);
                    continue;
                }
                self.file(&child, &m, rec.filter(|r| r.kind == Kind::File))?;
            } else {
                self.unsupported(&child, kind_name(&ft), None)?;
            }
        }
        for (name, rec) in &records {
            if on_disk.contains(name) {
                continue;
            }
            let child = join(rel, name);
            match rec.kind {
                Kind::File => self.out.push(Note::Delete {
                    rel: child,
                    base: rec.revision.clone(),
                }),
                Kind::Dir => self.gone(&child)?,
            }
        }
        Ok(subdirs)
    }

    /// The file changed within the settle delay (its change time is that recent).
    fn settling(&self, m: &std::fs::Metadata) -> bool {
        let Some(settle) = self.settle else {
            return false;
        };
        let changed = std::time::UNIX_EPOCH
            + std::time::Duration::new(m.ctime().max(0) as u64, m.ctime_nsec().max(0) as u32);
        std::time::SystemTime::now()
            .duration_since(changed)
            .is_ok_and(|age| age < settle)
    }

    fn file(
        &mut self,
        rel: &str,
        m: &std::fs::Metadata,
        rec: Option<&FileRecord>,
    ) -> Result<(), SyncError> {
        let rec = rec.filter(|r| r.kind == Kind::File);
        let stat = key_of(m);
        if let Some(r) = rec {
            if r.local_stat.as_deref() == Some(stat.as_str()) {
                if !self.outbox_empty && self.st.outgoing(rel)?.is_some() {
                    self.out.push(Note::Unchanged {
                        rel: rel.to_string(),
                        stat: None,
                    });
                }
                return Ok(());
            }
        } else if self.st.is_pending(rel)? {
            // mountd is writing it (or a killed run was): not the user's.
            return Ok(());
        }
        // Only names the pull could mirror back are pushed.
        let remote = paths::to_remote(self.root, rel);
        if let Err(why) = paths::to_local(self.root, &remote) {
            return self.unsupported(
                rel,
                &format!("its name cannot be mirrored: {why}"),
                Some(stat),
            );
        }
        if let Some(i) = self.st.write_issue(rel)? {
            if i.kind != IssueKind::Denied && i.local_stat.as_deref() == Some(stat.as_str()) {
                return Ok(());
            }
        }
        if m.nlink() > 1 {
            let key = (m.dev(), m.ino());
            match self.links.get(&key) {
                Some(first) if first != rel => {
                    let detail = format!("a second hard link to {first}");
                    return self.unsupported(rel, &detail, Some(stat));
                }
                _ => {
                    self.links.insert(key, rel.to_string());
                }
            }
        }
        let hash = self.store.hash(rel).map_err(|e| self.local(rel, e))?;
        if let Some(r) = rec {
            if r.content_hash.as_deref() == Some(hash.as_str()) {
                self.out.push(Note::Unchanged {
                    rel: rel.to_string(),
                    stat: Some(stat),
                });
                return Ok(());
            }
        }
        self.out.push(Note::Put(LocalVersion {
            rel: rel.to_string(),
            base: rec.and_then(|r| r.revision.clone()),
            hash,
            size: m.len(),
            stat: Some(stat),
        }));
        Ok(())
    }

    fn unsupported(
        &mut self,
        rel: &str,
        detail: &str,
        stat: Option<String>,
    ) -> Result<(), SyncError> {
        self.out.push(Note::Unsupported {
            rel: rel.to_string(),
            detail: detail.to_string(),
            stat,
        });
        Ok(())
    }

    /// Record the pass's decisions in one transaction.
    fn commit(self) -> Result<Detected, SyncError> {
        let mut d = Detected {
            deferred: self.deferred,
            ..Default::default()
        };
        if self.out.is_empty() {
            return Ok(d);
        }
        // What is already pending or noted, to count (and log) only what is new.
        let mut known_issue = HashSet::new();
        let mut pending = HashMap::new();
        for n in &self.out {
            match n {
                Note::Unsupported { rel, .. } => {
                    if self.st.write_issue(rel)?.is_some() {
                        known_issue.insert(rel.clone());
                    }
                }
                Note::Put(LocalVersion { rel, .. })
                | Note::Delete { rel, .. }
                | Note::Unchanged { rel, .. } => {
                    if let Some(o) = self.st.outgoing(rel)? {
                        pending.insert(rel.clone(), o);
                    }
                }
            }
        }
        let mut b = self.st.batch()?;
        for n in self.out {
            match n {
                Note::Put(v) => {
                    let same = pending.get(&v.rel).is_some_and(|o| {
                        o.op == OpKind::Put && o.content_hash.as_deref() == Some(v.hash.as_str())
                    });
                    b.outbox_put(&v)?;
                    if same {
                        d.pending += 1;
                    } else {
                        d.puts += 1;
                    }
                }
                Note::Delete { rel, base } => {
                    if pending.get(&rel).is_none_or(|o| o.op != OpKind::Delete) {
                        d.deletes += 1;
                    }
                    b.outbox_delete(&rel, base.as_deref())?;
                    b.write_issue_clear(&rel)?;
                }
                Note::Unchanged { rel, stat } => {
                    if let Some(s) = stat {
                        b.set_local_stat(&rel, &s)?;
                    }
                    if pending.contains_key(&rel) {
                        // Changed back to the recorded bytes (or restored after a delete).
                        b.outbox_remove(&rel)?;
                    }
                }
                Note::Unsupported { rel, detail, stat } => {
                    if !known_issue.contains(&rel) {
                        d.unsupported += 1;
                        tracing::warn!(path = %rel, reason = %detail, "not pushed: the remote cannot hold it");
                    }
                    b.write_issue_set(
                        &rel,
                        IssueKind::Unsupported,
                        &detail,
                        stat.as_deref(),
                        None,
                    )?;
                }
            }
        }
        b.commit()?;
        Ok(d)
    }
}
