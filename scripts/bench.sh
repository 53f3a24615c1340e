#!/usr/bin/env bash
# Bootstrap benchmarks of the release build against the reference remote on loopback:
#   once_export   `mountd --once` into an empty mirror via the atomic export
#   once_tree     the same with --no-export (per-page tree pull, 16 parallel reads)
#   catch_up      `mountd --once` again on the complete mirror (events feed, nothing to fetch)
#   resume        a tree pull killed with SIGKILL part-way, then the `--once` that finishes it
# Each reports wall time, peak RSS, entries/s and the remote's request counts. Results are printed
# as a table and written as JSON lines {"name":..., "value":..., "unit":...} to
# target/bench/results.jsonl (replaced on every run of bench.sh; every part appends to it).
# Then the mount benchmarks (scripts/bench-mount.sh, needs root and /dev/fuse): `--once` and service
# startup on N files + one large file, find/cat/dd/4 KiB random reads/ls -l/du on the mirror vs the
# FUSE mount in each data mode vs `rclone mount` of the mirror (cold and warm), and
# remote-write-to-visible latency at --interval 1s and 200ms.
# Then the two-way sync benchmarks (scripts/bench-push.sh): an editor's save until the server has it
# (p50/p90/max), 1,000, 10,000 and 20,000 new files at once (time, write requests, the service's peak
# RSS); --push runs only those, --no-push skips them.
# Then the write benchmarks of the FUSE view (scripts/bench-write.sh, needs root and /dev/fuse): a
# 1 GiB sequential write, untar of 5,000 files, git clone/status/commit of 2,000 files in a plain
# directory vs the view in each data mode vs `rclone mount --vfs-cache-mode writes`, the time until
# the service pushed them, and a check that the remote then holds exactly the view's bytes; --write
# runs only those, --no-write skips them.
# With --memory: only the memory benchmarks (scripts/bench-memory.sh): peak RSS of one 256 MiB and one
# 1 GiB file via the tree pull and via the export, sixteen 256 MiB files at once, 10k and 100k small
# files, and a 1 GiB file over a 5 MB/s link under the default and a 10 s idle timeout.
#
#   scripts/bench.sh [--files N] [--file-size BYTES] [--dirs D]     (default 20000 x 1024 B in 50 dirs)
#                    [--mount | --no-mount | --push | --no-push | --write | --no-write
#                     | --memory [--no-slow] [--only CASES]] [--mount-files N] [--big-file-mib M]
#     --mount: only the mount benchmarks; --no-mount: skip them; --push: only the two-way sync ones;
#     --no-push: skip them; --write: only the write benchmarks; --no-write: skip them (default:
#     bootstrap, push, write, mount)
#     --mount-files N (default 100000, 1000 per dir), --big-file-mib M (default 1024; 0 = none);
#     --modes "page-cache passthrough", --no-latency, --no-rclone, --random-reads R go to bench-mount.sh;
#     --no-rclone also to bench-write.sh
set -euo pipefail
# shellcheck source=lib/remote.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/remote.sh"

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

files=20000 file_size=1024 dirs=50
run_bootstrap=1 run_mount=1 run_memory=0 run_push=1 run_write=1 mount_args=() memory_args=() write_args=()
while (($#)); do
    case $1 in
    --files) files=$2; shift 2 ;;
    --file-size) file_size=$2; shift 2 ;;
    --dirs) dirs=$2; shift 2 ;;
    --mount) run_bootstrap=0 run_mount=1 run_push=0 run_write=0; shift ;;
    --no-mount) run_mount=0; shift ;;
    --memory) run_memory=1; shift ;;
    --push) run_bootstrap=0 run_mount=0 run_push=1 run_write=0; shift ;;
    --no-push) run_push=0; shift ;;
    --write) run_bootstrap=0 run_mount=0 run_push=0 run_write=1; shift ;;
    --no-write) run_write=0; shift ;;
    --no-slow | --big-base64) memory_args+=("$1"); shift ;;
    --only) memory_args+=("$1" "$2"); shift 2 ;;
    --mount-files | --big-file-mib | --modes | --random-reads) mount_args+=("$1" "$2"); shift 2 ;;
    --no-latency) mount_args+=("$1"); shift ;;
    --no-rclone) mount_args+=("$1") write_args+=("$1"); shift ;;
    -h | --help)
        sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "bench.sh: unknown argument $1 (try --help)" >&2
        exit 2
        ;;
    esac
done
[[ $run_bootstrap == 1 || $run_mount == 1 || $run_push == 1 || $run_write == 1 ]] || {
    echo "bench.sh: --mount and --no-mount together leave nothing to run" >&2
    exit 2
}
for v in "$files" "$file_size" "$dirs"; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || {
        echo "bench.sh: --files, --file-size and --dirs take positive integers" >&2
        exit 2
    }
