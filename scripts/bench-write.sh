#!/usr/bin/env bash
# Write benchmarks of the release build (issue 17, "A writable FUSE view"): each workload runs in a
# fresh empty directory inside every target (--runs times, --seq-runs for the big write; the median
# is the figure), timed with $EPOCHREALTIME; seconds and the ratio to the plain directory of the
# same run.
#   seq_write_1g  dd bs=1M of a pre-generated random file (in the page cache) into the target; the
#                 close is timed, no fsync (--fsync adds seq_write_1g_fsync: the same with conv=fsync)
#   untar_5000    tar -xf of a generated source-like tree: 5,000 files of 100 B-20 KiB in 50 dirs
#   git_2000      git clone --no-hardlinks file://... of a generated 2,000-file repository (one
#                 commit), git status, then 10 files changed and git commit -am; the three together
#                 and each one (git_2000.clone, .status, .commit)
# Targets (columns):
#   plain    a plain directory on the same file system as the mirror
#   MODE     mountd's FUSE view, one column per --modes data mode (MOUNTD_DATA_MODE), optionally
#            @TRANSPORT (MOUNTD_FUSE_TRANSPORT: dev or uring; e.g. "auto@uring auto@dev"): the service
#            (`mountd --mountpoint MNT --interval 1s`, --sync-mode mirror) on a fresh mountd-remote
#            (--generate 10 --dirs 1) per mode; the body caps (mountd-remote --max-body-bytes, mountd
#            --max-push-bytes) are raised so the big file fits in one PUT (base64: 4/3 of its size)
#   rclone   `rclone mount SRC RMNT --vfs-cache-mode writes --config /dev/null` (its cache under the
#            work dir), installed with apt-get if missing; --no-rclone skips it
# After each run on a mountd column: the time until the server holds exactly the run directory's
# files (its /fs/tree listing: same paths, sizes and SHA-256), write.W.push_drain_s.MODE (median),
# and the write requests meanwhile; then the service's outbox must hold nothing for that directory.
# After the last: the remote must hold exactly the view's bytes: `mountd --once` into a fresh
# directory, `diff -r` against the view (only .mountd excluded; empty directories, which relayfile
# cannot hold, are counted and reported, not failed). A mismatch, a failed workload, a remote that
# does not catch up, an outbox row left behind or a path the service could not push (too large,
# denied, conflict) exits 1 after the table. Targets (issue 17): mountd <= 1.5x plain for seq_write, <= 3x for untar and git, and
# ahead of rclone on each.
# The work directory is a fresh ext4 file system (a sparse image under TMPDIR, loop-mounted; needs
# mkfs.ext4 and a loop device, else --no-fresh-fs is said and TMPDIR is used as it is): ext4 scans the
# inodes deleted in the last minutes each time it allocates one, which made the plain directory's
# untar vary 0.12-3.5 s between runs on a disk that had just deleted a build or an earlier run's
# files. Nothing is deleted until the end either.
# Results are appended as JSON lines {"name":..., "value":..., "unit":...} to
# target/bench/results.jsonl and printed as a table; the service's log of each data mode is kept as
# target/bench/bench-write.MODE.service.log.
#
#   scripts/bench-write.sh [--big-mib N] [--modes "auto passthrough"] [--no-rclone] [--fsync]
#                          [--runs R] [--seq-runs S] [--only "seq_write untar git"]
#                          [--drain-timeout SECONDS] [--no-build] [--no-fresh-fs]
#     defaults: --big-mib 1024 (the workload is named seq_write_<N>m when it is not 1024), 3 runs of
#     untar and git, 1 of the big write, modes "auto passthrough", drain timeout 300 s
set -euo pipefail
# shellcheck source=lib/remote.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/remote.sh"
# shellcheck source=lib/rclone.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/rclone.sh"

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

big_mib=1024 modes='auto passthrough' use_rclone=1 build=1 fsync=0 only='seq_write untar git'
drain_timeout=300 runs=3 seq_runs=1 fresh_fs=1
while (($#)); do
    case $1 in
    --big-mib) big_mib=$2; shift 2 ;;
    --modes) modes=$2; shift 2 ;;
    --no-rclone) use_rclone=0; shift ;;
    --fsync) fsync=1; shift ;;
    --only) only=$2; shift 2 ;;
    --drain-timeout) drain_timeout=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --seq-runs) seq_runs=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --no-fresh-fs) fresh_fs=0; shift ;;
    -h | --help)
        sed -n '2,43p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "bench-write.sh: unknown argument $1 (try --help)" >&2
        exit 2
        ;;
    esac
done
for v in "$big_mib" "$drain_timeout" "$runs" "$seq_runs"; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || {
        echo "bench-write.sh: --big-mib, --drain-timeout, --runs and --seq-runs take positive integers" >&2
        exit 2
    }
