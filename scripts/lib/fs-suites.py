"""Helper of scripts/fs-suites.sh: pjdfstest's test selection and report, and the script's own checks.

    fs-suites.py names LOG                      the test names a pjdfstest run printed, one a line
    fs-suites.py select EXCLUDE NAMES RUN EXCL  split NAMES by the exclusion file EXCLUDE: names to run
                                                into RUN, excluded ones (name TAB reason) into EXCL
    fs-suites.py report EXCL LOG...             read pjdfstest-style output (LOG...), print every
                                                failure with its message, and the counts as the last
                                                line: PASSED FAILED EXCLUDED OPTIONAL_FAILED
    fs-suites.py extras DIR [--mountd]          run the extra checks in DIR (pjdfstest-style output)

pjdfstest prints one line per test, `NAME <spaces> ok|FAILED|skipped|failed as expected|PASSED
UNEXPECTEDLY`, then tab-indented lines (the skip reasons, or the panic message of a failure, which may
span several lines).
"""

import ctypes
import errno
import fnmatch
import os
import re
import stat
import sys

RESULT = re.compile(
    r"^(?P<name>[a-z0-9_]+(?:::[a-z0-9_]+)+)\s+"
    r"(?P<verdict>ok|FAILED|skipped|failed as expected|PASSED UNEXPECTEDLY)\s*$"
)


def parse(paths):
    """[(name, verdict, message)] in the order printed."""
    out = []
    for path in paths:
        cur = None
        with open(path, errors="replace") as f:
            for line in f:
                line = line.rstrip("\n")
                m = RESULT.match(line)
                if m:
                    cur = [m["name"], m["verdict"], []]
                    out.append(cur)
                elif line.startswith("Summary:"):
                    cur = None
                elif cur is not None and line.strip():
                    cur[2].append(line.strip())
    return [(n, v, "\n".join(msg)) for n, v, msg in out]


def load_exclusions(path):
    """[(pattern, optional, reason)]; a line without a reason is an error."""
    rules = []
    with open(path) as f:
        for no, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 1)
            if len(parts) < 2:
                sys.exit(f"{path}:{no}: '{parts[0]}' has no reason")
            pattern, reason = parts
            optional = pattern.startswith("?")
            rules.append((pattern.lstrip("?"), optional, reason.strip()))
    return rules


def cmd_names(log):
    for name, _, _ in parse([log]):
        print(name)


def cmd_select(exclude, names_file, run_out, excl_out):
    rules = load_exclusions(exclude)
    names = [n.strip() for n in open(names_file) if n.strip()]
    used = set()
    with open(run_out, "w") as run, open(excl_out, "w") as excl:
        for name in names:
            rule = next((r for r in rules if fnmatch.fnmatchcase(name, r[0])), None)
            if rule:
                used.add(rule[0])
            if rule and not rule[1]:
                excl.write(f"{name}\t{rule[2]}\n")
            else:
                run.write(name + "\n")
                if rule:  # optional: runs, but its failure is not fatal
                    excl.write(f"{name}\t?{rule[2]}\n")
    for pattern, _, _ in rules:
        if pattern not in used:
            print(f"fs-suites: warning: exclusion '{pattern}' matches no test", file=sys.stderr)


def cmd_report(excl_file, logs):
    excluded, optional = {}, {}
    for line in open(excl_file):
        name, reason = line.rstrip("\n").split("\t", 1)
        if reason.startswith("?"):
            optional[name] = reason[1:]
        else:
            excluded[name] = reason
    passed = failed = opt_failed = excl_run = 0
    failures = []
    notes = []
    for name, verdict, msg in parse(logs):
        if verdict == "ok" and msg:  # informative messages (none today)
            notes.append(f"  note    {name}: {msg}")
        if name in excluded:  # only with --run-excluded: reported, never counted as a failure
            excl_run += 1
            print(f"  excluded {name}: {'passes' if verdict == 'ok' else verdict}", file=sys.stderr)
            continue
        if verdict == "ok":
            passed += 1
        elif name in optional:
            opt_failed += 1
            failures.append((name, f"{verdict} (optional: {optional[name]})", msg))
        else:
            # FAILED, and also a test pjdfstest skipped: a selected test that did not run is a hole.
            failed += 1
            failures.append((name, verdict, msg))
    for note in notes:
        print(note)
    for name, verdict, msg in failures:
        print(f"  {verdict:7} {name}")
        for line in msg.splitlines():
            print(f"            {line}")
    print(passed, failed, len(excluded), opt_failed)


# ---------------------------------------------------------------------------------------------------
# Extra checks: what pjdfstest does not test, or tests only behind a set-up the exclusions remove.
# ---------------------------------------------------------------------------------------------------
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1


def renameat2(old, new, flags):
    r = libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), ctypes.c_uint(flags))
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), old)


def fallocate(fd, mode, offset, length):
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if libc.fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def put(path, data):
    with open(path, "wb") as f:
        f.write(data)


