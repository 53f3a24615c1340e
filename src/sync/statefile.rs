//! The outer-wrapper contract: a small JSON file whose mtime moves on every progress unit and whose
//! content is rewritten atomically at each checkpoint — and never while no progress is made.
//! Its cost does not depend on the tree size (a few hundred bytes, one `utimensat` per touch).
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct StateFileContent {
    pub phase: String,
    pub mount_kind: String,
    pub files_synced: u64,
    pub files_total: Option<u64>,
    pub bytes: u64,
    pub current_path: String,
    pub last_error: Option<String>,
    /// Two-way sync: local changes not yet on the remote, unsettled conflicts, and local files the
    /// remote will not take as they are (write-denied, too large).
    pub pending_changes: u64,
    pub conflicts: u64,
    pub not_pushed: u64,
    pub pid: u32,
    pub updated_at: String,
}

pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// Create (or replace) the state file with its first content. Called before any network request.
    pub fn create(path: &Path, content: &StateFileContent) -> std::io::Result<StateFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let sf = StateFile {
            path: path.to_path_buf(),
        };
        sf.rewrite(content)?;
        Ok(sf)
    }

    /// Atomically replace the content (temp file + rename in the same directory).
    pub fn rewrite(&self, content: &StateFileContent) -> std::io::Result<()> {
        let mut c = content.clone();
        c.pid = std::process::id();
        c.updated_at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let mut body = serde_json::to_vec_pretty(&c).expect("state file serializes");
        body.push(b'\n');
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Move the mtime to now (one progress unit).
    pub fn touch(&self) -> std::io::Result<()> {
        let f = std::fs::OpenOptions::new().append(true).open(&self.path)?;
        f.set_modified(SystemTime::now())
    }
}
