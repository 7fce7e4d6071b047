"""Run untrusted code in a confined subprocess.

Every execution gets a fresh temporary directory (its cwd, HOME and TMPDIR), a scrubbed environment,
wall-clock and CPU time limits, an address-space limit, a file-size limit, a process-count limit and
an open-files limit; stdout / stderr are captured and truncated (head and tail kept); the whole
process tree is killed on timeout. Where the kernel allows it (see `_launcher.py`):

- network, PID and IPC namespaces: no network at all (not even loopback), no view of or signals to
  outside processes, and everything the program leaves behind dies with it;
- Landlock: reads only of what the interpreter needs (`read_paths()`: its prefixes, stdlib and
  site-packages, /usr, /lib*, /bin, a few /etc and /dev entries, /proc/self) and of the sandbox
  directory; writes only below the sandbox directory (and /dev/null); no TCP bind/connect; no
  signals or abstract unix sockets outside the sandbox;
- seccomp: no unix-domain sockets (socketpair stays), no ptrace or cross-process memory access, no
  io_uring, no chmod / chown / utime / xattr changes (Landlock does not cover them, and uid 0 owns
  the files outside), no setuid / setgid bits on new files;
- as root on a kernel without Landlock: a mount namespace in which everything but the sandbox
  directory is read-only and nosuid;
- as root: cgroups bound the total process count and memory of the tree (root is exempt from
  RLIMIT_NPROC), and the program runs under a throwaway uid when the interpreter is readable by
  other users, else as uid 0 with every capability dropped.
`SandboxResult.isolation` says which of these were in effect for that execution;
`isolation_support()` probes the host once.

`run_pair` runs two programs side by side: a trusted checker (the main program, holding stdout) and
an untrusted candidate, each in its own directory and Landlock domain (and uid, when root can give
throwaway uids), talking only through two pipes; the code verifier decides verdicts that way.

CPU time is limited per process in whole seconds (SIGXCPU at the limit; SIGKILL at 2 x limit + 1 s
for a program that ignores it); a program that dies of that is a `timeout` whatever the machine's
load, decided from the signal, the limit and the CPU time the supervisor measured. The wall clock
is a safety net for programs that sleep or block.

Safe to call from many threads (no preexec_fn, no signals) and from worker processes.
"""

from __future__ import annotations

import collections
import marshal
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

LAUNCHER = Path(__file__).with_name("_launcher.py")
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
# Tests turn Landlock off to exercise the fallbacks of older kernels.
LANDLOCK_ENABLED = True
# Readable by every sandboxed program besides the interpreter's own directories: system binaries and
# libraries, the dynamic loader's files, the time zone, entropy, its own /proc entry, CPU topology
# (numpy / OpenBLAS read it). Not /etc as a whole (passwd, shadow, keys), not /home, /root, /tmp.
SYSTEM_READ_PATHS = (
    "/usr",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/bin",
    "/sbin",
    "/etc/localtime",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/ld.so.preload",
    "/dev/zero",
    "/dev/urandom",
    "/dev/random",
    "/proc/self",
    "/proc/cpuinfo",
    "/sys/devices/system/cpu",
)


@dataclass(frozen=True)
class Limits:
    wall_s: float = 30.0  # a safety net for programs that sleep or block; CPU use is bounded by cpu_s
    cpu_s: float = 5.0  # per process, rounded up to whole seconds
    memory_mb: int = 1024  # per-process address space; also the whole tree's memory under a cgroup
    file_size_mb: int = 16
    max_procs: int = 8  # tasks (processes and threads) the program may run at once
    max_open_files: int = 256
    max_output_bytes: int = 64_000  # kept per stream: half from the head, half from the tail
    kill_output_bytes: int = 4_000_000  # total output past which the program is killed


@dataclass(frozen=True)
class ProgramEnd:
    """How one program's process ended, as its supervisor saw it."""

    exit: int | None
    signal: str | None
    cpu_s: float | None
    cpu_limit_s: int | None
    stopped: bool = False  # killed by the supervisor because the main program had ended

    @property
    def hit_cpu_limit(self) -> bool:
        """Killed at the CPU limit: SIGXCPU (sent only at the soft limit), or SIGKILL (not the
        supervisor's) after at least the soft limit's CPU time, which is what the hard limit
        (2 x soft + 1 s, in the kernel's sampled ticks) leaves. Decided by the limits and the CPU
        accounting, so it does not depend on how busy the machine was."""
        if self.signal == "SIGXCPU":
            return True
        return (
            self.signal == "SIGKILL"
            and not self.stopped
            and self.cpu_s is not None
            and self.cpu_limit_s is not None
            and self.cpu_s >= self.cpu_limit_s
        )


