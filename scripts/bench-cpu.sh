#!/usr/bin/env bash
# mountd's own CPU per fetched file: `mountd --once` into an empty mirror from the reference remote on
# loopback, by the per-page tree pull (--no-export) and by the export, user + system seconds of the
# mountd process (GNU time), divided by the number of files. CPU time, not wall time: it is what the
# daemon costs, and it stays comparable on a busy machine where wall times do not.
#
#   scripts/bench-cpu.sh [--files N] [--file-size BYTES] [--dirs D] [--runs R] [--no-build]
#                        [--baseline PATH/TO/OLD/mountd] [--paths "tree export"] [--fs tmpfs|disk]
#     defaults: 5000 files x 4096 B in 50 dirs, 5 runs per path (median reported)
#     --fs tmpfs (the default as root): the mirrors (and state DBs) on a tmpfs, so the figure is
#     mountd's own work; on a busy journal-less ext4 the inode allocator alone can cost 100s of us
#     per created file (recently_deleted() scans), varying 10x from run to run. --fs disk: under TMPDIR.
#     --baseline: a second mountd binary (e.g. one built from the commit before a change) measured in
#     the same run, runs interleaved, with the ratio new / baseline
# Results are appended as JSON lines to target/bench/results.jsonl and printed as a table.
set -euo pipefail
# shellcheck source=lib/remote.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/remote.sh"

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

files=5000 file_size=4096 dirs=50 runs=5 build=1 baseline='' paths='tree export' fs=''
while (($#)); do
    case $1 in
    --files) files=$2; shift 2 ;;
    --file-size) file_size=$2; shift 2 ;;
    --dirs) dirs=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --baseline) baseline=$2; shift 2 ;;
    --paths) paths=$2; shift 2 ;;
    --fs) fs=$2; shift 2 ;;
    -h | --help)
        sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "bench-cpu.sh: unknown argument $1 (try --help)" >&2
        exit 2
        ;;
    esac
done
for v in "$files" "$file_size" "$dirs" "$runs"; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || {
        echo "bench-cpu.sh: --files, --file-size, --dirs and --runs take positive integers" >&2
        exit 2
    }
done
say() { echo "bench-cpu.sh: $*" >&2; }
[[ -x /usr/bin/time ]] || {
    say "/usr/bin/time (GNU time) is needed: apt-get install time"
    exit 1
}
[[ -z $baseline || -x $baseline ]] || {
    say "--baseline $baseline is not an executable"
    exit 2
}
if [[ $build == 1 ]]; then
    say "building the release binaries"
    cargo build --workspace --release --bins --quiet
fi
MOUNTD=$ROOT/target/release/mountd
REMOTE=$ROOT/target/release/mountd-remote
OUT_DIR=$ROOT/target/bench
RESULTS=$OUT_DIR/results.jsonl
mkdir -p "$OUT_DIR"

[[ -z $fs ]] && { [[ $(id -u) -eq 0 ]] && fs=tmpfs || fs=disk; }
[[ $fs == tmpfs || $fs == disk ]] || {
    say "--fs takes tmpfs or disk"
    exit 2
}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mountd-bench-cpu.XXXXXX")
MIRRORS=$WORK/mirrors
mkdir -p "$MIRRORS"
if [[ $fs == tmpfs ]]; then
    mount -t tmpfs -o size=$((files * (file_size + 8192) * 2 + (256 << 20))) mountd-bench "$MIRRORS" || {
        say "cannot mount a tmpfs (not root?); use --fs disk"
        exit 1
    }
fi
remote_pid=''
cleanup() {
    local rc=$?
    [[ -n $remote_pid ]] && kill "$remote_pid" 2>/dev/null && wait "$remote_pid" 2>/dev/null
    mountpoint -q "$MIRRORS" && umount "$MIRRORS"
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

printf 'bench-token\n' >"$WORK/token"
"$REMOTE" --listen 127.0.0.1:0 --token-file "$WORK/token" --generate "$files" --file-size "$file_size" \
    --dirs "$dirs" >"$WORK/remote.out" 2>"$WORK/remote.log" &
remote_pid=$!
wait_remote "$remote_pid" "$WORK/remote.out" "$WORK/remote.log" 60

# one BIN PATH: one --once into a new, empty mirror; prints "user sys wall". Earlier mirrors are kept
# until the end: deleting 5,000 files just before creating 5,000 more makes ext4's inode allocator
# skip the recently deleted inodes one by one (recently_deleted()), a cost of the benchmark, not of
# mountd.
one() {
    local bin=$1 path=$2 dir args=()
    dir=$(mktemp -d "$MIRRORS/mirror.XXXXXX")
    [[ $path == tree ]] && args+=(--no-export)
    /usr/bin/time -f '%U %S %e' -o "$WORK/time" "$bin" --once --base-url "$URL" --workspace bench \
        --token-file "$WORK/token" --local-dir "$dir" --progress never -q "${args[@]}" \
        >"$WORK/once.out" 2>"$WORK/once.log" || {
        say "$bin --once ($path) failed:"
        tail -n 10 "$WORK/once.log" >&2
        exit 1
    }
    local n
    n=$(find "$dir" -path "$dir/.mountd" -prune -o -type f -print | wc -l)
    [[ $n -eq $files ]] || {
        say "$bin ($path): the mirror holds $n files, expected $files"
        exit 1
    }
    cat "$WORK/time"
    [[ $fs == tmpfs ]] && rm -rf "$dir" # no allocator effect to avoid on a tmpfs; keep it small
}
median() { sort -g | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; print m }'; }

labels=(new)
bins=("$MOUNTD")
[[ -n $baseline ]] && labels+=(baseline) bins+=("$baseline")
declare -A cpu wall
for path in $paths; do
    for ((r = 0; r < runs; r++)); do
        for i in "${!bins[@]}"; do
            read -r u s w < <(one "${bins[$i]}" "$path")
            cpu[$path.${labels[$i]}]+="$(awk -v u="$u" -v s="$s" 'BEGIN { print u + s }') "
            wall[$path.${labels[$i]}]+="$w "
            say "$path ${labels[$i]} run $((r + 1)): user $u s, sys $s s, wall $w s"
        done
    done
done

printf '\nmountd CPU per file: --once into an empty mirror (on %s), %s files x %s B in %s dirs, loopback, release build (%s, %s cores), median of %s runs\n\n' \
    "$fs" "$files" "$file_size" "$dirs" "$(uname -r)" "$(nproc)" "$runs"
printf '%-8s %-9s %10s %12s %10s\n' path binary 'cpu_s' 'cpu_us/file' 'wall_s'
for path in $paths; do
    for l in "${labels[@]}"; do
        c=$(tr ' ' '\n' <<<"${cpu[$path.$l]}" | grep . | median)
        w=$(tr ' ' '\n' <<<"${wall[$path.$l]}" | grep . | median)
        per=$(awk -v c="$c" -v n="$files" 'BEGIN { printf "%.1f", c / n * 1e6 }')
        printf '%-8s %-9s %10s %12s %10s\n' "$path" "$l" "$c" "$per" "$w"
        printf '{"name":"cpu.once_%s.%s.us_per_file","value":%s,"unit":"us"}\n' "$path" "$l" "$per" >>"$RESULTS"
        printf -v "c_$l" '%s' "$c"
    done
    if [[ -n $baseline ]]; then
        printf '%-8s %-9s %10s\n' "$path" 'new/base' "$(awk -v a="$c_new" -v b="$c_baseline" 'BEGIN { printf "%.2fx", a / b }')"
    fi
done
