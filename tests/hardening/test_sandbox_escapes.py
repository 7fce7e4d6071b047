"""Escape attempts against the code verifier's sandbox, beyond the DART tests: reading the lake, the
repo, the home directory and /etc/shadow; the parent's environment; signals and ptrace to outside
processes; daemons that outlive a timeout; writes and metadata changes outside; sockets; setuid files.

Each probe program runs its attempts and prints `REFUSED name ExceptionType` or `ESCAPED name value`
per attempt; a test holds only when every attempt ran, was refused with an expected error, and the
parent saw nothing leak. Counts: every attempt is tried; attempts that a host cannot isolate (its
kernel lacks the feature) are skipped with the reason and counted as not held.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from assay_figures import record
from assay_testing import tree_digest

from curation.verify import sandbox
from curation.verify.sandbox import Limits, isolation_support, run_command, run_python

REPO = Path(__file__).resolve().parents[2]
QUICK = Limits(wall_s=120.0, cpu_s=3.0, memory_mb=512, max_procs=8, max_output_bytes=20_000)
# what a refusal looks like: EACCES / EPERM, EROFS / EXDEV / ENETUNREACH (OSError), a process that
# is not there (another PID namespace), a name that does not resolve, or the probe's own Refused
REFUSALS = {
    "PermissionError",
    "Refused",
    "ProcessLookupError",
    "FileNotFoundError",
    "KeyError",
    "ConnectionRefusedError",
    "TimeoutError",
    "OSError",
    "gaierror",
}
COUNTS = {"tried": 0, "held": 0, "not_isolated": 0}

PRELUDE = r'''
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)


class Refused(Exception):
    """The sandbox refused the call."""


def refused_call(ret):
    """A libc call's result: refused (EPERM, ESRCH, EACCES, ENOSYS) or, for anything else, an escape."""
    errno = ctypes.get_errno()
    if ret == -1 and errno in (1, 3, 13, 38):
        raise Refused(os.strerror(errno))
    return ("call went through", ret, errno)


def attempt(name, fn):
    try:
        value = fn()
    except BaseException as e:
        print("REFUSED", name, type(e).__name__, flush=True)
    else:
        print("ESCAPED", name, repr(value)[:300], flush=True)
