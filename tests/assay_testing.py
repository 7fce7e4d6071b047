"""Test helpers: digests of lake trees, and running the `assay` CLI as a user would (a subprocess)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tree_digest(root: Path) -> str:
    """A digest of every file's path and bytes under root ('absent' when root does not exist)."""
    if not root.exists():
        return "absent"
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def run_cli(
    *args: str, cwd: Path, env: dict | None = None, prefect: bool = False, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run `assay ARGS` in `cwd` (Prefect off unless asked: it costs seconds per process)."""
    full_env = {
        **os.environ,
        "ASSAY_PREFECT": "1" if prefect else "0",
        "ASSAY_HOME": str(cwd / ".assay"),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_python(
    source: str, *args: str, cwd: Path = REPO, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run a Python script (`python -c SOURCE ARGS`) in `cwd` (the repository root), output captured."""
    return subprocess.run(
        [sys.executable, "-c", source, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def stage(name: str):
    """The registered stage `name` as a function `(ctx, params) -> run id` (plan, open, execute)."""
    from flows.registry import load_stages
    from storage.stage import run_stage

    load_stages()
    return lambda ctx, params=None: run_stage(name, ctx, params)
