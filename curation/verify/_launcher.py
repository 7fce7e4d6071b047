"""Sandbox launcher: run as a script (`python -I -B _launcher.py CONFIG_HEX`), never imported.

It confines the untrusted program(s) in this order:
  1. join the sandbox's cgroups (pids / memory), made by the parent when it runs as root;
  2. unshare network, PID and IPC namespaces (plus a user namespace when not root; a mount
     namespace when root and the kernel has no Landlock);
  3. fork the supervisor: PID 1 of the new PID namespace, so when it exits the kernel kills every
     process left behind. It makes the mounts read-only (root without Landlock), starts each
     program, waits for the first (the main program), stops the others, and reports how each
     ended: exit status or signal, CPU time, and the CPU limit it ran under;
  4. in each program's process: resource limits, then (root) a switch to a throwaway uid or dropping
     every capability, no_new_privs, a Landlock ruleset of its own (reads only of the paths the
     parent lists, which are what the interpreter needs, plus the program's own directory; writes
     only there; no TCP, no signals or abstract sockets outside its own domain), a seccomp filter
     (see SECCOMP_ARCHES), and finally the program itself.
With two programs (a trusted checker and an untrusted candidate, `run_pair`), each has its own
directory, uid (when root can give throwaway uids) and Landlock domain, so neither can read the
other's files, signal it or open its /proc entries; they talk only through two pipes (fds 3 and 4
of each), and the checker is not dumpable. Only the main program holds the sandbox's stdout.
Each step that the kernel refuses is skipped and reported, never fatal: the parent decides what is
acceptable. The report goes to the status pipe (`status_fd`).

CPU time: the soft RLIMIT_CPU is the limit (whole seconds), so a program that hits it gets SIGXCPU
(and SIGKILL at the hard limit, 2 x soft + 1 s, if it ignores or blocks that); the supervisor
reports the signal and the CPU time each program used, so the parent classifies a CPU-limit kill
from the limit and the accounting, not from a race with the wall clock.

Stdlib only, and few imports (json would pull in `re`, signal `enum`: tens of milliseconds per start):
this file starts in a fresh interpreter for every execution. The config arrives hex-encoded
`marshal` in argv[1]; reports go out as length-prefixed `marshal` frames.
"""

from __future__ import annotations

import ctypes
import marshal
import os
import resource
import sys

SIGKILL = 9
PR_SET_DUMPABLE = 4

CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = (
    CLONE_NEWTIME
    | CLONE_NEWNS
    | CLONE_NEWCGROUP
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNET
)

# mount(2) and mount_setattr(2); the syscall number is shared by x86_64 and aarch64
MS_BIND, MS_REC, MS_PRIVATE = 1 << 12, 1 << 14, 1 << 18
SYS_MOUNT_SETATTR = 442
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID = 0x1, 0x2

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# Landlock (linux/landlock.h); the syscall numbers are shared by x86_64 and aarch64.
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_READ = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
FS_WRITE_ABI1 = FS_WRITE_FILE | sum(1 << b for b in range(4, 13))  # remove_*, make_*
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6
S_IFMT, S_IFDIR = 0o170000, 0o040000