@dataclass
class SandboxResult:
    status: str  # exited | timeout | output_limit | signaled | setup_error
    returncode: int | None
    signal: str | None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    wall_s: float
    cpu_s: float | None
    oom_killed: bool = False
    isolation: dict = field(default_factory=dict)
    timeout_reason: str | None = None  # cpu | wall, when status is timeout
    companion: ProgramEnd | None = None  # run_pair: how the candidate ended
    companion_isolation: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "exited" and self.returncode == 0


class _Capture:
    """Keeps the first and last `keep // 2` bytes of a stream and counts the rest."""

    def __init__(self, keep: int) -> None:
        self.half = max(1, keep // 2)
        self.head = bytearray()
        self.tail: collections.deque[bytes] = collections.deque()
        self.tail_len = 0
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail.append(chunk)
            self.tail_len += len(chunk)
            while self.tail_len - len(self.tail[0]) >= self.half:
                self.tail_len -= len(self.tail.popleft())

    @property
    def truncated(self) -> bool:
        return self.total > len(self.head) + self.half

    def text(self) -> str:
        tail = b"".join(self.tail)
        if not self.truncated:
            return (bytes(self.head) + tail).decode("utf-8", "replace")
        dropped = self.total - len(self.head) - self.half
        marker = f"\n...[{dropped} bytes truncated]...\n".encode()
        return (bytes(self.head) + marker + tail[-self.half :]).decode("utf-8", "replace")


# ---- cgroups (root only) ---------------------------------------------------------------------


@cache
def _cgroup_roots() -> dict[str, Path]:
    """Writable cgroup directories for the pids and memory controllers (v1 mounts or v2)."""
    roots: dict[str, Path] = {}
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return roots
    for line in mountinfo:
        pre, _, post = line.partition(" - ")
        fstype, _, options = (post.split() + ["", "", ""])[:3]
        mount = Path(pre.split()[4])
        if fstype == "cgroup":
            for controller in ("pids", "memory"):
                if controller in options.split(","):
                    roots.setdefault(controller, mount)
        elif fstype == "cgroup2":
            try:
                enabled = (mount / "cgroup.subtree_control").read_text().split()
            except OSError:
                continue
            for controller in ("pids", "memory"):
                if controller in enabled:
                    roots.setdefault(controller, mount)
    return {c: p for c, p in roots.items() if os.access(p, os.W_OK)}


@cache
def _remove_stale_cgroups() -> None:
    """Once per process: remove groups left by sandboxing processes that died (killed mid-run)."""
    for root in _cgroup_roots().values():
        for path in root.glob("assay-sandbox-*"):
            owner = path.name.split("-")[2]
            if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                _remove_cgroup(path)


class _Cgroups:
    def __init__(self, limits: Limits, programs: int = 1) -> None:
        _remove_stale_cgroups()
        self.dirs: dict[str, Path] = {}
        name = f"assay-sandbox-{os.getpid()}-{secrets.token_hex(4)}"
        for controller, root in _cgroup_roots().items():
            path = root / name
            try:
                path.mkdir()
                if controller == "pids":
                    # the launcher and the supervisor live in the same group, and a checker beside
                    # its candidate takes one task
                    (path / "pids.max").write_text(str(limits.max_procs + 1 + programs))
                else:
                    limit = str(limits.memory_mb * 1024 * 1024)
                    v1 = (path / "memory.limit_in_bytes").exists()
                    (path / ("memory.limit_in_bytes" if v1 else "memory.max")).write_text(limit)
                    if not v1 and (path / "memory.swap.max").exists():
                        (path / "memory.swap.max").write_text("0")
            except OSError:
                _remove_cgroup(path)
                continue
            self.dirs[controller] = path

    def procs_files(self) -> dict[str, str]:
        return {c: str(p / "cgroup.procs") for c, p in self.dirs.items()}

    def oom_killed(self) -> bool:
        path = self.dirs.get("memory")
        if path is None:
            return False
        for name in ("memory.events", "memory.oom_control"):
            try:
                for line in (path / name).read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill" and int(value) > 0:
                        return True
            except (OSError, ValueError):
                continue
        return False

    def kill_and_remove(self) -> None:
        for path in self.dirs.values():
            _remove_cgroup(path)


def _remove_cgroup(path: Path) -> None:
    for _ in range(200):
        try:
            pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
        except OSError:
            pids = []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.005)


