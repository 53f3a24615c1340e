//! "Complete" is checked against the server, not assumed. The events feed can miss changes (a gap, a
//! stream opened without a cursor, a server that restarted or was restored), so before a run reports
//! complete — and on every safety poll of the service — one `GET /fs/tree` of the mirrored root
//! (depth 1) compares the server's own count of files under it (`totalFiles`) with what the mirror
//! accounts for: its file records, plus the files it knows of but could not mirror (quarantined,
//! hostile paths). Below a directory that could not be listed the mirror cannot know: there only an
//! excess of local files is a certain mismatch.
//!
//! A mismatch is first given a few catch-up-and-recheck rounds (a server that changes while it is
//! checked), then the mirror is listed again (metadata only, hash-skip for bodies), which heals what
//! the feed missed. A server that omits `totalFiles` is not checked (said once in the log). A lost
//! update changes no count: the periodic audit (`--audit-interval`) is what heals it.
//!
//! **A rewound or reset server** — the stored cursor unknown and the feed replaying from its start,
//! a known path's revision going backwards, or a count far below the mirror's — is named (the
//! [`MetaKey::ServerRewound`] meta value): the listing that follows deletes no local file until the
//! operator allows it (`--allow-mass-delete`), and the run fails with [`SyncError::ServerRewound`].
use crate::metrics::Metrics;
use crate::remote::types::TreePage;
use crate::store::db::{event_seq, Kind, MetaKey, State, StateError};
use crate::store::paths;
use crate::sync::engine::{now_rfc3339, Engine, SyncError};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};

/// Catch-up-and-recheck rounds for a server that changes while it is checked, before the listing.
pub const RECHECK_ROUNDS: u32 = 3;
/// Consecutive service passes that may put off the listing while the server keeps changing through
/// every round (its count moves, so a mismatch is no evidence of a gap) before it is listed anyway.
pub const BUSY_DEFERRALS: u32 = 3;
/// A server whose count fell by at least this many files (and below the mass-delete ratio of the
/// mirror's) is named rewound, as the mass-deletion guard would hold such a sweep anyway.
const FAR_BELOW_MIN: u64 = 20;

/// What a count check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The server's count is what the mirror accounts for.
    #[default]
    Match,
    /// It is not: the feed missed something.
    Mismatch,
    /// Directories that could not be listed hide part of the tree, and nothing is certainly wrong.
    Inconclusive,
    /// The server does not send `totalFiles` (an older version).
    Unsupported,
}

/// The last count check, as `mountd status` and the metrics show it ([`MetaKey::CountCheck`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CountCheck {
    /// When (RFC 3339).
    pub at: String,
    pub verdict: Verdict,
    /// The server's `totalFiles` for the mirrored root.
    pub server: Option<u64>,
    /// The files the mirror accounts for (records, quarantined and hostile paths).
    pub mirror: u64,
    /// What followed: empty, "listed again", "still differs after a full listing"...
    #[serde(skip_serializing_if = "String::is_empty")]
    pub action: String,
    /// Why the server is believed rewound, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewound: Option<String>,
}

impl CountCheck {
    pub fn parse(json: &str) -> Option<CountCheck> {
        serde_json::from_str(json).ok()
    }

    /// One line for logs and `mountd status`.
    pub fn describe(&self) -> String {
        let server = self
            .server
            .map_or_else(|| "?".to_string(), |n| n.to_string());
        let mut s = match self.verdict {
            Verdict::Match => format!("match: {} files", self.mirror),
            Verdict::Mismatch => format!("mismatch: server {server} files, mirror {}", self.mirror),
            Verdict::Inconclusive => format!(
                "inconclusive (directories could not be listed): server {server}, mirror {}",
                self.mirror
            ),
            Verdict::Unsupported => "not checked: the server sends no totalFiles".to_string(),
        };
        if !self.action.is_empty() {
            s.push_str(&format!("; {}", self.action));
        }
        if let Some(r) = &self.rewound {
            s.push_str(&format!("; {r}"));
        }
        s
    }
}

/// The server omitting `totalFiles` is said once per process.
static SAID_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// The files the mirror accounts for: outside directories that could not be listed, and below them.
#[derive(Debug, Default)]
struct Accounted {
    outside: u64,
    unlisted_dirs: usize,
}