done

if [[ ! -x /usr/bin/time ]]; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "bench.sh: installing GNU time" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >&2 ||
            { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >&2; }
    fi
    [[ -x /usr/bin/time ]] || {
        echo "bench.sh: /usr/bin/time (GNU time) is needed for peak RSS: apt-get install time" >&2
        exit 1
    }
fi
command -v curl >/dev/null || {
    echo "bench.sh: curl is needed" >&2
    exit 1
}

if [[ $run_memory == 1 ]]; then
    exec "$ROOT/scripts/bench-memory.sh" "${memory_args[@]}"
fi

echo "bench.sh: building the release binaries" >&2
cargo build --workspace --release --bins --quiet
MOUNTD=$ROOT/target/release/mountd
REMOTE=$ROOT/target/release/mountd-remote

OUT_DIR=$ROOT/target/bench
RESULTS=$OUT_DIR/results.jsonl
mkdir -p "$OUT_DIR"
: >"$RESULTS"

if [[ $run_bootstrap == 0 ]]; then
    if [[ $run_push == 1 ]]; then
        "$ROOT/scripts/bench-push.sh" --no-build
    fi
    if [[ $run_write == 1 ]]; then
        "$ROOT/scripts/bench-write.sh" --no-build "${write_args[@]}"
    fi
    [[ $run_mount == 1 ]] || exit 0
    exec "$ROOT/scripts/bench-mount.sh" --no-build "${mount_args[@]}"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mountd-bench.XXXXXX")
remote_pid='' run_pid=''
cleanup() {
    local rc=$?
    set +e
    for p in $run_pid $remote_pid; do
        kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null
    done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------------
TOKEN=$WORK/token
printf 'bench-token\n' >"$TOKEN"
echo "bench.sh: starting mountd-remote with $files files x $file_size B in $dirs dirs" >&2
"$REMOTE" --listen 127.0.0.1:0 --token-file "$TOKEN" --generate "$files" --file-size "$file_size" \
    --dirs "$dirs" >"$WORK/remote.out" 2>"$WORK/remote.log" &
remote_pid=$!
wait_remote "$remote_pid" "$WORK/remote.out" "$WORK/remote.log" 60

# ---------------------------------------------------------------------------------------------------
rows=()
emit() { # emit NAME VALUE UNIT
    printf '{"name":"%s","value":%s,"unit":"%s"}\n' "$1" "$2" "$3" >>"$RESULTS"
}
count() { # count ROUTE: requests on ROUTE since the last reset
    local n
    n=$(curl -sS "$URL/_control/counts" | grep -o "\"$1\":[0-9]*" | head -n1 | cut -d: -f2 || true)
    echo "${n:-0}"
}
reset_counts() { curl -sS -X POST "$URL/_control/reset-counts" >/dev/null; }

# timed NAME MIRROR RATE ARGS...: one `mountd --once` under GNU time; fails the benchmark unless it
# exits 0. RATE says what entries/s counts: all (every file), fetched (files fetched by this run),
# none (no rate: nothing to transfer).
timed() {
    local name=$1 mirror=$2 rate=$3
    shift 3
    reset_counts
    local rc=0
    /usr/bin/time -f '%e %M' -o "$WORK/$name.time" \
        "$MOUNTD" --once --base-url "$URL" --workspace bench --token-file "$TOKEN" \
        --local-dir "$mirror" --progress never "$@" >"$WORK/$name.out" 2>"$WORK/$name.log" || rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "bench.sh: $name: mountd exited $rc:" >&2
        tail -n 5 "$WORK/$name.log" "$WORK/$name.out" >&2
        exit 1
    fi
    record "$name" "$(tail -n1 "$WORK/$name.time")" "$rate"
}

# record NAME "WALL_S PEAK_KB" RATE: table row and JSON lines, with the remote's request counts.
record() {
    local name=$1 wall kb basis=$3
    read -r wall kb <<<"$2"
    local rss_mib rate=- n n_tree n_file n_export n_events
    rss_mib=$(awk -v k="$kb" 'BEGIN { printf "%.1f", k / 1024 }')
    n_tree=$(count tree) n_file=$(count file) n_export=$(count export) n_events=$(count events)
    case $basis in
    all) n=$files ;;
    fetched) n=$n_file ;;
    *) n='' ;;
    esac
    if [[ -n $n ]] && awk -v w="$wall" 'BEGIN { exit !(w > 0) }'; then
        rate=$(awk -v n="$n" -v w="$wall" 'BEGIN { printf "%.0f", n / w }')
    fi
    emit "$name.wall_time" "$wall" s
    emit "$name.peak_rss" "$rss_mib" MiB
    [[ $rate == - ]] || emit "$name.entries_per_s" "$rate" "entries/s"
    emit "$name.requests.tree" "$n_tree" count
    emit "$name.requests.file" "$n_file" count
    emit "$name.requests.export" "$n_export" count
    emit "$name.requests.events" "$n_events" count
    rows+=("$(printf '%-14s %9s %10s %11s %6s %7s %7s %7s' "$name" "$wall" "$rss_mib" "$rate" \
        "$n_tree" "$n_file" "$n_export" "$n_events")")
}

