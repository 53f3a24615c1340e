#!/usr/bin/env bash
# Mount benchmarks of the release build against the reference remote on loopback (run by
# `scripts/bench.sh` unless --no-mount, or alone with `scripts/bench.sh --mount`):
#   seed        N generated files of 1 KiB (1000 per directory, /dNNN/fNNNNNNN.txt) plus one M MiB
#               random binary file /big/large.bin, served by mountd-remote
#   once        `mountd --once` into DIR: wall time and peak RSS
#   startup     the service (`--mountpoint MNT --interval 1s`) from launch until MNT is mounted
#   reads       find | wc -l, cat of every file, dd of the large file, 4 KiB random reads of the large
#               file (timed inside the reader), ls -l of a 1000-entry dir, du -s, and stat_rt (one
#               stat(2) of every file with dentries dropped first, timed inside the reader: one LOOKUP
#               round trip each on the view; the mean per stat, in µs, is the figure), each on X=DIR (the
#               plain mirror), X=MNT (the FUSE view, once per --modes entry: a data mode
#               (MOUNTD_DATA_MODE), optionally @TRANSPORT (MOUNTD_FUSE_TRANSPORT: dev or uring)) and
#               X=RMNT (`rclone mount DIR`, when rclone is installed): cold (page cache dropped before
#               every run) and warm; median times and the ratios to DIR
#   latency     a PUT on the remote until the file shows the new bytes (latency-probe: kept-alive PUTs,
#               reads every 1 ms): polling only
#               (--websocket=false) at --interval 1s and 200ms under MNT; then the realtime stream
#               (/fs/ws) at --interval 30s, under MNT (FUSE) and in DIR (--no-fuse): p50/p90/max
# Results are appended as JSON lines {"name":..., "value":..., "unit":...} to
# target/bench/results.jsonl and printed as a table.
#
#   scripts/bench-mount.sh [--mount-files N] [--big-file-mib M] [--latency-samples K]
#                          [--realtime-samples K] [--no-build] [--latency-only | --no-latency]
#                          [--modes "page-cache passthrough ..."] [--no-rclone] [--random-reads R]
#                          [--one-dir] [--only "find ls_l_dir ..."] [--load | --no-load]
#     defaults: 100000 files, 1024 MiB, 10 samples per polling interval, 40 per realtime row, modes
#     "page-cache passthrough" over /dev/fuse, and the same over io_uring when the kernel offers it
#     (fuse.enable_uring), 2000 random reads; --big-file-mib 0 skips the large file; --one-dir
#     puts all N files into one directory (/d000), so ls_l_dir lists N entries; --only runs these read
#     benchmarks only (of find cat_all dd_large rand_4k ls_l_dir du stat_rt); --load runs the
#     under-load comparison of the transports (default: on when io_uring is on)
set -euo pipefail
# shellcheck source=lib/remote.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/remote.sh"
# shellcheck source=lib/rclone.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/rclone.sh"

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

n_files=100000 big_mib=1024 samples=10 rt_samples=40 build=1 reads=1 latency=1 use_rclone=1 rand_n=2000 one_dir=0 only=''
load='' load_transports='dev uring'
modes=''
while (($#)); do
    case $1 in
    --mount-files) n_files=$2; shift 2 ;;
    --big-file-mib) big_mib=$2; shift 2 ;;
    --latency-samples) samples=$2; shift 2 ;;
    --realtime-samples) rt_samples=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --latency-only) reads=0; shift ;;
    --no-latency) latency=0; shift ;;
    --modes) modes=$2; shift 2 ;;
    --no-rclone) use_rclone=0; shift ;;
    --random-reads) rand_n=$2; shift 2 ;;
    --one-dir) one_dir=1; shift ;;
    --only) only=$2; shift 2 ;;
    --load) load=1; shift ;;
    --no-load) load=0; shift ;;
    -h | --help)
        sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "bench-mount.sh: unknown argument $1 (try --help)" >&2
        exit 2
        ;;
    esac