done
for w in $only; do
    [[ $w == seq_write || $w == untar || $w == git ]] || {
        echo "bench-write.sh: --only takes seq_write, untar and git" >&2
        exit 2
    }
done
say() { echo "bench-write.sh: $*" >&2; }

[[ $(id -u) -eq 0 && -c /dev/fuse ]] || {
    say "the write benchmark needs root and /dev/fuse"
    exit 1
}
for tool in curl mountpoint git tar python3 jq; do
    command -v "$tool" >/dev/null || {
        say "$tool is needed"
        exit 1
    }
done

if [[ $build == 1 ]]; then
    say "building the release binaries"
    cargo build --workspace --release --bins --quiet
fi
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
MOUNTD=$BIN/mountd
REMOTE=$BIN/mountd-remote
OUT_DIR=$ROOT/target/bench
RESULTS=$OUT_DIR/results.jsonl
mkdir -p "$OUT_DIR"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mountd-bench-write.XXXXXX")
IMG=''
if [[ $fresh_fs == 1 ]]; then
    if command -v mkfs.ext4 >/dev/null && command -v losetup >/dev/null && losetup -f >/dev/null 2>&1; then
        # Room for every copy of the big files, kept to the end (one per --seq-runs in the plain
        # directory, each mode's mirror and its fresh pull, rclone's source and its cache; the
        # input), sparse: only what is written takes space.
        n_modes=$(wc -w <<<"$modes")
        IMG=$WORK.img
        truncate -s "$(((seq_runs * (2 * n_modes + 3) + 1) * big_mib + 8192))M" "$IMG"
        mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1 "$IMG"
        # noinit_itable: no background zeroing of inode tables while the benchmark runs.
        mount -o loop,noinit_itable "$IMG" "$WORK"
    else
        say "no mkfs.ext4 or loop device: running in $WORK as it is (as with --no-fresh-fs)"
    fi
fi
GEN=$WORK/gen TOKEN=$WORK/token
remote_pid='' service_pid='' rclone_pid=''

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
mounts_under_work() { awk -v w="$WORK/" 'index($2, w) == 1 { print $2 }' /proc/mounts; }

cleanup() {
    local rc=$? m
    set +e
    stop_pid "$service_pid" "mountd service" 30
    stop_pid "$rclone_pid" "rclone mount" 10
    stop_pid "$remote_pid" "mountd-remote" 10
    for m in $(mounts_under_work); do
        say "$m is still mounted; detaching it (umount -l)"
        umount -l "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null
    done
    if [[ -n $(mounts_under_work) ]]; then
        say "not removing $WORK: something under it is still mounted"
    elif [[ -n $IMG ]]; then
        umount "$WORK" && rm -f "$IMG" && rmdir "$WORK"
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
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }
failures=() # one line per failure, printed after the table; any makes the exit code 1

# ---------------------------------------------------------------------------------------------------
# 1. Inputs, generated once: the big file (kept in the page cache), the tree and its tarball, the
#    repository.
seq_name=seq_write_1g
((big_mib == 1024)) || seq_name=seq_write_${big_mib}m
mkdir -p "$GEN"
if [[ " $only " == *" seq_write "* ]]; then
    say "writing a ${big_mib} MiB random file"
    head -c $((big_mib * 1048576)) /dev/urandom >"$GEN/big.bin"
fi
say "generating the 5,000-file tree and the 2,000-file repository"
python3 - "$GEN" <<'PY'
import io, math, os, random, sys, tarfile
gen = sys.argv[1]
words = ("fn let mut self return if else match impl struct enum pub use mod for while loop break "
         "continue const static async await where trait type crate super Some None Ok Err Vec "
         "String usize u64 i32 bool true false println format assert_eq map filter collect iter "
         "into clone unwrap expect len push insert remove get config state buffer request reply "
         "path entry inode offset size error result value key index count total cursor").split()
rng = random.Random(17)
pool = []
for _ in range(4000):
    indent = "    " * rng.randrange(0, 4)
    pool.append(indent + " ".join(rng.choice(words) for _ in range(rng.randrange(2, 12))) + ";\n")
exts = [".rs", ".c", ".h", ".py", ".go", ".ts", ".md", ".txt"]

def content(r):
    size = int(math.exp(r.uniform(math.log(100), math.log(20480))))
    out, n = [], 0
    while n < size:
        line = r.choice(pool)
        out.append(line)
        n += len(line)
    return "".join(out)[:size]

def tree(n_files, tops, subs, seed):
    """The directories, then (path, text) of every file."""
    r = random.Random(seed)
    dirs = []
    for t in tops:
        dirs.append(t)
        dirs.extend(f"{t}/{s}" for s in subs)
    paths = [f"{dirs[i % len(dirs)]}/file_{i:05d}{r.choice(exts)}" for i in range(n_files)]
    return dirs, [(p, content(r)) for p in paths]