# ---- privileges ------------------------------------------------------------------------------


@cache
def _interpreter_readable_by_others() -> bool:
    """Whether a throwaway uid could still run this interpreter and import the stdlib."""
    paths = {Path(os.path.realpath(sys.executable)), Path(sys.base_prefix) / "lib", Path(sys.prefix)}
    for path in paths:
        for part in [path, *path.parents]:
            try:
                mode = part.stat().st_mode
            except OSError:
                return False
            if not mode & 0o001:  # others may not traverse
                return False
    return True


def _throwaway_uid() -> int:
    # A uid far above any real account, so RLIMIT_NPROC counts this execution's tasks alone.
    return 1_900_000_000 + secrets.randbelow(100_000_000)


# ---- what the program may read ---------------------------------------------------------------


def _too_broad(path: Path, guarded: list[Path]) -> bool:
    """`path` is the root, or holds the home, working or temp directory (a venv's prefix never does)."""
    return path == Path("/") or any(path == g or path in g.parents for g in guarded)


@cache
def read_paths() -> tuple[str, ...]:
    """Everything a sandboxed interpreter may read: the prefixes of this interpreter (for a venv the
    venv itself and its base installation), its stdlib and site-packages, its binary's directory, and
    SYSTEM_READ_PATHS. A prefix that would also open the home, working or temp directory (a venv
    made in a project's root) is narrowed to its stdlib and site-packages directories."""
    guarded = []
    for where in (Path.home, Path.cwd, lambda: Path(tempfile.gettempdir())):
        try:
            guarded.append(where().resolve())
        except (OSError, RuntimeError):
            continue
    scheme = sysconfig.get_paths()
    narrow = [scheme.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    narrow += [sysconfig.get_config_var("LIBDIR"), os.path.dirname(os.path.realpath(sys.executable))]
    prefixes = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    out: list[str] = []
    for raw in [*prefixes, *narrow]:
        if not raw:
            continue
        path = Path(raw).resolve()
        if path.exists() and not _too_broad(path, guarded) and str(path) not in out:
            out.append(str(path))
    # a directory below another listed one adds nothing
    out = [p for p in out if not any(Path(q) in Path(p).parents for q in out)]
    return (*out, *SYSTEM_READ_PATHS)


# ---- running ---------------------------------------------------------------------------------


def run_python(
    source: str,
    *,
    limits: Limits | None = None,
    files: Mapping[str, str | bytes] | None = None,
    stdin: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    site_packages: bool = False,
    extra_read_paths: Sequence[str] = (),
) -> SandboxResult:
    """Run Python `source` as `main.py` in a fresh sandbox (the interpreter running this code).

    Without `site_packages` only the standard library is importable, and each run starts several
    times faster (this environment's site setup costs more than the rest of the interpreter start).
    Packages installed in editable mode outside the interpreter's prefix are not readable there
    (the project's own source among them); `extra_read_paths` grants read access to more paths.
    """
    program = _Program(["main.py"], {**(files or {}), "main.py": source}, "main")
    return _run("python", [program], limits or Limits(), stdin, env, site_packages, extra_read_paths)


def run_pair(
    checker: str,
    candidate: str,
    *,
    checker_files: Mapping[str, str | bytes] | None = None,
    candidate_files: Mapping[str, str | bytes] | None = None,
    limits: Limits | None = None,
    env: Mapping[str, str] | None = None,
    site_packages: bool = False,
    preload: Sequence[str] = (),
) -> SandboxResult:
    """Run a trusted `checker` and an untrusted `candidate` (Python sources, each `main.py` in a
    directory of its own with its files) side by side in one sandbox.

    The checker writes requests on fd 3 and reads replies on fd 4; the candidate reads requests on
    fd 3 and writes replies on fd 4. Only the checker holds the sandbox's stdout (its report); the
    candidate's stdout goes to the shared stderr. Each has its own Landlock domain (neither reads the
    other's directory, signals the other or opens its /proc entries; the checker is not dumpable)
    and, as root with throwaway uids, its own uid. The result is the checker's; `companion` says
    how the candidate ended and `companion_isolation` what confined it. Limits apply to each
    process. Ends when the checker does (the candidate is then stopped). `preload` names stdlib
    modules both import: the supervisor imports them once before it starts the two.
    """
    programs = [
        _Program(["main.py"], {**(checker_files or {}), "main.py": checker}, "checker"),
        _Program(["main.py"], {**(candidate_files or {}), "main.py": candidate}, "candidate"),
    ]
    return _run("python", programs, limits or Limits(), None, env, site_packages, (), tuple(preload))


def run_command(
    argv: Sequence[str],
    *,
    limits: Limits | None = None,
    files: Mapping[str, str | bytes] | None = None,
    stdin: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    extra_read_paths: Sequence[str] = (),
) -> SandboxResult:
    """Run an executable in a fresh sandbox; `files` are written into its directory first. The
    executable must lie in a readable path (`read_paths()`, `extra_read_paths`, or the sandbox)."""
    if not argv:
        raise ValueError("run_command needs a non-empty argv")
    program = _Program(list(argv), dict(files or {}), "main")
    return _run("exec", [program], limits or Limits(), stdin, env, False, extra_read_paths)


@dataclass
class _Program:
    argv: list[str]
    files: Mapping[str, str | bytes]
    role: str  # main (alone) | checker | candidate
    dir: Path | None = None
    uid: int | None = None


def _write_files(directory: Path, files: Mapping[str, str | bytes]) -> None:
    for name, content in files.items():
        target = directory / name
        if target.resolve().parent != directory.resolve():
            raise ValueError(f"sandbox file name must be a plain name: {name!r}")
        target.write_bytes(content.encode() if isinstance(content, str) else content)


def _lay_out(workdir: Path, programs: list[_Program], throwaway: bool) -> None:
    """One program works in the sandbox directory itself; two get a subdirectory each (mode 0700,
    owned by their own throwaway uid when there is one), below a directory others may only traverse."""
    base = _throwaway_uid() if throwaway else None
    for i, program in enumerate(programs):
        program.dir = workdir if len(programs) == 1 else workdir / program.role
        program.dir.mkdir(mode=0o700, exist_ok=True)
        program.uid = None if base is None else base + i
        _write_files(program.dir, program.files)
        if program.uid is not None:
            for path in [program.dir, *program.dir.iterdir()]:
                os.chown(path, program.uid, program.uid)
    if len(programs) > 1:
        os.chmod(workdir, 0o711)


def _child_env(workdir: Path, env: Mapping[str, str] | None) -> dict[str, str]:
    return {
        "PATH": SAFE_PATH,
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "LANG": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        **(env or {}),
    }


def _run(
    mode: str,
    programs: list[_Program],
    limits: Limits,
    stdin,
    env,
    site: bool,
    extra_read_paths: Sequence[str] = (),
    preload: tuple[str, ...] = (),
) -> SandboxResult:
    as_root = os.geteuid() == 0
    workdir = Path(tempfile.mkdtemp(prefix="assay-sandbox-"))
    cgroups = _Cgroups(limits, len(programs)) if as_root else None
    status_r, status_w = os.pipe()
    proc = None
    try:
        _lay_out(workdir, programs, as_root and _interpreter_readable_by_others())
        stdin_path = workdir / ".stdin"
        stdin_path.write_bytes(stdin.encode() if isinstance(stdin, str) else (stdin or b""))
        if programs[0].uid is not None:
            os.chown(stdin_path, programs[0].uid, programs[0].uid)
        cfg = {
            "mode": mode,
            "programs": [{"argv": p.argv, "dir": str(p.dir), "uid": p.uid, "role": p.role} for p in programs],
            "status_fd": status_w,
            "as_root": as_root,
            "cpu_s": limits.cpu_s,
            "memory_mb": limits.memory_mb,
            "file_size_mb": limits.file_size_mb,
            "max_open_files": limits.max_open_files,
            "max_procs": limits.max_procs,
            "cgroup_procs": cgroups.procs_files() if cgroups else {},
            "write_files": ["/dev/null"],
            "read_paths": [*read_paths(), *map(str, extra_read_paths)],
            "landlock": LANDLOCK_ENABLED,
            "preload": list(preload),
        }
        start = time.monotonic()
        with open(stdin_path, "rb") as stdin_file:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-B",
                    *([] if site else ["-S"]),
                    str(LAUNCHER),
                    marshal.dumps(cfg).hex(),
                ],
                cwd=workdir,
                env=_child_env(workdir, env),
                stdin=stdin_file,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(status_w,),
                start_new_session=True,
            )
        os.close(status_w)
        status_w = -1
        out, err, status_lines, reason = _collect(proc, status_r, start + limits.wall_s, limits)
        wall = time.monotonic() - start
        oom = cgroups.oom_killed() if cgroups else False
    finally:
        if proc is not None:
            _kill_tree(proc, [p.uid for p in programs if p.uid is not None])
        if cgroups:
            cgroups.kill_and_remove()
        if status_w >= 0:
            os.close(status_w)
        os.close(status_r)
        shutil.rmtree(workdir, ignore_errors=True)
    return _result(reason, status_lines, out, err, wall, limits, oom)