verify_mirror() { # verify_mirror MIRROR NAME: the mirror holds every file
    local n
    n=$(find "$1" -path "$1/.mountd" -prune -o -type f -print | wc -l)
    if [[ $n -ne $files ]]; then
        echo "bench.sh: $2: the mirror holds $n files, expected $files" >&2
        exit 1
    fi
}

emit files "$files" count
emit file_size "$file_size" bytes

echo "bench.sh: (a) --once via export" >&2
timed once_export "$WORK/m-export" all
verify_mirror "$WORK/m-export" once_export

echo "bench.sh: (b) --once via tree pull (--no-export)" >&2
timed once_tree "$WORK/m-tree" all --no-export
verify_mirror "$WORK/m-tree" once_tree

echo "bench.sh: (c) --once on the complete mirror (catch-up)" >&2
timed catch_up "$WORK/m-tree" none --no-export

# (d) resume after kill -9: start a tree pull, SIGKILL it once it has synced about a third of the
# files (read from its state file), then time the run that finishes the mirror.
echo "bench.sh: (d) resume after kill -9 during a tree pull" >&2
resume_note=''
mirror=$WORK/m-resume state=$WORK/resume.state.json
"$MOUNTD" --once --base-url "$URL" --workspace bench --token-file "$TOKEN" --local-dir "$mirror" \
    --progress never --no-export --state-file "$state" >/dev/null 2>"$WORK/resume-killed.log" &
run_pid=$!
target=$((files / 3)) synced=0
while kill -0 "$run_pid" 2>/dev/null; do
    synced=$(sed -n 's/.*"filesSynced": *\([0-9]*\).*/\1/p' "$state" 2>/dev/null | head -n1 || true)
    synced=${synced:-0}
    if ((synced >= target)); then
        kill -KILL "$run_pid" 2>/dev/null || true
        break
    fi
    sleep 0.01
done
killed_rc=0
wait "$run_pid" 2>/dev/null || killed_rc=$?
run_pid=''
if [[ $killed_rc -eq 137 ]]; then
    on_disk=$(find "$mirror" -path "$mirror/.mountd" -prune -o -type f -print | wc -l)
    timed resume "$mirror" fetched --no-export
    verify_mirror "$mirror" resume
    emit resume.killed_at_files "$synced" count
    emit resume.files_on_disk_at_kill "$on_disk" count
    resume_note="resume: killed at >= $synced files synced ($on_disk on disk); the resumed run fetched $(count file) files"
else
    resume_note="resume: not measured (the first run finished, exit $killed_rc, before reaching $target files)"
fi

# ---------------------------------------------------------------------------------------------------
printf '\nmountd bootstrap benchmarks: %s files x %s B in %s dirs, release build, loopback (%s, %s cores)\n\n' \
    "$files" "$file_size" "$dirs" "$(uname -r)" "$(nproc)"
printf '%-14s %9s %10s %11s %6s %7s %7s %7s\n' run wall_s peak_MiB entries/s tree file export events
printf '%s\n' "${rows[@]}"
printf '\n%s\n' "$resume_note"
printf 'entries/s: all files / wall time (resume: files fetched by the resumed run / its wall time)\n'
printf 'tree, file, export, events: requests on each route during the run\n'
printf 'results: %s\n' "${RESULTS#"$ROOT"/}"

# ---------------------------------------------------------------------------------------------------
if [[ $run_push == 1 ]]; then
    printf '\n' >&2
    "$ROOT/scripts/bench-push.sh" --no-build
fi
if [[ $run_write == 1 ]]; then
    printf '\n' >&2
    "$ROOT/scripts/bench-write.sh" --no-build "${write_args[@]}"
fi
if [[ $run_mount == 1 ]]; then
    # Free the bootstrap remote and mirrors first, then hand over (the mount script has its own cleanup).
    trap - EXIT INT TERM
    if kill -TERM "$remote_pid" 2>/dev/null; then wait "$remote_pid" 2>/dev/null || true; fi
    rm -rf "$WORK"
    printf '\n' >&2
    exec "$ROOT/scripts/bench-mount.sh" --no-build "${mount_args[@]}"
fi
