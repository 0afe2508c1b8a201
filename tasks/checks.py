"""Quality checks: per utterance, column-wise over a shard; every failed check is one quarantine row.

Entry points:
- `check_shard(utterances, audio, word_alignments, config)`: the per-utterance checks below, computed
  over whole columns (Arrow compute, NumPy reductions over the shard's words sorted by utterance); Python
  only words the reasons of the failures.
- `duplicate_audio(audio_files, utterance_files)`: dataset-level, run at publish over every shard's
  files in DuckDB: the same normalised audio (audio_hash) under several utterance ids anywhere in the
  build. The lowest utterance id keeps it; each other one gets a `duplicate_audio` row.
- `fill_durations(quarantine, utterances, audio)`: the seconds each quarantine row withholds.

Utterances already quarantined by an earlier stage (no normalised audio, or no alignment) are not checked
again: they carry their first stage's reason. An utterance failing several checks gets one row per check;
it is accepted only when it fails none. Each row holds the measured value, the threshold and a reason that
starts with the manifest's file:line. Bounds are inclusive (a value equal to a bound passes); the defaults
and their sources are in jstip.config.CheckConfig and configs/demo.yaml.

| check_name | fails when |
|---|---|
| duration_min / duration_max | normalised duration outside [min_duration, max_duration] |
| chars_per_second_min / _max | len(text) / duration outside the bounds (characters as written, as NeMo SDP counts) |
| words_per_second_min / _max | words (jstip.tasks.text) / duration outside the bounds |
| words_aligned | the alignment does not hold every word once, as word_index 0..n-1 |
| word_score | a word's score below the floor of the aligner that made it (min_word_score; null scores pass) |
| word_duration_min / _max | a word's end - start outside [min_word_duration, max_word_duration] |
| word_order | a word starts before the previous word starts |
| word_overlap | a word starts more than word_time_tolerance_s before the previous word ends |
| word_outside_audio | a word starts before 0 or ends past the audio by more than word_time_tolerance_s |
| leading_silence / trailing_silence | more than max_leading/trailing_silence_s before the first / after the last word |
| clipping | clipping_ratio (of the input) above max_clipping_ratio |
| speech_ratio | speech_ratio (silero-vad) below min_speech_ratio; skipped when not measured |
| source_sampling_rate | the source file's rate below min_source_sampling_rate |
| text_nonprintable | control, private-use or format characters (ZWNJ/ZWJ excepted) in the transcript |
| text_charset | printable characters outside allowed_char_classes + allowed_chars |
| duplicate_audio | (dataset-level) the audio of a lower utterance id, byte for byte after normalisation |

Caught elsewhere, not reported twice: empty or whitespace-only transcripts (ingest `empty_text`),
transcripts without a word (align `no_words`), duplicate utterance ids (ingest `duplicate_id`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jstip.config import CheckConfig
from jstip.schemas import conform, empty, from_rows

STAGE = "check"

# Python's str whitespace and `\w`, in RE2 (which pyarrow and DuckDB use, and whose own \s and \w are
# ASCII-only), so that counting words here agrees with jstip.tasks.text.split_words: it does on every code
# point Python's Unicode tables assign (tests/test_checks.py); RE2's tables are newer, so a letter assigned
# since counts as a word here and not there (words_aligned then fails loudly; text_charset too by default).
_SPACE = r"\p{Z}\t\n\x0b\f\r\x1c-\x1f\x{85}"
WORD_PATTERN = rf"[^{_SPACE}]*[\p{{L}}\p{{N}}_][^{_SPACE}]*"
# Not printable: controls (tab and newline too: a transcript is one line), private use, and format
# characters except ZWNJ/ZWJ (Persian and Indic orthography, emoji sequences). RE2 has no \p{Cn}: unassigned
# code points fall to the charset check.
_NONPRINTABLE = r"[\p{Cc}\p{Cf}\p{Co}]"
_ORTHOGRAPHIC_JOINERS = r"[\x{200C}\x{200D}]"


@dataclass
class CheckResult:
    accepted_ids: list[str]
    quarantine: pa.Table


def count_words(text: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Words of each transcript as split_words counts them, column-wise."""
    return pc.count_substring_regex(text, pattern=WORD_PATTERN).to_numpy(zero_copy_only=False).astype(np.int64)