def _collect(proc: subprocess.Popen, status_r: int, deadline: float, limits: Limits):
    captures = {
        proc.stdout.fileno(): _Capture(limits.max_output_bytes),
        proc.stderr.fileno(): _Capture(limits.max_output_bytes),
    }
    status = bytearray()
    reason = None
    with selectors.DefaultSelector() as sel:
        for fd in [*captures, status_r]:
            sel.register(fd, selectors.EVENT_READ)
        exited_at = None
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                reason = "timeout"
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            # Without a PID namespace a leftover child can hold the pipes open: stop shortly after exit.
            if exited_at is not None and now - exited_at > 0.5:
                break
            for key, _ in sel.select(timeout=min(0.1, deadline - now)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                elif key.fd == status_r:
                    status += chunk
                else:
                    captures[key.fd].add(chunk)
            if sum(c.total for c in captures.values()) > limits.kill_output_bytes:
                reason = "output_limit"
                break
    if reason is None:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            reason = "timeout"
    out, err = captures[proc.stdout.fileno()], captures[proc.stderr.fileno()]
    proc.stdout.close()
    proc.stderr.close()
    return out, err, _frames(bytes(status)), reason


def _frames(data: bytes) -> list[dict]:
    """The launcher's length-prefixed marshal messages (a truncated last one is dropped)."""
    out, pos = [], 0
    while pos + 4 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "little")
        if pos + 4 + size > len(data):
            break
        out.append(marshal.loads(data[pos + 4 : pos + 4 + size]))
        pos += 4 + size
    return out