def get(path):
    with open(path, "rb") as f:
        return f.read()


def errname(e):
    return errno.errorcode.get(e, str(e))


def expect_errno(what, errs, fn, *args):
    try:
        fn(*args)
    except OSError as e:
        if e.errno in errs:
            return
        raise AssertionError(f"{what}: expected {'/'.join(map(errname, errs))}, got {errname(e.errno)}")
    raise AssertionError(f"{what}: expected {'/'.join(map(errname, errs))}, got success")


def eq(what, got, want):
    if got != want:
        raise AssertionError(f"{what}: expected {want!r}, got {got!r}")


def x_o_append(d):
    p = f"{d}/f"
    put(p, b"abc")
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"def")
    eq("fstat size after an O_APPEND write", os.fstat(fd).st_size, 6)
    os.close(fd)
    eq("content after an O_APPEND write", get(p), b"abcdef")


def x_o_excl(d):
    p = f"{d}/f"
    os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    expect_errno("open(O_CREAT|O_EXCL) of an existing file", [errno.EEXIST], os.open, p,
                 os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)


def x_o_trunc(d):
    p = f"{d}/f"
    put(p, b"0123456789")
    os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))
    eq("size after open(O_TRUNC)", os.stat(p).st_size, 0)
    eq("content after open(O_TRUNC)", get(p), b"")


def x_truncate_data(d):
    p = f"{d}/f"
    put(p, b"0123456789")
    os.truncate(p, 4)
    eq("content after truncate(4)", get(p), b"0123")
    fd = os.open(p, os.O_RDWR)
    os.ftruncate(fd, 8)
    os.close(fd)
    eq("content after ftruncate(8)", get(p), b"0123\0\0\0\0")


def x_fallocate_mode0(d):
    p = f"{d}/f"
    put(p, b"ab")
    fd = os.open(p, os.O_RDWR)
    fallocate(fd, 0, 0, 65536)
    os.close(fd)
    eq("size after fallocate(mode 0, 0, 64 KiB)", os.stat(p).st_size, 65536)
    eq("content after fallocate", get(p), b"ab" + b"\0" * 65534)


def x_rename_over_file(d):
    put(f"{d}/a", b"new")
    put(f"{d}/b", b"old content")
    os.rename(f"{d}/a", f"{d}/b")
    eq("source exists after rename", os.path.exists(f"{d}/a"), False)
    eq("target content after rename over it", get(f"{d}/b"), b"new")


def x_rename_dir_over_empty_dir(d):
    os.mkdir(f"{d}/a")
    put(f"{d}/a/f", b"x")
    os.mkdir(f"{d}/b")
    os.rename(f"{d}/a", f"{d}/b")
    eq("source dir exists after rename", os.path.exists(f"{d}/a"), False)
    eq("file moved with its directory", get(f"{d}/b/f"), b"x")
    os.mkdir(f"{d}/c")
    expect_errno("rename of a directory over a non-empty one", [errno.ENOTEMPTY, errno.EEXIST],
                 os.rename, f"{d}/c", f"{d}/b")


def x_rename_noreplace_file(d):
    put(f"{d}/a", b"a")
    put(f"{d}/b", b"b")
    expect_errno("renameat2(RENAME_NOREPLACE) over an existing file", [errno.EEXIST], renameat2,
                 f"{d}/a", f"{d}/b", RENAME_NOREPLACE)
    eq("source after a refused RENAME_NOREPLACE", get(f"{d}/a"), b"a")
    eq("target after a refused RENAME_NOREPLACE", get(f"{d}/b"), b"b")
    renameat2(f"{d}/a", f"{d}/c", RENAME_NOREPLACE)
    eq("source exists after RENAME_NOREPLACE to a new name", os.path.exists(f"{d}/a"), False)
    eq("target after RENAME_NOREPLACE to a new name", get(f"{d}/c"), b"a")


def x_rename_noreplace_dir(d):
    os.mkdir(f"{d}/a")
    os.mkdir(f"{d}/b")
    expect_errno("renameat2(RENAME_NOREPLACE) of a directory over an empty one", [errno.EEXIST],
                 renameat2, f"{d}/a", f"{d}/b", RENAME_NOREPLACE)
    renameat2(f"{d}/a", f"{d}/c", RENAME_NOREPLACE)
    eq("directory after RENAME_NOREPLACE to a new name", os.path.isdir(f"{d}/c"), True)


