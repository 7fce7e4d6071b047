"""The lake: Parquet tables, a run registry with lineage, DuckDB views, gated SQL."""

from storage.errors import UserError
from storage.lake import Lake, Run

__all__ = ["Lake", "Run", "UserError"]
