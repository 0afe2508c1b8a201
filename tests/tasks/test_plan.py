"""Interleave planning: every strategy exact on hand-made alignments, the invariants as properties over
random alignments, the same plans whatever the sharding, text-only sequences, the invariant checker."""

from __future__ import annotations

import math
import random

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jstip.config import PlanConfig, WordLevelConfig
from jstip.schemas import from_rows
from jstip.tasks.plan import (EDGE_PAD, PlanError, check_plan_invariants, draw_keys, plan_shard, plan_text_corpus,
                              span_length_cdf, string_hash, uniforms)
from jstip.tasks.text import split_words

WORDS = "The patient takes metformin twice daily with food and water please".split()
RATE = 16000


def _shard(utterances: dict[str, list[tuple[str, float, float]]], durations: dict[str, float] | None = None,
           entities: dict | None = None, domain: str | None = "medical") -> tuple[pa.Table, pa.Table, pa.Table]:
    """(utterances, word_alignments, normalized_audio) tables of hand-made alignments: id -> [(word, start, end)]."""
    utts, words, audio = [], [], []
    for u, aligned in utterances.items():
        duration = (durations or {}).get(u, aligned[-1][2] + 0.5)
        for i, (w, s, e) in enumerate(aligned):
            words.append(dict(utterance_id=u, word_index=i, word=w, start=s, end=e, score=-1.0, aligner="test"))
        audio.append(dict(utterance_id=u, audio_hash="h" + u, flac_path="/x.flac", sampling_rate=RATE,
                          num_samples=int(round(duration * RATE)), duration=duration))
        utts.append(dict(utterance_id=u, recording_id=u, audio_path="/x.wav", start=0.0, source="m:1",
                         text=" ".join(w for w, _, _ in aligned), domain=domain, entities=(entities or {}).get(u)))
    return from_rows("utterances", utts), from_rows("word_alignments", words), from_rows("normalized_audio", audio)


