"""The registry of every stage (attribution and curation), for flows and the command line. Importing a
stage package registers its stages; stage modules import their heavy libraries (torch, scikit-learn) only
when they plan or run, so loading the registry stays cheap."""

from __future__ import annotations

from storage.stage import STAGES, Stage, stage_class


def load_stages() -> dict[str, type[Stage]]:
    """Every registered stage, by name (importing the stage packages registers them)."""
    import attribution.stages  # noqa: F401
    from curation.stages import load_stages as load_curation_stages

    load_curation_stages()
    return STAGES


def build_stage(name: str, params: dict | None, where: str = "") -> Stage:
    """The stage `name` with its parameters checked (a UserError names `where` and the field)."""
    load_stages()
    return stage_class(name)(params, where=where)
