"""Shared test fixtures. Tests run offline, on real audio, real DuckDB and Parquet files, real Prefect."""

from __future__ import annotations

import os
import tempfile

# Offline defaults and an isolated Prefect home, before anything imports Prefect.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="jstip-prefect-home-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from jstip.runtime import apply_offline_defaults  # noqa: E402

apply_offline_defaults()