def _regular(ids: list[str], words: list[str] = WORDS) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Words 0.4 s long with 0.1 s gaps, from 0.5 s, in 6.0 s of audio."""
    return _shard({u: [(w, 0.5 + 0.5 * i, 0.9 + 0.5 * i) for i, w in enumerate(words)] for u in ids},
                  {u: max(6.0, 0.5 * len(words) + 0.5) for u in ids})


def _layout(result, utterance_id: str | None = None) -> list[tuple[str, int, int]]:
    return [(s["role"], s["first_word"], s["last_word"]) for s in result.spans.to_pylist()
            if utterance_id is None or s["utterance_id"] == utterance_id]


# -- each strategy, exact --------------------------------------------------------------------------

def test_word_level_fixed_spans_with_the_other_modality_stretched_and_edges_mid_gap():
    # eta 0.25: the rarer modality (speech) gets the distribution (1 word), text 3x as long (3 words)
    config = PlanConfig(strategy="word", format="F2", speech_fraction=0.25, start_modality="speech",
                        word={"distribution": "fixed", "fixed_k": 1})
    result = plan_shard(*_regular(["u"]), config)
    assert _layout(result) == [("speech", 0, 0), ("text", 1, 3), ("speech", 4, 4), ("text", 5, 7),
                               ("speech", 8, 8), ("text", 9, 10)]
    speech = [s for s in result.spans.to_pylist() if s["modality"] == "speech"]
    # first word: EDGE_PAD before it; then the middle of the 0.1 s gaps (word i: 0.5 + 0.5 i .. 0.9 + 0.5 i)
    assert [t for s in speech for t in (s["audio_start"], s["audio_end"])] == pytest.approx(
        [0.5 - EDGE_PAD, 0.95, 2.45, 2.95, 4.45, 4.95])
    assert [(s["start_sample"], s["end_sample"]) for s in speech] == [(6400, 15200), (39200, 47200), (71200, 79200)]
    assert [s["text"] for s in result.spans.to_pylist()][:2] == ["The", "patient takes metformin"]
    [plan] = result.interleave_plans.to_pylist()
    assert (plan["strategy"], plan["format"], plan["num_spans"], plan["num_words"], plan["speech_words"]) == (
        "word", "F2", 6, 11, 3)
    assert plan["speech_seconds"] == pytest.approx(0.55 + 0.5 + 0.5)


def test_word_level_f1_puts_each_speech_spans_transcript_right_after_it():
    config = PlanConfig(strategy="word", format="F1", start_modality="text",
                        word={"distribution": "uniform", "uniform_low": 2, "uniform_high": 2})
    result = plan_shard(*_regular(["u"]), config)
    assert _layout(result) == [("text", 0, 1), ("speech", 2, 3), ("transcript", 2, 3), ("text", 4, 5),
                               ("speech", 6, 7), ("transcript", 6, 7), ("text", 8, 9), ("speech", 10, 10),
                               ("transcript", 10, 10)]
    spans = result.spans.to_pylist()
    assert [s["span_index"] for s in spans] == list(range(9))
    assert spans[2]["text"] == spans[1]["text"] == "takes metformin" and spans[2]["modality"] == "text"
    assert spans[7]["audio_end"] == pytest.approx(min(6.0, 5.9 + EDGE_PAD))  # last word: pad, clipped to the audio


def _paused() -> tuple[pa.Table, pa.Table, pa.Table]:
    """8 words; pauses of 0.4 s after word 2 and 0.3 s after word 5, 0.05 s elsewhere."""
    gaps = [0.05, 0.05, 0.4, 0.05, 0.05, 0.3, 0.05]
    t, aligned = 0.2, []
    for i in range(8):
        aligned.append((f"w{i}", t, t + 0.3))
        t += 0.3 + (gaps[i] if i < 7 else 0)
    return _shard({"u": aligned})


@pytest.mark.parametrize("fmt, eta, start, expected", [
    # every segment speech: F1 transcribes each one as it goes; F2 merges neighbours of one modality
    ("F1", 1.0, "random", [("speech", 0, 2), ("transcript", 0, 2), ("speech", 3, 5), ("transcript", 3, 5),
                           ("speech", 6, 7), ("transcript", 6, 7)]),
    ("F2", 1.0, "random", [("speech", 0, 7)]),
    ("F2", 0.0, "random", [("text", 0, 7)]),
    # a fixed start sets the first segment; the others are text (eta 0) and merge
    ("F2", 0.0, "speech", [("speech", 0, 2), ("text", 3, 7)]),
    ("F1", 0.0, "speech", [("speech", 0, 2), ("transcript", 0, 2), ("text", 3, 7)]),
])
def test_segment_level_cuts_at_pauses(fmt, eta, start, expected):
    config = PlanConfig(strategy="segment", format=fmt, speech_fraction=eta, start_modality=start,
                        segment={"boundary": "pause", "min_pause_ms": 200})
    result = plan_shard(*_paused(), config)
    assert _layout(result) == expected
    if expected[:2] == [("speech", 0, 2), ("transcript", 0, 2)]:
        first = result.spans.to_pylist()[0]
        assert (first["audio_start"], first["audio_end"]) == pytest.approx((0.1, (1.2 + 1.6) / 2))  # mid-pause


def test_segment_level_cuts_after_sentence_punctuation():
    words = ["Take", "two.", "Then", "call", 'me!"', "Now", "ok"]
    config = PlanConfig(strategy="segment", format="F1", speech_fraction=1.0,
                        segment={"boundary": "punctuation"})
    result = plan_shard(*_regular(["u"], words), config)
    assert _layout(result) == [("speech", 0, 1), ("transcript", 0, 1), ("speech", 2, 4), ("transcript", 2, 4),
                               ("speech", 5, 6), ("transcript", 5, 6)]


def test_segment_level_by_duration_snaps_each_cut_to_the_nearest_gap():
    # 12 words 0.4 s long, 0.1 s gaps, from 0: 5.9 s of speech, target 2 s -> 3 segments, cuts at 1.967 s
    # and 3.933 s; the nearest gap middles are 1.95 s (after word 3) and 3.95 s (after word 7)
    aligned = {"u": [(f"w{i}", 0.5 * i, 0.5 * i + 0.4) for i in range(12)]}
    config = PlanConfig(strategy="segment", format="F1", speech_fraction=1.0,
                        segment={"boundary": "duration", "target_s": 2.0, "jitter": 0.0})
    result = plan_shard(*_shard(aligned), config)
    assert [r for r in _layout(result) if r[0] == "speech"] == [("speech", 0, 3), ("speech", 4, 7), ("speech", 8, 11)]
    ends = [s["audio_end"] for s in result.spans.to_pylist() if s["role"] == "speech"]
    assert ends[:2] == pytest.approx([1.95, 3.95])
    # jitter moves cuts by at most half a segment: still between words, still 3 segments or fewer
    jittered = plan_shard(*_shard(aligned), config.model_copy(update={"segment": config.segment.model_copy(
        update={"jitter": 1.0})}))
    assert 1 <= sum(r[0] == "speech" for r in _layout(jittered)) <= 3


def test_asr_pairs_are_f1_whatever_the_format():
    result = plan_shard(*_regular(["u"]), PlanConfig(strategy="asr", format="F2"))
    assert _layout(result) == [("speech", 0, 10), ("transcript", 0, 10)]
    [plan] = result.interleave_plans.to_pylist()
    assert (plan["strategy"], plan["format"], plan["speech_words"], plan["domain"], plan["audio_seconds"]) == (
        "asr", "F1", 11, "medical", 6.0)


def test_mixed_draws_a_strategy_per_utterance_and_is_pinned():
    ids = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    config = PlanConfig(strategy="mixed", format="F2", seed=7, mixed={"word": 0.5, "segment": 0.3, "asr": 0.2})
    result = plan_shard(*_regular(ids), config)
    # a change here changes every plan ever made with this config: the generator must stay as it is
    assert {u: [s["strategy"] for s in result.spans.to_pylist() if s["utterance_id"] == u][0] for u in ids} == {
        "alpha": "word", "bravo": "word", "charlie": "asr", "delta": "word", "echo": "asr", "foxtrot": "word",
        "golf": "asr", "hotel": "segment"}
    assert _layout(result, "alpha") == [("text", 0, 4), ("speech", 5, 6), ("text", 7, 9), ("speech", 10, 10)]
    assert _layout(result, "bravo") == [("speech", 0, 2), ("text", 3, 6), ("speech", 7, 9), ("text", 10, 10)]
    assert _layout(result, "echo") == [("speech", 0, 10), ("transcript", 0, 10)]
    assert _layout(result, "hotel") == [("text", 0, 10)]
    assert draw_keys(0, pa.array(["alpha"]))[0] == 4243324194840845705
    only_asr = plan_shard(*_regular(ids), PlanConfig(strategy="mixed", mixed={"word": 0, "segment": 0, "asr": 1}))
    assert set(only_asr.interleave_plans.column("strategy").to_pylist()) == {"asr"}


def test_edges_clip_to_the_audio_and_split_overlapping_words_in_the_middle():
    aligned = {"u": [("a", 0.05, 0.5), ("b", 0.48, 0.9), ("c", 1.0, 1.4), ("d", 1.5, 2.005)]}  # b overlaps a
    config = PlanConfig(strategy="word", format="F2", start_modality="speech",
                        word={"distribution": "fixed", "fixed_k": 1})
    result = plan_shard(*_shard(aligned, {"u": 2.0}), config)  # d ends 5 ms past the audio (a frame's rounding)
    spans = result.spans.to_pylist()
    assert _layout(result) == [("speech", 0, 0), ("text", 1, 1), ("speech", 2, 2), ("text", 3, 3)]
    assert (spans[0]["audio_start"], spans[0]["audio_end"]) == pytest.approx((0.0, 0.49))  # clipped; mid-overlap
    assert (spans[2]["audio_start"], spans[2]["audio_end"]) == pytest.approx((0.95, 1.45))
    last = plan_shard(*_shard(aligned, {"u": 2.0}), config.model_copy(update={"start_modality": "text"}))
    assert last.spans.to_pylist()[-1]["audio_end"] == 2.0 and last.spans.to_pylist()[-1]["end_sample"] == 32000


def test_entity_words_per_span_match_case_and_punctuation_insensitively():
    words = "The patient takes Metformin, twice daily with food and water.".split()
    aligned = {u: [(w, 0.5 + 0.5 * i, 0.9 + 0.5 * i) for i, w in enumerate(words)] for u in ("u", "none", "empty")}
    entities = {"u": ["metformin", "food and water", "insulin"], "none": None, "empty": []}
    config = PlanConfig(strategy="word", format="F2", start_modality="speech", word={"distribution": "fixed"})
    spans = plan_shard(*_shard(aligned, entities=entities), config).spans.to_pylist()
    counts = {(s["utterance_id"], s["first_word"]): s["entity_words"] for s in spans}
    # one-word spans alternate speech (even words) / text (odd): entity words 3, 7, 8, 9
    assert [counts["u", i] for i in range(10)] == [0, 0, 0, 1, 0, 0, 0, 1, 1, 1]
    assert counts["none", 3] is None and counts["empty", 3] == 0


# -- span length distributions ---------------------------------------------------------------------

def _mean(cdf: np.ndarray) -> float:
    return float(np.sum(np.diff(np.r_[0.0, cdf]) * np.arange(1, len(cdf) + 1)))


def test_span_length_distributions_and_their_stretch():
    poisson = WordLevelConfig(distribution="poisson", poisson_lambda=10.0)
    assert _mean(span_length_cdf(poisson)) == pytest.approx(10.0, abs=1e-3)
    assert _mean(span_length_cdf(poisson, 7 / 3)) == pytest.approx(10.0 * 7 / 3, abs=1e-3)
    assert _mean(span_length_cdf(WordLevelConfig(distribution="geometric", geometric_p=0.25), 2.0)) == \
        pytest.approx(8.0, abs=1e-6)
    binomial = span_length_cdf(WordLevelConfig(distribution="binomial", binomial_n=39, binomial_p=0.1))
    assert _mean(binomial) == pytest.approx(3.9 + 0.9**39, abs=1e-9)  # max(1, X): the zeros become ones
    uniform = np.diff(np.r_[0.0, span_length_cdf(WordLevelConfig(distribution="uniform"))])
    assert np.allclose(uniform[4:15], 1 / 11) and np.allclose(uniform[:4], 0) and len(uniform) <= 17
    fixed = np.diff(np.r_[0.0, span_length_cdf(WordLevelConfig(distribution="fixed", fixed_k=1), 2.5)])
    assert fixed.tolist() == [0.0, 0.5, 0.5]  # 2.5 words on average: 2 or 3 with equal probability
    assert span_length_cdf(poisson)[-1] == 1.0


def test_measured_speech_fraction_follows_the_target():
    words = [f"w{i}" for i in range(25)]
    ids = [f"u{i:03d}" for i in range(400)]
    for eta in (0.3, 0.7):
        result = plan_shard(*_regular(ids, words), PlanConfig(speech_fraction=eta, format="F2"))
        plans = result.interleave_plans
        fraction = sum(plans.column("speech_words").to_pylist()) / sum(plans.column("num_words").to_pylist())
        assert abs(fraction - eta) < 0.03


# -- determinism ----------------------------------------------------------------------------------

def test_plans_do_not_depend_on_sharding_or_row_order():
    rng = random.Random(5)
    aligned = {}
    for k in range(30):
        n, t, words = rng.randint(1, 30), rng.uniform(0, 0.4), []
        for i in range(n):
            words.append((f"w{i}{'.' if rng.random() < 0.1 else ''}", t, t + 0.3))
            t += 0.3 + rng.choice([0.05, 0.1, 0.4])
        aligned[f"utt-{k:02d}" + "x" * (k % 13)] = words  # ids of many lengths
    config = PlanConfig(strategy="mixed", seed=11, text_share=0.0)
    key = [("utterance_id", "ascending"), ("span_index", "ascending")]
    whole = plan_shard(*_shard(aligned), config)
    ids = list(aligned)
    rng.shuffle(ids)
    parts = []
    for lo in range(0, 30, 7):  # shards of 7, each with its rows shuffled
        utts, words, audio = _shard({u: aligned[u] for u in ids[lo:lo + 7]})
        order = list(range(words.num_rows))
        rng.shuffle(order)
        parts.append(plan_shard(utts, words.take(pa.array(order)), audio, config))
    assert pa.concat_tables([p.spans for p in parts]).sort_by(key).equals(whole.spans.sort_by(key))
    assert pa.concat_tables([p.interleave_plans for p in parts]).sort_by(key[:1]).equals(
        whole.interleave_plans.sort_by(key[:1]))
    assert not plan_shard(*_shard(aligned), config.model_copy(update={"seed": 12})).spans.equals(whole.spans)


def test_string_hash_reads_sliced_chunked_and_large_strings_alike():
    ids = ["a", "bb", "", "utterance-0001-with-a-long-id", "é-ü"]
    plain = string_hash(pa.array(ids))
    assert len(set(plain.tolist())) == len(ids)
    assert string_hash(pa.chunked_array([ids[:2], ids[2:]])).tolist() == plain.tolist()
    assert string_hash(pa.array(["x"] + ids)[1:]).tolist() == plain.tolist()
    assert string_hash(pa.array(ids, pa.large_string())).tolist() == plain.tolist()
    # a string's hash does not depend on the other strings of the array (their lengths included)
    assert [string_hash(pa.array([i]))[0] for i in ids] == plain.tolist()
    u = uniforms(draw_keys(3, pa.array([f"u{i}" for i in range(20000)])), 3, 0)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01


# -- text-only sequences ---------------------------------------------------------------------------

def _text_corpus(n: int) -> pa.Table:
    return from_rows("text_corpus", [dict(text_id=f"medical-{i:03d}", domain="medical" if i % 2 else "banking",
                                          text=f"Take {i} mg of metformin - twice daily .", source=f"t.tsv:{i}")
                                     for i in range(n)])


def test_text_only_sequences_are_a_share_of_all_sequences():
    config = PlanConfig(strategy="mixed", text_share=0.2, seed=3)
    result = plan_text_corpus(_text_corpus(40), 20, config)  # 0.2 / 0.8 * 20 = 5 sequences
    plans, spans = result.interleave_plans.to_pylist(), result.spans.to_pylist()
    assert len(plans) == len(spans) == 5
    assert all((p["strategy"], p["format"], p["num_spans"], p["speech_words"], p["audio_seconds"]) ==
               ("text", "F2", 1, 0, None) for p in plans)
    span = spans[0]
    assert (span["role"], span["modality"], span["first_word"], span["span_index"], span["strategy"]) == (
        "text", "text", 0, 0, "text")
    assert span["text"] == " ".join(split_words(f"Take {span['utterance_id'][-3:].lstrip('0') or '0'} mg of "
                                                "metformin - twice daily .")) and " - " not in span["text"]
    reversed_corpus = _text_corpus(40).take(pa.array(range(39, -1, -1)))
    assert plan_text_corpus(reversed_corpus, 20, config).spans.equals(result.spans)
    assert plan_text_corpus(_text_corpus(3), 20, config).interleave_plans.num_rows == 3  # capped by the corpus
    # the strategy of the utterance plans does not matter: a given text corpus is planned (issue 14)
    as_word = plan_text_corpus(_text_corpus(40), 20, config.model_copy(update={"strategy": "word"})).spans
    assert as_word.select(["utterance_id", "text"]).equals(result.spans.select(["utterance_id", "text"]))
    assert plan_text_corpus(_text_corpus(40), 20, config.model_copy(update={"text_share": 0.0})).spans.num_rows == 0
    assert check_plan_invariants(result.spans, from_rows("word_alignments", []), from_rows("normalized_audio", [])
                                 ).num_rows == 0


# -- the invariants, as properties -----------------------------------------------------------------

@st.composite
def _alignments(draw):
    utterances, durations = {}, {}
    for k in range(draw(st.integers(1, 5))):
        t = draw(st.floats(0.0, 0.5))
        aligned = []
        for i in range(draw(st.integers(1, 14))):
            length = draw(st.floats(0.02, 0.6))
            word = draw(st.sampled_from(["a", "Bb", "cc.", "dd?", "e-e", "Metformin,", "f!\""]))
            aligned.append((word, t, t + length))
            # overlaps of up to 10 ms (the checks' tolerance), touching words, short gaps and pauses
            t += length + draw(st.sampled_from([-0.01, 0.0, 0.03, 0.1, 0.25, 0.8]))
        u = f"u{k}-{draw(st.text('xyz0123', min_size=0, max_size=12))}"
        utterances[u] = aligned
        # the last word may end up to 5 ms past the audio (frame rounding)
        durations[u] = aligned[-1][2] + draw(st.sampled_from([-0.005, 0.0, 0.02, 0.4]))
    return utterances, durations


@st.composite
def _configs(draw):
    kind = draw(st.sampled_from(["poisson", "geometric", "binomial", "uniform", "fixed"]))
    low = draw(st.integers(1, 4))
    return PlanConfig(
        strategy=draw(st.sampled_from(["word", "segment", "asr", "mixed"])),
        format=draw(st.sampled_from(["F1", "F2"])),
        speech_fraction=draw(st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.7, 1.0])),
        start_modality=draw(st.sampled_from(["random", "speech", "text"])),
        seed=draw(st.integers(0, 2**40)),
        word=dict(distribution=kind, poisson_lambda=draw(st.floats(0.5, 8)), geometric_p=draw(st.floats(0.1, 1)),
                  binomial_n=draw(st.integers(1, 20)), binomial_p=draw(st.floats(0.05, 1)),
                  uniform_low=low, uniform_high=low + draw(st.integers(0, 4)), fixed_k=draw(st.integers(1, 4))),
        segment=dict(boundary=draw(st.sampled_from(["duration", "pause", "punctuation"])),
                     min_pause_ms=draw(st.sampled_from([50.0, 200.0])), target_s=draw(st.floats(0.3, 3)),
                     jitter=draw(st.floats(0, 1))),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_alignments(), _configs())
def test_every_plan_keeps_the_invariants(aligned, config):
    utterances, durations = aligned
    tables = _shard(utterances, durations, entities={u: ["metformin"] for u in utterances})
    result = plan_shard(*tables, config)  # raises PlanError on any violation the checker finds
    assert check_plan_invariants(result.spans, tables[1], tables[2]).num_rows == 0
    # ... and checked here again, independently of the checker
    plans = {p["utterance_id"]: p for p in result.interleave_plans.to_pylist()}
    assert set(plans) == set(utterances)
    for u, words in utterances.items():
        spans = [s for s in result.spans.to_pylist() if s["utterance_id"] == u]
        n, duration = len(words), durations[u]
        assert [s["span_index"] for s in spans] == list(range(len(spans))) == list(range(plans[u]["num_spans"]))
        tiling = [w for s in spans if s["role"] != "transcript" for w in range(s["first_word"], s["last_word"] + 1)]
        assert tiling == list(range(n))  # every word once, in order (F1 and F2)
        f1 = plans[u]["format"] == "F1"
        previous_end = -1.0
        for k, s in enumerate(spans):
            assert s["text"] == " ".join(w for w, _, _ in words[s["first_word"]:s["last_word"] + 1])
            assert s["num_words"] == s["last_word"] - s["first_word"] + 1
            assert (s["modality"] == "speech") == (s["role"] == "speech") == (s["audio_start"] is not None)
            if s["role"] == "transcript":
                assert f1 and spans[k - 1]["role"] == "speech"
                assert (spans[k - 1]["first_word"], spans[k - 1]["last_word"]) == (s["first_word"], s["last_word"])
            if s["role"] != "speech":
                continue
            if f1:  # every speech span has its transcript right after it
                assert spans[k + 1]["role"] == "transcript"
            first, last = words[s["first_word"]], words[s["last_word"]]
            start, end = s["audio_start"], s["audio_end"]
            assert 0 <= start < end <= duration and previous_end <= start + 1e-9
            # edges between two words: from the earlier one's end to the later one's start (in an overlap: in it)
            if s["first_word"] == 0:
                assert start <= first[1] + 1e-9
            else:
                before = words[s["first_word"] - 1]
                assert min(before[2], first[1]) - 1e-9 <= start <= max(before[2], first[1]) + 1e-9
            if s["last_word"] == n - 1:
                assert end >= min(last[2], duration) - 1e-9
            else:
                after = words[s["last_word"] + 1]
                assert min(last[2], after[1]) - 1e-9 <= end <= max(last[2], after[1]) + 1e-9
            assert 0 <= s["start_sample"] < s["end_sample"] <= round(duration * RATE)
            assert s["start_sample"] == round(start * RATE) and s["end_sample"] == round(end * RATE)
            previous_end = end
        speech_words = sum(s["num_words"] for s in spans if s["role"] == "speech")
        assert plans[u]["speech_words"] == speech_words and plans[u]["num_words"] == n


# -- the checker ----------------------------------------------------------------------------------

def _broken(spans: pa.Table, row: int, **changes) -> pa.Table:
    rows = spans.to_pylist()
    rows[row].update(changes)
    return from_rows("spans", rows)


@pytest.mark.parametrize("row, changes, invariant", [
    (0, dict(audio_start=1.0, start_sample=16000), "word_boundaries"),  # starts inside word 1 (0.5..0.9)
    (1, dict(role="text"), "transcript"),  # F1 speech span without its transcript
    (3, dict(first_word=5), "coverage"),  # words 4 and 5 skipped/doubled
    (0, dict(audio_end=7.0, end_sample=112000), "audio"),  # past the audio
    (0, dict(modality="text"), "modality_role"),
    (2, dict(span_index=7), "span_index"),
    (0, dict(text="The  patient takes"), "text"),
])
def test_the_checker_names_each_broken_invariant(row, changes, invariant):
    tables = _regular(["u"])
    config = PlanConfig(strategy="word", format="F1", start_modality="speech",
                        word={"distribution": "uniform", "uniform_low": 3, "uniform_high": 3})
    spans = plan_shard(*tables, config).spans
    assert _layout(plan_shard(*tables, config))[:4] == [("speech", 0, 2), ("transcript", 0, 2), ("text", 3, 5),
                                                        ("speech", 6, 8)]
    violations = check_plan_invariants(_broken(spans, row, **changes), tables[1], tables[2]).to_pylist()
    assert invariant in {v["invariant"] for v in violations}, violations
    assert all(v["utterance_id"] == "u" and v["plan_id"] == spans.column("plan_id")[0].as_py() for v in violations)


def test_the_checker_finds_overlapping_speech_spans_and_unaligned_utterances():
    tables = _regular(["u"])
    config = PlanConfig(strategy="word", format="F2", start_modality="speech", word={"distribution": "fixed"})
    spans = plan_shard(*tables, config).spans
    overlapping = _broken(spans, 2, audio_start=0.9, start_sample=14400)  # before span 0's end (0.95)
    invariants = {v["invariant"] for v in check_plan_invariants(overlapping, tables[1], tables[2]).to_pylist()}
    assert "order" in invariants
    missing = check_plan_invariants(spans, from_rows("word_alignments", []), tables[2]).to_pylist()
    assert {v["invariant"] for v in missing} == {"word_alignments"}
    with pytest.raises(ValueError, match="word indices are not 0..n-1"):
        check_plan_invariants(spans, tables[1].filter(pa.compute.not_equal(tables[1].column("word_index"), 3)),
                              tables[2])


def test_plan_shard_fails_loudly_on_a_planner_bug(monkeypatch):
    from jstip.tasks import plan as plan_module

    monkeypatch.setattr(plan_module, "EDGE_PAD", -0.05)  # a "bug": speech spans start inside their first word
    with pytest.raises(PlanError, match="word_boundaries"):
        plan_shard(*_regular(["u"]), PlanConfig(strategy="asr"))


def test_words_without_audio_are_not_planned_and_an_empty_shard_plans_nothing():
    utts, words, audio = _regular(["a", "b"])
    result = plan_shard(utts, words, audio.filter(pa.compute.equal(audio.column("utterance_id"), "b")), PlanConfig())
    assert result.interleave_plans.column("utterance_id").to_pylist() == ["b"]
    empty = plan_shard(utts, from_rows("word_alignments", []), audio, PlanConfig())
    assert empty.interleave_plans.num_rows == empty.spans.num_rows == 0
    assert math.isclose(sum(result.spans.column("num_words").to_pylist()[:0]), 0)
