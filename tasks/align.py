"""Stage `align`: word-align every utterance of a shard with the configured backend (jstip.tasks.aligners).

Entry point: `align_shard(utterances, audio, config)`. For every utterance it reads the normalised FLAC,
asks the configured `WordAligner` for one time span per transcript word (`split_words`), checks the
result (jstip.tasks.aligners.energy: every word, in order, inside the audio, consistent with the audio's
energy) and writes WORD_ALIGNMENTS rows, or one QUARANTINE row (stage "align") saying why not. Nothing is
dropped silently: every utterance gets a row in `status`, and is either aligned with all its words or
quarantined (or "skipped" when normalize already quarantined it and there is no audio).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import soundfile as sf

from jstip.config import AlignConfig, CheckConfig
from jstip.schemas import from_rows
from jstip.schemas.validate import conform, schema_for
from jstip.tasks.aligners import backend_module, make_aligner  # noqa: F401 - backend_module: for the stage key
from jstip.tasks.aligners.base import AlignmentFailed, UtteranceAlignment, WordAligner
from jstip.tasks.aligners.energy import check_against_speech, check_timings, speech_frames
from jstip.tasks.checks import precheck_shard
from jstip.tasks.text import split_words

log = logging.getLogger(__name__)

# One row per input utterance: what align_shard did with it.
ALIGN_STATUS = pa.schema([
    pa.field("utterance_id", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # aligned | failed | skipped
    pa.field("attempts", pa.int32(), nullable=False),  # decoder passes used (0: never decoded)
    pa.field("check_name", pa.string()),  # the quarantine check, for failed ones
    pa.field("reason", pa.string()),
])


# Optional output (AlignConfig.phone_alignments): one row per phone of an aligned word. Not a dataset
# table: phones are aligner- and lexicon-specific (ARPAbet for pocketsphinx).
PHONE_ALIGNMENTS = pa.schema([
    pa.field("utterance_id", pa.string(), nullable=False),
    pa.field("word_index", pa.int32(), nullable=False),  # the word_alignments row the phone belongs to
    pa.field("phone_index", pa.int32(), nullable=False),  # position within the word, from 0
    pa.field("phone", pa.string(), nullable=False),
    pa.field("start", pa.float64(), nullable=False),
    pa.field("end", pa.float64(), nullable=False),
])


@dataclass
class AlignResult:
    word_alignments: pa.Table  # WORD_ALIGNMENTS
    quarantine: pa.Table  # QUARANTINE, stage "align"
    status: pa.Table  # ALIGN_STATUS, one row per input utterance
    # PHONE_ALIGNMENTS; rows only for aligned utterances, and only when the config asks for phones
    phone_alignments: pa.Table = field(default_factory=PHONE_ALIGNMENTS.empty_table)


def _read_audio(row: dict) -> tuple[np.ndarray, int]:
    try:
        samples, rate = sf.read(row["flac_path"], dtype="int16", always_2d=True)
    except (sf.LibsndfileError, OSError, RuntimeError) as e:
        raise AlignmentFailed("audio_unreadable", f"cannot read {row['flac_path']}: {e}") from None
    if samples.shape[1] != 1:
        raise AlignmentFailed("audio_unreadable", f"{row['flac_path']}: {samples.shape[1]} channels; normalised "
                              "audio is mono")
    if len(samples) == 0:
        raise AlignmentFailed("no_speech", f"{row['flac_path']}: audio is empty")
    return samples[:, 0], rate


def _prepare(text: str, samples: np.ndarray, rate: int, config: AlignConfig) -> tuple[int, np.ndarray]:
    """Checks before any aligner runs: (number of words, speech frames) or AlignmentFailed."""
    n_words = len(split_words(text))
    if n_words == 0:
        raise AlignmentFailed("no_words", "transcript has no words to align")
    return n_words, speech_frames(samples, rate, config)


def _checked(result: UtteranceAlignment, n_words: int, duration: float, speech: np.ndarray,
             config: AlignConfig) -> UtteranceAlignment:
    try:
        check_timings(result.words, n_words, duration)
        check_against_speech(result.words, speech, config)
    except AlignmentFailed as e:
        e.attempts = result.attempts
        raise
    return result


def _align_batch(aligner: WordAligner, items: list[tuple[str, np.ndarray, int]]) -> list:
    """Aligner results (UtteranceAlignment or AlignmentFailed) for a batch, in order. Backends with an
    `align_batch` (nemo) run the batch in one forward pass; the others go one by one. An exception from
    the backend becomes `aligner_error` for its utterance(s) and never sinks the shard."""
    def guarded(call, *args):
        try:
            return call(*args)
        except AlignmentFailed as e:
            return e
        except (RuntimeError, ValueError, OSError) as e:
            log.exception("%s raised", aligner.name)
            return AlignmentFailed("aligner_error", f"{type(e).__name__}: {e}")

    batch = getattr(aligner, "align_batch", None)
    if batch is not None and len(items) > 1:
        results = guarded(batch, items)
        if isinstance(results, list):
            return results
        return [guarded(aligner.align, *item) for item in items]  # the batch failed as a whole: one by one
    return [guarded(aligner.align, *item) for item in items]


def align_shard(utterances: pa.Table, audio: pa.Table, config: AlignConfig,
                aligner: WordAligner | None = None, precheck: CheckConfig | None = None) -> AlignResult:
    """Align every utterance of the shard that has normalised audio.

    `utterances` needs utterance_id and text (source is quoted in reasons when present); `audio` is the
    normalized_audio table. Utterances without an audio row were quarantined by normalize: they get a
    "skipped" status here and no second quarantine row. `aligner` defaults to `make_aligner(config)`,
    made once for the shard. With `precheck` (the build's checks), utterances failing a check that needs no
    alignment (duration, transcript characters: `checks.precheck_shard`) are quarantined under their check
    name (stage "check") and never decoded: "skipped" here.
    """
    ids = utterances.column("utterance_id").to_pylist()
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"align_shard: utterance_id(s) {dup[:5]} appear more than once in the shard")
    texts = utterances.column("text").to_pylist()
    sources = (utterances.column("source").to_pylist() if "source" in utterances.column_names
               else [None] * len(ids))
    prechecked = precheck_shard(utterances, audio, precheck) if precheck is not None else None
    if prechecked is not None and prechecked.num_rows:
        skip = pa.array(sorted(set(prechecked.column("utterance_id").to_pylist())), pa.string())
        audio = audio.filter(pc.invert(pc.is_in(audio.column("utterance_id"), value_set=skip)))
    audio_by_id = {row["utterance_id"]: row for row in audio.select(["utterance_id", "flac_path"]).to_pylist()}
    aligner = aligner or make_aligner(config)

    words: dict[str, list] = {name: [] for name in ("utterance_id", "word_index", "word", "start", "end", "score")}
    quarantine: list[dict] = []
    failed = set() if prechecked is None else set(prechecked.column("utterance_id").to_pylist())
    status: list[dict] = []
    phones: list[dict] = []

    def fail(utt_id: str, source: str | None, e: AlignmentFailed) -> None:
        where = f"{source}: utterance {utt_id}" if source else f"utterance {utt_id}"
        reason = f"{where}: {aligner.name} alignment failed ({e.check}): {e.reason}"
        log.warning(reason)
        quarantine.append(dict(utterance_id=utt_id, stage="align", check_name=e.check, value=e.value,
                               threshold=e.threshold, reason=reason, source=source))
        status.append(dict(utterance_id=utt_id, status="failed", attempts=e.attempts, check_name=e.check,
                           reason=reason))

    def accept(utt_id: str, text: str, result: UtteranceAlignment) -> None:
        for timing, token in zip(result.words, split_words(text)):
            words["utterance_id"].append(utt_id)
            words["word_index"].append(timing.word_index)
            words["word"].append(token)
            words["start"].append(timing.start)
            words["end"].append(timing.end)
            words["score"].append(timing.score)
        phone_index: dict[int, int] = {}
        for phone in result.phones or ():
            k = phone_index[phone.word_index] = phone_index.get(phone.word_index, -1) + 1
            phones.append(dict(utterance_id=utt_id, word_index=phone.word_index, phone_index=k, phone=phone.phone,
                               start=phone.start, end=phone.end))
        status.append(dict(utterance_id=utt_id, status="aligned", attempts=result.attempts, check_name=None,
                           reason=None))

    # batch_size utterances at a time: a batching backend gets one forward pass per group, and at most
    # one group's audio is in memory, whatever the shard size
    entries = list(zip(ids, [t or "" for t in texts], sources))
    for first in range(0, len(entries), config.batch_size):
        ready = []  # (utt_id, text, source, samples, rate, n_words, speech)
        for utt_id, text, source in entries[first:first + config.batch_size]:
            row = audio_by_id.get(utt_id)
            if row is None:
                status.append(dict(utterance_id=utt_id, status="skipped", attempts=0, check_name=None,
                                   reason="no normalised audio (quarantined by normalize)" if utt_id not in failed
                                   else "failed a check before alignment (quarantined, stage check)"))
                continue
            try:
                samples, rate = _read_audio(row)
                ready.append((utt_id, text, source, samples, rate, *_prepare(text, samples, rate, config)))
            except AlignmentFailed as e:
                fail(utt_id, source, e)
        results = _align_batch(aligner, [(text, samples, rate) for _, text, _, samples, rate, _, _ in ready])
        for (utt_id, text, source, samples, rate, n_words, speech), result in zip(ready, results):
            try:
                if isinstance(result, AlignmentFailed):
                    raise result
                accept(utt_id, text, _checked(result, n_words, len(samples) / rate, speech, config))
            except AlignmentFailed as e:
                fail(utt_id, source, e)

    schema = schema_for("word_alignments")
    columns = {name: pa.array(values, type=schema.field(name).type) for name, values in words.items()}
    columns["aligner"] = pa.array([aligner.name] * len(words["utterance_id"]), type=pa.string())
    quarantine_table = from_rows("quarantine", quarantine)
    if prechecked is not None and prechecked.num_rows:
        quarantine_table = pa.concat_tables([conform("quarantine", prechecked), quarantine_table])
    return AlignResult(conform("word_alignments", pa.table(columns)), quarantine_table,
                       pa.Table.from_pylist(status, schema=ALIGN_STATUS),
                       pa.Table.from_pylist(phones, schema=PHONE_ALIGNMENTS))
