"""First-cut normalisation and quality checks on real audio files, with exact expectations."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from jstip.config import CheckConfig, NormalizeConfig
from jstip.schemas import from_rows
from jstip.tasks.checks import check_shard
from jstip.tasks.normalize import normalize_shard


def _utt(uid: str, path, text: str = "hello there", start: float = 0.0, duration: float | None = None) -> dict:
    return dict(utterance_id=uid, recording_id=uid, audio_path=str(path), start=start, duration=duration, text=text,
                source=f"m.jsonl:{uid}")


def test_normalize_decodes_downmixes_resamples_and_deduplicates(tmp_path):
    t = np.arange(44100) / 44100
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([tone, tone], axis=1)
    sf.write(tmp_path / "a.wav", stereo, 44100, subtype="PCM_16")
    sf.write(tmp_path / "copy.wav", stereo, 44100, subtype="PCM_16")
    clipped = np.clip(tone * 3, -1, 1)
    sf.write(tmp_path / "clip.wav", clipped, 44100, subtype="FLOAT")
    (tmp_path / "broken.wav").write_bytes(b"RIFF....not audio")

    utts = from_rows("utterances", [
        _utt("a", tmp_path / "a.wav"), _utt("copy", tmp_path / "copy.wav"),
        _utt("half", tmp_path / "a.wav", start=0.25, duration=0.5), _utt("clip", tmp_path / "clip.wav"),
        _utt("broken", tmp_path / "broken.wav"), _utt("gone", tmp_path / "missing.wav"),
    ])
    result = normalize_shard(utts, tmp_path / "pool", NormalizeConfig())
    rows = {r["utterance_id"]: r for r in result.normalized_audio.to_pylist()}

    assert sorted(rows) == ["a", "clip", "copy", "half"]
    assert rows["a"]["num_samples"] == 16000 and rows["a"]["duration"] == 1.0
    assert rows["half"]["num_samples"] == 8000
    assert (rows["a"]["orig_sampling_rate"], rows["a"]["orig_num_channels"]) == (44100, 2)
    assert rows["a"]["audio_hash"] == rows["copy"]["audio_hash"]  # identical audio, one file
    assert rows["a"]["flac_path"] == rows["copy"]["flac_path"]
    assert len(list((tmp_path / "pool").rglob("*.flac"))) == 3
    data, rate = sf.read(rows["a"]["flac_path"], dtype="float32")
    assert rate == 16000 and data.ndim == 1 and sf.info(rows["a"]["flac_path"]).subtype == "PCM_16"
    assert 20 * np.log10(np.sqrt(np.mean(data ** 2))) == pytest.approx(rows["a"]["rms_dbfs"], abs=0.01)
    assert rows["a"]["rms_dbfs"] == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.1)
    assert rows["a"]["clipping_ratio"] == 0.0
    assert rows["clip"]["clipping_ratio"] == pytest.approx(np.mean(np.abs(clipped) >= 0.999), abs=1e-4)

    quarantine = {r["utterance_id"]: r for r in result.quarantine.to_pylist()}
    assert sorted(quarantine) == ["broken", "gone"]
    assert quarantine["gone"]["check_name"] == "audio_unreadable"
    assert "missing.wav" in quarantine["gone"]["reason"] and quarantine["gone"]["reason"].startswith("m.jsonl:gone")


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