# seccomp (linux/seccomp.h, linux/filter.h, linux/audit.h)
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
RET_ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000
EPERM, EACCES, ENOSYS = 1, 13, 38
LD_ABS_W, JEQ_K, JGE_K, JSET_K, RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
AF_INET, AF_INET6 = 2, 10
SETID_BITS = 0o6000  # S_ISUID | S_ISGID
# Per architecture: (audit arch, syscall-number floor of a foreign ABI to refuse, rules). A rule is
# (number, what): "deny" refuses the call, "enosys" says it does not exist (callers fall back),
# ("mode", i) refuses it when argument i carries setuid / setgid bits, ("flags", i, mask) refuses it
# when argument i carries any bit of mask, "socket" allows only AF_INET and AF_INET6 sockets (no
# unix-domain, netlink, vsock, packet, alg, bluetooth, ...; socketpair is another call and stays).
# What is refused, with the x86_64 / aarch64 numbers:
#   socket other than IPv4 / IPv6 (41 / 198); new namespaces: unshare (272 / 97), setns (308 / 268),
#   clone with a CLONE_NEW* flag (56 / 220), clone3 (435, ENOSYS: its flags sit in a struct a filter
#   cannot read, and libc falls back to clone); other processes: ptrace (101 / 117),
#   process_vm_readv / writev (310, 311 / 270, 271), pidfd_getfd (438); kernel attack surface:
#   io_uring_setup (425), bpf (321 / 280), userfaultfd (323 / 282), perf_event_open (298 / 241),
#   add_key, request_key, keyctl (248-250 / 217-219); openat2 (437, ENOSYS: its mode sits in a
#   struct); metadata changes that Landlock does not cover: chmod, fchmod, fchmodat, fchmodat2,
#   chown, fchown, lchown, fchownat, utime, utimes, futimesat, utimensat, set / remove xattr;
#   setuid / setgid bits through open, openat, creat, mknod, mknodat, mkdir, mkdirat.
_OTHER_PROCESSES_AND_KERNEL = {
    "x86_64": (101, 310, 311, 438, 425, 321, 323, 298, 248, 249, 250, 272, 308),
    "aarch64": (117, 270, 271, 438, 425, 280, 282, 241, 217, 218, 219, 97, 268),
}
_METADATA = {
    "x86_64": (90, 91, 268, 452, 92, 93, 94, 260, 132, 235, 261, 280, 188, 189, 190, 197, 198, 199, 463, 466),
    "aarch64": (52, 53, 452, 54, 55, 88, 5, 6, 7, 14, 15, 16, 463, 466),
}
SECCOMP_ARCHES = {
    "x86_64": (
        0xC000003E,
        0x40000000,  # the floor refuses x32 calls
        [
            (41, "socket"),
            (56, ("flags", 0, NAMESPACE_FLAGS)),
            (435, "enosys"),
            (437, "enosys"),
            *[(n, "deny") for n in _OTHER_PROCESSES_AND_KERNEL["x86_64"] + _METADATA["x86_64"]],
            (2, ("mode", 2)),
            (257, ("mode", 3)),
            (85, ("mode", 1)),
            (133, ("mode", 1)),
            (259, ("mode", 2)),
            (83, ("mode", 1)),
            (258, ("mode", 2)),
        ],
    ),
    "aarch64": (
        0xC00000B7,
        None,
        [
            (198, "socket"),
            (220, ("flags", 0, NAMESPACE_FLAGS)),
            (435, "enosys"),
            (437, "enosys"),
            *[(n, "deny") for n in _OTHER_PROCESSES_AND_KERNEL["aarch64"] + _METADATA["aarch64"]],
            (56, ("mode", 3)),
            (33, ("mode", 2)),
            (34, ("mode", 2)),
        ],
    ),
}


libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


class RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


class SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _errno_text() -> str:
    return os.strerror(ctypes.get_errno())


def join_cgroups(procs_files: dict[str, str], report: dict) -> None:
    joined = []
    for controller, path in procs_files.items():
        try:
            with open(path, "w") as f:
                f.write(str(os.getpid()))
            joined.append(controller)
        except OSError as e:
            report.setdefault("problems", []).append(f"cgroup {path}: {e.strerror}")
    report["cgroups"] = joined


def landlock_abi() -> int:
    return max(0, libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION))


def enter_namespaces(as_root: bool, mount_ns: bool, report: dict) -> None:
    base = CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC
    if as_root:
        attempts = [base | CLONE_NEWNS, base] if mount_ns else [base]
    else:
        attempts = [base | CLONE_NEWUSER, CLONE_NEWUSER | CLONE_NEWNET]
    for flags in attempts:
        if libc.unshare(flags) == 0:
            report["net_namespace"] = bool(flags & CLONE_NEWNET)
            report["pid_namespace"] = bool(flags & CLONE_NEWPID)
            report["user_namespace"] = bool(flags & CLONE_NEWUSER)
            report["mount_namespace"] = bool(flags & CLONE_NEWNS)
            return
        report.setdefault("problems", []).append(f"unshare({flags:#x}): {_errno_text()}")
    report.update(net_namespace=False, pid_namespace=False, user_namespace=False, mount_namespace=False)


