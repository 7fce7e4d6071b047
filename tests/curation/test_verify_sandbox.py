"""The sandbox contains hostile programs: loops, fork bombs, memory hogs, writes outside its directory,
network connections, shell escapes, background processes and floods of output.

Fork bombs run with a process limit of 4 and a CPU limit, so they cannot hurt a shared machine. Wall clocks
are safety nets (long, so that a busy machine changes no outcome) except where a test is about the wall
clock itself.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from curation.verify.sandbox import Limits, isolation_support, run_command, run_python

TIGHT = Limits(
    wall_s=120.0, cpu_s=2.0, memory_mb=256, max_procs=4, max_output_bytes=4096, kill_output_bytes=200_000
)


def leftover_processes(mark: str) -> list[int]:
    """Processes (of any age) whose environment carries `mark`: what a sandbox left running."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("ASSAY_TEST_MARK") == mark:
                found.append(proc.pid)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def marked(source: str, limits: Limits = TIGHT, **kwargs):
    mark = uuid.uuid4().hex
    result = run_python(source, limits=limits, env={"ASSAY_TEST_MARK": mark}, **kwargs)
    return result, mark


def test_a_plain_program_runs_in_a_fresh_directory_with_a_scrubbed_environment(monkeypatch) -> None:
    monkeypatch.setenv("ASSAY_SECRET_FOR_TEST", "do-not-leak")
    result = run_python(
        "import os, sys\n"
        "print(os.getcwd() == os.environ['HOME'], os.listdir('.'), os.environ.get('ASSAY_SECRET_FOR_TEST'))\n"
        "print(sys.stdin.read())\n",
        stdin="from stdin",
        files={"data.txt": "x"},
    )
    assert result.ok, result.stderr
    first, second = result.stdout.splitlines()[:2]
    assert first.startswith("True") and "None" in first and "data.txt" in first
    assert second == "from stdin"
    cwd = run_python("import os; print(os.getcwd())").stdout.strip()
    assert cwd and not Path(cwd).exists()  # removed after the run


# The wall clock is only a safety net here: an endless loop must be stopped by its CPU limit and
# classified from that limit, however slowly a busy machine lets it accumulate CPU time.
CPU_BOUND = Limits(wall_s=300.0, cpu_s=1.0, memory_mb=256, max_procs=4)


def test_an_infinite_loop_times_out_at_its_cpu_limit() -> None:
    result, _ = marked("while True:\n    pass\n", CPU_BOUND)
    assert result.status == "timeout" and not result.ok
    # (the kernel counts the limit in sampled ticks: the CPU time reported afterwards may be lower)
    assert result.timeout_reason == "cpu" and result.signal == "SIGXCPU"


def test_a_loop_that_ignores_sigxcpu_is_killed_a_second_later_and_still_times_out() -> None:
    source = "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass\n"
    result, _ = marked(source, CPU_BOUND)
    assert result.status == "timeout" and result.timeout_reason == "cpu"
    assert result.signal == "SIGKILL" and result.cpu_s >= 1.0  # the hard limit is 2 x soft + 1 s


def test_a_program_killed_by_another_signal_is_not_a_timeout() -> None:
    result, _ = marked("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", CPU_BOUND)
    assert result.status == "signaled" and result.signal == "SIGKILL" and result.timeout_reason is None


def test_a_sleeping_program_times_out_on_the_wall_clock() -> None:
    result, _ = marked("import time\ntime.sleep(60)\n", Limits(wall_s=1.5, cpu_s=1.0))
    assert result.status == "timeout" and result.timeout_reason == "wall"


def test_a_fork_bomb_is_bounded_by_the_process_limit_and_cleaned_up() -> None:
    source = (
        "import os, time\n"
        "forks = 0\n"
        "for _ in range(500):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    forks += 1\n"
        "print('forks', forks, flush=True)\n"
    )
    result, mark = marked(source)
    assert result.ok, result.stderr
    forks = int(result.stdout.split()[1])
    assert forks < TIGHT.max_procs  # the program itself holds one of the slots
    assert leftover_processes(mark) == []


