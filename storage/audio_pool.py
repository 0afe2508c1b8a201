"""The store's pool of normalised audio: FLAC files named by the sha256 of their PCM, so identical audio is
stored once. Stages write it through `AudioPool.put`; nothing else writes there."""

from __future__ import annotations

import os
from pathlib import Path

from jstip.storage.lock import temp_name

# Audio being written: one directory, so that finding what a killed process left takes one listing, not one of
# every audio/<xx>/ directory (DatasetStore.remove_stale_temporaries).
TEMP_DIR = ".tmp"


class AudioPool:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    @property
    def temp_dir(self) -> Path:
        return self.directory / TEMP_DIR

    def path(self, audio_hash: str) -> Path:
        return self.directory / audio_hash[:2] / f"{audio_hash}.flac"

    def put(self, audio_hash: str, encoded: bytes | memoryview) -> Path:
        """Store the encoded FLAC of content `audio_hash` unless the pool has it; return its path. Atomic: readers
        see the whole file or none, and a killed writer leaves only an owner-tagged temporary (jstip.storage.lock)."""
        path = self.path(audio_hash)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.temp_dir / temp_name(path.name)
            tmp.parent.mkdir(exist_ok=True)
            try:  # written by Python: a full disk is an OSError (ENOSPC) that says so
                tmp.write_bytes(encoded)
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        return path
