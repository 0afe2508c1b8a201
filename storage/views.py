"""Derived catalog views: SQL over a version's tables, created beside them for every published version.

Each entry is `view name -> SELECT ...` using the table names unqualified (`spans`, `quarantine`, ...):
DuckDB resolves them in the view's own schema, so the same SQL serves the latest version (main schema)
and every `v_<version>` schema. Add statistics here, not in Python loops over rows.
"""

from __future__ import annotations

DERIVED_VIEWS: dict[str, str] = {}