# A token of letters (and apostrophes) only is one spoken word; anything else goes through textnorm.
_PLAIN_WORD = r"^[\p{L}\p{M}'’]+[.,;:!?\"”’)]*$"


def _spoken_word_counts(tokens: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Spoken words of each transcript token as the aligner reads it (textnorm's longest reading, at least 1):
    plain words are 1 column-wise; only numbers, symbols and compounds go through Python."""
    counts = np.ones(len(tokens))
    plain = pc.match_substring_regex(tokens, pattern=_PLAIN_WORD).to_numpy(zero_copy_only=False)
    if not plain.all():
        from jstip.tasks.textnorm import spoken_forms

        for k in np.flatnonzero(~plain).tolist():
            counts[k] = max((len(form) for form in spoken_forms(tokens[k].as_py())), default=1) or 1
    return counts


def _floats(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A numeric column as float64 with NaN for nulls (every comparison with NaN is False: nulls pass)."""
    return pc.fill_null(pc.cast(column, pa.float64()), np.nan).to_numpy(zero_copy_only=False)


def _chars_removed(text, pattern: str) -> pa.Array:
    return pc.replace_substring_regex(text, pattern=pattern, replacement="")


def _code_points(chars: str, limit: int = 5) -> str:
    unique = list(dict.fromkeys(chars))
    shown = " ".join(f"U+{ord(c):04X}" for c in unique[:limit])
    return shown + (" ..." if len(unique) > limit else "")


def _characters(chars: str, limit: int = 10) -> str:
    unique = list(dict.fromkeys(chars))
    shown = " ".join(f"{c!r}" if c.isprintable() else f"U+{ord(c):04X}" for c in unique[:limit])
    return shown + (" ..." if len(unique) > limit else "")


def _g(value: float) -> str:
    return f"{value:.6g}"


class _Failures:
    """Quarantine rows of one shard; Python only runs for failing utterances."""

    def __init__(self, ids: pa.ChunkedArray, sources: pa.ChunkedArray, durations: np.ndarray):
        self.ids, self.sources, self.durations = ids, sources, durations
        self.rows: list[tuple[int, int, dict]] = []
        self.failed = np.zeros(len(durations), dtype=bool)

    def add(self, mask: np.ndarray, check: str, value: Callable[[int], str], threshold: str | Callable[[int], str],
            reason: Callable[[int], str]) -> None:
        for k in np.flatnonzero(mask).tolist():
            uid, source = self.ids[k].as_py(), self.sources[k].as_py()
            where = f"{source}: utterance {uid}" if source else f"utterance {uid}"
            self.rows.append((int(k), len(self.rows), dict(
                utterance_id=uid, stage=STAGE, check_name=check, value=value(k),
                threshold=threshold(k) if callable(threshold) else threshold, reason=f"{where}: {reason(k)}",
                source=source, duration=float(self.durations[k]))))
        self.failed |= mask

    def table(self) -> pa.Table:
        return from_rows("quarantine", [row for *_, row in sorted(self.rows, key=lambda r: (r[0], r[1]))])


def _before_alignment(failures: "_Failures", duration: np.ndarray, text, config: CheckConfig) -> None:
    """The checks that need no alignment: duration and the transcript's characters. `precheck_shard` runs
    them before the aligner (so that 30 minutes of noise after 6 s of speech is `duration_max`, and a
    Chinese transcript `text_charset`, never an aligner failure); check_shard runs them again on what was
    aligned without them (the `jstip align` path, tests)."""
    failures.add(duration < config.min_duration, "duration_min", lambda k: _g(duration[k]), _g(config.min_duration),
                 lambda k: f"duration {_g(duration[k])} s is below the minimum {_g(config.min_duration)} s")
    failures.add(duration > config.max_duration, "duration_max", lambda k: _g(duration[k]), _g(config.max_duration),
                 lambda k: f"duration {_g(duration[k])} s is above the maximum {_g(config.max_duration)} s")
    # transcript characters ------------------------------------------------------------------------
    nonprintable = _chars_removed(_chars_removed(text, r"[^\p{Cc}\p{Cf}\p{Co}]"), _ORTHOGRAPHIC_JOINERS)
    failures.add(pc.greater(pc.utf8_length(nonprintable), 0).to_numpy(zero_copy_only=False), "text_nonprintable",
                 lambda k: _code_points(nonprintable[k].as_py()), "printable",
                 lambda k: f"the transcript holds non-printable character(s) {_code_points(nonprintable[k].as_py())}")
    outside = _chars_removed(_chars_removed(text, config.charset_pattern()), _NONPRINTABLE)
    failures.add(pc.greater(pc.utf8_length(outside), 0).to_numpy(zero_copy_only=False), "text_charset",
                 lambda k: _characters(outside[k].as_py()), "allowed_char_classes + allowed_chars",
                 lambda k: "the transcript holds character(s) outside the allowed set: "
                 + _characters(outside[k].as_py()))



def precheck_shard(utterances: pa.Table, audio: pa.Table, config: CheckConfig) -> pa.Table:
    """Quarantine rows (stage "check") of the utterances with normalised audio that fail a check needing no
    alignment (duration, transcript characters): the align stage skips them, cheaply, before any decoding."""
    candidates = utterances.filter(pc.is_in(utterances.column("utterance_id"), value_set=audio.column("utterance_id")))
    n = candidates.num_rows
    if n == 0:
        return empty("quarantine")
    ids = candidates.column("utterance_id")
    sources = (candidates.column("source") if "source" in candidates.column_names
               else pa.chunked_array([pa.nulls(n, pa.string())]))
    duration = _floats(audio.take(pc.index_in(ids, value_set=audio.column("utterance_id"))).column("duration"))
    failures = _Failures(ids, sources, duration)
    _before_alignment(failures, duration, candidates.column("text"), config)
    return failures.table()


def check_shard(utterances: pa.Table, audio: pa.Table, word_alignments: pa.Table, config: CheckConfig) -> CheckResult:
    """Check every utterance of the shard that has normalised audio and word alignments."""
    all_ids = utterances.column("utterance_id")
    aligned_ids = pc.unique(word_alignments.column("utterance_id"))
    candidates = utterances.filter(pc.and_(pc.is_in(all_ids, value_set=audio.column("utterance_id")),
                                           pc.is_in(all_ids, value_set=aligned_ids)))
    ids = candidates.column("utterance_id")
    n = candidates.num_rows
    if n == 0:
        return CheckResult([], empty("quarantine"))
    sources = (candidates.column("source") if "source" in candidates.column_names
               else pa.chunked_array([pa.nulls(n, pa.string())]))
    text = candidates.column("text")

    utt_audio = audio.take(pc.index_in(ids, value_set=audio.column("utterance_id")))
    duration = _floats(utt_audio.column("duration"))
    failures = _Failures(ids, sources, duration)

    # -- the utterance as a whole -------------------------------------------------------------------
    _before_alignment(failures, duration, text, config)

    # characters as written, but a run of whitespace is one space and the ends are trimmed: how a
    # transcript was laid out ("a  b", a trailing newline) says nothing about how fast it was spoken
    collapsed = pc.utf8_trim(pc.replace_substring_regex(text, pattern=f"[{_SPACE}]+", replacement=" "),
                             characters=" ")
    chars = pc.utf8_length(collapsed).to_numpy(zero_copy_only=False).astype(np.float64)
    expected_words = count_words(text)
    with np.errstate(divide="ignore", invalid="ignore"):
        cps = chars / duration
        wps = expected_words / duration
    for rate, unit, low, high in ((cps, "characters", config.min_chars_per_second, config.max_chars_per_second),
                                  (wps, "words", config.min_words_per_second, config.max_words_per_second)):
        name = "chars_per_second" if unit == "characters" else "words_per_second"
        counted = chars if unit == "characters" else expected_words
        failures.add(rate < low, f"{name}_min", lambda k, r=rate: _g(r[k]), _g(low),
                     lambda k, r=rate, c=counted, u=unit, lo=low: f"{int(c[k])} transcript {u} in {_g(duration[k])} s "
                     f"is {_g(r[k])} {u}/s, below {_g(lo)}: the transcript misses speech or is not this audio's")
        failures.add(rate > high, f"{name}_max", lambda k, r=rate: _g(r[k]), _g(high),
                     lambda k, r=rate, c=counted, u=unit, hi=high: f"{int(c[k])} transcript {u} in {_g(duration[k])} s "
                     f"is {_g(r[k])} {u}/s, above {_g(hi)}: the audio misses speech or is not this transcript's")

    # -- words, sorted by (utterance, word_index); every candidate has at least one -----------------
    position = pc.index_in(word_alignments.column("utterance_id"), value_set=ids)
    words = (word_alignments.append_column("_utt", position).filter(pc.is_valid(position))
             .sort_by([("_utt", "ascending"), ("word_index", "ascending")]))
    utt = words.column("_utt").to_numpy().astype(np.int64)
    counts = np.bincount(utt, minlength=n)
    first = np.r_[0, np.cumsum(counts)[:-1]]  # row of each utterance's first word
    last = first + counts - 1
    rank = np.arange(len(utt)) - first[utt]
    word_index = words.column("word_index").to_numpy().astype(np.int64)
    starts, ends = _floats(words.column("start")), _floats(words.column("end"))
    word_text = words.column("word")

    def word_at(row) -> str:
        return f"word {word_index[row]} {word_text[int(row)].as_py()!r}"

    def worst(values: np.ndarray, pick: Callable) -> np.ndarray:
        """Row (into `words`) of each utterance's extreme value; NaN never wins."""
        return np.lexsort((pick(values), utt))[first]  # sorted by utterance, the extreme first within each

    bad_index = np.bincount(utt, weights=(word_index != rank), minlength=n)
    failures.add((counts != expected_words) | (bad_index > 0), "words_aligned",
                 lambda k: f"{counts[k]}/{expected_words[k]}", "all",
                 lambda k: f"{counts[k]} alignment rows for the transcript's {expected_words[k]} words"
                 + ("" if counts[k] != expected_words[k] else
                    f" but word_index is not 0..{expected_words[k] - 1}") + "; every word must be aligned once")

    scores = _floats(words.column("score")) if "score" in words.column_names else np.full(len(utt), np.nan)
    floors = np.full(len(utt), np.nan)
    aligners = words.column("aligner")
    floor_by_aligner = config.min_word_score.model_dump()
    for name in pc.unique(aligners).to_pylist():
        floor = floor_by_aligner.get(name)  # an aligner without a field (a new backend): no floor
        if floor is not None:
            floors[pc.equal(aligners, name).to_numpy(zero_copy_only=False)] = floor
    below = scores < floors
    lowest = worst(np.where(np.isnan(floors), np.inf, scores), lambda v: v)
    failures.add(np.bincount(utt, weights=below, minlength=n) > 0, "word_score",
                 lambda k: _g(scores[lowest[k]]), lambda k: _g(floors[lowest[k]]),
                 lambda k: f"{word_at(lowest[k])} has {aligners[int(lowest[k])].as_py()} score "
                 f"{_g(scores[lowest[k]])}, below the floor {_g(floors[lowest[k]])}: the audio does not fit the word")

    length = ends - starts
    # a token spoken as several words ("$1,250.50": one thousand two hundred fifty dollars fifty cents) may
    # last max_word_duration per spoken word, as the aligner saw them (its longest reading)
    spoken = _spoken_word_counts(word_text)
    per_word = length / spoken
    shortest, longest = worst(length, lambda v: v), worst(per_word, lambda v: -v)
    failures.add(length[shortest] < config.min_word_duration, "word_duration_min", lambda k: _g(length[shortest[k]]),
                 _g(config.min_word_duration),
                 lambda k: f"{word_at(shortest[k])} lasts {_g(length[shortest[k]])} s, below "
                 f"{_g(config.min_word_duration)} s: the aligner did not resolve it")
    failures.add(per_word[longest] > config.max_word_duration, "word_duration_max",
                 lambda k: _g(per_word[longest[k]]), _g(config.max_word_duration),
                 lambda k: f"{word_at(longest[k])} lasts {_g(length[longest[k]])} s"
                 + (f" for {int(spoken[longest[k]])} spoken words, {_g(per_word[longest[k]])} s each,"
                    if spoken[longest[k]] > 1 else ",")
                 + f" above {_g(config.max_word_duration)} s: the aligner absorbed a pause or noise into it")

    follows = rank > 0  # a word with a previous word of the same utterance
    prev = np.maximum(np.arange(len(utt)) - 1, 0)
    backwards = follows & (starts < starts[prev])
    overlap = np.where(follows & ~backwards, ends[prev] - starts, -np.inf)
    first_back = worst(np.where(backwards, 0.0, 1.0), lambda v: v)
    most_overlap = worst(overlap, lambda v: -v)
    tol = config.word_time_tolerance_s
    failures.add(np.bincount(utt, weights=backwards, minlength=n) > 0, "word_order",
                 lambda k: f"{_g(starts[first_back[k]])} < {_g(starts[prev[first_back[k]]])}", "non-decreasing",
                 lambda k: f"{word_at(first_back[k])} starts at {_g(starts[first_back[k]])} s, before the previous "
                 f"word's start {_g(starts[prev[first_back[k]]])} s: word times must be in order")
    failures.add(overlap[most_overlap] > tol, "word_overlap", lambda k: _g(overlap[most_overlap[k]]), _g(tol),
                 lambda k: f"{word_at(most_overlap[k])} starts {_g(overlap[most_overlap[k]])} s before the previous "
                 f"word ends (tolerance {_g(tol)} s)")

    first_start, last_end = starts[first], ends[last]
    before = np.minimum.reduceat(starts, first)
    past = np.maximum.reduceat(ends, first) - duration
    excess = np.maximum(-before, past)
    failures.add((before < -tol) | (past > tol), "word_outside_audio", lambda k: _g(excess[k]), _g(tol),
                 lambda k: (f"a word starts at {_g(before[k])} s" if before[k] < -tol else
                            f"a word ends {_g(past[k])} s past the end of the audio ({_g(duration[k])} s)")
                 + f" (tolerance {_g(tol)} s)")
    lead, trail = first_start, duration - last_end
    failures.add(lead > config.max_leading_silence_s, "leading_silence", lambda k: _g(lead[k]),
                 _g(config.max_leading_silence_s),
                 lambda k: f"{_g(lead[k])} s before the first word, above {_g(config.max_leading_silence_s)} s: "
                 "the segment boundaries are off")
    failures.add(trail > config.max_trailing_silence_s, "trailing_silence", lambda k: _g(trail[k]),
                 _g(config.max_trailing_silence_s),
                 lambda k: f"{_g(trail[k])} s after the last word, above {_g(config.max_trailing_silence_s)} s: "
                 "the segment boundaries are off")

    # -- audio measurements (normalize) ---------------------------------------------------------------
    clipping = _floats(utt_audio.column("clipping_ratio"))
    failures.add(clipping > config.max_clipping_ratio, "clipping", lambda k: f"{clipping[k]:.4g}",
                 f"{config.max_clipping_ratio:g}",
                 lambda k: f"{clipping[k]:.2%} of the input samples are at full scale (clipped), above "
                 f"{config.max_clipping_ratio:.2%}")
    speech = _floats(utt_audio.column("speech_ratio"))
    failures.add(speech < config.min_speech_ratio, "speech_ratio", lambda k: _g(speech[k]), _g(config.min_speech_ratio),
                 lambda k: f"speech (silero-vad) fills {speech[k]:.0%} of the audio, below "
                 f"{config.min_speech_ratio:.0%}")
    source_rate = _floats(utt_audio.column("orig_sampling_rate"))
    failures.add(source_rate < config.min_source_sampling_rate, "source_sampling_rate",
                 lambda k: str(int(source_rate[k])), str(config.min_source_sampling_rate),
                 lambda k: f"the source audio is sampled at {int(source_rate[k])} Hz, below "
                 f"{config.min_source_sampling_rate} Hz: it lacks the bandwidth the encoder expects")

    accepted = ids.filter(pa.array(~failures.failed)).to_pylist()
    return CheckResult(accepted, failures.table())


def duplicate_audio(audio_files: Sequence[str], utterance_files: Sequence[str]) -> pa.Table:
    """Quarantine rows for every utterance whose normalised audio a lower utterance id of the build also has.

    `audio_files`/`utterance_files`: the normalized_audio and utterances Parquet files of every shard (the
    accepted utterances). One DuckDB pass over all of them, so copies in different shards are found.
    """
    if not audio_files or not utterance_files:
        return empty("quarantine")
    with duckdb.connect() as con:
        rows = con.execute(
            """
            WITH a AS (SELECT utterance_id, audio_hash, duration FROM read_parquet(?)),
                 u AS (SELECT utterance_id, source FROM read_parquet(?)),
                 r AS (SELECT a.utterance_id, a.audio_hash, a.duration, u.source,
                              first_value(a.utterance_id) OVER w AS kept, first_value(u.source) OVER w AS kept_source,
                              count(*) OVER (PARTITION BY a.audio_hash) AS copies
                       FROM a JOIN u USING (utterance_id)
                       WINDOW w AS (PARTITION BY a.audio_hash ORDER BY a.utterance_id))
            SELECT utterance_id, audio_hash, duration, source, kept, kept_source, copies
            FROM r WHERE copies > 1 AND utterance_id <> kept ORDER BY utterance_id
            """,
            [list(audio_files), list(utterance_files)],
        ).fetchall()
    return from_rows("quarantine", [
        dict(utterance_id=uid, stage=STAGE, check_name="duplicate_audio", value=audio_hash[:16], threshold="unique",
             source=source, duration=duration,
             reason=f"{source}: utterance {uid}: the same audio (sha256 {audio_hash[:16]}...) as utterance {kept} "
                    f"({kept_source}), {copies} copies in this build; the lowest id keeps it")
        for uid, audio_hash, duration, source, kept, kept_source, copies in rows
    ])


def fill_durations(quarantine: pa.Table, utterances: pa.Table, audio: pa.Table) -> pa.Table:
    """Rows without a duration get the measured one (normalize got that far) or else the manifest's."""
    quarantine = conform("quarantine", quarantine)
    ids = quarantine.column("utterance_id")
    measured = audio.column("duration").take(pc.index_in(ids, value_set=audio.column("utterance_id")))
    manifest = utterances.column("duration").take(pc.index_in(ids, value_set=utterances.column("utterance_id")))
    durations = pc.coalesce(quarantine.column("duration"), measured, manifest)
    return quarantine.set_column(quarantine.schema.get_field_index("duration"), "duration", durations)