def mount_setattr(path: str, flags: int, attr_set: int, attr_clr: int) -> bool:
    attr = MountAttr(attr_set, attr_clr, 0, 0)
    return (
        libc.syscall(
            SYS_MOUNT_SETATTR, AT_FDCWD, os.fsencode(path), flags, ctypes.byref(attr), ctypes.sizeof(attr)
        )
        == 0
    )


def readonly_root(write_dirs: list[str], report: dict) -> None:
    """Root on a kernel without Landlock: in the sandbox's own mount namespace every mount becomes
    read-only and nosuid, then each write dir is bound onto itself and made writable again, so
    writes, chmod, chown, utime and xattrs outside fail (EROFS) even for uid 0. Writes through
    Landlock fail with EACCES instead, which is why this is the fallback and not the rule. The
    host's mounts are untouched: the namespace's mounts are made private first."""
    report["readonly_root"] = False
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        report.setdefault("problems", []).append(f"mount private: {_errno_text()}")
        return
    if not mount_setattr("/", AT_RECURSIVE, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0):
        report.setdefault("problems", []).append(f"mount_setattr read-only: {_errno_text()}")
        return
    for path in write_dirs:
        # a bind mount inherits read-only from its source: clear it on the new mount alone
        if libc.mount(os.fsencode(path), os.fsencode(path), None, MS_BIND, None) != 0 or not mount_setattr(
            path, 0, 0, MOUNT_ATTR_RDONLY
        ):
            raise OSError(ctypes.get_errno(), f"cannot make the sandbox directory writable: {_errno_text()}")
    os.chdir(os.getcwd())  # the working directory still points into the read-only mount below
    report["readonly_root"] = True


def nproc_limit(cfg: dict, report: dict, user_namespace: bool) -> int:
    """RLIMIT_NPROC counts every task of the real uid. Under a fresh throwaway uid that is only the
    program's own; in a fresh user namespace the launcher, the supervisor and the other program run
    under the same uid too; otherwise add what the user already runs."""
    if cfg["as_root"]:
        return int(cfg["max_procs"])
    if user_namespace:
        return int(cfg["max_procs"]) + 1 + len(cfg["programs"])
    uid, tasks = os.getuid(), 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    tasks += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                continue
    report["nproc_shared_with_user"] = tasks
    return tasks + int(cfg["max_procs"])


def cpu_limit(cfg: dict) -> int:
    """The soft RLIMIT_CPU: the configured seconds rounded up to a whole second."""
    return max(1, int(cfg["cpu_s"] + 0.999))


def set_limits(cfg: dict, report: dict, user_namespace: bool) -> None:
    mb = 1024 * 1024
    cpu = cpu_limit(cfg)
    limits = [
        (resource.RLIMIT_CORE, 0, 0),
        # SIGXCPU at the soft limit (the program is never PID 1, which would ignore it); SIGKILL at
        # the hard one for a program that ignores or blocks it. The kernel counts this limit in
        # sampled ticks, which drift from the precise CPU time wait4 reports under load: the hard
        # limit sits at twice the soft one plus a second, so a kill there has used the soft limit
        # by any count.
        (resource.RLIMIT_CPU, cpu, 2 * cpu + 1),
        (resource.RLIMIT_AS, int(cfg["memory_mb"] * mb), int(cfg["memory_mb"] * mb)),
        (resource.RLIMIT_FSIZE, int(cfg["file_size_mb"] * mb), int(cfg["file_size_mb"] * mb)),
        (resource.RLIMIT_NOFILE, int(cfg["max_open_files"]), int(cfg["max_open_files"])),
    ]
    nproc = nproc_limit(cfg, report, user_namespace)
    limits.append((resource.RLIMIT_NPROC, nproc, nproc))
    for which, soft, hard in limits:
        try:
            resource.setrlimit(which, (soft, hard))
        except (ValueError, OSError) as e:
            report.setdefault("problems", []).append(f"setrlimit({which}): {e}")


