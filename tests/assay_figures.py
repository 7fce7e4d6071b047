"""Counts of what the hardening tests tried and how much held, for scripts/reliability_figures.

Tests call `record(category, tried, held)`; the counts go to $ASSAY_FIGURES_FILE (JSON lines) when set.
"""

from __future__ import annotations

import json
import os


def record(category: str, tried: int, held: int, detail: str = "") -> None:
    path = os.environ.get("ASSAY_FIGURES_FILE")
    if not path:
        return
    with open(path, "a") as fh:
        fh.write(json.dumps({"category": category, "tried": tried, "held": held, "detail": detail}) + "\n")
