//! The shipped systemd unit stays hardened: `systemd-analyze security --offline=yes` rates
//! `systemd/mountd@.service` at most 4.5 (FUSE mode) and at most 2.5 with the plain-directory drop-in
//! `systemd/mountd-plain.conf`, and `systemd-analyze verify` has nothing to say about either.
//!
//! Needs `systemd-analyze` (Debian package `systemd`; scripts/test.sh installs it): without it these
//! tests fail, they never skip.

use std::path::{Path, PathBuf};
use std::process::Command;

const UNIT: &str = "systemd/mountd@.service";
const PLAIN: &str = "systemd/mountd-plain.conf";
const FUSE_MAX: f64 = 4.5;
const PLAIN_MAX: f64 = 2.5;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The unit with `ExecStart=` pointing at the binary under test (verify checks that it exists), the
/// same rewrite scripts/test.sh does.
fn unit_text() -> String {
    let text = std::fs::read_to_string(repo(UNIT)).expect("read systemd/mountd@.service");
    let line = "ExecStart=/usr/local/bin/mountd";
    assert!(
        text.lines().any(|l| l == line),
        "{UNIT} must keep the line {line:?} (scripts/test.sh rewrites it)"
    );
    text.lines()
        .map(|l| {
            if l == line {
                format!("ExecStart={}", env!("CARGO_BIN_EXE_mountd"))
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn plain_text() -> String {
    std::fs::read_to_string(repo(PLAIN)).expect("read systemd/mountd-plain.conf")
}

/// Run systemd-analyze; a missing binary is a failure with a hint, not a skip.
fn analyze(args: &[&str]) -> (i32, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .env("SYSTEMD_LOG_COLOR", "0")
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_PAGER", "")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run systemd-analyze ({e}): install the Debian package `systemd` \
                 (scripts/test.sh does); these tests must not be skipped"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// `DIR/etc/systemd/system/mountd@.service` (+ `mountd@.service.d/plain.conf`): the installed layout,
/// for `--root=DIR`.
fn installed_root(with_plain: bool) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let sys = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(&sys).unwrap();
    std::fs::write(sys.join("mountd@.service"), unit_text()).unwrap();
    if with_plain {
        let d = sys.join("mountd@.service.d");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("plain.conf"), plain_text()).unwrap();
    }
    root
}

/// The overall exposure of `mountd@<instance>.service` under `root`, checked two ways: the number
/// printed on the "Overall exposure level" line, and the exit status with `--threshold` (tenths).
fn exposure(root: &Path, max: f64) -> f64 {
    let root_arg = format!("--root={}", root.display());
    let (rc, text) = analyze(&[
        "security",
        "--offline=yes",
        &root_arg,
        "--no-pager",
        "mountd@.service",
    ]);
    assert_eq!(rc, 0, "systemd-analyze security failed:\n{text}");
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level for mountd@"))
        .unwrap_or_else(|| panic!("no overall exposure line in:\n{text}"));
    let value: f64 = line
        .rsplit(": ")
        .next()
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse the exposure in {line:?}"));

    let threshold = format!("--threshold={}", (max * 10.0).round() as u32);
    let (rc, text) = analyze(&[
        "security",
        "--offline=yes",
        &root_arg,
        &threshold,
        "--no-pager",
        "mountd@.service",
    ]);
    assert!(
        value <= max && rc == 0,
        "exposure {value} (threshold exit status {rc}) is over {max}:\n{text}"
    );
    value
}

#[test]
fn security_exposure_fuse_mode() {
    let root = installed_root(false);
    let v = exposure(root.path(), FUSE_MAX);
    eprintln!("mountd@.service (FUSE mode): exposure {v}");
}

#[test]
fn security_exposure_with_plain_drop_in() {
    let root = installed_root(true);
    let v = exposure(root.path(), PLAIN_MAX);
    eprintln!("mountd@.service + plain.conf: exposure {v}");
    // The drop-in must actually be applied (a typo in its path would silently rate the bare unit).
    let bare = installed_root(false);
    let b = exposure(bare.path(), FUSE_MAX);
    assert!(
        v < b,
        "the plain drop-in does not lower the exposure ({v} vs {b})"
    );
}

/// `systemd-analyze verify` of an instance, with or without the drop-in, prints nothing about the unit
/// (unknown keys and bad values are only warnings there, so any message counts) and exits 0.
fn verify(with_plain: bool) {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("mountd@test.service");
    std::fs::write(&unit, unit_text()).unwrap();
    if with_plain {
        let d = dir.path().join("mountd@test.service.d");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("plain.conf"), plain_text()).unwrap();
    }
    // --man=no: Documentation=man:mountd(1) is installed with the package, not on a build machine.
    let (rc, text) = analyze(&["verify", "--man=no", unit.to_str().unwrap()]);
    assert_eq!(rc, 0, "systemd-analyze verify failed:\n{text}");
    assert!(
        !text.contains("mountd@test.service") && !text.contains("plain.conf"),
        "systemd-analyze verify reported problems:\n{text}"
    );
}

#[test]
fn verify_unit() {
    verify(false);
}

#[test]
fn verify_unit_with_plain_drop_in() {
    verify(true);
}

/// The drop-in is wired as documented: plain mode, no capability, no mountpoint helpers.
#[test]
fn plain_drop_in_content() {
    let text = plain_text();
    for line in [
        "Environment=MOUNTD_NO_FUSE=1",
        "CapabilityBoundingSet=",
        "ExecStartPre=",
        "ExecStopPost=",
        "PrivateDevices=yes",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{PLAIN} lacks the line {line:?}"
        );
    }
}