def drop_root(uid: int | None, report: dict) -> None:
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        report["uid"] = uid
        return
    # Root stays uid 0 (the interpreter is not readable by other users): drop every capability,
    # so it cannot mount, load modules, change limits, reboot or bypass file permissions.
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except OSError:
        last = 63
    for cap in range(last + 1):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (CapData * 2)()
    dropped = libc.capset(ctypes.byref(header), data) == 0
    if not dropped:
        report.setdefault("problems", []).append(f"capset: {_errno_text()}")
    report["uid"] = 0
    report["capabilities_dropped"] = dropped


def apply_landlock(cfg: dict, program: dict, report: dict) -> None:
    """Writes only below the program's directory (and to `write_files`); reads and executes only
    below `read_paths` and that directory; no TCP; no signals or abstract unix sockets outside this
    program's own Landlock domain."""
    abi = landlock_abi() if cfg["landlock"] else 0
    if abi < 1:
        report["landlock_abi"] = 0
        report.setdefault("problems", []).append(
            f"landlock unavailable: {_errno_text()}" if cfg["landlock"] else "landlock turned off"
        )
        return
    write = FS_WRITE_ABI1 | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0)
    fs = write | FS_READ
    net = (NET_BIND_TCP | NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if abi >= 6 else 0
    attr = RulesetAttr(fs, net, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if ruleset < 0:
        report.setdefault("problems", []).append(f"landlock_create_ruleset: {_errno_text()}")
        return
    file_write = FS_WRITE_FILE | (FS_TRUNCATE if abi >= 3 else 0)
    rules = (
        [(program["dir"], fs, fs & ~FS_READ_DIR)]
        + [(f, file_write | FS_READ_FILE, file_write | FS_READ_FILE) for f in cfg["write_files"]]
        + [(p, FS_READ, FS_READ_FILE | FS_EXECUTE) for p in cfg["read_paths"]]
    )
    for path, dir_rights, file_rights in rules:
        try:
            # follows symlinks: /proc/self becomes this process's own /proc/<pid>, /lib its target
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        # a rule on a file may carry file rights only
        rights = dir_rights if os.fstat(fd).st_mode & S_IFMT == S_IFDIR else file_rights
        rule = PathBeneathAttr(rights, fd)
        if libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0):
            report.setdefault("problems", []).append(f"landlock_add_rule {path}: {_errno_text()}")
        os.close(fd)
    if libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
        report.setdefault("problems", []).append(f"landlock_restrict_self: {_errno_text()}")
    else:
        report["landlock_abi"] = int(abi)
        report["landlock_read"] = True
        report["landlock_net"] = bool(net)
        report["landlock_scoped"] = bool(scoped)
    os.close(ruleset)


def seccomp_program(arch: int, foreign_floor: int | None, rules: list) -> list[tuple[int, int, int, int]]:
    """A classic-BPF filter: calls of another ABI get ENOSYS; each rule's call is judged by its block."""

    def ret(errno: int) -> tuple:
        return (RET_K, 0, 0, RET_ERRNO | errno)

    def load_arg(i: int) -> tuple:  # low 32 bits of argument i (little-endian seccomp_data)
        return (LD_ABS_W, 0, 0, 16 + 8 * i)

    allow = (RET_K, 0, 0, RET_ALLOW)
    prog = [(LD_ABS_W, 0, 0, 4), (JEQ_K, 1, 0, arch), ret(ENOSYS), (LD_ABS_W, 0, 0, 0)]
    if foreign_floor is not None:
        prog += [(JGE_K, 0, 1, foreign_floor), ret(ENOSYS)]
    for number, what in rules:
        if what == "deny":
            block = [ret(EPERM)]
        elif what == "enosys":
            block = [ret(ENOSYS)]
        elif what == "socket":
            block = [load_arg(0), (JEQ_K, 2, 0, AF_INET), (JEQ_K, 1, 0, AF_INET6), ret(EACCES), allow]
        elif what[0] == "flags":
            block = [load_arg(what[1]), (JSET_K, 0, 1, what[2]), ret(EPERM), allow]
        else:
            block = [load_arg(what[1]), (JSET_K, 0, 1, SETID_BITS), ret(EPERM), allow]
        prog += [(JEQ_K, 0, len(block), number), *block]
    return prog + [allow]


def apply_seccomp(report: dict) -> None:
    spec = SECCOMP_ARCHES.get(os.uname().machine)
    if spec is None:
        report["seccomp"] = False
        report.setdefault("problems", []).append(f"seccomp: no filter for {os.uname().machine}")
        return
    prog = seccomp_program(*spec)
    filters = (SockFilter * len(prog))(*[SockFilter(*insn) for insn in prog])
    fprog = SockFprog(len(prog), filters)
    ok = libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) == 0
    if not ok:
        report.setdefault("problems", []).append(f"seccomp: {_errno_text()}")
    report["seccomp"] = ok


