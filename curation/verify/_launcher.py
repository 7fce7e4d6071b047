"""Sandbox launcher: run as a script (`python -I -B _launcher.py CONFIG_JSON`), never imported.

It confines itself and then runs the untrusted program, in this order:
  1. join the sandbox's cgroups (pids / memory), made by the parent when it runs as root;
  2. unshare network, PID and IPC namespaces (plus a user namespace when not root);
  3. fork: the child is PID 1 of the new PID namespace, so when it exits the kernel kills every
     process it left behind; this process waits for it and reports its exit status and CPU time;
  4. in the child: resource limits, then (root) a switch to a throwaway uid or dropping every
     capability, no_new_privs, a Landlock ruleset (writes only under the sandbox directory, no TCP,
     no signals or abstract sockets outside), and finally the program itself.
Each step that the kernel refuses is skipped and reported, never fatal: the parent decides what is
acceptable. The report goes to the status pipe (`status_fd`) as JSON lines.

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

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# Landlock (linux/landlock.h); the syscall numbers are shared by x86_64 and aarch64.
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
FS_WRITE_FILE = 1 << 1
FS_WRITE_ABI1 = FS_WRITE_FILE | sum(1 << b for b in range(4, 13))  # remove_*, make_*
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


class RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


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


def enter_namespaces(as_root: bool, report: dict) -> None:
    base = CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC
    attempts = [base] if as_root else [base | CLONE_NEWUSER, CLONE_NEWUSER | CLONE_NEWNET]
    for flags in attempts:
        if libc.unshare(flags) == 0:
            report["net_namespace"] = bool(flags & CLONE_NEWNET)
            report["pid_namespace"] = bool(flags & CLONE_NEWPID)
            report["user_namespace"] = bool(flags & CLONE_NEWUSER)
            return
        report.setdefault("problems", []).append(f"unshare({flags:#x}): {_errno_text()}")
    report.update(net_namespace=False, pid_namespace=False, user_namespace=False)


def nproc_limit(cfg: dict, report: dict) -> int:
    """RLIMIT_NPROC counts every task of the real uid. In a fresh user namespace (or under a fresh
    throwaway uid) that is only the sandbox's own; otherwise add what the user already runs."""
    if cfg["as_root"] or report.get("user_namespace"):
        return int(cfg["max_procs"])
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


def set_limits(cfg: dict, report: dict) -> None:
    mb = 1024 * 1024
    limits = [
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_CPU, max(1, int(cfg["cpu_s"] + 0.999))),
        (resource.RLIMIT_AS, int(cfg["memory_mb"] * mb)),
        (resource.RLIMIT_FSIZE, int(cfg["file_size_mb"] * mb)),
        (resource.RLIMIT_NOFILE, int(cfg["max_open_files"])),
        (resource.RLIMIT_NPROC, nproc_limit(cfg, report)),
    ]
    for which, value in limits:
        try:
            # soft == hard: the kernel then sends SIGKILL at the CPU limit, which PID 1 cannot ignore
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError) as e:
            report.setdefault("problems", []).append(f"setrlimit({which}): {e}")


def drop_root(cfg: dict, report: dict) -> None:
    uid = cfg.get("uid")
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


def apply_landlock(write_dirs: list[str], write_files: list[str], report: dict) -> None:
    abi = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 1:
        report["landlock_abi"] = 0
        report.setdefault("problems", []).append(f"landlock unavailable: {_errno_text()}")
        return
    fs = FS_WRITE_ABI1 | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0)
    net = (NET_BIND_TCP | NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if abi >= 6 else 0
    attr = RulesetAttr(fs, net, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if ruleset < 0:
        report.setdefault("problems", []).append(f"landlock_create_ruleset: {_errno_text()}")
        return
    file_rights = FS_WRITE_FILE | (FS_TRUNCATE if abi >= 3 else 0)
    for path, rights in [(d, fs) for d in write_dirs] + [(f, file_rights) for f in write_files]:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        rule = PathBeneathAttr(rights, fd)
        if libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0):
            report.setdefault("problems", []).append(f"landlock_add_rule {path}: {_errno_text()}")
        os.close(fd)
    if libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
        report.setdefault("problems", []).append(f"landlock_restrict_self: {_errno_text()}")
    else:
        report["landlock_abi"] = int(abi)
        report["landlock_net"] = bool(net)
        report["landlock_scoped"] = bool(scoped)
    os.close(ruleset)


def send(fd: int, message: dict) -> None:
    data = marshal.dumps(message)
    os.write(fd, len(data).to_bytes(4, "little") + data)


def confine_child(cfg: dict, report: dict, status_fd: int) -> None:
    """Runs in the forked child (PID 1 of the new namespace when there is one)."""
    parent = os.getppid()
    libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)
    set_limits(cfg, report)
    if cfg["as_root"]:
        drop_root(cfg, report)
        libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)  # a uid change clears it
    if os.getppid() != parent:  # the launcher died before the death signal was armed
        os._exit(137)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        report.setdefault("problems", []).append(f"no_new_privs: {_errno_text()}")
    apply_landlock(cfg["write_dirs"], cfg["write_files"], report)
    send(status_fd, {"setup": report})
    os.close(status_fd)


def run_program(cfg: dict) -> None:
    if cfg["mode"] == "exec":
        os.execvp(cfg["argv"][0], cfg["argv"])
    # Python mode: run the program in this interpreter, as `python main.py` would.
    path = cfg["argv"][0]
    with open(path, "rb") as f:
        code = compile(f.read(), path, "exec")
    sys.argv = list(cfg["argv"])
    sys.path[0:0] = [os.getcwd()]
    main_module = type(sys)("__main__")
    main_module.__file__ = path
    sys.modules["__main__"] = main_module
    exec(code, main_module.__dict__)  # noqa: S102 - running the confined program is the point


def main() -> None:
    cfg = marshal.loads(bytes.fromhex(sys.argv[1]))
    status_fd = int(cfg["status_fd"])
    report: dict = {}
    join_cgroups(cfg["cgroup_procs"], report)
    enter_namespaces(cfg["as_root"], report)
    pid = os.fork()
    if pid == 0:
        try:
            confine_child(cfg, report, status_fd)
        except BaseException as e:  # noqa: BLE001 - any failed confinement step must stop the program
            send(status_fd, {"setup_error": repr(e)})
            os._exit(126)
        run_program(cfg)
        return
    _, status, usage = os.wait4(pid, 0)
    result = {"cpu_s": usage.ru_utime + usage.ru_stime, "maxrss_kb": usage.ru_maxrss}
    if os.WIFSIGNALED(status):
        result["signal"] = os.WTERMSIG(status)
    else:
        result["exit"] = os.WEXITSTATUS(status)
    send(status_fd, {"result": result})
    os._exit(0)  # nothing to flush here; skipping interpreter teardown saves milliseconds per run


if __name__ == "__main__":
    main()
