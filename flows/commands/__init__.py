"""CLI command modules. Each module exposes `register(app)`; `flows.cli` discovers them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

# The --lake option every command takes (one definition: the same flag, help and default everywhere).
LakeOption = Annotated[
    Path | None,
    typer.Option("--lake", help="Lake directory (default: $ASSAY_LAKE or ./lake).", show_default=False),
]

DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d{1,3})?|mps")


def check_device(value: str | None) -> str | None:
    """A device name torch takes (cpu, cuda, cuda:N, mps); None leaves the choice to the stage."""
    from storage import UserError
    from storage.errors import shorten

    if value is not None and not DEVICE_PATTERN.fullmatch(value):
        raise UserError(f"--device {shorten(value)}: expected cpu, cuda or cuda:N")
    return value


# The --device option of every command that runs a model (one default everywhere: cuda when present).
DeviceOption = Annotated[
    str | None,
    typer.Option(
        "--device",
        help="cpu | cuda | cuda:N (default: cuda when present, else cpu)",
        show_default=False,
        callback=check_device,
    ),
]


def checked_out(out: Path | str, *, kind: str, force: bool, lake_root: Path | None = None) -> Path:
    """A user's `--out` checked by the output policy (storage/outputs.py) before any work: never the lake
    (this command's), the state folder, a home or a folder holding them; `force` replaces only what
    assay wrote. Returns the real path to write."""
    from flows.runtime import state_dir
    from storage import Lake
    from storage.outputs import default_protected, prepare_output

    return prepare_output(
        out, kind=kind, force=force, protected=[Lake(lake_root).root, state_dir(), *default_protected()]
    )


# The --force option of every command that writes a user-named path.
ForceOption = Annotated[
    bool, typer.Option("--force", help="replace an existing --out that assay wrote", show_default=False)
]