def send(fd: int, message: dict) -> None:
    data = marshal.dumps(message)
    if len(data) > 4000 and "problems" in str(message):  # one write of at most PIPE_BUF is atomic
        data = marshal.dumps({k: {**v, "problems": v.get("problems", [])[:4]} for k, v in message.items()})
    os.write(fd, len(data).to_bytes(4, "little") + data)


def place_fds(fds: dict[int, int], keep: int) -> None:
    """Make fd `target` a copy of `source` for each pair, close every other descriptor but 0-2 and
    `keep` (the status pipe). Sources are moved out of the way first, so targets can overlap them."""
    import fcntl

    moved = {target: fcntl.fcntl(source, fcntl.F_DUPFD_CLOEXEC, 1000) for target, source in fds.items()}
    for target, source in moved.items():
        os.dup2(source, target)
    top = max([2, *fds])
    os.closerange(top + 1, keep)
    os.closerange(keep + 1, 1 << 20)


def confine_program(
    cfg: dict, program: dict, status_fd: int, key: str, supervisor: int, user_namespace: bool
) -> None:
    """Runs in a program's own process, forked by the supervisor."""
    report: dict = {}
    libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)
    os.chdir(program["dir"])
    if program.get("role") == "candidate" and cfg["as_root"]:
        # the OOM killer takes the candidate before the checker; raising one's own score needs no privilege
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")
        except OSError as e:
            report.setdefault("problems", []).append(f"oom_score_adj: {e.strerror}")
    set_limits(cfg, report, user_namespace)
    if cfg["as_root"]:
        drop_root(program.get("uid"), report)
        libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)  # a uid change clears it
    if os.getppid() != supervisor:  # the supervisor died before the death signal was armed
        os._exit(137)
    # a checker is not dumpable: no process of another domain or uid may open its /proc entries
    libc.prctl(PR_SET_DUMPABLE, 0 if program.get("role") == "checker" else 1, 0, 0, 0)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        report.setdefault("problems", []).append(f"no_new_privs: {_errno_text()}")
    apply_landlock(cfg, program, report)
    apply_seccomp(report)
    send(status_fd, {key: report})
    os.close(status_fd)


def start_program(cfg: dict, index: int, fds: dict[int, int], status_fd: int, user_namespace: bool) -> int:
    """Fork a program's process; in the child confine it and return -1 (the caller then runs it)."""
    program = cfg["programs"][index]
    key = "setup" if index == 0 else "companion_setup"
    supervisor = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    try:
        place_fds(fds, status_fd)
        confine_program(cfg, program, status_fd, key, supervisor, user_namespace)
    except BaseException as e:  # noqa: BLE001 - any failed confinement step must stop the program
        send(status_fd, {key + "_error": repr(e)})
        os._exit(126)
    return -1


def ended(status: int, usage, cfg: dict, stopped: bool = False) -> dict:
    end = {
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "maxrss_kb": usage.ru_maxrss,
        "cpu_limit_s": cpu_limit(cfg),
        "stopped": stopped,
    }
    if os.WIFSIGNALED(status):
        end["signal"] = os.WTERMSIG(status)
    else:
        end["exit"] = os.WEXITSTATUS(status)
    return end