def test_a_classic_fork_bomb_ends_and_leaves_nothing_behind() -> None:
    result, mark = marked("import os\nwhile True:\n    os.fork()\n")
    assert not result.ok
    assert leftover_processes(mark) == []


def test_a_memory_hog_fails() -> None:
    result, _ = marked("block = bytearray(4 * 1024 ** 3)\nprint('allocated')\n")
    assert not result.ok and "allocated" not in result.stdout
    assert "MemoryError" in result.stderr or result.oom_killed
    result, _ = marked("chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 ** 2))\n")
    assert not result.ok
    assert "MemoryError" in result.stderr or result.oom_killed or result.signal is not None


def test_a_write_outside_the_sandbox_directory_is_refused(tmp_path: Path) -> None:
    support = isolation_support()
    if not support.get("landlock_abi") and not support.get("uid"):
        pytest.skip(f"this kernel offers no write confinement to the sandbox: {support}")
    target = tmp_path / "escaped.txt"
    shared_tmp = Path("/tmp") / f"assay-escape-{uuid.uuid4().hex}"
    result, _ = marked(f"open({str(target)!r}, 'w').write('x')\n")
    assert not result.ok and "PermissionError" in result.stderr
    result, _ = marked(f"open({str(shared_tmp)!r}, 'w').write('x')\nprint('wrote')\n")
    assert "wrote" not in result.stdout
    result, _ = marked("open('inside.txt', 'w').write('ok')\nprint(open('inside.txt').read())\n")
    assert result.ok and result.stdout.strip() == "ok"
    assert not target.exists() and not shared_tmp.exists()


def test_a_socket_connection_fails() -> None:
    support = isolation_support()
    if not support.get("net_namespace") and not support.get("landlock_net"):
        pytest.skip(f"this host lets the sandbox keep the network: {support}")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    try:
        result, _ = marked(
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')\n"
        )
        assert "connected" not in result.stdout and not result.ok
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()


def test_os_system_runs_confined_and_its_background_jobs_die(tmp_path: Path) -> None:
    target = tmp_path / "from-shell.txt"
    result, mark = marked(
        "import os\n"
        f"status = os.system('echo hello-from-shell; echo x > {target}')\n"
        "os.system('sleep 60 &')\n"
        "print('status', status)\n"
    )
    assert "hello-from-shell" in result.stdout
    if isolation_support().get("landlock_abi"):
        assert not target.exists()
    assert leftover_processes(mark) == []


def test_huge_output_is_truncated_and_stopped() -> None:
    result, _ = marked("import sys\nwhile True:\n    sys.stdout.write('x' * 10000)\n")
    assert result.status == "output_limit" and result.stdout_truncated
    assert len(result.stdout) < TIGHT.max_output_bytes + 200
    result, _ = marked("print('a' * 20000)\nprint('THE END')\n")
    assert result.ok and result.stdout_truncated
    assert result.stdout.rstrip().endswith("THE END") and "bytes truncated" in result.stdout


def test_commands_run_through_the_same_confinement() -> None:
    result = run_command(["/bin/sh", "-c", "echo $HOME; pwd"], limits=TIGHT)
    home, cwd = result.stdout.split()
    assert result.ok and home == cwd
    assert run_command(["/bin/sh", "-c", "exit 3"], limits=TIGHT).returncode == 3


def test_the_sandbox_serves_many_threads_at_once() -> None:
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda i: run_python(f"print({i} * {i})"), range(6)))
    assert [r.stdout.strip() for r in results] == [str(i * i) for i in range(6)]


def test_the_sandbox_runs_from_worker_processes() -> None:
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        result = pool.submit(run_python, "print(6 * 7)").result(timeout=120)
    assert result.ok and result.stdout.strip() == "42"


def test_isolation_report_names_what_was_in_effect() -> None:
    support = isolation_support()
    assert support["status"] == "exited"
    for key in ("net_namespace", "pid_namespace"):
        assert key in support
    if os.geteuid() == 0:
        assert support.get("cgroups") or support.get("uid"), support  # root needs them to bound forks