done
[[ $n_files =~ ^[1-9][0-9]*$ && $samples =~ ^[1-9][0-9]*$ && $rt_samples =~ ^[1-9][0-9]*$ && $big_mib =~ ^[0-9]+$ ]] || {
    echo "bench-mount.sh: --mount-files, --latency-samples and --realtime-samples take positive integers, --big-file-mib a non-negative one" >&2
    exit 2
}
say() { echo "bench-mount.sh: $*" >&2; }

[[ $(id -u) -eq 0 && -c /dev/fuse ]] || {
    say "the mount benchmark needs root and /dev/fuse"
    exit 1
}
for tool in curl mountpoint; do
    command -v "$tool" >/dev/null || {
        say "$tool is needed"
        exit 1
    }
done
[[ -x /usr/bin/time ]] || {
    say "/usr/bin/time (GNU time) is needed for peak RSS: apt-get install time"
    exit 1
}
if ! command -v hyperfine >/dev/null && command -v apt-get >/dev/null; then
    say "installing hyperfine (best effort)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hyperfine >/dev/null 2>&1 || true
fi
HYPERFINE=''
if command -v hyperfine >/dev/null && { command -v jq >/dev/null || command -v python3 >/dev/null; }; then
    HYPERFINE=$(command -v hyperfine)
else
    say "no hyperfine (or no jq/python3 to read its JSON): timing with \$EPOCHREALTIME, median of the runs"
fi
json_median() { # json_median FILE: median of a hyperfine --export-json file
    if command -v jq >/dev/null; then
        jq -r '.results[0].median' "$1"
    else
        python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["median"])' "$1"
    fi
}

if [[ $build == 1 ]]; then
    say "building the release binaries"
    cargo build --workspace --release --bins --quiet
fi
MOUNTD=$ROOT/target/release/mountd
REMOTE=$ROOT/target/release/mountd-remote
PROBE=$ROOT/target/release/latency-probe
OUT_DIR=$ROOT/target/bench
RESULTS=$OUT_DIR/results.jsonl
mkdir -p "$OUT_DIR"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mountd-bench-mount.XXXXXX")
SEED=$WORK/seed DIR=$WORK/mirror MNT=$WORK/mnt TOKEN=$WORK/token RMNT=$WORK/rclone
remote_pid='' service_pid='' rclone_pid=''

is_mounted() { mountpoint -q "$MNT" 2>/dev/null || grep -qs " $MNT fuse" /proc/mounts; }

stop_pid() { # stop_pid PID NAME SECONDS: SIGTERM, wait, then SIGKILL
    local pid=$1 name=$2 secs=$3
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq $((secs * 10))); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name (pid $pid) did not stop within ${secs}s of SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    stop_pid "$service_pid" "mountd service" 30
    stop_pid "$rclone_pid" "rclone mount" 10
    mountpoint -q "$RMNT" 2>/dev/null && { umount -l "$RMNT" 2>/dev/null || true; }
    stop_pid "$remote_pid" "mountd-remote" 10
    if is_mounted; then
        say "$MNT is still mounted; detaching it (umount -l)"
        umount -l "$MNT" 2>/dev/null || fusermount3 -uz "$MNT" 2>/dev/null
    fi
    if is_mounted; then
        say "not removing $WORK: $MNT is still mounted"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

emit() { # emit NAME VALUE UNIT
    printf '{"name":"%s","value":%s,"unit":"%s"}\n' "$1" "$2" "$3" >>"$RESULTS"
}
fmt() { awk -v v="$1" -v f="$2" 'BEGIN { printf f, v }'; }
rows=()
# shellcheck disable=SC2059 # row FORMAT ARGS...: the format is always a literal at the call site
row() { rows+=("$(printf "$@")"); }