def _kill_tree(proc: subprocess.Popen, uids: list[int]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if uids:  # anything that escaped the process group still runs under a throwaway uid
        for pid in os.listdir("/proc"):
            try:
                if pid.isdigit() and os.stat(f"/proc/{pid}").st_uid in uids:
                    os.kill(int(pid), signal.SIGKILL)
            except OSError:
                continue
    proc.wait()


def _program_end(frame: dict | None) -> ProgramEnd | None:
    if not frame:
        return None
    sig = frame.get("signal")
    return ProgramEnd(
        exit=frame.get("exit"),
        signal=signal.Signals(sig).name if sig is not None else None,
        cpu_s=frame.get("cpu_s"),
        cpu_limit_s=frame.get("cpu_limit_s"),
        stopped=bool(frame.get("stopped")),
    )


def _result(reason, status_lines, out, err, wall, limits, oom) -> SandboxResult:
    merged: dict = {}
    for line in status_lines:
        merged.update(line)
    setup = {**merged.get("supervisor", {}), **merged.get("setup", {})}
    end = _program_end(merged.get("result"))
    timeout_reason = "wall" if reason == "timeout" else None
    errors = [merged[k] for k in ("setup_error", "companion_setup_error") if k in merged]
    if reason is None:
        if errors:
            reason = "setup_error"
        elif end is None:
            reason = "signaled"  # the supervisor died before it reported
        elif end.hit_cpu_limit:
            reason, timeout_reason = "timeout", "cpu"
        elif end.signal is not None:
            reason = "signaled"
        else:
            reason = "exited"
    stderr = err.text()
    for error in errors:
        stderr += f"\n[sandbox setup failed: {error}]"
    if "supervisor_signal" in merged or "supervisor_exit" in merged:
        how = merged.get("supervisor_signal", merged.get("supervisor_exit"))
        stderr += f"\n[the sandbox supervisor ended early ({how})]"
    return SandboxResult(
        status=reason,
        returncode=end.exit if reason == "exited" and end is not None else None,
        signal=end.signal if end is not None else None,
        stdout=out.text(),
        stderr=stderr,
        stdout_truncated=out.truncated,
        stderr_truncated=err.truncated,
        wall_s=wall,
        cpu_s=end.cpu_s if end is not None else None,
        oom_killed=oom,
        isolation=setup,
        timeout_reason=timeout_reason,
        companion=_program_end(merged.get("companion_result")),
        companion_isolation=merged.get("companion_setup", {}),
    )


@cache
def isolation_support() -> dict:
    """What this host lets the sandbox do, probed once with a trivial program."""
    res = run_python("pass", limits=Limits(wall_s=60, cpu_s=5))
    return {"status": res.status, **res.isolation}
