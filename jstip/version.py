"""The code version recorded with every dataset version and folded into every cache key."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from jstip import __version__


@lru_cache(maxsize=1)
def code_version() -> str:
    """`<package version>+<hash of the pipeline's Python sources>`: any code change yields a new version."""
    import jstip.flows, jstip.schemas, jstip.storage, jstip.tasks  # noqa: E401 (the packages whose code shapes data)

    digest = hashlib.sha256()
    for package in (jstip.schemas, jstip.storage, jstip.tasks, jstip.flows):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:10]}"
