#!/usr/bin/env bash
# The outer wrapper of an initial sync: run CMD and kill it when its state file stops moving.
#
#   watch-initial-sync.sh --state-file F --idle-timeout SECONDS [--poll SECONDS] [--kill-grace SECONDS] -- CMD ARGS...
#
# Starts CMD in the background and checks F's mtime every --poll seconds (default 1). When F exists
# and now - mtime(F) > idle timeout, or F still does not exist idle-timeout seconds after the start,
# CMD is sent SIGTERM, then SIGKILL after --kill-grace seconds (default 5), and the wrapper exits 124
# (like timeout(1)) with a message on stderr. A state file left over from an earlier run counts as
# modified at the start (the idle clock never starts before CMD does). Otherwise it exits with CMD's exit code (128+N when CMD
# died of signal N). SIGINT/SIGTERM sent to the wrapper are forwarded to CMD.
#
# Example:
#   watch-initial-sync.sh --state-file /run/ws.state --idle-timeout 120 -- \
#       mountd --once --state-file /run/ws.state --mount-kind initial-sync ...
set -euo pipefail

prog=${0##*/}
usage() {
    cat >&2 <<EOF
usage: $prog --state-file F --idle-timeout SECONDS [--poll SECONDS] [--kill-grace SECONDS] -- CMD ARGS...
Runs CMD; kills it (TERM, then KILL) and exits 124 when F's mtime stops moving for SECONDS.
EOF
    exit 2
}
die() {
    echo "$prog: $*" >&2
    exit 2
}
is_num() { [[ $1 =~ ^[0-9]+([.][0-9]+)?$ ]]; }

state_file='' idle='' poll=1 grace=5
while (($#)); do
    case $1 in
    --state-file) state_file=${2-}; shift 2 || usage ;;
    --state-file=*) state_file=${1#*=}; shift ;;
    --idle-timeout) idle=${2-}; shift 2 || usage ;;
    --idle-timeout=*) idle=${1#*=}; shift ;;
    --poll) poll=${2-}; shift 2 || usage ;;
    --poll=*) poll=${1#*=}; shift ;;
    --kill-grace) grace=${2-}; shift 2 || usage ;;
    --kill-grace=*) grace=${1#*=}; shift ;;
    -h | --help) usage ;;
    --) shift; break ;;
    *) die "unknown argument '$1' (the command goes after --)" ;;
    esac
done
[[ -n $state_file ]] || die "--state-file is required"
[[ -n $idle ]] || die "--idle-timeout is required"
is_num "$idle" || die "--idle-timeout must be a number of seconds, got '$idle'"
is_num "$poll" || die "--poll must be a number of seconds, got '$poll'"
is_num "$grace" || die "--kill-grace must be a number of seconds, got '$grace'"
(($#)) || die "no command given after --"

# Sub-second clocks when available (GNU date/stat), else whole seconds.
if [[ $(date +%s.%N 2>/dev/null) =~ ^[0-9]+\.[0-9]+$ ]]; then
    now() { date +%s.%N; }
else
    now() { date +%s; }
fi
if [[ $(stat -c %.9Y / 2>/dev/null) =~ ^[0-9]+\.[0-9]+$ ]]; then
    mtime() { stat -c %.9Y -- "$1" 2>/dev/null; }
else
    mtime() { stat -c %Y -- "$1" 2>/dev/null; }
fi
# Float arithmetic without bc: awk is in every base system.
older_than() { # older_than NOW THEN LIMIT: NOW - THEN > LIMIT
    awk -v n="$1" -v t="$2" -v l="$3" 'BEGIN { exit !((n - t) > l) }'
}
age() { awk -v n="$1" -v t="$2" 'BEGIN { printf "%.1f", n - t }'; }

# CMD runs in its own process group (job control on for the launch only), so the signals reach
# everything it started, not just its first process.
set -m
"$@" &
child=$!
set +m

signal_cmd() { # signal_cmd SIG: the process group, or the process if the group is already gone
    kill -s "$1" -- "-$child" 2>/dev/null || kill -s "$1" "$child" 2>/dev/null || true
}
# shellcheck disable=SC2317 # invoked from the traps below
forward() { signal_cmd "$1"; }
trap 'forward TERM' TERM
trap 'forward INT' INT
trap 'forward HUP' HUP

alive() { kill -0 "$child" 2>/dev/null; }

stop_child() {
    signal_cmd TERM
    local deadline
    deadline=$(awk -v n="$(now)" -v g="$grace" 'BEGIN { printf "%.3f", n + g }')
    while alive; do
        if older_than "$(now)" "$deadline" 0; then
            echo "$prog: command did not exit ${grace}s after SIGTERM; sending SIGKILL" >&2
            signal_cmd KILL
            break
        fi
        sleep 0.1
    done
    wait "$child" 2>/dev/null || true
    # Stragglers of the group that ignored SIGTERM.
    kill -KILL -- "-$child" 2>/dev/null || true
}

started=$(now)
while alive; do
    # Sleep in the background so a forwarded signal interrupts the wait promptly.
    sleep "$poll" &
    wait $! 2>/dev/null || true
    alive || break
    t=$(now)
    if m=$(mtime "$state_file") && [[ -n $m ]]; then
        # A file older than this run (left by an earlier one) counts from the start.
        if older_than "$started" "$m" 0; then m=$started; fi
        if older_than "$t" "$m" "$idle"; then
            echo "$prog: no progress: $state_file was last modified $(age "$t" "$m")s ago (idle timeout ${idle}s); killing pid $child: $*" >&2
            stop_child
            exit 124
        fi
    elif older_than "$t" "$started" "$idle"; then
        echo "$prog: no progress: $state_file does not exist $(age "$t" "$started")s after the start (idle timeout ${idle}s); killing pid $child: $*" >&2
        stop_child
        exit 124
    fi
done

# The child has exited: collect its status (wait returns 128+N for a signal N; a signal forwarded
# to us interrupts wait, so wait again while the child is still there).
set +e
while :; do
    wait "$child"
    rc=$?
    alive || break
done
set -e
exit "$rc"
