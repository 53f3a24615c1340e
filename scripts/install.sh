#!/usr/bin/env bash
# Install mountd from this checkout: the release binary, the systemd unit, the configuration example and
# the docs. Run as root (or with --dry-run to see what it would do).
#
#   scripts/install.sh [--prefix DIR] [--no-fuse] [--no-build] [--dry-run] [--help]
#
#   --prefix DIR  where the binary and docs go [default: /usr/local]: DIR/bin/mountd,
#                 DIR/share/doc/mountd, DIR/share/man/man1/mountd.1 (when the man page exists). With a
#                 prefix other than /usr/local, a drop-in mountd@.service.d/prefix.conf points the
#                 unit's ExecStart= at DIR/bin/mountd.
#   --no-fuse     also install the plain-directory drop-in (no FUSE mount, stricter sandbox) as
#                 /etc/systemd/system/mountd@.service.d/plain.conf for all instances
#   --no-build    install target/release/mountd as it is instead of building it first
#   --dry-run     print the commands instead of running them
#
# Always: /etc/systemd/system/mountd@.service, /etc/mountd/ (0700) with mountd.env.example (an existing
# /etc/mountd/*.env is never touched), then `systemctl daemon-reload` when systemd is running.
# Then: write /etc/mountd/NAME.env and /etc/mountd/NAME.token, `systemctl enable --now mountd@NAME`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PREFIX=/usr/local NO_FUSE=0 BUILD=1 DRY=0
SYSTEMD_DIR=${MOUNTD_SYSTEMD_DIR:-/etc/systemd/system}
ETC_DIR=${MOUNTD_ETC_DIR:-/etc/mountd}
usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
while (($#)); do
    case $1 in
    --prefix)
        [[ $# -ge 2 ]] || { echo "install.sh: --prefix needs a directory" >&2 && exit 2; }
        PREFIX=$2
        shift 2
        ;;
    --prefix=*) PREFIX=${1#--prefix=} && shift ;;
    --no-fuse) NO_FUSE=1 && shift ;;
    --no-build) BUILD=0 && shift ;;
    --dry-run | -n) DRY=1 && shift ;;
    -h | --help) usage && exit 0 ;;
    *) echo "install.sh: unknown argument $1 (try --help)" >&2 && exit 2 ;;
    esac
done
PREFIX=${PREFIX%/}
[[ $PREFIX == /* ]] || { echo "install.sh: --prefix must be an absolute path" >&2 && exit 2; }

run() {
    if [[ $DRY == 1 ]]; then
        printf '%q ' "$@" && echo
    else
        "$@"
    fi
}
write_file() { # write_file PATH MODE < content
    if [[ $DRY == 1 ]]; then
        echo "# write $1 (mode $2):" && sed 's/^/#   /'
    else
        install -m "$2" /dev/stdin "$1"
    fi
}

if [[ $DRY == 0 && $(id -u) -ne 0 ]]; then
    echo "install.sh: run as root (or try --dry-run)" >&2
    exit 1
fi

BIN=target/release/mountd
if [[ -n ${CARGO_TARGET_DIR:-} ]]; then BIN=$CARGO_TARGET_DIR/release/mountd; fi
if [[ $BUILD == 1 ]]; then
    run cargo build --release --locked --bin mountd
fi
[[ $DRY == 1 || -x $BIN ]] || { echo "install.sh: $BIN is missing (drop --no-build)" >&2 && exit 1; }

# Binary, docs, man page.
run install -d -m 0755 "$PREFIX/bin" "$PREFIX/share/doc/mountd"
run install -m 0755 "$BIN" "$PREFIX/bin/mountd"
run install -m 0644 README.md docs/INSTALL.md docs/SEMANTICS.md docs/ARCHITECTURE.md "$PREFIX/share/doc/mountd/"
# The man page is generated from the binary's own clap definitions.
if [[ $DRY == 0 && -x $BIN ]]; then
    scripts/gen-man.sh "$BIN" || true
fi
man=''
for m in "$(dirname "$BIN")/../man/mountd.1" target/man/mountd.1; do
    [[ -f $m ]] && man=$m && break
done
if [[ -n $man ]]; then
    run install -d -m 0755 "$PREFIX/share/man/man1"
    run install -m 0644 "$man" "$PREFIX/share/man/man1/mountd.1"
else
    echo "install.sh: no man page found (docs/mountd.1); Documentation=man:mountd(1) will not resolve" >&2
fi

# The unit (and its drop-ins).
run install -d -m 0755 "$SYSTEMD_DIR"
run install -m 0644 systemd/mountd@.service "$SYSTEMD_DIR/mountd@.service"
dropins=$SYSTEMD_DIR/mountd@.service.d
if [[ $PREFIX != /usr/local ]]; then
    run install -d -m 0755 "$dropins"
    write_file "$dropins/prefix.conf" 0644 <<EOF
# Written by scripts/install.sh --prefix $PREFIX
[Unit]
Documentation=
Documentation=man:mountd(1) file:$PREFIX/share/doc/mountd/README.md

[Service]
ExecStart=
ExecStart=$PREFIX/bin/mountd
EOF
elif [[ -f $dropins/prefix.conf ]]; then
    run rm -f "$dropins/prefix.conf"
fi
if [[ $NO_FUSE == 1 ]]; then
    run install -d -m 0755 "$dropins"
    run install -m 0644 systemd/mountd-plain.conf "$dropins/plain.conf"
fi

# Configuration: the example only; existing configs are never overwritten.
run install -d -m 0700 "$ETC_DIR"
run install -m 0600 systemd/mountd.env.example "$ETC_DIR/mountd.env.example"

# systemd running as PID 1 (not in a container without it, not in a chroot)?
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    run systemctl daemon-reload
else
    echo "install.sh: systemd is not running here: skipped systemctl daemon-reload" >&2
fi

cat >&2 <<EOF
install.sh: installed $PREFIX/bin/mountd and $SYSTEMD_DIR/mountd@.service$([[ $NO_FUSE == 1 ]] && echo " (+ plain.conf: no FUSE)")
Next, for an instance NAME:
  cp $ETC_DIR/mountd.env.example $ETC_DIR/NAME.env && chmod 600 $ETC_DIR/NAME.env   # then edit it
  install -m 0600 /path/to/token $ETC_DIR/NAME.token
  systemctl enable --now mountd@NAME
EOF