# The tree straight into its tarball (owner 0, numeric): no 5,000 files written and deleted on the
# disk under test (ext4 scans recently deleted inodes when it allocates new ones for minutes after).
# 5 top-level dirs x (1 + 9 subdirs) = 50 dirs, 100 files each.
dirs, files = tree(5000, ["src", "lib", "tests", "docs", "tools"], [f"mod{j}" for j in range(9)], 5000)
with tarfile.open(os.path.join(gen, "tree.tar"), "w", format=tarfile.GNU_FORMAT) as tar:
    for d in ["."] + [f"./{d}" for d in sorted(dirs)]:
        ti = tarfile.TarInfo(d)
        ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1700000000
        tar.addfile(ti)
    for p, text in files:
        data = text.encode()
        ti = tarfile.TarInfo(f"./{p}")
        ti.size, ti.mode, ti.mtime = len(data), 0o644, 1700000000
        tar.addfile(ti, io.BytesIO(data))
with open(os.path.join(gen, "tree.stats"), "w") as f:
    f.write(f"{len(dirs)} {len(files)} {sum(len(t.encode()) for _, t in files)}\n")
# 4 top-level x (1 + 4) = 20 dirs, 100 files each
_, files = tree(2000, ["src", "lib", "tests", "docs"], [f"part{j}" for j in range(4)], 2000)
for p, text in files:
    os.makedirs(os.path.join(gen, "repo", os.path.dirname(p)), exist_ok=True)
    with open(os.path.join(gen, "repo", p), "w") as f:
        f.write(text)
PY
read -r tree_dirs tree_files tree_bytes <"$GEN/tree.stats"
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
GITC=(git -c user.name=bench -c user.email=bench@example.invalid -c init.defaultBranch=main)
"${GITC[@]}" -C "$GEN/repo" init -q
"${GITC[@]}" -C "$GEN/repo" add -A
"${GITC[@]}" -C "$GEN/repo" commit -qm 'generated tree'
mapfile -t edit_paths < <(git -C "$GEN/repo" ls-files | head -n 10)
repo_files=$(git -C "$GEN/repo" ls-files | wc -l)
printf 'bench-token\n' >"$TOKEN"
fs_type=$(findmnt -n -o FSTYPE -T "$WORK" 2>/dev/null || stat -f -c %T "$WORK")

emit write.big_file_size "$big_mib" MiB
emit write.untar.files "$tree_files" count
emit write.untar.bytes "$tree_bytes" bytes
emit write.git.files "$repo_files" count

# ---------------------------------------------------------------------------------------------------
# 2. The workloads, RUNS times each (--seq-runs for the big write), each run in a fresh directory
#    W.I of the target; the median of the runs is the figure. Each step's output goes to
#    $WORK/step.*; a failed step sets step_err.
declare -A res runs_of
step_s='' step_err=''
# step CMD...: run CMD, time it into step_s; 1 with step_err on failure.
step() {
    local t0 rc=0
    t0=$EPOCHREALTIME
    "$@" >"$WORK/step.out" 2>"$WORK/step.err" || rc=$?
    step_s=$(since "$t0")
    if ((rc != 0)); then
        step_err="$* -> exit $rc: $(tail -n 3 "$WORK/step.err" | tr '\n' ' ' | cut -c1-300)"
        return 1
    fi
}
record() { # record WORKLOAD LABEL RUN SECONDS|fail [ERROR]: one run's figure
    if [[ $4 == fail ]]; then
        [[ ${res[$1.$2]:-} == fail ]] || failures+=("$1 on $2 (run $3): $5")
        res[$1.$2]=fail
        say "$1 on $2 (run $3) FAILED: $5"
    else
        runs_of[$1.$2]+="$4 "
        say "$1 on $2 (run $3): $4 s"
    fi
}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.3f\n", m }'; }
finish() { # finish LABEL: each workload's median into res (unless a run failed), emitted
    local key w
    for key in "${!runs_of[@]}"; do
        [[ $key == *."$1" && ${res[$key]:-} != fail ]] || continue
        # shellcheck disable=SC2086 # the runs are a space-separated list of numbers
        res[$key]=$(median ${runs_of[$key]})
        w=${key%."$1"}
        emit "write.$w.$1" "${res[$key]}" s
    done
}
fresh_dir() { mkdir "$1" 2>"$WORK/step.err" || { step_err="mkdir $1: $(tr '\n' ' ' <"$WORK/step.err")"; return 1; }; }

