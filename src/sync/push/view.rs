//! The push side as the writable FUSE view sees it ([`LocalChanges`]): changed paths go to the
//! settler ([`super::watch`]), `fsync` records at once (and may wait for the remote's answer), and
//! the view learns when the token may not write.
//!
//! The view calls from its own threads (never the runtime's), so a synchronous call waits on the
//! runtime with `Handle::block_on`.
use super::watch::Touches;
use crate::store::change::{LocalChanges, Touch};
use crate::store::db::IssueKind;
use crate::sync::engine::Engine;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::Notify;

/// How long `fsync` waits to record a change itself before it leaves it to the settler.
const RECORD_WAIT: Duration = Duration::from_secs(2);
/// How long `fsync` waits for the remote's answer with `--fsync-push`.
const PUSH_WAIT: Duration = Duration::from_secs(120);

/// The view's [`LocalChanges`] over an engine.
pub struct ViewChanges {
    engine: Engine,
    touches: Touches,
    pushed: Arc<Notify>,
    rt: Handle,
}

impl ViewChanges {
    /// Changes go to `touches`; `pushed` wakes the pusher. Must be called on the runtime.
    pub fn new(engine: Engine, touches: Touches, pushed: Arc<Notify>) -> ViewChanges {
        ViewChanges {
            engine,
            touches,
            pushed,
            rt: Handle::current(),
        }
    }

    /// Note a refusal recorded by an earlier run with this token (the view starts refusing at once).
    pub async fn load_refusal(&self) {
        let token = self.engine.config().push.token_id.clone();
        let issues = self.engine.read(|st| st.write_issues()).await;
        if let Ok(issues) = issues {
            if let Some(i) = issues
                .iter()
                .find(|i| i.kind == IssueKind::Denied && i.token == token)
            {
                self.engine.push_state().denied = Some(i.detail.clone());
            }
        }
    }

    /// Wait until the remote answered `rels` (none pending), or say why not.
    async fn wait_pushed(&self, rels: &[String]) -> Result<(), String> {
        let deadline = Instant::now() + PUSH_WAIT;
        loop {
            self.pushed.notify_one();
            let want = rels.to_vec();
            let left = self
                .engine
                .read(move |st| {
                    let mut left = Vec::new();
                    for r in &want {
                        if let Some(i) = st.write_issue(r)? {
                            return Ok(Err(format!("{r}: {}", i.detail)));
                        }
                        if let Some(o) = st.outgoing(r)? {
                            left.push((r.clone(), o.last_error));
                        }
                    }
                    Ok(Ok(left))
                })
                .await
                .map_err(|e| e.to_string())??;
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let why = left
                    .iter()
                    .find_map(|(r, e)| e.as_ref().map(|e| format!("{r}: {e}")))
                    .unwrap_or_else(|| format!("{} not pushed within {PUSH_WAIT:?}", left[0].0));
                return Err(why);
            }
            if let Some((r, Some(e))) = left.iter().find(|(_, e)| e.is_some()) {
                return Err(format!("{r}: {e}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl LocalChanges for ViewChanges {
    fn touched(&self, rel: &str, how: Touch) {
        self.touches.touched(rel, how);
    }

    fn record_now(&self, rels: Vec<String>, wait_push: bool) -> Result<(), String> {
        self.rt.block_on(async {
            // Recording waits for the pull's lock; the pull may itself wait for this view (the
            // kernel writing back a file it is about to replace): past a moment the paths are left
            // to the settler instead of waiting on (the file is durable on disk either way).
            let d = match tokio::time::timeout(RECORD_WAIT, self.engine.record_local(rels.clone()))
                .await
            {
                Ok(d) => d.map_err(|e| e.to_string())?,
                Err(_) => {
                    for r in &rels {
                        self.touches.touched(r, Touch::Settled);
                    }
                    if wait_push {
                        return Err(format!(
                            "the sync held the mirror for over {RECORD_WAIT:?}: recorded shortly, not pushed yet"
                        ));
                    }
                    return Ok(());
                }
            };
            if d.changes() > 0 || d.pending > 0 {
                self.pushed.notify_one();
            }
            if wait_push {
                self.wait_pushed(&rels).await?;
            }
            Ok(())
        })
    }

    fn refused(&self) -> Option<String> {
        self.engine.push_state().denied.clone()
    }
}
