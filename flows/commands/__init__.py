"""CLI command modules. Each module exposes `register(app)`; `flows.cli` discovers them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# The --lake option every command takes (one definition: the same flag, help and default everywhere).
LakeOption = Annotated[
    Path | None,
    typer.Option("--lake", help="Lake directory (default: $ASSAY_LAKE or ./lake).", show_default=False),
]