# ---------------------------------------------------------------------------------------------------
# 1. Seed and remote: the small files are generated by the remote (--generate, 1000 per directory),
#    the large file is read from the seed dir (--root).
dirs=$(((n_files + 999) / 1000))
((one_dir)) && dirs=1
mkdir -p "$SEED" "$MNT"
if ((big_mib > 0)); then
    say "writing a ${big_mib} MiB random file"
    mkdir -p "$SEED/big"
    head -c $((big_mib * 1048576)) /dev/urandom >"$SEED/big/large.bin"
fi
printf 'bench-token\n' >"$TOKEN"
say "starting mountd-remote: $n_files files x 1024 B in $dirs dirs + ${big_mib} MiB /big/large.bin"
t0=$EPOCHREALTIME
"$REMOTE" --listen 127.0.0.1:0 --token-file "$TOKEN" --root "$SEED" --generate "$n_files" \
    --file-size 1024 --dirs "$dirs" >"$WORK/remote.out" 2>"$WORK/remote.log" &
remote_pid=$!
wait_remote "$remote_pid" "$WORK/remote.out" "$WORK/remote.log" 300
remote_start=$(fmt "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }')" '%.2f')
rm -rf "$SEED" # the remote holds it in memory now
COMMON=(--base-url "$URL" --workspace bench --token-file "$TOKEN" --local-dir "$DIR")

emit mount.files "$n_files" count
emit mount.big_file_size "$big_mib" MiB
emit mount.remote_startup "$remote_start" s

# ---------------------------------------------------------------------------------------------------
# 2. --once into DIR, then the service.
say "mountd --once into the mirror"
rc=0
/usr/bin/time -f '%e %M' -o "$WORK/once.time" "$MOUNTD" --once "${COMMON[@]}" --progress never \
    >"$WORK/once.out" 2>"$WORK/once.log" || rc=$?
if [[ $rc -ne 0 ]]; then
    say "mountd --once exited $rc:"
    tail -n 10 "$WORK/once.log" >&2
    exit 1
fi
read -r once_wall once_kb <"$WORK/once.time"
once_rss=$(awk -v k="$once_kb" 'BEGIN { printf "%.1f", k / 1024 }')
emit mount.once.wall_time "$once_wall" s
emit mount.once.peak_rss "$once_rss" MiB
n_mirror=$(find "$DIR" -path "$DIR/.mountd" -prune -o -type f -print | wc -l)
expected=$((n_files + (big_mib > 0 ? 1 : 0)))
[[ $n_mirror -eq $expected ]] || {
    say "the mirror holds $n_mirror files, expected $expected"
    exit 1
}

# start_service INTERVAL [DATA_MODE[@TRANSPORT] [WEBSOCKET]]: launch the service (polling only unless
# WEBSOCKET is true), wait until MNT is mounted; sets service_pid, startup_s.
start_service() {
    local t0 rc=0 dm=${2:-auto} tr=auto
    [[ $dm == *@* ]] && tr=${dm#*@} dm=${dm%@*}
    t0=$EPOCHREALTIME
    MOUNTD_DATA_MODE=$dm MOUNTD_FUSE_TRANSPORT=$tr "$MOUNTD" "${COMMON[@]}" --mountpoint "$MNT" --interval "$1" \
        --websocket="${3:-false}" 2>"$WORK/service-$1.log" &
    service_pid=$!
    for _ in $(seq 18000); do # 3 min
        is_mounted && break
        if ! kill -0 "$service_pid" 2>/dev/null; then
            wait "$service_pid" 2>/dev/null || rc=$?
            service_pid=''
            say "the mount service exited with code $rc before mounting:"
            tail -n 10 "$WORK/service-$1.log" >&2
            exit 1
        fi
        sleep 0.01
    done
    is_mounted || {
        say "$MNT was not mounted within 3 min"
        tail -n 10 "$WORK/service-$1.log" >&2
        exit 1
    }
    startup_s=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }')
}
stop_service() {
    stop_pid "$service_pid" "mountd service" 60
    service_pid=''
    if is_mounted; then
        say "$MNT still mounted after the service stopped; umount -l"
        umount -l "$MNT" 2>/dev/null || true
    fi
}

