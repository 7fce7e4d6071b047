"""Where assay may write a path the user names (`--out`), and how it writes there.

One policy for every command. `prepare_output(path, kind=..., force=..., protected=...)` checks a path
before any work starts and returns where to write; it refuses (UserError, nothing written):
- special files (devices, FIFOs, sockets), even with --force: writing "into" /dev/sda or a FIFO is
  never what a user meant;
- a path that is itself a symlink, even with --force: replacing it would replace the link, writing
  through it would write somewhere the user did not name. Symlinked *parent* folders are followed:
  every check below applies to the real location they lead to;
- `/`, a home folder, the current folder, the lake, the project's state folder, and any folder that
  contains one of them (`--out .`, `--out ..`, `--out lake`), and any path inside the lake or the state
  folder;
- an existing folder for a file output and an existing file for a folder output;
- an existing non-empty folder without --force, and with --force any folder without assay's marker
  file (`.assay-output`, written into every folder output): --force replaces only what assay wrote;
- an existing file without --force (a file output replaces a regular file only when asked).

Writing goes aside-then-rename: `staged_output(dest, kind=..., writer=...)` yields a temporary path
beside `dest` (same filesystem, so the rename is atomic); on success the result is fsynced and
renamed over `dest` (`replace_atomically`), on failure the temporary path is removed. Missing parent
folders are created at that point, not earlier, so a refused command creates nothing. Leftovers of a
killed write (`.NAME.tmp-HOST-PID-*`, `.NAME.old-HOST-PID-*` of a process that no longer runs) are
removed by the next write to the same path; an old copy moved aside just before the kill is put back.

The protected folders are the caller's (`protected=`); without them, $ASSAY_LAKE (default ./lake)
and $ASSAY_HOME (default ./.assay), the same defaults the lake and the CLI use (storage does not
import flows).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import stat
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from storage.errors import UserError, shorten

MARKER = ".assay-output"
Kind = Literal["file", "folder"]


def default_protected() -> list[Path]:
    """The lake and the project's state folder as the CLI defaults them: $ASSAY_LAKE or ./lake,
    $ASSAY_HOME or ./.assay."""
    return [
        Path(os.environ.get("ASSAY_LAKE") or "lake").expanduser(),
        Path(os.environ.get("ASSAY_HOME") or ".assay").expanduser(),
    ]


def _real(path: Path | str) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def _homes() -> set[Path]:
    homes = {_real(Path.home())}
    try:
        homes |= {_real(entry.pw_dir) for entry in pwd.getpwall() if entry.pw_dir not in ("", "/")}
    except OSError:  # pragma: no cover - no passwd database
        pass
    return homes


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _target(path: Path | str) -> Path:
    """The real location `path` names: parent folders resolved (symlinks followed, `..` applied), the
    last component kept as it is so that a symlink there can be seen and refused."""
    text = os.path.expanduser(str(path))
    if not text:
        raise UserError("--out: the path is empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):  # a pasted newline would name a different folder
        raise UserError(f"--out {shorten(text)}: control characters (a newline, a tab) in a path are refused")
    absolute = os.path.join(os.getcwd(), text)
    head, name = os.path.split(absolute.rstrip(os.sep) or os.sep)
    if name in ("", ".", ".."):
        return _real(absolute)  # `.`, `..`, `/`: a folder that exists (or not), resolved whole
    return _real(head or os.sep) / name


def marker_writer(folder: Path) -> str | None:
    marker = folder / MARKER
    try:
        if not stat.S_ISREG(os.lstat(marker).st_mode):
            return None
        body = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return body.get("writer") if isinstance(body, dict) and isinstance(body.get("writer"), str) else None


def prepare_output(
    path: Path | str,
    *,
    kind: Kind,
    force: bool = False,
    protected: Sequence[Path | str] | None = None,
    option: str = "--out",
) -> Path:
    """Check that assay may write `kind` at `path` (see the module docstring); returns the real path
    to write. UserError names `option` and says why; nothing is created here."""
    if kind not in ("file", "folder"):
        raise ValueError(f"kind must be 'file' or 'folder', not {kind!r}")
    shown = f"{option} {shorten(str(path))[1:-1]}"
    target = _target(path)
    _check_place(target, [_real(p) for p in (default_protected() if protected is None else protected)], shown)
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return target
    except NotADirectoryError:
        blocker = next(
            parent for parent in reversed(target.parents) if os.path.lexists(parent) and not parent.is_dir()
        )
        raise UserError(f"{shown}: {blocker} is not a folder") from None
    except OSError as exc:
        raise UserError(f"{shown}: cannot check it ({exc.strerror or exc})") from None
    _check_existing(target, info.st_mode, kind, force, shown)
    return target


def _check_place(target: Path, roots: list[Path], shown: str) -> None:
    """Refuse the protected folders, what holds them, and what is inside the lake or state folder."""
    for root, what in [(r, "the lake or the project's state folder") for r in roots] + [
        (_real(os.getcwd()), "the current folder")
    ]:
        if _within(root, target):
            raise UserError(f"{shown}: refused: that folder holds {what} ({root})")
    for root in roots:
        if _within(target, root):
            raise UserError(
                f"{shown}: refused: that is inside the lake or the project's state folder ({root})"
            )
    if target == Path("/") or any(_within(home, target) for home in _homes()):
        raise UserError(f"{shown}: refused: that is / or a home folder, or holds one")


def _check_existing(target: Path, mode: int, kind: Kind, force: bool, shown: str) -> None:
    """Refuse replacing what exists at `target` unless it is a file (with --force) or a folder that is
    empty or (with --force) marked as assay's."""
    if stat.S_ISLNK(mode):
        raise UserError(f"{shown}: refused: it is a symlink (name the real path instead)")
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise UserError(f"{shown}: refused: it is a special file (device, FIFO or socket), not a {kind}")
    if kind == "file":
        if stat.S_ISDIR(mode):
            raise UserError(f"{shown}: refused: it is a folder, not a file")
        if not force:
            raise UserError(f"{shown}: the file exists; pass --force to replace it")
        return
    if stat.S_ISREG(mode):
        raise UserError(f"{shown}: refused: it is a file, not a folder")
    try:
        empty = not any(os.scandir(target))
    except OSError as exc:
        raise UserError(f"{shown}: cannot read it ({exc.strerror or exc})") from None
    if empty:
        return
    if not force:
        raise UserError(
            f"{shown}: the folder exists and is not empty; pass --force to replace a folder assay wrote"
        )
    if marker_writer(target) is None:
        raise UserError(
            f"{shown}: refused: assay did not write that folder (no {MARKER} marker); "
            "remove it yourself or choose another path"
        )


