"""Quality checks (first cut), with exact expectations. Normalisation is tested in test_normalize.py."""

from __future__ import annotations

from jstip.config import CheckConfig
from jstip.schemas import from_rows
from jstip.tasks.checks import check_shard


def _utt(uid: str, path, text: str = "hello there", start: float = 0.0, duration: float | None = None) -> dict:
    return dict(utterance_id=uid, recording_id=uid, audio_path=str(path), start=start, duration=duration, text=text,
                source=f"m.jsonl:{uid}")


def _checked(durations: dict[str, float], texts: dict[str, str], aligned_words: dict[str, int]):
    utts = from_rows("utterances", [_utt(u, "/x.wav", text=texts[u]) for u in durations])
    audio = from_rows("normalized_audio", [
        dict(utterance_id=u, audio_hash=u, flac_path="/x.flac", sampling_rate=16000,
             num_samples=int(d * 16000), duration=d) for u, d in durations.items()])
    words = from_rows("word_alignments", [
        dict(utterance_id=u, word_index=i, word="w", start=0.1 * i, end=0.1 * i + 0.05, aligner="t")
        for u, n in aligned_words.items() for i in range(n)])
    return check_shard(utts, audio, words, CheckConfig(min_duration=0.5, max_duration=30.0))


def test_duration_bounds_trip_exactly_at_the_threshold():
    result = _checked(
        {"short": 0.499, "min": 0.5, "max": 30.0, "long": 30.001},
        {u: "hello there" for u in ("short", "min", "max", "long")},
        {u: 2 for u in ("short", "min", "max", "long")},
    )
    assert result.accepted_ids == ["min", "max"]
    rows = sorted((r["utterance_id"], r["check_name"], r["value"], r["threshold"]) for r in result.quarantine.to_pylist())
    assert rows == [("long", "duration_max", "30.001", "30.0"), ("short", "duration_min", "0.499", "0.5")]


def test_every_word_must_be_aligned_and_unaligned_utterances_are_left_to_their_stage():
    result = _checked(
        {"ok": 2.0, "partial": 2.0, "noalign": 2.0},
        {"ok": "one two three", "partial": "one two three", "noalign": "one two"},
        {"ok": 3, "partial": 2},
    )
    assert result.accepted_ids == ["ok"]
    [row] = result.quarantine.to_pylist()
    assert (row["utterance_id"], row["check_name"], row["value"]) == ("partial", "words_aligned", "2/3")
    assert "2/3 of the transcript's words were aligned" in row["reason"]
