//! In-memory file store of the reference remote: files keyed by absolute path, implied
//! directories with file counts, a global revision counter, the event feed and the live
//! subscribers of the realtime WebSocket (`/fs/ws`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// One stored file. Shared (`Arc`) so an export snapshot is cheap.
#[derive(Debug)]
pub struct FileRec {
    pub path: String,
    /// The content string as stored (base64 text when `base64`).
    pub content: String,
    pub base64: bool,
    pub content_type: String,
    /// Hex SHA-256 of the decoded bytes.
    pub hash: String,
    pub revision: u64,
    pub updated_at: String,
}

/// One change-feed event.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub event_id: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    pub origin: &'static str,
    pub timestamp: String,
}

/// A `/fs/tree` entry.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TreeEntry {
    pub path: String,
    #[serde(rename = "type")]
    pub ty: &'static str,
    pub revision: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// A `/fs/tree` page.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TreePage {
    pub path: String,
    pub entries: Vec<TreeEntry>,
    pub next_cursor: Option<String>,
    pub total_files: u64,
}

#[derive(Default)]
pub struct Store {
    files: BTreeMap<String, Arc<FileRec>>,
    /// Implied directories (every proper ancestor of a file except `/`) → number of files below.
    dirs: BTreeMap<String, u64>,
    rev: u64,
    events: Vec<Event>,
    /// Live `/fs/ws` subscribers: every new event is offered to each one's bounded queue.
    subs: Vec<Subscriber>,
    /// Numbers of the events hidden from the feed and the stream (a feed with gaps).
    hidden: HashSet<u64>,
    /// Which events appended from now on are hidden.
    hide: HideEvents,
}

/// Which events appended from now on are recorded but never served (by `/fs/events`, the tip, or
/// `/fs/ws`): their ids are used up, so the feed has gaps. JSON for `PUT /_control/hide-events`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct HideEvents {
    /// Every event of these paths (exact, absolute).
    pub paths: BTreeSet<String>,
    /// The next N events, whatever their path (counted down as they are appended).
    pub next: u64,
}

/// One live subscriber: a bounded per-connection queue, latched shut at its first overflow.
struct Subscriber {
    tx: mpsc::Sender<Event>,
    overflow: Arc<AtomicBool>,
}

/// The receiving side of a live subscription (see [`Store::subscribe`]).
pub struct Subscription {
    /// Every event appended after the subscription, in feed order. Closed (`recv` → `None`
    /// once drained) when the queue overflowed.
    pub rx: mpsc::Receiver<Event>,
    /// Set when an event could not be queued (the queue held `capacity` events): the events
    /// still in `rx` are a gap-free prefix, nothing after them will come.
    pub overflow: Arc<AtomicBool>,
}

/// Number `n` of an `evt_<n>` id.
pub fn event_num(id: &str) -> Option<u64> {
    id.strip_prefix("evt_")?.parse().ok()
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Absolute form of a path: a leading `/` is added when missing; nothing else changes.
pub fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

/// Listing prefix of a directory path: `/` for the root, otherwise `dir/` (trailing slashes trimmed).
pub fn dir_prefix(path: &str) -> String {
    let p = absolute(path);
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        "/".to_string()
    } else {
        format!("{t}/")
    }
}

/// Proper ancestors of an absolute path, excluding `/` ("/a/b/c" → "/a", "/a/b").
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.char_indices()
        .filter(|&(i, c)| c == '/' && i > 0)
        .map(move |(i, _)| &path[..i])
}

/// Levels below the listing prefix: "x" → 1, "x/y" → 2.
fn level(rel: &str) -> usize {
    rel.matches('/').count() + 1
}