'''


@pytest.fixture(scope="module", autouse=True)
def record_escapes():
    yield
    detail = "code verifier sandbox"
    if COUNTS["not_isolated"]:
        detail += f" ({COUNTS['not_isolated']} not isolated on this host)"
    record("sandbox escapes", COUNTS["tried"], COUNTS["held"], detail)


def host_features() -> dict:
    """The host's isolation report plus derived flags; `always` is in effect everywhere."""
    support = dict(isolation_support())
    support["always"] = True
    support["landlock_truncate"] = support.get("landlock_abi", 0) >= 3
    return support


def not_isolated(attempts: int, reason: str) -> None:
    COUNTS["tried"] += attempts
    COUNTS["not_isolated"] += attempts
    pytest.skip(f"not isolated on this host: {reason} ({isolation_support()})")


def probe(
    setup: str,
    attempts: list[tuple[str, str, tuple[str, ...]]],
    *,
    after: str = "",
    secrets: tuple[str, ...] = (),
    limits: Limits = QUICK,
    **kwargs,
):
    """Run PRELUDE + setup, then each attempt `(name, expression, features)` whose features (any one
    of them) are in effect on this host, then `after`. Asserts that every attempt ran and was refused
    and that no secret leaked. Attempts the host cannot isolate are counted as not held, and the
    test is skipped naming them once the others have held."""
    support = host_features()
    run = [(name, expr) for name, expr, features in attempts if any(support.get(f) for f in features)]
    missing = {name: features for name, expr, features in attempts if (name, expr) not in run}
    if not run:
        not_isolated(len(attempts), f"none of the features these attempts need is in effect: {missing}")
    COUNTS["tried"] += len(run)
    body = PRELUDE + setup + "".join(f"attempt({name!r}, lambda: {expr})\n" for name, expr in run) + after
    result = run_python(body, limits=limits, **kwargs)
    outcomes = {}
    for line in result.stdout.splitlines():
        verdict, _, rest = line.partition(" ")
        if verdict in ("REFUSED", "ESCAPED"):
            name, _, detail = rest.partition(" ")
            outcomes[name] = (verdict, detail)
    assert sorted(outcomes) == sorted(name for name, _ in run), (result.stdout, result.stderr)
    escaped = {n: d for n, (v, d) in outcomes.items() if v == "ESCAPED"}
    assert not escaped, escaped
    unexpected = {n: d for n, (_, d) in outcomes.items() if d not in REFUSALS}
    assert not unexpected, f"attempts failed for a reason other than confinement: {unexpected}"
    for secret in secrets:
        assert secret not in result.stdout and secret not in result.stderr
    COUNTS["held"] += len(run)
    return result, missing


def skip_missing(missing: dict) -> None:
    """Called at the end of a test whose other checks held."""
    if missing:
        not_isolated(len(missing), f"held the rest; these need one of the named features: {missing}")


@pytest.fixture
def lake_with_secret(tmp_path: Path) -> tuple[Path, Path, str]:
    lake = tmp_path / "lake"
    secret = f"lake-secret-{uuid.uuid4().hex}"
    part = lake / "scores" / "run_id=abc"
    part.mkdir(parents=True)
    (part / "part-0.parquet").write_text(secret)
    return lake, part / "part-0.parquet", secret


READS = ("landlock_read",)


def test_the_lake_cannot_be_read(lake_with_secret) -> None:
    lake, secret_file, secret = lake_with_secret
    result, missing = probe(
        f"""
import shutil, subprocess
LAKE, FILE = {str(lake)!r}, {str(secret_file)!r}
def via_symlink():
    os.symlink(FILE, "link")
    return open("link").read()
def via_hardlink():
    os.link(FILE, "hard")
    return open("hard").read()
def via_o_path():
    fd = os.open(FILE, os.O_PATH)
    return open(f"/proc/self/fd/{{fd}}").read()
def via_cat():
    out = subprocess.run(["/bin/cat", FILE], capture_output=True, text=True)
    if out.returncode or not out.stdout:
        raise Refused(out.stderr)
    return out.stdout
def via_copy():
    shutil.copyfile(FILE, "copy")
    return open("copy").read()
""",
        [
            ("open", "open(FILE).read()", READS),
            ("listdir", "os.listdir(LAKE)", READS),
            ("proc_root", 'open("/proc/self/root" + FILE).read()', READS),
            ("symlink", "via_symlink()", READS),
            ("hardlink", "via_hardlink()", READS),
            ("o_path_reopen", "via_o_path()", READS),
            ("cat", "via_cat()", READS),
            ("copyfile", "via_copy()", READS),
        ],
        after='print("OWN", len(open("main.py").read()) > 0, len(open(os.__file__).read()) > 0)\n',
        secrets=(secret,),
    )
    assert "OWN True True" in result.stdout  # its own files and the stdlib stay readable
    skip_missing(missing)


def test_the_repository_cannot_be_read_but_the_interpreter_can() -> None:
    result, missing = probe(
        f"""
REPO = {str(REPO)!r}
""",
        [
            ("repo_file", 'open(REPO + "/README.md").read()', READS),
            ("repo_listdir", "os.listdir(REPO)", READS),
            ("import_project", '__import__("storage.gate")', READS),
        ],
        after="import json, decimal, sqlite3, numpy\nprint('IMPORTS', numpy.arange(4).sum())\n",
        site_packages=True,
    )
    # the interpreter's stdlib and the venv's packages stay importable though the venv is in the repo
    assert "IMPORTS 6" in result.stdout, result.stderr
    skip_missing(missing)


def test_the_home_directory_and_system_secrets_cannot_be_read(tmp_path: Path, monkeypatch) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    secret = f"home-secret-{uuid.uuid4().hex}"
    (home / ".ssh" / "id_ed25519").write_text(secret)
    monkeypatch.setenv("HOME", str(home))
    real_home = os.path.expanduser("~root" if os.geteuid() == 0 else "~")
    result, missing = probe(
        f"""
import pwd
HOME = {str(home)!r}
def tilde():
    if os.path.expanduser("~") == os.getcwd():
        raise Refused("~ is the sandbox directory")
    return os.path.expanduser("~")
""",
        [
            ("fake_home_file", 'open(HOME + "/.ssh/id_ed25519").read()', READS),
            ("fake_home_listdir", "os.listdir(HOME)", READS),
            ("real_home_listdir", f"os.listdir({real_home!r})", READS),
            ("etc_shadow", 'open("/etc/shadow").read()', (*READS, "uid", "user_namespace")),
            ("etc_passwd", 'open("/etc/passwd").read()', READS),
            ("getpwuid", "pwd.getpwuid(0)", READS),
            ("etc_listdir", 'os.listdir("/etc")', READS),
            ("tilde", "tilde()", ("always",)),
        ],
        secrets=(secret,),
    )
    assert result.ok, result.stderr
    skip_missing(missing)


def test_the_parents_environment_does_not_leak(monkeypatch) -> None:
    secret = f"env-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("ASSAY_ESCAPE_SECRET", secret)
    _, missing = probe(
        f"""
def own_proc_environ():
    data = open("/proc/self/environ", "rb").read()
    if {secret!r}.encode() in data:
        return data
    raise Refused("not in the program's own environment")
""",
        [
            ("environ", 'os.environ["ASSAY_ESCAPE_SECRET"]', ("always",)),
            ("proc_self_environ", "own_proc_environ()", ("always",)),
            (
                "proc_parent_environ",
                f'open("/proc/{os.getpid()}/environ", "rb").read()',
                ("landlock_read", "capabilities_dropped", "uid", "user_namespace"),
            ),
        ],
        secrets=(secret,),
    )
    skip_missing(missing)


@pytest.fixture
def victim():
    """A process outside the sandbox, of the same user: the target of signals and ptrace."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


SIGNALS = ("pid_namespace", "landlock_scoped")


def test_signals_do_not_reach_outside_processes(victim) -> None:
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        result, missing = probe(
            f"""
import signal
TEST, VICTIM = {os.getpid()}, {victim.pid}
def in_pid_namespace():
    return os.getppid() in (0, 1)  # the sandbox's supervisor is PID 1 of its namespace
def kill_parent():
    ppid = os.getppid()
    if ppid == 0:
        raise Refused("the parent is outside the PID namespace")
    os.kill(ppid, signal.SIGTERM)
    if in_pid_namespace():
        # (with Landlock scoping the call itself is refused)
        raise Refused("the parent is the sandbox's own supervisor, PID 1 of its namespace")
def kill_launcher():
    ppid = int([l for l in open("/proc/self/status") if l.startswith("PPid:")][0].split()[1])
    os.kill(ppid, signal.SIGTERM)
    if in_pid_namespace():
        raise Refused("the parent is the sandbox's own supervisor, PID 1 of its namespace")
def everyone():
    os.kill(-1, signal.SIGKILL)  # inside the namespace this reaches the program's own tree only
    if in_pid_namespace():
        raise Refused("PID namespace: -1 is the program's own tree")
""",
            [
                ("getppid", "kill_parent()", SIGNALS),
                ("status_ppid", "kill_launcher()", SIGNALS),
                ("test_process", "os.kill(TEST, signal.SIGTERM)", SIGNALS),
                ("test_group", "os.killpg(os.getpgid(TEST), signal.SIGTERM)", SIGNALS),
                ("victim", "os.kill(VICTIM, signal.SIGKILL)", SIGNALS),
                ("kill_all", "everyone()", SIGNALS),
            ],
        )
        time.sleep(0.2)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert received == []
    assert victim.poll() is None  # still running
    assert result.status == "exited" and result.returncode == 0  # the supervisor lived to report
    skip_missing(missing)


def test_ptrace_and_process_memory_are_refused(victim) -> None:
    trace = ("seccomp", "pid_namespace", "landlock_abi", "capabilities_dropped", "uid")
    mem = ("landlock_abi", "capabilities_dropped", "uid", "user_namespace")
    attempts = []
    for who, pid in {"test": os.getpid(), "victim": victim.pid}.items():
        attempts += [
            (f"ptrace_attach_{who}", f"refused_call(libc.ptrace(16, {pid}, None, None))", trace),
            (f"proc_mem_{who}", f'open("/proc/{pid}/mem", "rb").read(1)', mem),
            (f"process_vm_readv_{who}", f"read_remote({pid})", trace),
        ]
    _, missing = probe(
        """
class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
libc.ptrace.restype = ctypes.c_long
def read_remote(pid):
    buf = ctypes.create_string_buffer(16)
    local, remote = IoVec(ctypes.addressof(buf), 16), IoVec(0x400000, 16)
    return refused_call(libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0))
""",
        attempts,
    )
    assert victim.poll() is None
    skip_missing(missing)


def marked_processes(mark: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and mark.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


DAEMON = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-S", "-c", "import time; time.sleep(60)", {mark!r}])
    os._exit(0)
time.sleep(0.5)
print("daemon started", flush=True)
{after}
"""


@pytest.mark.parametrize("ending", ["timeout", "exit"])
def test_no_process_outlives_the_run(ending: str) -> None:
    if not any(host_features().get(f) for f in ("pid_namespace", "cgroups", "uid")):
        not_isolated(1, "a daemon outlives the run without a PID namespace, cgroups or a throwaway uid")
    COUNTS["tried"] += 1
    mark = f"assay-escape-{uuid.uuid4().hex}"
    after = "time.sleep(60)" if ending == "timeout" else "pass"
    result = run_python(
        DAEMON.format(mark=mark, after=after),
        # the wall clock ends the "timeout" case; for "exit" it is only a safety net
        limits=Limits(wall_s=5.0 if ending == "timeout" else 120.0, cpu_s=2.0, max_procs=8),
    )
    assert "daemon started" in result.stdout, result.stderr
    assert result.status == ending.replace("exit", "exited")
    deadline = time.monotonic() + 3
    while marked_processes(mark) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marked_processes(mark) == []
    COUNTS["held"] += 1


WRITES = ("landlock_abi", "readonly_root")
METADATA = ("seccomp", "readonly_root", "uid")


def test_nothing_is_written_or_changed_outside(lake_with_secret, tmp_path: Path) -> None:
    lake, secret_file, _ = lake_with_secret
    before = tree_digest(lake)
    mode_before = secret_file.stat().st_mode
    outside = tmp_path / "outside.txt"
    shared_tmp = Path("/tmp") / f"assay-escape-{uuid.uuid4().hex}"
    in_venv = Path(sys.prefix) / f"assay-escape-{uuid.uuid4().hex}"
    try:
        result, missing = probe(
            f"""
LAKE, FILE = {str(lake)!r}, {str(secret_file)!r}
""",
            [
                ("new_file_outside", f'open({str(outside)!r}, "w").write("x")', WRITES),
                ("shared_tmp", f'open({str(shared_tmp)!r}, "w").write("x")', WRITES),
                ("venv", f'open({str(in_venv)!r}, "w").write("x")', (*WRITES, "uid")),
                ("lake_new_file", 'open(LAKE + "/leak.txt", "w").write("x")', WRITES),
                ("lake_overwrite", 'open(FILE, "w").write("x")', WRITES),
                ("lake_unlink", "os.unlink(FILE)", WRITES),
                ("lake_rename_in", 'os.rename(FILE, "stolen")', WRITES),
                ("lake_mkdir", 'os.mkdir(LAKE + "/newdir")', WRITES),
                ("lake_symlink", 'os.symlink("/etc/passwd", LAKE + "/link")', WRITES),
                ("lake_chmod", "os.chmod(FILE, 0o666)", METADATA),
                ("lake_utime", "os.utime(FILE, (0, 0))", METADATA),
                ("lake_xattr", 'os.setxattr(FILE, "user.assay", b"x")', METADATA),
                ("lake_truncate", "os.truncate(FILE, 0)", ("landlock_truncate", "readonly_root", "uid")),
            ],
            after='open("inside.txt", "w").write("ok")\nprint("INSIDE", open("inside.txt").read())\n',
        )
    finally:
        leaked = [path for path in (outside, shared_tmp, in_venv) if path.exists()]
        for path in leaked:
            path.unlink()
    assert leaked == []
    assert tree_digest(lake) == before and secret_file.stat().st_mode == mode_before
    assert "INSIDE ok" in result.stdout  # the sandbox directory itself stays writable
    skip_missing(missing)


def test_writes_outside_fail_on_the_read_only_fallback(lake_with_secret, monkeypatch) -> None:
    """Root on a kernel without Landlock: the read-only mount namespace confines writes (simulated
    here by turning Landlock off)."""
    if os.geteuid() != 0:
        not_isolated(4, "the read-only mount fallback is for root only")
    monkeypatch.setattr(sandbox, "LANDLOCK_ENABLED", False)
    fallback = run_python("pass", limits=QUICK).isolation
    if not fallback.get("readonly_root"):
        not_isolated(4, f"no mount namespace or mount_setattr for the fallback: {fallback}")
    lake, secret_file, _ = lake_with_secret
    before = tree_digest(lake)
    COUNTS["tried"] += 4
    result = run_python(
        PRELUDE
        + f"""
FILE = {str(secret_file)!r}
attempt("lake_new_file", lambda: open({str(lake)!r} + "/leak.txt", "w").write("x"))
attempt("lake_overwrite", lambda: open(FILE, "w").write("x"))
attempt("lake_unlink", lambda: os.unlink(FILE))
attempt("lake_mkdir", lambda: os.mkdir({str(lake)!r} + "/newdir"))
open("inside.txt", "w").write("ok")
print("INSIDE", open("inside.txt").read())
""",
        limits=QUICK,
    )
    assert result.isolation.get("readonly_root") and not result.isolation.get("landlock_abi")
    assert result.stdout.count("REFUSED") == 4 and "ESCAPED" not in result.stdout, result.stdout
    assert "INSIDE ok" in result.stdout
    assert tree_digest(lake) == before
    COUNTS["held"] += 4


def test_sockets_reach_nothing_outside() -> None:
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix_path = f"/tmp/assay-escape-{uuid.uuid4().hex}.sock"
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(unix_path)
    unix.listen()
    abstract_name = f"\0assay-escape-{uuid.uuid4().hex}"
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(abstract_name)
    abstract.listen()
    try:
        result, missing = probe(
            """
import socket
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"escaped", ("127.0.0.1", port))
    return "sent"
def unix(address):
    s = socket.socket(socket.AF_UNIX)
    s.connect(address)
    return "connected"
""",
            [
                (
                    "tcp",
                    f'socket.create_connection(("127.0.0.1", {tcp.getsockname()[1]}), timeout=2)',
                    ("net_namespace", "landlock_net"),
                ),
                ("udp", f"udp({udp.getsockname()[1]})", ("net_namespace",)),
                ("unix_path", f"unix({unix_path!r})", ("seccomp", "uid")),
                (
                    "unix_abstract",
                    f"unix({abstract_name!r})",
                    ("net_namespace", "landlock_scoped", "seccomp"),
                ),
                ("dns", 'socket.getaddrinfo("example.com", 80)', ("net_namespace",)),
            ],
            after='a, b = socket.socketpair()\na.send(b"pair")\nprint("SOCKETPAIR", b.recv(4).decode())\n',
        )
        assert "SOCKETPAIR pair" in result.stdout  # in-process socket pairs (asyncio, multiprocessing) work
        for server in (tcp, unix, abstract):
            server.settimeout(0.1)
            with pytest.raises(TimeoutError):
                server.accept()
        udp.settimeout(0.1)
        with pytest.raises(TimeoutError):
            udp.recv(16)
    finally:
        for s in (tcp, udp, unix, abstract):
            s.close()
        Path(unix_path).unlink(missing_ok=True)
    skip_missing(missing)


def test_no_setuid_or_setgid_file_can_be_made() -> None:
    result, missing = probe(
        """
import shutil, stat
open("plain", "w").close()
def setuid_shell():
    shutil.copyfile("/bin/sh", "sh")
    os.chmod("sh", 0o4755)
    return oct(os.stat("sh").st_mode)
""",
        [
            ("chmod_setuid", 'os.chmod("plain", 0o4755)', ("seccomp",)),
            ("chmod_setgid", 'os.chmod("plain", 0o2755)', ("seccomp",)),
            ("open_setuid", 'os.close(os.open("created", os.O_CREAT | os.O_WRONLY, 0o4755))', ("seccomp",)),
            ("mkdir_setgid", 'os.mkdir("dir", 0o2755)', ("seccomp",)),
            ("setuid_shell", "setuid_shell()", ("seccomp",)),
        ],
        after="""
modes = {name: os.stat(name).st_mode for name in os.listdir(".")}
print("SETID", sorted(n for n, m in modes.items() if m & (stat.S_ISUID | stat.S_ISGID)))
""",
    )
    assert "SETID []" in result.stdout
    skip_missing(missing)


def test_commands_are_confined_like_python() -> None:
    if not host_features().get("landlock_read"):
        not_isolated(2, "reads are not confined without Landlock")
    COUNTS["tried"] += 2
    result = run_command(["/bin/sh", "-c", f"cat /etc/shadow; ls {REPO}; echo end"], limits=QUICK)
    assert "end" in result.stdout and "root:" not in result.stdout
    assert "README.md" not in result.stdout and "Permission denied" in result.stderr
    COUNTS["held"] += 2


def test_no_new_namespaces_and_no_unusual_socket_families() -> None:
    """A user namespace would give the program every capability inside it (and with it mounts and
    new network stacks); vsock, netlink, packet and alg sockets reach the hypervisor or the kernel.
    Threads (clone without namespace flags, glibc's clone3 falling back) and IPv4 sockets still work."""
    result, missing = probe(
        """
import socket, threading
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
SIGCHLD = 17
libc.syscall.restype = ctypes.c_long
def raw_clone(flags):
    pid = libc.syscall(56 if os.uname().machine == "x86_64" else 220, flags | SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        os._exit(0)
    return refused_call(pid)
def clone3():
    args = (ctypes.c_uint64 * 11)()
    args[0] = CLONE_NEWUSER
    args[4] = SIGCHLD
    pid = libc.syscall(435, ctypes.byref(args), ctypes.sizeof(args))
    if pid == 0:
        os._exit(0)
    return refused_call(pid)
def setns_own():
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    return refused_call(libc.setns(fd, 0))
def family(number, kind=socket.SOCK_STREAM):
    return socket.socket(number, kind)
""",
        [
            ("unshare_user", "refused_call(libc.unshare(CLONE_NEWUSER))", ("seccomp",)),
            (
                "unshare_user_net_mount",
                "refused_call(libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS))",
                ("seccomp",),
            ),
            ("unshare_net", "refused_call(libc.unshare(CLONE_NEWNET))", ("seccomp",)),
            ("clone_newuser", "raw_clone(CLONE_NEWUSER)", ("seccomp",)),
            ("clone_newpid", "raw_clone(CLONE_NEWPID)", ("seccomp",)),
            ("clone3_newuser", "clone3()", ("seccomp",)),
            ("setns", "setns_own()", ("seccomp",)),
            ("vsock", "family(40)", ("seccomp",)),
            ("netlink", "family(16, socket.SOCK_RAW)", ("seccomp",)),
            ("packet", "family(17, socket.SOCK_RAW)", ("seccomp",)),
            ("alg", "family(38, socket.SOCK_SEQPACKET)", ("seccomp",)),
            ("unix", "family(socket.AF_UNIX)", ("seccomp",)),
        ],
        after="""
box = []
t = threading.Thread(target=lambda: box.append(6 * 7))
t.start()
t.join()
ipv4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
a, b = socket.socketpair()
print("STILL", box, ipv4.family.name, a.family.name)
""",
    )
    assert "STILL [42] AF_INET AF_UNIX" in result.stdout
    skip_missing(missing)