def supervise(cfg: dict, report: dict) -> dict:
    """The supervisor (PID 1 of the namespace when there is one). Returns only in a program's own
    process, with the program to run; the supervisor itself ends with os._exit. (It shares the
    launcher's process group, so the parent's kill reaches it even before the death signal is armed.)"""
    status_fd = int(cfg["status_fd"])
    libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # without a PID namespace, orphans come back here
    try:
        if report.get("mount_namespace"):
            readonly_root([p["dir"] for p in cfg["programs"]], report)
    except OSError as e:
        send(status_fd, {"setup_error": repr(e)})
        os._exit(126)
    send(status_fd, {"supervisor": report})
    for module in cfg.get("preload", ()):  # imported once here instead of once per program
        __import__(module)
    fds: list[dict[int, int]] = [{}]
    if len(cfg["programs"]) > 1:
        # fd 3: the checker's requests (checker writes, candidate reads); fd 4: the replies
        requests_r, requests_w = os.pipe()
        replies_r, replies_w = os.pipe()
        fds = [{3: requests_w, 4: replies_r}, {1: 2, 3: requests_r, 4: replies_w}]
    pids = []
    for index in range(len(cfg["programs"])):
        pid = start_program(cfg, index, fds[index], status_fd, bool(report.get("user_namespace")))
        if pid < 0:
            return cfg["programs"][index]
        pids.append(pid)
    for mapping in fds:
        for target, source in mapping.items():
            if target > 2:
                os.close(source)
    message = wait_for_programs(pids, cfg)
    send(status_fd, message)
    os._exit(0)


def wait_for_programs(pids: list[int], cfg: dict) -> dict:
    """Wait for the main program (reaping orphans meanwhile), then stop the others; how each ended."""
    ends: dict[int, dict] = {}
    while pids[0] not in ends:
        try:
            pid, status, usage = os.wait4(-1, 0)
        except ChildProcessError:
            break
        if pid in pids:
            ends[pid] = ended(status, usage, cfg)
    for pid in pids[1:]:
        if pid not in ends:
            # the main program is done: stop the others (one that already exited keeps its own status)
            waited, status, usage = os.wait4(pid, os.WNOHANG)
            if waited == 0:
                os.kill(pid, SIGKILL)
                waited, status, usage = os.wait4(pid, 0)
                ends[pid] = ended(status, usage, cfg, stopped=True)
            else:
                ends[pid] = ended(status, usage, cfg)
    message = {"result": ends.get(pids[0], {})}
    if len(pids) > 1:
        message["companion_result"] = ends[pids[1]]
    return message


def run_program(mode: str, argv: list[str]) -> None:
    if mode == "exec":
        os.execvp(argv[0], argv)
    # Python mode: run the program in this interpreter, as `python main.py` would.
    path = argv[0]
    with open(path, "rb") as f:
        code = compile(f.read(), path, "exec")
    sys.argv = list(argv)
    sys.path[0:0] = [os.getcwd()]
    main_module = type(sys)("__main__")
    main_module.__file__ = path
    sys.modules["__main__"] = main_module
    exec(code, main_module.__dict__)  # noqa: S102 - running the confined program is the point


def main() -> None:
    import fcntl

    cfg = marshal.loads(bytes.fromhex(sys.argv[1]))
    # out of the way of the fds the programs get (0-4)
    status_fd = cfg["status_fd"] = fcntl.fcntl(int(cfg["status_fd"]), fcntl.F_DUPFD_CLOEXEC, 10)
    report: dict = {}
    join_cgroups(cfg["cgroup_procs"], report)
    # without Landlock, root's writes are confined by a read-only mount namespace instead
    enter_namespaces(cfg["as_root"], cfg["as_root"] and not (cfg["landlock"] and landlock_abi()), report)
    pid = os.fork()
    if pid == 0:
        program = supervise(cfg, report)
        run_program(cfg["mode"], program["argv"])
        return
    _, status, _ = os.wait4(pid, 0)
    if os.WIFSIGNALED(status):  # the supervisor was killed before it could report
        send(status_fd, {"supervisor_signal": os.WTERMSIG(status)})
    elif os.WEXITSTATUS(status):
        send(status_fd, {"supervisor_exit": os.WEXITSTATUS(status)})
    os._exit(0)  # nothing to flush here; skipping interpreter teardown saves milliseconds per run


if __name__ == "__main__":
    main()
