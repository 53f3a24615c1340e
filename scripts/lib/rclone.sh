# Shared by the benchmarks that mount with rclone: source it, then call rclone_fusermount DIR before
# `rclone mount`.

# rclone_fusermount DIR: Debian's rclone (1.60) mounts through `fusermount`, even as root. Without it
# (a fresh machine: mountd itself needs none as root), install fuse3 (best effort; Debian's fuse3
# ships `fusermount` too); where only `fusermount3` is there, a `fusermount` link to it in DIR/bin
# goes first on PATH (the two take the options rclone uses).
rclone_fusermount() {
    command -v fusermount >/dev/null 2>&1 && return 0
    if ! command -v fusermount3 >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
        echo "$(basename "$0"): installing fuse3 for rclone mount (best effort)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 >/dev/null 2>&1 || true
    fi
    command -v fusermount >/dev/null 2>&1 && return 0
    local f3
    f3=$(command -v fusermount3) || return 0
    mkdir -p "$1/bin"
    ln -sf "$f3" "$1/bin/fusermount"
    PATH=$1/bin:$PATH
}