/// Count what the mirror accounts for under `root` (remote): file records, plus quarantined paths
/// without a file record (a file never fetched, a hostile path) — the server counts those too.
/// Directories that could not be listed, and what is below them, are set apart.
fn accounted(st: &State, root: &str) -> Result<Accounted, StateError> {
    let unlisted = st.unlisted()?;
    let mut below_unlisted = 0;
    for d in &unlisted {
        if let Ok(rel) = paths::to_local(root, &d.path) {
            below_unlisted += st.count_files_under(&rel)?;
        }
    }
    let quarantined = st.quarantined()?;
    // A directory whose path cannot be mirrored is set apart like one that could not be listed: the
    // mirror cannot know what is below it (a listing stops at its depth limit).
    let hostile_dirs: Vec<&str> = quarantined
        .iter()
        .filter(|q| q.class == crate::sync::engine::HOSTILE_DIR && paths::is_under(root, &q.path))
        .map(|q| q.path.as_str())
        .collect();
    let under_unlisted = |remote: &str| {
        unlisted.iter().any(|d| paths::is_under(&d.path, remote))
            || hostile_dirs
                .iter()
                .any(|d| *d == remote || paths::is_under(d, remote))
    };
    let mut quarantined_only = 0;
    for q in &quarantined {
        if !paths::is_under(root, &q.path) || under_unlisted(&q.path) {
            continue;
        }
        let recorded = match paths::to_local(root, &q.path) {
            Ok(rel) => st.file(&rel)?.is_some_and(|r| r.kind == Kind::File),
            Err(_) => false,
        };
        if !recorded {
            quarantined_only += 1;
        }
    }
    Ok(Accounted {
        outside: st.tracked_files()? - below_unlisted + quarantined_only,
        unlisted_dirs: unlisted.len() + hostile_dirs.len(),
    })
}

/// A known file listed with an older revision than its record (both `rev_<n>`, else they are not
/// comparable): the server was rewound (restored from a backup, or restarted counting from 1).
pub(crate) fn went_back(
    remote: &str,
    recorded: Option<&str>,
    listed: Option<&str>,
) -> Option<String> {
    let (recorded, listed) = (recorded?, listed?);
    (event_seq(listed)? < event_seq(recorded)?)
        .then(|| format!("the server was rewound: {remote} went back from {recorded} to {listed}"))
}

/// The first file of a listing page whose revision went backwards against its record.
fn page_went_back(st: &State, root: &str, page: &TreePage) -> Result<Option<String>, StateError> {
    for e in page.entries.iter().filter(|e| !e.is_dir()) {
        let Ok(rel) = paths::to_local(root, &e.path) else {
            continue;
        };
        let Some(rec) = st.file(&rel)? else { continue };
        if let Some(why) = went_back(&e.path, rec.revision.as_deref(), e.revision.as_deref()) {
            return Ok(Some(why));
        }
    }
    Ok(None)
}

/// A count that fell far below the mirror's (as the mass-deletion guard measures it).
fn far_below(server: u64, mirror: u64, ratio: f64) -> bool {
    mirror.saturating_sub(server) >= FAR_BELOW_MIN && (server as f64) < ratio * mirror as f64
}

impl Engine {
    /// One count check: a depth-1 listing of the mirrored root, its `totalFiles` against what the
    /// mirror accounts for (and the revisions of the files it lists against their records).
    pub async fn count_check(&self) -> Result<CountCheck, SyncError> {
        let root = self.config().remote_root.clone();
        let page = self.remote().tree(&root, 1, None).await?;
        self.progress().unit();
        let total = page.total_files;
        let r = root.clone();
        let (acc, rewound) = self
            .read(move |st| Ok((accounted(st, &r)?, page_went_back(st, &r, &page)?)))
            .await?;
        let mut check = CountCheck {
            at: now_rfc3339(),
            server: total,
            mirror: acc.outside,
            rewound,
            ..Default::default()
        };
        check.verdict = match check.server {
            None => Verdict::Unsupported,
            Some(n) if n == acc.outside => Verdict::Match,
            Some(n) if acc.unlisted_dirs > 0 && n >= acc.outside => Verdict::Inconclusive,
            Some(_) => Verdict::Mismatch,
        };
        if check.rewound.is_none() {
            if let Some(n) = check.server {
                if far_below(n, acc.outside, self.config().mass_delete_ratio) {
                    check.rewound = Some(format!(
                        "the server's count fell far below the mirror's ({n} files against {})",
                        acc.outside
                    ));
                }
            }
        }
        Ok(check)
    }