wl_seq() { # wl_seq LABEL TARGET RUN
    local d=$2/$seq_name.$3
    sync
    cat "$GEN/big.bin" >/dev/null
    if fresh_dir "$d" && step dd if="$GEN/big.bin" of="$d/big.bin" bs=1M status=none; then
        record "$seq_name" "$1" "$3" "$step_s"
    else
        record "$seq_name" "$1" "$3" fail "$step_err"
    fi
    if ((fsync)); then
        sync
        if step dd if="$GEN/big.bin" of="$d/big-fsync.bin" bs=1M conv=fsync status=none; then
            record "${seq_name}_fsync" "$1" "$3" "$step_s"
        else
            record "${seq_name}_fsync" "$1" "$3" fail "$step_err"
        fi
    fi
}
wl_untar() { # wl_untar LABEL TARGET RUN
    local d=$2/untar_5000.$3
    sync
    cat "$GEN/tree.tar" >/dev/null
    if fresh_dir "$d" && step tar -xf "$GEN/tree.tar" -C "$d"; then
        record untar_5000 "$1" "$3" "$step_s"
    else
        record untar_5000 "$1" "$3" fail "$step_err"
    fi
}
git_edit() { # git_edit REPO: change the 10 files, commit them
    local p
    for p in "${edit_paths[@]}"; do printf '// edited by bench-write.sh\n' >>"$1/$p"; done
    "${GITC[@]}" -C "$1" commit -qam 'edit 10 files'
}
wl_git() { # wl_git LABEL TARGET RUN
    local d=$2/git_2000.$3 s clone=fail status=fail commit=fail n
    sync
    if fresh_dir "$d" && step git clone -q --no-hardlinks "file://$GEN/repo" "$d/repo"; then
        clone=$step_s
        if step git -C "$d/repo" status; then
            status=$step_s
            step git_edit "$d/repo" && commit=$step_s
        fi
    fi
    for s in clone status commit; do
        if [[ ${!s} == fail ]]; then res[git_2000.$s.$1]=fail; else runs_of[git_2000.$s.$1]+="${!s} "; fi
    done
    if [[ $commit == fail ]]; then
        record git_2000 "$1" "$3" fail "$step_err"
    else
        record git_2000 "$1" "$3" "$(awk -v a="$clone" -v b="$status" -v c="$commit" 'BEGIN { printf "%.3f", a + b + c }')"
        # the commit must be there, with the 10 files changed
        n=$(git -C "$d/repo" show --stat --format= HEAD 2>/dev/null | grep -c '|' || true)
        [[ $n -eq 10 ]] || failures+=("git_2000 on $1 (run $3): the last commit changes $n files, expected 10")
    fi
}
# run_workloads LABEL TARGET [AFTER]: every workload, with the command AFTER LABEL WORKLOAD RUN after
# each run; then the medians.
run_workloads() {
    local w name n i
    for w in $only; do
        case $w in
        seq_write) name=$seq_name n=$seq_runs ;;
        untar) name=untar_5000 n=$runs ;;
        git) name=git_2000 n=$runs ;;
        esac
        for ((i = 1; i <= n; i++)); do
            "wl_${w%_write}" "$1" "$2" "$i"
            [[ -z ${3:-} ]] || "$3" "$1" "$name" "$i"
        done
    done
    finish "$1"
}

# ---------------------------------------------------------------------------------------------------
# 3. plain
labels=()
say "target plain: $WORK/plain ($fs_type)"
mkdir -p "$WORK/plain"
run_workloads plain "$WORK/plain"
labels+=(plain)

# ---------------------------------------------------------------------------------------------------
# 4. mountd, one service (and one fresh remote) per data mode.
body_cap=$((big_mib * 3 / 2 + 16))M # base64 is 4/3 of the bytes; JSON adds a little
declare -A drain reqs drain_runs reqs_runs
MNT='' DIR=''
status_json() { "$MOUNTD" status --local-dir "$DIR" --json 2>/dev/null || true; }
writes() { curl -sS "$URL/_control/counts" | jq '.put + .bulk + .delete'; }

# The remote caught up with a run's directory:
#   drain.py URL TOKEN_FILE REMOTE_DIR LOCAL_DIR T0 TIMEOUT MOUNTD MIRROR
# lists REMOTE_DIR on the server (GET /fs/tree, every page) every 0.2 s until it holds exactly the
# files of LOCAL_DIR (the same paths with the same SHA-256; a local file is hashed once, when the
# remote first lists it: the tree's size of a base64-stored file is its encoded length, so sizes are
# not compared); prints "ok S" (S: seconds from T0, an epoch time, to the listing that matched),
# "stalled WHAT" when the listing did not change for 30 s while the service's outbox held nothing for
# a file of LOCAL_DIR (nothing left to push, yet the remote differs), or "timeout WHAT".
cat >"$WORK/drain.py" <<'PY'
import hashlib, json, os, subprocess, sys, time, urllib.error, urllib.parse, urllib.request
url, token_file, rdir, ldir, t0, timeout, mountd, mirror = sys.argv[1:9]
t0, timeout = float(t0), float(timeout)
token = open(token_file).read().strip()
base = os.path.dirname(ldir)
local = {}
for root, dirs, files in os.walk(ldir):
    for f in files:
        p = os.path.join(root, f)
        local["/" + os.path.relpath(p, base)] = p