say "starting the mount service (--interval 1s)"
start_service 1s
startup_1s=$startup_s
emit mount.startup_to_mounted "$startup_1s" s

# Sanity: both views list the same files, and the large file is identical through the mount.
n_dir=$(find "$DIR" | wc -l) n_mnt=$(find "$MNT" | wc -l)
n_mnt_files=$(find "$MNT" -type f | wc -l)
[[ $n_mnt_files -eq $expected ]] || {
    say "the mount shows $n_mnt_files files, expected $expected"
    exit 1
}
if ((big_mib > 0)); then
    cmp "$DIR/big/large.bin" "$MNT/big/large.bin" || {
        say "big/large.bin differs through the mount"
        exit 1
    }
fi
ls_entries=$(find "$MNT/d000" -mindepth 1 -maxdepth 1 | wc -l)

# ---------------------------------------------------------------------------------------------------
# 3. Reads: DIR vs MNT (per data mode) vs RMNT (rclone mount), cold and warm.
DROP='sync; echo 3 > /proc/sys/vm/drop_caches'
cold_note='page cache, dentries and inodes dropped before every run'
if ! (sync && echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; then
    DROP='sync'
    cold_note='NOT cold: /proc/sys/vm/drop_caches is not writable here'
    say "cannot drop caches; the \"cold\" runs are not cold"
fi
# stat of every file below a directory, timed inside the reader (its own walk is not timed).
cat >"$WORK/statrt.py" <<'PY'
import os, sys, time
root = sys.argv[1]
paths = []
for d in sorted(os.listdir(root)):
    p = os.path.join(root, d)
    if d != ".mountd" and os.path.isdir(p) and d != "big":
        paths.extend(os.path.join(p, f) for f in sorted(os.listdir(p)))
with open("/proc/sys/vm/drop_caches", "w") as f:
    f.write("2")
t = time.perf_counter()
for p in paths:
    os.stat(p)
print("%.3f" % ((time.perf_counter() - t) / max(1, len(paths)) * 1e6))
PY
# The random reader times its own loop (no interpreter start-up in the figure).
cat >"$WORK/rand.py" <<'PY'
import os, random, sys, time
path, n = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
rng = random.Random(42)
offs = [rng.randrange(0, max(1, size // 4096)) * 4096 for _ in range(n)]
t = time.perf_counter()
for o in offs:
    os.pread(fd, 4096, o)
print("%.6f" % (time.perf_counter() - t))
PY

# measure MODE RUNS CMD [internal]: median wall seconds of RUNS runs of CMD (sh -c). cold: caches
# dropped before each run; warm: one untimed warmup first. internal: CMD prints its own seconds.
# Prints the median, or "fail".
measure() {
    local mode=$1 runs=$2 cmd=$3 internal=${4:-} times=() t0 i out
    if [[ -n $HYPERFINE && -z $internal ]]; then
        local j=$WORK/hf.json opts=(--runs "$runs")
        if [[ $mode == cold ]]; then opts+=(--prepare "$DROP"); else opts+=(--warmup 1); fi
        if "$HYPERFINE" --style none "${opts[@]}" --export-json "$j" "$cmd" >>"$WORK/hyperfine.log" 2>&1; then
            fmt "$(json_median "$j")" '%.4f'
        else
            echo fail
        fi
        return
    fi
    [[ $mode == warm ]] && { sh -c "$cmd" >/dev/null 2>&1 || { echo fail; return; }; }
    for ((i = 0; i < runs; i++)); do
        [[ $mode == cold ]] && sh -c "$DROP" 2>/dev/null
        t0=$EPOCHREALTIME
        out=$(sh -c "$cmd" 2>/dev/null) || { echo fail; return; }
        if [[ -n $internal ]]; then
            times+=("$out")
        else
            times+=("$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }')")
        fi
    done
    printf '%s\n' "${times[@]}" | sort -g | awk '{ v[NR] = $1 } END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.4f\n", m }'
}

declare -A res
benches=(find cat_all)
((big_mib > 0)) && benches+=(dd_large rand_4k)
benches+=(ls_l_dir du stat_rt)
if [[ -n $only ]]; then
    keep=()
    for b in "${benches[@]}"; do [[ " $only " == *" $b "* ]] && keep+=("$b"); done
    benches=("${keep[@]}")
fi
# run_suite LABEL X: every benchmark, cold and warm, on directory X; results in res[name.mode.LABEL].
run_suite() {
    local label=$1 x=$2 name mode runs cmd tmpl internal t unit
    for name in "${benches[@]}"; do
        internal=''
        case $name in
        find) tmpl='find @X@ | wc -l' cold=3 warm=10 ;;
        cat_all) tmpl='find @X@ -name .mountd -prune -o -type f -print0 | xargs -0 cat > /dev/null' cold=3 warm=4 ;;
        dd_large) tmpl='dd if=@X@/big/large.bin of=/dev/null bs=1M status=none' cold=3 warm=4 ;;
        rand_4k) tmpl="python3 $WORK/rand.py @X@/big/large.bin $rand_n" cold=3 warm=5 internal=1 ;;
        ls_l_dir) tmpl='ls -l @X@/d000 > /dev/null' cold=3 warm=10 ;;
        du) tmpl='du -s @X@ > /dev/null' cold=3 warm=10 ;;
        stat_rt) tmpl="python3 $WORK/statrt.py @X@" cold=3 warm=3 internal=1 ;;
        esac
        for mode in cold warm; do
            runs=$cold
            [[ $mode == warm ]] && runs=$warm
            cmd=${tmpl//@X@/$(printf %q "$x")}
            say "$name $mode $label ($runs runs): $cmd"
            t=$(measure "$mode" "$runs" "$cmd" "$internal")
            [[ $t == fail ]] && say "$name $mode $label FAILED (see $WORK/hyperfine.log)"
            unit=s
            [[ $name == stat_rt ]] && unit=us
            [[ $t != fail ]] && emit "mount.$name.$label.$mode" "$t" "$unit"
            res[$name.$mode.$label]=$t
        done
    done
}