def x_create_mode_umask(d):
    # A new file's or directory's mode is the one asked for less the creator's umask, and nothing
    # else (pjdfstest's permission_bits_from_mode tests use no group or other write bit, so a file
    # system masking with its own umask passes them).
    for umask, fmode, dmode in ((0, 0o666, 0o777), (0o002, 0o664, 0o775)):
        old = os.umask(umask)
        try:
            os.close(os.open(f"{d}/f{umask}", os.O_CREAT | os.O_WRONLY, 0o666))
            os.mkdir(f"{d}/d{umask}", 0o777)
        finally:
            os.umask(old)
        eq(f"mode of open(O_CREAT, 0666) under umask {umask:03o}",
           oct(stat.S_IMODE(os.stat(f"{d}/f{umask}").st_mode)), oct(fmode))
        eq(f"mode of mkdir(0777) under umask {umask:03o}",
           oct(stat.S_IMODE(os.stat(f"{d}/d{umask}").st_mode)), oct(dmode))


def x_chmod_mode(d):
    p = f"{d}/f"
    put(p, b"x")
    os.chmod(p, 0o640)
    eq("file mode after chmod 0640", stat.S_IMODE(os.stat(p).st_mode), 0o640)
    os.mkdir(f"{d}/s")
    os.chmod(f"{d}/s", 0o711)
    eq("directory mode after chmod 0711", stat.S_IMODE(os.stat(f"{d}/s").st_mode), 0o711)


def x_set_id_bits_dropped(d):
    # A write by a user without CAP_FSETID drops the set-user-ID bit and the set-group-ID bit of a
    # group-executable file; a chown drops them too (as on a local disk).
    p, nobody = f"{d}/f", 65534
    put(p, b"x")
    os.chown(p, nobody, nobody)
    os.chmod(p, 0o6777)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgid(nobody)
            os.setuid(nobody)
            with open(p, "r+b", buffering=0) as f:
                f.write(b"y")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    eq("exit status of the write by uid 65534", status, 0)
    eq("mode after a write by a user without CAP_FSETID", oct(stat.S_IMODE(os.stat(p).st_mode)), oct(0o777))
    os.chmod(p, 0o4755)
    os.chown(p, 0, 0)
    eq("mode after a chown", oct(stat.S_IMODE(os.stat(p).st_mode)), oct(0o755))


def x_rmdir_enotempty(d):
    os.mkdir(f"{d}/s")
    put(f"{d}/s/f", b"x")
    expect_errno("rmdir of a non-empty directory", [errno.ENOTEMPTY, errno.EEXIST], os.rmdir, f"{d}/s")
    os.unlink(f"{d}/s/f")
    os.rmdir(f"{d}/s")


# The operations mountd's view does not support by design answer the errno src/view/fs.rs documents
# (symlinks, hard links, devices, FIFOs and sockets EPERM, xattrs EOPNOTSUPP) and leave no name behind.
# Only checked on a mountd mount (elsewhere they are supported).
def unsupported(d):
    put(f"{d}/f", b"x")
    return [
        ("symlink", errno.EPERM, f"{d}/l", lambda: os.symlink("f", f"{d}/l")),
        ("link", errno.EPERM, f"{d}/h", lambda: os.link(f"{d}/f", f"{d}/h")),
        ("mkfifo", errno.EPERM, f"{d}/p", lambda: os.mkfifo(f"{d}/p")),
        ("mknod_chr", errno.EPERM, f"{d}/c", lambda: os.mknod(f"{d}/c", 0o644 | stat.S_IFCHR, os.makedev(1, 3))),
        ("mknod_sock", errno.EPERM, f"{d}/s", lambda: os.mknod(f"{d}/s", 0o644 | stat.S_IFSOCK)),
        ("setxattr", errno.EOPNOTSUPP, None, lambda: os.setxattr(f"{d}/f", "user.test", b"v")),
    ]


EXTRAS = [(n[2:], f) for n, f in sorted(globals().items()) if n.startswith("x_")]


def cmd_extras(root, mountd):
    os.umask(0)
    for i, (name, fn) in enumerate(EXTRAS):
        d = f"{root}/{i:02}-{name}"
        os.mkdir(d)
        try:
            fn(d)
            print(f"extra::{name} ok")
        except (AssertionError, OSError) as e:
            print(f"extra::{name} FAILED\n\t{e}")
    if not mountd:
        return
    d = f"{root}/unsupported"
    os.mkdir(d)
    for name, want, path, fn in unsupported(d):
        try:
            fn()
            print(f"extra::unsupported::{name} FAILED\n\texpected {errname(want)}, got success")
        except OSError as e:
            if e.errno != want:
                print(f"extra::unsupported::{name} FAILED\n\texpected {errname(want)}, got {errname(e.errno)}")
            elif path and os.path.lexists(path):
                print(f"extra::unsupported::{name} FAILED\n\t{errname(e.errno)}, but the name exists")
            else:
                print(f"extra::unsupported::{name} ok")


def main(argv):
    cmd, args = argv[1], argv[2:]
    if cmd == "names":
        cmd_names(*args)
    elif cmd == "select":
        cmd_select(*args)
    elif cmd == "report":
        cmd_report(args[0], args[1:])
    elif cmd == "extras":
        cmd_extras(args[0], "--mountd" in args[1:])
    else:
        sys.exit(f"fs-suites.py: unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv)