/// RFC 3339 UTC timestamp with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86400) as i64);
    let rem = secs % 86400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = (z - era * 146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe as i64 + era * 400;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Standard base64 that accepts input with or without padding.
pub const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Decoded bytes of a stored content string.
pub fn decode_content(content: &str, base64: bool) -> Result<Vec<u8>, String> {
    if base64 {
        B64.decode(content.as_bytes())
            .map_err(|e| format!("invalid base64 content: {e}"))
    } else {
        Ok(content.as_bytes().to_vec())
    }
}

impl Store {
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    pub fn get(&self, path: &str) -> Option<Arc<FileRec>> {
        self.files.get(path).cloned()
    }

    fn next_rev(&mut self) -> u64 {
        self.rev += 1;
        self.rev
    }

    /// Creates or overwrites a file; `content` is the stored string, `hash` that of the decoded bytes.
    /// Returns the new revision number.
    pub fn put(
        &mut self,
        path: &str,
        content: String,
        base64: bool,
        content_type: String,
        hash: String,
    ) -> u64 {
        let path = absolute(path);
        let rev = self.next_rev();
        let existed = self.files.contains_key(&path);
        if !existed {
            for a in ancestors(&path) {
                *self.dirs.entry(a.to_string()).or_default() += 1;
            }
        }
        let rec = FileRec {
            path: path.clone(),
            content,
            base64,
            content_type,
            hash: hash.clone(),
            revision: rev,
            updated_at: rfc3339(SystemTime::now()),
        };
        self.files.insert(path.clone(), Arc::new(rec));
        let ty = if existed {
            "file.updated"
        } else {
            "file.created"
        };
        self.push_event(ty, &path, Some(format!("rev_{rev}")), Some(hash));
        rev
    }

    /// Removes a file; returns the new revision number, `None` when it did not exist (no event then).
    pub fn delete(&mut self, path: &str) -> Option<u64> {
        let path = absolute(path);
        self.files.remove(&path)?;
        for a in ancestors(&path) {
            if let Some(n) = self.dirs.get_mut(a) {
                *n -= 1;
                if *n == 0 {
                    self.dirs.remove(a);
                }
            }
        }
        let rev = self.next_rev();
        self.push_event("file.deleted", &path, Some(format!("rev_{rev}")), None);
        Some(rev)
    }

    pub fn push_event(
        &mut self,
        ty: &str,
        path: &str,
        revision: Option<String>,
        content_hash: Option<String>,
    ) {
        let id = self.events.len() + 1;
        let hidden = self.hide.paths.contains(path) || self.hide.next > 0;
        if hidden {
            self.hide.next = self.hide.next.saturating_sub(1);
            self.hidden.insert(id as u64);
        }
        let ev = Event {
            event_id: format!("evt_{id}"),
            ty: ty.to_string(),
            path: path.to_string(),
            revision,
            content_hash,
            origin: "agent_write",
            timestamp: rfc3339(SystemTime::now()),
        };
        if !self.subs.is_empty() && !hidden {
            // Offered under the store lock, so every queue sees the feed order.
            self.subs.retain(|s| match s.tx.try_send(ev.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.overflow.store(true, Ordering::SeqCst);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        }
        self.events.push(ev);
    }

    /// Subscribes to every event appended from now on, through a queue of at most `capacity`
    /// events (min 1). On overflow the subscriber is dropped and its `overflow` flag set.
    pub fn subscribe(&mut self, capacity: usize) -> Subscription {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let overflow = Arc::new(AtomicBool::new(false));
        self.subs.push(Subscriber {
            tx,
            overflow: overflow.clone(),
        });
        Subscription { rx, overflow }
    }

    /// The last `n` events served, oldest first.
    pub fn recent_events(&self, n: usize) -> Vec<Event> {
        let mut v: Vec<Event> = self
            .events
            .iter()
            .rev()
            .filter(|e| self.visible(e))
            .take(n)
            .cloned()
            .collect();
        v.reverse();
        v
    }

    /// Hide events appended from now on as `h` says (replaces the previous rule; events already
    /// hidden stay hidden).
    pub fn hide_events(&mut self, h: HideEvents) {
        self.hide = h;
    }

    /// Forget everything, as a server with in-memory storage does when it restarts: no file, no
    /// event, revisions and event ids start again from 1; live `/fs/ws` subscribers are dropped.
    pub fn reset(&mut self) {
        *self = Store::default();
    }

    fn visible(&self, e: &Event) -> bool {
        self.hidden.is_empty() || event_num(&e.event_id).is_none_or(|n| !self.hidden.contains(&n))
    }

    /// Snapshot of every file under `path` (any depth), sorted by path.
    pub fn snapshot(&self, path: &str) -> Vec<Arc<FileRec>> {
        let prefix = dir_prefix(path);
        self.files
            .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Number of files under a listing prefix.
    fn total_under(&self, prefix: &str) -> u64 {
        if prefix == "/" {
            self.files.len() as u64
        } else {
            self.dirs
                .get(&prefix[..prefix.len() - 1])
                .copied()
                .unwrap_or(0)
        }
    }

    /// Next listed path at or after `lower` (file and/or dir) within `depth` levels below `prefix`,
    /// skipping over the content of directories at the depth limit with one range jump each.
    fn next_entry(
        &self,
        prefix: &str,
        depth: usize,
        mut lower: Bound<String>,
    ) -> Option<(String, bool, bool)> {
        loop {
            let b = (lower.as_ref().map(|s| s.as_str()), Bound::Unbounded);
            let f = self
                .files
                .range::<str, _>(b)
                .next()
                .map(|(k, _)| k)
                .filter(|k| k.starts_with(prefix));
            let d = self
                .dirs
                .range::<str, _>(b)
                .next()
                .map(|(k, _)| k)
                .filter(|k| k.starts_with(prefix));
            let p = match (f, d) {
                (None, None) => return None,
                (Some(f), None) => f,
                (None, Some(d)) => d,
                (Some(f), Some(d)) => f.min(d),
            };
            let rel = &p[prefix.len()..];
            if level(rel) > depth {
                // Jump past everything below the ancestor directory at the depth limit.
                let cut = rel
                    .match_indices('/')
                    .nth(depth - 1)
                    .map(|(i, _)| i)
                    .unwrap();
                lower = Bound::Included(format!("{}0", &p[..prefix.len() + cut]));
                continue;
            }
            return Some((p.clone(), f == Some(p), d == Some(p)));
        }
    }

    /// One `/fs/tree` page. `Err` = bad cursor.
    pub fn tree(
        &self,
        path: &str,
        depth: usize,
        cursor: Option<&str>,
        page_size: usize,
    ) -> Result<TreePage, String> {
        let prefix = dir_prefix(path);
        let depth = depth.max(1);
        let page_size = page_size.max(1);
        let mut lower = Bound::Included(prefix.clone());
        if let Some(c) = cursor {
            let valid = c.starts_with(&prefix)
                && level(&c[prefix.len()..]) <= depth
                && (self.files.contains_key(c) || self.dirs.contains_key(c));
            if !valid {
                return Err(format!("unknown or stale cursor {c:?}"));
            }
            lower = Bound::Excluded(c.to_string());
        }
        let mut entries = Vec::new();
        let mut more = false;
        while let Some((p, is_file, is_dir)) = self.next_entry(&prefix, depth, lower.clone()) {
            if entries.len() >= page_size {
                more = true;
                break;
            }
            if is_file {
                let r = &self.files[&p];
                entries.push(TreeEntry {
                    path: p.clone(),
                    ty: "file",
                    revision: format!("rev_{}", r.revision),
                    content_hash: Some(r.hash.clone()),
                    size: Some(r.content.len()),
                    updated_at: Some(r.updated_at.clone()),
                });
            }
            if is_dir {
                entries.push(TreeEntry {
                    path: p.clone(),
                    ty: "dir",
                    revision: "dir".to_string(),
                    content_hash: None,
                    size: None,
                    updated_at: None,
                });
            }
            lower = Bound::Excluded(p);
        }
        let next_cursor = if more {
            entries.last().map(|e| e.path.clone())
        } else {
            None
        };
        let out_path = if prefix == "/" {
            "/".to_string()
        } else {
            prefix[..prefix.len() - 1].to_string()
        };
        Ok(TreePage {
            path: out_path,
            entries,
            next_cursor,
            total_files: self.total_under(&prefix),
        })
    }

    /// One `/fs/events` page: `(events, nextCursor)`. Hidden events are skipped (their ids are
    /// not reused): a page holds up to `limit` served events, and `nextCursor` is the id of the
    /// last event looked at while more remain.
    pub fn events(
        &self,
        cursor: Option<&str>,
        limit: usize,
        desc: bool,
    ) -> (Vec<Event>, Option<String>) {
        let n = self.events.len();
        let limit = limit.clamp(1, 1000);
        let cur = cursor
            .and_then(|c| c.strip_prefix("evt_"))
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&c| c <= n);
        // Indexes in the order they are served: events with id < cursor (or all), newest first;
        // or the events after the cursor (an unknown one: from the start), oldest first.
        let order: Box<dyn Iterator<Item = usize>> = if desc {
            let end = cur.map(|c| c.saturating_sub(1)).unwrap_or(n);
            Box::new((0..end).rev())
        } else {
            Box::new(cur.unwrap_or(0)..n)
        };
        let mut page = Vec::new();
        let mut last = None;
        let mut more = false;
        for i in order {
            if page.len() >= limit {
                more = true;
                break;
            }
            last = Some(i);
            if self.visible(&self.events[i]) {
                page.push(self.events[i].clone());
            }
        }
        let next = match (more, last) {
            (true, Some(i)) => Some(self.events[i].event_id.clone()),
            _ => None,
        };
        (page, next)
    }
}
