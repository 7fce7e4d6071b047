"""SIGKILL a process while it replaces an output folder (storage.outputs.staged_output): the folder is
always whole (the old one or the new one, never a mix, never missing once written), and the next
write removes what the killed one left beside it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from assay_crash import check_no_leftovers
from assay_figures import record

REPO = Path(__file__).resolve().parents[2]
POINTS = 8
FILES = 40

WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from storage.outputs import prepare_output, staged_output
    dest, tag, pause = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    target = prepare_output(dest, kind="folder", force=True, protected=[dest.parent / "lake"])
    with staged_output(target, kind="folder", writer="crash test") as tmp:
        print("writing", flush=True)
        for i in range(int(sys.argv[4])):
            (tmp / f"part-{i:03d}.txt").write_text(tag + "\\n")
            time.sleep(pause)
    print("done", flush=True)
"""
)


def write(dest: Path, tag: str, pause: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(dest), tag, str(pause), str(FILES)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )


def whole(dest: Path) -> str:
    """The tag of a complete output folder (every part from one writer, and the marker)."""
    parts = sorted(dest.glob("part-*.txt"))
    tags = {p.read_text() for p in parts}
    assert len(parts) == FILES and len(tags) == 1, (len(parts), tags)
    assert json.loads((dest / ".assay-output").read_text())["writer"] == "crash test"
    return tags.pop().strip()


def test_crash_output_folder(tmp_path: Path) -> None:
    dest = tmp_path / "export"
    first = write(dest, "v0", 0)
    assert first.wait(timeout=120) == 0 and whole(dest) == "v0"
    held = 0
    for i in range(POINTS):
        proc = write(dest, f"v{i + 1}", 0.01)
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(FILES * 0.012 * (i + 0.5) / POINTS)  # points spread over the writing and the rename
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert whole(dest) in (f"v{i}", f"v{i + 1}")  # old or new, whole
        rerun = write(dest, f"v{i + 1}", 0)
        assert rerun.wait(timeout=120) == 0 and whole(dest) == f"v{i + 1}"
        check_no_leftovers(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
        held += 1
    record("kill points", POINTS, held, "output folder replace (--out)")
    assert held == POINTS
