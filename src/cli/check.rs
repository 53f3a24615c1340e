//! `mountd check`: validate a configuration the way a run would (flags, environment, paths, the
//! dangerous-configuration checks, the token source, the state DB's identity) and exit 0 when a run
//! would start. No network request; nothing is created.
use crate::cli::args::RunArgs;
use crate::cli::exit;
use crate::cli::setup::preflight;
use crate::store::db::{MetaKey, State};

/// `mountd check` (warnings from resolving the settings were logged already).
pub fn command(a: &RunArgs) -> i32 {
    let p = match preflight(a) {
        Ok(p) => p,
        Err(f) => {
            eprintln!("mountd check: error: {}", f.msg);
            return f.code;
        }
    };
    crate::cli::setup::log_startup(a, &p);
    if p.state_db.exists() {
        match State::open_existing(&p.state_db) {
            Ok(st) => {
                let local = crate::cli::safety::abs_path(&p.local_dir);
                let want = [
                    (
                        MetaKey::IdentityBaseUrl,
                        "base_url",
                        p.base_url.trim_end_matches('/').to_string(),
                    ),
                    (MetaKey::IdentityWorkspace, "workspace", p.workspace.clone()),
                    (
                        MetaKey::IdentityRemoteRoot,
                        "remote_root",
                        p.remote_root.clone(),
                    ),
                    (
                        MetaKey::IdentityLocalDir,
                        "local_dir",
                        local.display().to_string(),
                    ),
                ];
                let mut bad = Vec::new();
                for (k, name, v) in want {
                    if let Ok(Some(have)) = st.meta(k) {
                        if have != v {
                            bad.push(format!("{name} is {have:?}, not {v:?}"));
                        }
                    }
                }
                if !bad.is_empty() {
                    eprintln!(
                        "mountd check: error: state database {} belongs to another mirror ({}); fix the settings, or run `mountd reset --local-dir {}` to re-tie it (files are kept and re-verified by hash)",
                        p.state_db.display(),
                        bad.join(", "),
                        p.local_dir.display()
                    );
                    return exit::USAGE;
                }
            }
            Err(e) => {
                eprintln!("mountd check: error: {e}");
                return exit::USAGE;
            }
        }
    }
    println!(
        "mountd check: configuration OK: {} workspace {} path {} -> {} (state DB {}, {}; token from {})",
        p.base_url,
        p.workspace,
        p.remote_root,
        p.local_dir.display(),
        p.state_db.display(),
        if a.once {
            "--once".to_string()
        } else if let Some(mp) = &p.mountpoint {
            format!("service, FUSE view at {}", mp.display())
        } else {
            "service, plain directory".to_string()
        },
        p.token.describe()
    );
    exit::OK
}