hashes = {}
def sha(path):
    if path not in hashes:
        h = hashlib.sha256()
        with open(local[path], "rb", buffering=0) as f:  # unbuffered: no isatty() ioctl on the view
            for b in iter(lambda: f.read(1 << 20), b""):
                h.update(b)
        hashes[path] = h.hexdigest()
    return hashes[path]
def listing():
    out, cursor = {}, None
    while True:
        q = {"path": rdir, "depth": "100"}
        if cursor:
            q["cursor"] = cursor
        req = urllib.request.Request(url + "/v1/workspaces/bench/fs/tree?" + urllib.parse.urlencode(q),
                                     headers={"Authorization": "Bearer " + token,
                                              "X-Correlation-Id": "bench-write-drain"})
        try:
            with urllib.request.urlopen(req) as r:
                page = json.load(r)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return out
            raise
        for e in page.get("entries", []):
            if e.get("type") == "file":
                out[e["path"]] = (e.get("size"), e.get("contentHash"))
        cursor = page.get("nextCursor")
        if not cursor:
            return out
def outbox_rows():
    """Outbox rows naming a file of LOCAL_DIR that exists (something left to push)."""
    out = subprocess.run([mountd, "outbox", "--local-dir", mirror], capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines()[1:]:
        f = line.split()
        if len(f) >= 2 and "/" + f[1] in local and os.path.exists(local["/" + f[1]]):
            rows.append(f[1])
    return rows
last, same_since = None, time.time()
while True:
    at = time.time()
    remote = listing()
    missing = [p for p in local if p not in remote]
    extra = [p for p in remote if p not in local]
    differ = [p for p in local if p in remote and remote[p][1] != sha(p)]
    if not (missing or extra or differ):
        print("ok %.3f" % (at - t0))
        sys.exit(0)
    what = "%d missing on the remote, %d extra, %d differ (of %d files): %s" % (
        len(missing), len(extra), len(differ), len(local), " ".join((missing + extra + differ)[:4]))
    if remote != last:
        last, same_since = remote, time.time()
    elif time.time() - same_since >= 30 and not outbox_rows():
        print("stalled " + what)
        sys.exit(0)
    if time.time() - t0 >= timeout:
        print("timeout " + what)
        sys.exit(0)
    time.sleep(0.2)
PY

# drain_outbox MODE WORKLOAD RUN: the time from the workload's end until the remote holds exactly the
# run directory's files (drain.py), and the write requests meanwhile, go to drain_runs/reqs_runs
# (drain[WORKLOAD.MODE]: "stalled" or "timeout" when it did not). Then the service's outbox must
# hold nothing under the run's directory (within 10 s): a row left (e.g. a put of a file the view
# no longer has) is a failure, and so are paths the service will not push.
drain_outbox() {
    local mode=$1 w=$2 run=$2.$3 t0=$EPOCHREALTIME before n out rows=''
    before=$(writes)
    out=$(python3 "$WORK/drain.py" "$URL" "$TOKEN" "/$run" "$MNT/$run" "$t0" "$drain_timeout" "$MOUNTD" "$DIR")
    n=$(writes)
    if [[ $out == "ok "* ]]; then
        drain_runs[$w.$mode]+="${out#ok } " reqs_runs[$w.$mode]+="$((n - before)) "
        say "$w on $mode (run $3): the remote holds the run's files after ${out#ok }s ($((n - before)) write requests)"
    else
        drain[$w.$mode]=${out%% *}
        case $out in
        stalled*) out="the remote differs from the view and the service has nothing left to push for it (listing unchanged for 30 s): ${out#stalled }" ;;
        *) out="the remote did not catch up within ${drain_timeout}s: ${out#timeout }" ;;
        esac
        failures+=("$w on $mode (run $3): $out")
        say "$w on $mode (run $3): $out"
    fi
    for _ in $(seq 50); do
        rows=$("$MOUNTD" outbox --local-dir "$DIR" 2>/dev/null | awk -v p="$run/" 'NR > 1 && index($2, p) == 1 { print $1, $2 }' || true)
        [[ -n $rows ]] || break
        sleep 0.2
    done
    if [[ -n $rows ]]; then
        failures+=("$w on $mode (run $3): the outbox keeps $(wc -l <<<"$rows") row(s) under $run/ after the wait ($(gone_count "$rows") of files the view no longer has): $(head -n 3 <<<"$rows" | tr '\n' ' ')")
        say "$w on $mode (run $3): $(wc -l <<<"$rows") outbox row(s) left under $run/ ($(gone_count "$rows") of files the view no longer has):"
        head -n 5 <<<"$rows" >&2
    fi
    report_issues "$mode" "$w"
}
gone_count() { # gone_count ROWS: how many "OP PATH" rows name a path the view does not have
    local p k=0
    while read -r _ p; do
        [[ -e $MNT/$p ]] || k=$((k + 1))
    done <<<"$1"
    echo "$k"
}
finish_drain() { # finish_drain MODE: the medians of the drain times and write requests, emitted
    local key w
    for key in "${!drain_runs[@]}"; do
        [[ $key == *."$1" && -z ${drain[$key]:-} ]] || continue
        w=${key%."$1"}
        # shellcheck disable=SC2086 # space-separated lists of numbers
        drain[$key]=$(median ${drain_runs[$key]}) reqs[$key]=$(median ${reqs_runs[$key]} | cut -d. -f1)
        emit "write.$w.push_drain_s.$1" "${drain[$key]}" s
        emit "write.$w.push_requests.$1" "${reqs[$key]}" count
    done
}
declare -A issues_seen
report_issues() { # report_issues MODE WORKLOAD: conflicts and write issues (once each) are failures
    local line
    while IFS= read -r line; do
        [[ -n $line && -z ${issues_seen[$1 $line]:-} ]] || continue
        issues_seen[$1 $line]=1
        failures+=("$2 on $1: the service will not push $line")
        say "$2 on $1: $line"
    done < <(status_json | jq -r '((.push.writeIssues // [])[] | "\(.path): \(.kind): \(.detail)"),
                                  ((.push.conflicts // [])[] | "conflict: \(tojson)")' 2>/dev/null || true)
}

# verify MODE: the remote holds exactly the view's bytes.
verify() {
    local mode=$1 fresh=$WORK/$1/fresh rc=0 line only_in name p empty=0 bad=() left
    left=$("$MOUNTD" outbox --local-dir "$DIR" 2>/dev/null | awk 'NR > 1' | wc -l || true)
    emit "write.verify.outbox_left.$mode" "$left" count
    outbox_left[$mode]=$left
    say "$mode: pulling the remote into a fresh directory and comparing it with the view"
    "$MOUNTD" --once --base-url "$URL" --workspace bench --token-file "$TOKEN" --local-dir "$fresh" \
        --progress never >"$WORK/$mode/fresh.out" 2>"$WORK/$mode/fresh.log" || rc=$?
    if ((rc != 0)); then
        failures+=("$mode: the fresh pull (mountd --once) exited $rc: $(tail -n 2 "$WORK/$mode/fresh.log" | tr '\n' ' ')")
        return
    fi
    diff -rq -x .mountd "$fresh" "$MNT" >"$WORK/$mode/diff.txt" 2>&1 || true
    while IFS= read -r line; do
        if [[ $line == "Only in $MNT"* ]]; then
            only_in=${line#Only in }
            name=${only_in#*: }
            p=${only_in%%: *}/$name
            if [[ -d $p && -z $(find "$p" ! -type d -print -quit 2>/dev/null) ]]; then
                empty=$((empty + 1))
                continue
            fi
        fi
        bad+=("$line")
    done <"$WORK/$mode/diff.txt"
    emit "write.verify.empty_dirs_not_on_remote.$mode" "$empty" count
    if ((${#bad[@]})); then
        failures+=("$mode: the remote does not hold the view's bytes (${#bad[@]} differences, diff -rq FRESH VIEW; the first: ${bad[*]:0:5})")
        say "$mode: MISMATCH between the remote and the view (${#bad[@]} lines):"
        printf '  %s\n' "${bad[@]:0:10}" >&2
        verified[$mode]="MISMATCH (${#bad[@]})"
    else
        verified[$mode]="ok ($(find "$fresh" -path "$fresh/.mountd" -prune -o -type f -print | wc -l) files, $empty empty dirs only in the view)"
        say "$mode: the remote holds exactly the view's files ($empty empty directories only in the view)"
    fi
}

declare -A verified outbox_left rss
for mode in $modes; do
    say "target mountd, data mode $mode"
    mkdir -p "$WORK/$mode/mnt"
    DIR=$WORK/$mode/mirror MNT=$WORK/$mode/mnt
    "$REMOTE" --listen 127.0.0.1:0 --token-file "$TOKEN" --generate 10 --dirs 1 \
        --max-body-bytes "$body_cap" >"$WORK/$mode/remote.out" 2>"$WORK/$mode/remote.log" &
    remote_pid=$!
    wait_remote "$remote_pid" "$WORK/$mode/remote.out" "$WORK/$mode/remote.log" 30
    COMMON=(--base-url "$URL" --workspace bench --token-file "$TOKEN" --local-dir "$DIR")
    rc=0
    "$MOUNTD" --once "${COMMON[@]}" --progress never >/dev/null 2>"$WORK/$mode/once.log" || rc=$?
    ((rc == 0)) || {
        say "mountd --once exited $rc:"
        tail -n 5 "$WORK/$mode/once.log" >&2
        exit 1
    }
    dm=$mode tr=${MOUNTD_FUSE_TRANSPORT:-auto}
    [[ $dm == *@* ]] && tr=${dm#*@} dm=${dm%@*}
    MOUNTD_DATA_MODE=$dm MOUNTD_FUSE_TRANSPORT=$tr "$MOUNTD" "${COMMON[@]}" --mountpoint "$MNT" --interval 1s \
        --max-push-bytes "$body_cap" 2>"$WORK/$mode/service.log" &
    service_pid=$!
    for _ in $(seq 6000); do # 1 min
        mountpoint -q "$MNT" && break
        kill -0 "$service_pid" 2>/dev/null || break
        sleep 0.01
    done
    mountpoint -q "$MNT" || {
        say "the service did not mount $MNT:"
        tail -n 10 "$WORK/$mode/service.log" >&2
        exit 1
    }
    grep -o 'FUSE data mode [a-z-]*' "$WORK/$mode/service.log" | tail -n1 >&2 || true
    run_workloads "$mode" "$MNT" drain_outbox
    finish_drain "$mode"
    verify "$mode"
    rhwm=$(awk '/^VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$remote_pid/status" 2>/dev/null || echo 0)
    emit "write.remote.$mode.peak_rss" "${rhwm:-0}" MiB
    if kill -0 "$service_pid" 2>/dev/null; then
        hwm=$(awk '/^VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$service_pid/status" 2>/dev/null || echo 0)
        emit "write.service.$mode.peak_rss" "${hwm:-0}" MiB
        rss[$mode]="${hwm} MiB"
    else
        rc=0
        wait "$service_pid" 2>/dev/null || rc=$?
        rss[$mode]="the service had exited (code $rc)"
        failures+=("$mode: the service exited during the workloads (code $rc): $(grep -m1 -E 'mountd: error|panicked' "$WORK/$mode/service.log" | cut -c1-200)")
    fi
    say "$mode: service peak RSS ${rss[$mode]}, remote ${rhwm} MiB"
    cp "$WORK/$mode/service.log" "$OUT_DIR/bench-write.$mode.service.log"
    # Warnings and errors of the service, but fuser's "[Not Implemented] ioctl" (counted only).
    awk -v m="$mode" '/ (ERROR|WARN) / {
            if (/Not Implemented\] ioctl/) { io++; next }
            if (n++ < 5) w[n] = substr($0, 1, 300) }
        END { if (n) { printf "bench-write.sh: %s: the service logged %d warnings or errors; the first:\n", m, n
                       for (i = 1; i <= n && i <= 5; i++) print "  " w[i] }
              if (io) printf "bench-write.sh: %s: fuser warned %d times of an unimplemented ioctl\n", m, io }' \
        "$WORK/$mode/service.log" >&2
    stop_pid "$service_pid" "mountd service" 60
    service_pid=''
    mountpoint -q "$MNT" && umount -l "$MNT"
    stop_pid "$remote_pid" "mountd-remote" 10
    remote_pid=''
    labels+=("$mode")
done

# ---------------------------------------------------------------------------------------------------
# 5. rclone mount of a plain directory, write cache on.
if [[ $use_rclone == 1 ]] && ! command -v rclone >/dev/null && command -v apt-get >/dev/null; then
    say "installing rclone (best effort)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone >/dev/null 2>&1 || true
fi
if [[ $use_rclone == 1 ]] && command -v rclone >/dev/null; then
    RSRC=$WORK/rclone-src RMNT=$WORK/rclone-mnt
    mkdir -p "$RSRC" "$RMNT"
    say "target rclone: rclone mount $RSRC $RMNT --vfs-cache-mode writes ($(rclone version 2>/dev/null | head -n1))"
    rclone_fusermount "$WORK"
    rclone mount "$RSRC" "$RMNT" --vfs-cache-mode writes --cache-dir "$WORK/rclone-cache" \
        --config /dev/null >"$WORK/rclone.log" 2>&1 &
    rclone_pid=$!
    for _ in $(seq 3000); do
        mountpoint -q "$RMNT" && break
        sleep 0.01
    done
    if mountpoint -q "$RMNT"; then
        run_workloads rclone "$RMNT"
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

# ---------------------------------------------------------------------------------------------------
# 6. Table, ratios, targets.
workloads=()
for w in $only; do
    case $w in
    seq_write) workloads+=("$seq_name"); ((fsync)) && workloads+=("${seq_name}_fsync") ;;
    untar) workloads+=(untar_5000) ;;
    git) workloads+=(git_2000 git_2000.clone git_2000.status git_2000.commit) ;;
    esac
done
ratio() { # ratio A B: A / B, or - when either is missing
    if [[ $1 =~ ^[0-9.]+$ && $2 =~ ^[0-9.]+$ ]] && awk -v b="$2" 'BEGIN { exit !(b > 0) }'; then
        awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'
    else
        echo -
    fi
}
printf '\nmountd write benchmarks: release build, loopback, %s on %s (%s, %s cores)\n' \
    "$fs_type" "$(df --output=source "$WORK" | tail -n1)" "$(uname -r)" "$(nproc)"
printf '%s: %s MiB random file; untar_5000: %s files, %s bytes, %s dirs; git_2000: %s files\n\n' \
    "$seq_name" "$big_mib" "$tree_files" "$tree_bytes" "$tree_dirs" "$repo_files"
hdr=$(printf '%-22s %9s' workload plain_s)
for l in "${labels[@]:1}"; do hdr+=$(printf ' %10s %6s' "${l:0:10}" x); done
printf '%s\n' "$hdr"
for w in "${workloads[@]}"; do
    p=${res[$w.plain]:--}
    line=$(printf '%-22s %9s' "$w" "$p")
    for l in "${labels[@]:1}"; do
        t=${res[$w.$l]:--}
        r=$(ratio "$t" "$p")
        [[ $r == - ]] || emit "write.$w.ratio.$l" "$r" x
        line+=$(printf ' %10s %6s' "$t" "$r")
    done
    printf '%s\n' "$line"
done
printf 'x = that column / plain. Seconds: medians of %s runs (%s: %s), each in a fresh directory; the\n' "$runs" "$seq_name" "$seq_runs"
printf 'mountd columns are the FUSE view per data mode (MOUNTD_DATA_MODE), rclone is rclone mount\n'
printf -- '--vfs-cache-mode writes. git_2000 is the median of clone+status+commit, the rows below it the\n'
printf 'medians of each step.\n'

mountd_modes=()
for l in "${labels[@]:1}"; do [[ $l == rclone ]] || mountd_modes+=("$l"); done
if ((${#mountd_modes[@]})); then
    printf '\npush after each run (mountd columns): seconds from its end until the server holds its files (write requests)\n'
    line=$(printf '%-22s' workload)
    for m in "${mountd_modes[@]}"; do line+=$(printf ' %18s' "$m"); done
    printf '%s\n' "$line"
    for w in "${workloads[@]}"; do
        [[ $w == *.* || $w == *_fsync ]] && continue
        line=$(printf '%-22s' "$w")
        for m in "${mountd_modes[@]}"; do
            line+=$(printf ' %18s' "${drain[$w.$m]:--} (${reqs[$w.$m]:--})")
        done
        printf '%s\n' "$line"
    done
    printf '\nthe remote holds the view'"'"'s bytes (fresh mountd --once, diff -r):'
    for m in "${mountd_modes[@]}"; do
        printf ' %s: %s, %s row(s) left in the outbox;' "$m" "${verified[$m]:-not checked}" "${outbox_left[$m]:--}"
    done
    printf '\nservice peak RSS:'
    for m in "${mountd_modes[@]}"; do printf ' %s: %s;' "$m" "${rss[$m]:--}"; done
    printf ' service logs: %s\n' "${OUT_DIR#"$ROOT"/}/bench-write.MODE.service.log"
    printf '\ntargets (issue 17): mountd <= 1.5x plain for %s, <= 3x for untar_5000 and git_2000; ahead of rclone\n' "$seq_name"
    for w in "${workloads[@]}"; do
        case $w in
        "$seq_name") lim=1.5 ;;
        untar_5000 | git_2000) lim=3 ;;
        *) continue ;;
        esac
        line=$(printf '%-14s' "$w")
        for m in "${mountd_modes[@]}"; do
            r=$(ratio "${res[$w.$m]:--}" "${res[$w.plain]:--}")
            if [[ $r == - ]]; then
                v='no figure'
            elif awk -v r="$r" -v l="$lim" 'BEGIN { exit !(r <= l) }'; then
                v="${r}x met"
            else
                v="${r}x MISSED"
            fi
            rc_=$(ratio "${res[$w.$m]:--}" "${res[$w.rclone]:--}")
            if [[ $rc_ != - ]]; then
                if awk -v r="$rc_" 'BEGIN { exit !(r < 1) }'; then v+=", ${rc_}x rclone: ahead"; else v+=", ${rc_}x rclone: BEHIND"; fi
            fi
            line+=$(printf '  %s: %s;' "$m" "$v")
        done
        printf '%s\n' "$line"
    done
fi
printf '\nresults appended to %s\n' "${RESULTS#"$ROOT"/}"
if ((${#failures[@]})); then
    printf '\nFAILED (%d):\n' "${#failures[@]}"
    printf '  %s\n' "${failures[@]}"
    exit 1
fi
