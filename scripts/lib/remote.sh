# Shared by the scripts that start the reference remote (`mountd-remote --listen 127.0.0.1:0 ...`,
# its stdout in OUT): source it, start the remote in the background, then call wait_remote.

# wait_remote PID OUT LOG SECONDS: wait until the remote (PID) prints "listening on URL" into OUT and
# set URL to it; if it exits first or SECONDS pass, print the end of LOG and exit 1.
wait_remote() {
    local pid=$1 out=$2 log=$3 secs=$4
    URL=''
    for _ in $(seq $((secs * 10))); do
        URL=$(sed -n 's/^listening on \(http[^ ]*\).*/\1/p' "$out" | head -n1 || true)
        [[ -n $URL ]] && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "$(basename "$0"): mountd-remote did not start:" >&2
    cat "$log" >&2
    exit 1
}
