#!/usr/bin/env bash
# Generate the man page and shell completions from the clap definitions (they never drift from the
# real flags):
#
#   scripts/gen-man.sh [MOUNTD_BINARY]
#
# Writes target/man/mountd.1 (install as /usr/share/man/man1/mountd.1) and
# target/completions/{mountd.bash,_mountd,mountd.fish} (install as
# /usr/share/bash-completion/completions/mountd, /usr/share/zsh/vendor-completions/_mountd,
# /usr/share/fish/vendor_completions.d/mountd.fish). Without an argument it builds the release binary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${1:-}
if [[ -z $bin ]]; then
    cargo build --release -q -p mountd
    bin=${CARGO_TARGET_DIR:-target}/release/mountd
fi
out=${CARGO_TARGET_DIR:-target}
mkdir -p "$out/man" "$out/completions"
"$bin" man >"$out/man/mountd.1"
"$bin" completions bash >"$out/completions/mountd.bash"
"$bin" completions zsh >"$out/completions/_mountd"
"$bin" completions fish >"$out/completions/mountd.fish"
echo "wrote $out/man/mountd.1 and $out/completions/" >&2