    /// Before "complete" (and on every safety poll): check the count; on a mismatch catch up and
    /// check again (at most [`RECHECK_ROUNDS`] times, and only while the catch-up applies events),
    /// then list the mirror again in this run. A rewound server is named before the listing, whose
    /// sweep then deletes nothing without `--allow-mass-delete`. With `defer_busy` (the service's
    /// passes: one round each), a server that kept changing is checked again at the next pass
    /// instead (at most [`BUSY_DEFERRALS`] passes in a row). Returns the last check.
    pub async fn confirm_complete(&self, defer_busy: bool) -> Result<CountCheck, SyncError> {
        let feed = self.read(|st| st.has_feed()).await?;
        // The service checks again at its next pass: one round there.
        let rounds = if defer_busy { 1 } else { RECHECK_ROUNDS };
        let mut round = 0;
        let mut busy = false;
        let first = loop {
            let check = self.count_check().await?;
            match check.verdict {
                Verdict::Match if check.rewound.is_none() => return self.record_check(check).await,
                Verdict::Inconclusive | Verdict::Unsupported => {
                    return self.record_check(check).await
                }
                _ => {}
            }
            if check.rewound.is_some() || !feed {
                break check;
            }
            if round >= rounds {
                busy = true;
                break check;
            }
            round += 1;
            // The server may have changed since the feed was read: catch up, then count again.
            if self.sync_pass().await? == 0 {
                break check;
            }
        };
        if busy && defer_busy && self.defer_busy_listing(BUSY_DEFERRALS) {
            tracing::info!(server = ?first.server, mirror = first.mirror,
                "the server kept changing while its count was checked; checking again at the next pass");
            return self
                .record_check(CountCheck {
                    verdict: Verdict::Inconclusive,
                    action: "the server kept changing; checked again at the next pass".into(),
                    ..first
                })
                .await;
        }
        Metrics::global().count_mismatch();
        if let Some(why) = &first.rewound {
            tracing::warn!(cause = %why, server = ?first.server, mirror = first.mirror,
                "the server looks rewound or reset; listing it again, keeping every local file it no longer has");
            self.note_rewound(why).await?;
        } else {
            tracing::warn!(server = ?first.server, mirror = first.mirror,
                "the mirror does not match the server's count of files (the events feed missed changes); listing again");
        }
        self.record_check(CountCheck {
            action: "listing again".into(),
            ..first
        })
        .await?;
        self.audit().await?;
        if feed {
            self.sync_pass().await?;
        }
        let mut after = self.count_check().await?;
        after.rewound = None;
        after.action = "after a full listing".into();
        if after.verdict == Verdict::Mismatch {
            // The listing is the authority; a count that still differs is the server's own
            // inconsistency (or a change in between), not a reason to loop.
            tracing::warn!(server = ?after.server, mirror = after.mirror,
                "the server's count still differs after a full listing (it changed meanwhile, or counts differently from its listing); checked again at the next pass");
        }
        self.record_check(after).await
    }

    /// The server's history restarted or was rewound: remember why (the first cause seen) until a
    /// full listing completes.
    pub async fn note_rewound(&self, why: &str) -> Result<(), SyncError> {
        let why = why.to_string();
        self.db()
            .run(move |st: &mut State| -> Result<(), SyncError> {
                if st
                    .meta(MetaKey::ServerRewound)?
                    .is_some_and(|c| !c.is_empty())
                {
                    return Ok(());
                }
                let mut b = st.batch()?;
                b.set_meta(MetaKey::ServerRewound, &why)?;
                b.commit()?;
                Ok(())
            })
            .await
    }

    /// Store the check for `mountd status` and the metrics.
    async fn record_check(&self, check: CountCheck) -> Result<CountCheck, SyncError> {
        match check.verdict {
            Verdict::Unsupported => {
                if !SAID_UNSUPPORTED.swap(true, Ordering::Relaxed) {
                    tracing::info!("the server sends no totalFiles (an older version): the mirror's file count is not checked against it");
                }
            }
            Verdict::Inconclusive => tracing::info!(check = %check.describe(), "count check"),
            _ => tracing::debug!(check = %check.describe(), "count check"),
        }
        if check.verdict == Verdict::Match {
            self.defer_busy_listing(0);
        }
        Metrics::global().set_count_check(check.server, check.mirror, check.verdict);
        let json = serde_json::to_string(&check)
            .map_err(|e| SyncError::Internal(format!("count check: {e}")))?;
        self.set_meta(vec![(MetaKey::CountCheck, json)]).await?;
        Ok(check)
    }
}
