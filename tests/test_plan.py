"""First-cut word-level planner: exact coverage, edges in gaps, determinism across sharding."""

from __future__ import annotations

import pyarrow as pa
import pytest

from jstip.config import PlanConfig
from jstip.schemas import from_rows
from jstip.tasks.plan import EDGE_PAD, plan_shard

WORDS = "The patient takes metformin twice daily with food and water please".split()


def _aligned(utt_ids: list[str]) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Words 0.4 s long with 0.1 s gaps, starting at 0.5 s, in 6.0 s of audio."""
    words, audio, utts = [], [], []
    for u in utt_ids:
        for i, w in enumerate(WORDS):
            words.append(dict(utterance_id=u, word_index=i, word=w, start=0.5 + 0.5 * i, end=0.9 + 0.5 * i,
                              score=1.0, aligner="test"))
        audio.append(dict(utterance_id=u, audio_hash="h" + u, flac_path="/x.flac", sampling_rate=16000,
                          num_samples=96000, duration=6.0))
        utts.append(dict(utterance_id=u, recording_id=u, audio_path="/x.wav", start=0.0, text=" ".join(WORDS),
                         source="m:1"))
    return (from_rows("utterances", utts), from_rows("word_alignments", words), from_rows("normalized_audio", audio))


@pytest.mark.parametrize("fmt", ["F1", "F2"])
def test_every_word_is_covered_once_and_edges_sit_between_words(fmt):
    utts, words, audio = _aligned([f"u{i}" for i in range(20)])
    result = plan_shard(utts, words, audio, PlanConfig(format=fmt, mean_span_words=3, speech_fraction=0.5))
    spans = result.spans.to_pylist()
    assert result.interleave_plans.num_rows == 20
    for u in {s["utterance_id"] for s in spans}:
        own = [s for s in spans if s["utterance_id"] == u]
        assert [s["span_index"] for s in own] == list(range(len(own)))
        covered = [w for s in own if s["role"] != "transcript" for w in range(s["first_word"], s["last_word"] + 1)]
        assert covered == list(range(len(WORDS)))  # every word once, in order
        for k, s in enumerate(own):
            assert s["text"] == " ".join(WORDS[s["first_word"]:s["last_word"] + 1])
            if s["modality"] == "speech":
                first, last = s["first_word"], s["last_word"]
                expected_start = 0.5 - EDGE_PAD if first == 0 else 0.5 * first + 0.45  # mid-gap
                expected_end = 0.9 + 0.5 * last + (EDGE_PAD if last == len(WORDS) - 1 else 0.05)
                assert s["audio_start"] == pytest.approx(expected_start)
                assert s["audio_end"] == pytest.approx(expected_end)
                assert s["start_sample"] == round(s["audio_start"] * 16000)
                if fmt == "F1":  # transcribe-as-you-go: the speech span's own words follow it
                    nxt = own[k + 1]
                    assert (nxt["role"], nxt["modality"], nxt["first_word"], nxt["last_word"]) == (
                        "transcript", "text", first, last)
            else:
                assert s["audio_start"] is None
        if fmt == "F2":
            assert all(s["role"] != "transcript" for s in own)
            assert all(a["modality"] != b["modality"] for a, b in zip(own, own[1:]))  # strictly alternating


def test_plans_do_not_depend_on_sharding():
    ids = [f"u{i}" for i in range(12)]
    config = PlanConfig(seed=7)
    whole = plan_shard(*_aligned(ids), config).spans
    parts = [plan_shard(*_aligned(ids[a:a + 5]), config).spans for a in range(0, 12, 5)]
    assert pa.concat_tables(parts).sort_by([("utterance_id", "ascending"), ("span_index", "ascending")]).equals(
        whole.sort_by([("utterance_id", "ascending"), ("span_index", "ascending")]))
    other_seed = plan_shard(*_aligned(ids), PlanConfig(seed=8)).spans
    assert not other_seed.equals(whole)


def test_speech_fraction_extremes():
    utts, words, audio = _aligned(["u0"])
    all_speech = plan_shard(utts, words, audio, PlanConfig(speech_fraction=1.0, format="F2")).spans.to_pylist()
    assert [(s["modality"], s["first_word"], s["last_word"]) for s in all_speech] == [("speech", 0, 10)]
    all_text = plan_shard(utts, words, audio, PlanConfig(speech_fraction=0.0, format="F2")).spans.to_pylist()
    assert [(s["modality"], s["first_word"], s["last_word"]) for s in all_text] == [("text", 0, 10)]


def test_measured_speech_fraction_follows_the_target():
    utts, words, audio = _aligned([f"u{i}" for i in range(300)])
    plans = plan_shard(utts, words, audio, PlanConfig(speech_fraction=0.3, mean_span_words=2, format="F2"))
    fraction = sum(plans.interleave_plans.column("speech_words").to_pylist()) / (300 * len(WORDS))
    assert 0.25 < fraction < 0.35
