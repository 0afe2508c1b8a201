"""The `jstip` command line (the console script `jstip = jstip.cli:app`), one module per command group:

    common     the app, its console, one-line errors, the shared options
    build      synth, build
    demo       demo (the whole DAG, then the downstream loop)
    catalog    query, quarantine, stats, report, verify, export, catalog list/show
    alignment  align, eval-alignment (the aligner as a tool)
    models     models list/show, evals, train, pretrain-lm, evaluate

Each module adds its commands to `app` when imported; they are imported here in the order `jstip --help` lists them.
"""

from __future__ import annotations

from jstip.runtime import apply_offline_defaults

apply_offline_defaults()  # before anything that may load Prefect, transformers or the hub clients

# each module registers its commands; --help lists them in this order
from jstip.cli import build  # noqa: E402,F401,I001
from jstip.cli import demo  # noqa: E402,F401
from jstip.cli import catalog  # noqa: E402,F401
from jstip.cli import alignment  # noqa: E402,F401
from jstip.cli import models  # noqa: E402,F401
from jstip.cli.common import app  # noqa: E402

__all__ = ["app"]