uring_on=0
[[ $(cat /sys/module/fuse/parameters/enable_uring 2>/dev/null) == Y ]] && uring_on=1
[[ -z $load ]] && load=$uring_on
((uring_on)) || load_transports='dev'
if [[ -z $modes ]]; then
    modes='page-cache@dev passthrough@dev'
    if ((uring_on)); then
        modes+=' page-cache@uring passthrough@uring'
    else
        say "FUSE over io_uring is off here (/sys/module/fuse/parameters/enable_uring): /dev/fuse only"
    fi
fi
labels=(dir)
if [[ $reads == 1 ]]; then
    # The service started above (auto mode) gives way to one service per data mode.
    stop_service
    run_suite dir "$DIR"
    for m in $modes; do
        say "service in data mode $m"
        start_service 1s "$m"
        grep -o 'FUSE data mode [a-z-]*' "$WORK/service-1s.log" | tail -n1 >&2 || true
        cmp -s "$DIR/d000/$(ls "$DIR/d000" | head -n1)" "$MNT/d000/$(ls "$DIR/d000" | head -n1)" || {
            say "mode $m: the mount does not serve the mirror's bytes"
            exit 1
        }
        run_suite "$m" "$MNT"
        labels+=("$m")
        hwm=$(awk '/^VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$service_pid/status" 2>/dev/null || echo 0)
        emit "mount.service.$m.peak_rss" "${hwm:-0}" MiB
        stop_service
    done
    if [[ $use_rclone == 1 ]] && ! command -v rclone >/dev/null && command -v apt-get >/dev/null; then
        say "installing rclone (best effort)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone >/dev/null 2>&1 || true
    fi
    if [[ $use_rclone == 1 ]] && command -v rclone >/dev/null; then
        mkdir -p "$RMNT"
        say "rclone mount $DIR $RMNT --read-only ($(rclone version 2>/dev/null | head -n1))"
        rclone_fusermount "$WORK"
        rclone mount "$DIR" "$RMNT" --read-only --config /dev/null >"$WORK/rclone.log" 2>&1 &
        rclone_pid=$!
        for _ in $(seq 3000); do
            mountpoint -q "$RMNT" && break
            sleep 0.01
        done
        if mountpoint -q "$RMNT"; then
            run_suite rclone "$RMNT"
            labels+=(rclone)
        else
            say "rclone mount did not come up (see $WORK/rclone.log)"
        fi
        stop_pid "$rclone_pid" "rclone mount" 10
        rclone_pid=''
        mountpoint -q "$RMNT" && umount -l "$RMNT"
    elif [[ $use_rclone == 1 ]]; then
        say "rclone is not installed: no rclone column"
    fi
    for name in "${benches[@]}"; do
        for mode in cold warm; do
            d=${res[$name.$mode.dir]}
            line=$(printf '%-10s %-5s %9s' "$name" "$mode" "$d")
            for l in "${labels[@]:1}"; do
                t=${res[$name.$mode.$l]} ratio=-
                if [[ $d != fail && $t != fail ]] && awk -v d="$d" 'BEGIN { exit !(d > 0) }'; then
                    ratio=$(awk -v d="$d" -v m="$t" 'BEGIN { printf "%.2f", m / d }')
                    emit "mount.$name.ratio.$l.$mode" "$ratio" x
                fi
                line+=$(printf ' %9s %6s' "$t" "$ratio")
            done
            rows+=("$line")
        done
    done
    start_service 1s
else
    cold_note='read benchmarks skipped (--latency-only)'
fi

# ---------------------------------------------------------------------------------------------------
# 3b. Under CPU load (--load, or by default when io_uring is on): a CPU-bound process per core runs
#     while a reader opens, reads and closes every small file through the view in passthrough mode
#     (one OPEN round trip per file), once per transport. The reader reports its total time and the
#     longest single file (open + read + close); the idle-class ring threads must not starve.
# ---------------------------------------------------------------------------------------------------
cat >"$WORK/catmax.py" <<'PY'
import os, sys, time
root = sys.argv[1]
paths = []
for d in sorted(os.listdir(root)):
    p = os.path.join(root, d)
    if d not in (".mountd", "big") and os.path.isdir(p):
        paths.extend(os.path.join(p, f) for f in sorted(os.listdir(p)))
worst = 0.0
t0 = time.perf_counter()
for p in paths:
    t = time.perf_counter()
    with open(p, "rb") as f:
        f.read()
    worst = max(worst, time.perf_counter() - t)
print("%.3f %.3f" % (time.perf_counter() - t0, worst * 1e3))
PY
if [[ $load == 1 && $reads == 1 ]]; then
    stop_service
    ncpu=$(nproc)
    for tr in $load_transports; do
        say "under load: $ncpu CPU-bound processes, passthrough@$tr"
        start_service 1s "passthrough@$tr"
        python3 "$WORK/catmax.py" "$MNT" >/dev/null # warm the dentries
        hogs=()
        for _ in $(seq "$ncpu"); do
            python3 -c 'while True: pass' &
            hogs+=($!)
        done
        best='' worst_ms=0
        for _ in 1 2 3; do
            read -r secs ms < <(python3 "$WORK/catmax.py" "$MNT")
            [[ -z $best ]] || awk -v a="$secs" -v b="$best" 'BEGIN { exit !(a < b) }' && best=$secs
            worst_ms=$(awk -v a="$ms" -v b="$worst_ms" 'BEGIN { print (a > b) ? a : b }')
        done
        kill "${hogs[@]}" 2>/dev/null
        wait "${hogs[@]}" 2>/dev/null || true
        emit "mount.load.cat_all.$tr" "$best" s
        emit "mount.load.max_file.$tr" "$worst_ms" ms
        rows+=("$(printf '%-10s %-5s %9s  max %s ms (passthrough@%s, %s CPU hogs)' cat_all load "$best" "$worst_ms" "$tr" "$ncpu")")
        stop_service
        grep -o 'promotions=[0-9]*' "$WORK/service-1s.log" >&2 || true
    done
    start_service 1s
fi

service_hwm=$(awk '/^VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$service_pid/status" 2>/dev/null || echo 0)
remote_hwm=$(awk '/^VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$remote_pid/status" 2>/dev/null || echo 0)
emit mount.service.peak_rss "${service_hwm:-0}" MiB
emit mount.remote.peak_rss "${remote_hwm:-0}" MiB

# ---------------------------------------------------------------------------------------------------
# 4. Remote write -> visible under MNT (or in DIR), measured by `latency-probe` (refremote/src/bin):
#    t0 is taken just before the PUT request is written on a kept-alive TCP connection (no process
#    start in the figure), so each figure includes the PUT's round trip; the file is then read every
#    1 ms. Before each PUT a random pause of 0..PAUSE: 1.2 x the interval for polling (a random phase of
#    the poll cycle; the previous sample ended right after a pass), 200 ms for the stream.
lat_rows=()
latency() { # latency LABEL PAUSE_MS ROOT SAMPLES
    local label=$1 pause_ms=$2 root=$3 n_samples=$4 out lats=() timeouts=0
    out=$("$PROBE" --url "$URL" --workspace bench --token-file "$TOKEN" --root "$root" --dir /d001 \
        --label "$label" --samples "$n_samples" --pause-ms "$pause_ms") || {
        say "latency-probe failed ($label)"
        exit 1
    }
    local v
    while read -r v; do
        if [[ $v == timeout ]]; then
            timeouts=$((timeouts + 1))
            say "latency $label: a sample was not visible within 30s"
        else
            lats+=("$v")
        fi
    done <<<"$out"
    local n=${#lats[@]} p50=- p90=- max=- all=''
    if ((n > 0)); then
        read -r p50 p90 max < <(printf '%s\n' "${lats[@]}" | sort -g | awk '{ v[NR] = $1 } END {
            i50 = int(NR * 0.5); if (i50 < NR * 0.5) i50++; i90 = int(NR * 0.9); if (i90 < NR * 0.9) i90++
            print v[i50], v[i90], v[NR] }')
        all=$(printf '%s\n' "${lats[@]}" | sort -g | paste -sd' ')
        emit "mount.latency.$label.p50" "$p50" ms
        emit "mount.latency.$label.p90" "$p90" ms
        emit "mount.latency.$label.max" "$max" ms
    fi
    emit "mount.latency.$label.timeouts" "$timeouts" count
    lat_rows+=("$(printf '%-15s %7s %8s %8s %8s %8s  %s' "$label" "$n/$n_samples" "$p50" "$p90" "$max" "$timeouts" "$all")")
}

# wait_realtime LOG: until the service logged that the stream is connected (1 min).
wait_realtime() {
    for _ in $(seq 6000); do
        grep -q 'realtime stream connected' "$1" 2>/dev/null && return 0
        sleep 0.01
    done
    say "the realtime stream did not connect within 1 min:"
    tail -n 10 "$1" >&2
    exit 1
}

startup_200=-
if [[ $latency == 1 ]]; then
    say "latency: remote write -> visible under the mount (polling, --interval 1s)"
    latency interval_1s 1200 "$MNT" "$samples"
    say "restarting the service with --interval 200ms"
    stop_service
    start_service 200ms
    startup_200=$startup_s
    emit mount.restart_to_mounted "$startup_200" s
    say "latency: remote write -> visible under the mount (polling, --interval 200ms)"
    latency interval_200ms 240 "$MNT" "$samples"
    say "restarting the service with the realtime stream (--interval 30s)"
    stop_service
    start_service 30s auto true
    wait_realtime "$WORK/service-30s.log"
    say "latency: remote write -> visible under the mount (realtime stream, --interval 30s)"
    latency realtime_fuse 200 "$MNT" "$rt_samples"
    stop_service
    say "starting the plain-directory service (--no-fuse, realtime stream, --interval 30s)"
    "$MOUNTD" "${COMMON[@]}" --no-fuse --interval 30s 2>"$WORK/service-plain.log" &
    service_pid=$!
    wait_realtime "$WORK/service-plain.log"
    say "latency: remote write -> visible in the mirror directory (realtime stream, --no-fuse)"
    latency realtime_dir 200 "$DIR" "$rt_samples"
fi
stop_service

# ---------------------------------------------------------------------------------------------------
printf '\nmountd mount benchmarks: %s files x 1 KiB in %s dirs + %s MiB big/large.bin, release build, loopback (%s, %s cores)\n\n' \
    "$n_files" "$dirs" "$big_mib" "$(uname -r)" "$(nproc)"
printf 'remote startup (seed + generate)  %8s s\n' "$remote_start"
printf 'mountd --once into DIR            %8s s   peak RSS %s MiB\n' "$once_wall" "$once_rss"
printf 'service start -> mounted          %8s s   (restart at 200ms: %s s)\n' "$startup_1s" "$startup_200"
printf 'service peak RSS after the reads  %8s MiB (remote %s MiB)\n' "$service_hwm" "$remote_hwm"
printf 'entries: find DIR %s lines (incl. .mountd), find MNT %s; ls -l dir: %s entries\n\n' "$n_dir" "$n_mnt" "$ls_entries"
if [[ $reads == 1 ]]; then
    hdr=$(printf '%-10s %-5s %9s' bench cache DIR_s)
    for l in "${labels[@]:1}"; do hdr+=$(printf ' %9s %6s' "${l:0:9}" "x"); done
    printf '%s\n' "$hdr"
    printf '%s\n' "${rows[@]}"
    printf '\ncold: %s; warm: after one untimed run. Times are medians%s (seconds; rand_4k: %s reads of 4 KiB, timed inside the reader).\n' "$cold_note" \
        "$([[ -n $HYPERFINE ]] && echo ' (hyperfine)' || echo '')" "$rand_n"
    printf 'x = that column / DIR. Columns: the mountd FUSE view per data mode (MOUNTD_DATA_MODE), rclone mount of DIR.\n'
    printf '"cold" drops the kernel caches but leaves the daemons'"'"' own memory (SQLite cache, rclone dir cache) warm.\n\n'
else
    printf '(read benchmarks skipped: --latency-only)\n\n'
fi
if [[ $latency == 1 ]]; then
    printf 'remote write -> visible (ms, from just before the PUT on a kept-alive connection; the file is read every 1 ms)\n'
    printf 'interval_*: polling only (--websocket=false) under MNT; realtime_fuse: the /fs/ws stream under\n'
    printf 'MNT, --interval 30s; realtime_dir: the stream with --no-fuse, in DIR, --interval 30s\n'
    printf '%-15s %7s %8s %8s %8s %8s  %s\n' mode samples p50 p90 max timeouts 'all (sorted)'
    printf '%s\n' "${lat_rows[@]}"
fi
printf '\nresults appended to %s\n' "${RESULTS#"$ROOT"/}"