# ------------------------------------------------------------------------------------------ writing
def _tag() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _alive(host: str, pid: str) -> bool:
    """Whether a leftover's writer may still run (unknown host: assume so)."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_leftovers(dest: Path) -> None:
    """Remove what killed writes to `dest` left beside it; put back an old copy moved aside by a write
    that was killed before its rename (so `dest` is never lost to a crash)."""
    folder = dest.parent
    if not folder.is_dir():
        return
    host = socket.gethostname()
    for kind in ("tmp", "old"):
        prefix = f".{dest.name}.{kind}-{host}-"
        for entry in sorted(folder.glob(f".{dest.name}.{kind}-*")):
            if not entry.name.startswith(prefix):
                continue
            pid = entry.name[len(prefix) :].split("-", 1)[0]
            if _alive(host, pid):
                continue
            if kind == "old" and not os.path.lexists(dest):
                os.replace(entry, dest)
            else:
                _remove(entry)


def _fsync_tree(path: Path) -> None:
    paths = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for item in paths:
        with open(item, "rb") as fh:
            os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(tmp: Path, dest: Path) -> None:
    """Move the finished `tmp` (a file or a folder beside `dest`) to `dest`.

    A file replaces a file in one rename. A folder cannot be renamed over a non-empty folder, so an old
    `dest` is first renamed aside (`.NAME.old-HOST-PID-*`) and removed after; a crash in between leaves
    it there and the next write puts it back. Refuses (UserError) if `dest` has meanwhile become a
    symlink or special file."""
    tmp, dest = Path(tmp), Path(dest)
    _fsync_tree(tmp)
    try:
        mode = os.lstat(dest).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise UserError(f"{dest}: refused: it became a symlink or special file while assay was writing")
    old = None
    if mode is not None and stat.S_ISDIR(mode):
        old = dest.parent / f".{dest.name}.old-{_tag()}"
        os.replace(dest, old)
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)
    if old is not None:
        _remove(old)


def write_marker(folder: Path, writer: str) -> None:
    """The marker that lets `--force` replace this folder later: JSON naming the command that wrote it."""
    body = {"writer": writer, "written_at": datetime.now(UTC).isoformat(timespec="seconds")}
    (Path(folder) / MARKER).write_text(json.dumps(body) + "\n", encoding="utf-8")


@contextmanager
def staged_output(dest: Path | str, *, kind: Kind, writer: str) -> Iterator[Path]:
    """Write `dest` aside, then rename it into place.

    Yields a temporary path beside `dest`: for kind="folder" an empty folder to fill; for kind="file"
    a path to create. On a clean exit a folder gets the marker (`writer` names the command, e.g.
    "assay export") and the result replaces `dest` (`replace_atomically`); on an exception the
    temporary path is removed and `dest` is untouched. Missing parent folders are created first.
    Call `prepare_output` before any work, then this around the writing."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(dest)
    tmp = dest.parent / f".{dest.name}.tmp-{_tag()}"
    if kind == "folder":
        tmp.mkdir()
    try:
        yield tmp
        if kind == "folder":
            write_marker(tmp, writer)
        replace_atomically(tmp, dest)
    except BaseException:
        if os.path.lexists(tmp):
            _remove(tmp)
        raise


def write_file_atomically(dest: Path | str, data: bytes) -> None:
    """`data` as the file `dest`, written aside and renamed into place (checked with prepare_output
    first)."""
    with staged_output(dest, kind="file", writer="assay") as tmp:
        tmp.write_bytes(data)
