"""Quality checks (first cut): duration bounds and every word aligned (empty transcripts are
quarantined at ingest, transcripts without a single word by the aligner).

Entry point: `check_shard(utterances, audio, word_alignments, config)`. Checks run column-wise over the
whole shard (Arrow/NumPy, no per-row Python); every failure becomes one quarantine row with the measured
value, the threshold and a reason. Utterances already quarantined by an earlier stage (no normalised
audio, or no alignment) are not checked again: they carry their first reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jstip.config import CheckConfig
from jstip.schemas import from_rows
from jstip.tasks.text import split_words


@dataclass
class CheckResult:
    accepted_ids: list[str]
    quarantine: pa.Table


def check_shard(utterances: pa.Table, audio: pa.Table, word_alignments: pa.Table, config: CheckConfig) -> CheckResult:
    aligned_ids = pc.unique(word_alignments.column("utterance_id"))
    have_audio = pc.is_in(utterances.column("utterance_id"), value_set=audio.column("utterance_id"))
    have_words = pc.is_in(utterances.column("utterance_id"), value_set=aligned_ids)
    candidates = utterances.filter(pc.and_(have_audio, have_words))

    ids = candidates.column("utterance_id").to_pylist()
    sources = candidates.column("source").to_pylist()
    texts = candidates.column("text").to_pylist()

    audio_by_id = dict(zip(audio.column("utterance_id").to_pylist(), audio.column("duration").to_pylist()))
    durations = np.array([audio_by_id[i] for i in ids], dtype=np.float64)
    counts = pc.value_counts(word_alignments.column("utterance_id"))
    aligned_count = dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))
    expected_words = np.array([len(split_words(t)) for t in texts], dtype=np.int64)
    got_words = np.array([aligned_count.get(i, 0) for i in ids], dtype=np.int64)

    failures: list[dict] = []

    def fail(mask: np.ndarray, check: str, values, threshold: str, reason: str) -> None:
        for k in np.flatnonzero(mask):
            value = values[k]
            failures.append(dict(utterance_id=ids[k], stage="check", check_name=check, value=str(value),
                                 threshold=threshold, source=sources[k],
                                 reason=f"{sources[k]}: utterance {ids[k]}: {reason.format(value=value)}"))

    fail(durations < config.min_duration, "duration_min", np.round(durations, 3), str(config.min_duration),
         f"duration {{value}} s is below the minimum {config.min_duration} s")
    fail(durations > config.max_duration, "duration_max", np.round(durations, 3), str(config.max_duration),
         f"duration {{value}} s is above the maximum {config.max_duration} s")
    aligned_of_expected = np.array([f"{g}/{e}" for g, e in zip(got_words, expected_words)], dtype=object)
    fail(got_words != expected_words, "words_aligned", aligned_of_expected, "all",
         "{value} of the transcript's words were aligned; every word must be")

    failed = {f["utterance_id"] for f in failures}
    accepted = [i for i in ids if i not in failed]
    return CheckResult(accepted, from_rows("quarantine", failures))
