"""Process-wide defaults for running offline: set before Prefect, transformers or GX are imported."""

from __future__ import annotations

import os

OFFLINE_DEFAULTS = {
    # Prefect's telemetry fails offline and its retries hold the SQLite database ("database is locked").
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # The ephemeral server's first start in a fresh PREFECT_HOME takes ~13 s on 2 cores; the default 20 s
    # timeout is too tight on a loaded CI machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_UI_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
}


def apply_offline_defaults() -> None:
    """Set each default unless the user already chose a value."""
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
