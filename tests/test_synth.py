"""The demo corpus: real espeak-ng audio, exact manifests, deterministic bytes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, RecordingSet, SupervisionSet, load_manifest

from jstip.tasks.espeak import Synthesis, WordEvent, synthesize
from jstip.tasks.synth import (
    DOMAINS, EDGE_SILENCE_S, TEMPLATES, VOICES, WordTiming, fill_template, reference_word_timings,
    synthesize_corpus,
)
from jstip.tasks.text import split_words

N = 6


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synthesize_corpus(tmp_path_factory.mktemp("demo"), utterances=N, seed=0)


def test_same_seed_rewrites_byte_identical_files(corpus):
    before = _tree(corpus.out_dir)
    assert len([name for name in before if name.startswith("audio/")]) == N
    assert set(before) == {f"audio/{p.name}" for p in corpus.audio_dir.iterdir()} | {
        "lhotse/demo_recordings_all.jsonl.gz", "lhotse/demo_supervisions_all.jsonl.gz",
        "lhotse/demo_cuts_all.jsonl.gz", "nemo_manifest.jsonl", "word_timings.jsonl", "text_corpus.tsv", "text_corpus.jsonl",
    }
    synthesize_corpus(corpus.out_dir, utterances=N, seed=0)
    assert _tree(corpus.out_dir) == before
    # gzip's MTIME field (bytes 4-7) is cleared, so the manifests do not change with the clock
    assert before["lhotse/demo_cuts_all.jsonl.gz"][4:8] == b"\x00\x00\x00\x00"


def test_another_directory_differs_only_in_audio_paths(corpus, tmp_path):
    other = synthesize_corpus(tmp_path / "b", utterances=N, seed=0)
    a, b = _tree(corpus.out_dir), _tree(other.out_dir)
    assert a.keys() == b.keys()
    for name in a:
        if name.endswith(".gz"):
            text_a, text_b = gzip.decompress(a[name]).decode(), gzip.decompress(b[name]).decode()
        elif name == "nemo_manifest.jsonl":
            text_a, text_b = a[name].decode(), b[name].decode()
        else:
            assert a[name] == b[name], name
            continue
        if "supervisions" not in name:  # supervisions hold no paths
            assert str(corpus.out_dir / "audio") in text_a, name
        assert text_a == text_b.replace(str(other.out_dir), str(corpus.out_dir)), name


def test_different_seed_gives_a_different_corpus(corpus, tmp_path):
    other = synthesize_corpus(tmp_path / "c", utterances=N, seed=1, text_sentences=3)
    texts_a = [row["text"] for row in _jsonl(corpus.nemo_manifest)]
    texts_b = [row["text"] for row in _jsonl(other.nemo_manifest)]
    assert texts_a != texts_b
    # ids are positional, so they agree; the audio behind them does not
    assert [p.name for p in sorted(corpus.audio_dir.iterdir())] == [p.name for p in sorted(other.audio_dir.iterdir())]
    assert any((corpus.audio_dir / p.name).read_bytes() != p.read_bytes() for p in other.audio_dir.iterdir())
    assert other.text_sentences == 3
    assert len(other.text_corpus.read_text().splitlines()) == 3


def test_word_timings_are_consistent_with_the_audio(corpus):
    rows = {row["id"]: row for row in _jsonl(corpus.nemo_manifest)}
    timings = _jsonl(corpus.word_timings)
    assert [t["utterance_id"] for t in timings] == list(rows)
    low, high = EDGE_SILENCE_S
    for entry in timings:
        row = rows[entry["utterance_id"]]
        audio, sr = sf.read(row["audio_filepath"], dtype="int16")
        duration = len(audio) / sr
        assert sr == 22050 and duration == pytest.approx(row["duration"], abs=1e-9)
        assert 2.0 <= duration <= 8.0
        words = entry["words"]
        assert [w["word"] for w in words] == split_words(row["text"])
        assert [w["word_index"] for w in words] == list(range(len(words)))
        starts = [w["start"] for w in words]
        assert all(b > a for a, b in zip(starts, starts[1:]))
        for w, nxt in zip(words, words[1:] + [None]):
            assert 0 <= w["start"] < w["end"] <= duration
            if nxt is not None:
                assert w["end"] <= nxt["start"]
        # the first word starts after the inserted leading silence, which is digital silence; its sound
        # follows at once or after a stop closure (espeak: at most ~50 ms)
        first_sound = np.flatnonzero(audio)[0] / sr
        assert low - 1e-3 <= starts[0] <= high + 1e-3
        assert starts[0] <= first_sound < starts[0] + 0.06
        last_sound = (np.flatnonzero(audio)[-1] + 1) / sr
        assert words[-1]["end"] == pytest.approx(last_sound, abs=0.011)
        assert low - 1e-3 <= duration - words[-1]["end"]


def test_manifests_load_and_agree(corpus):
    recordings = load_manifest(corpus.recordings)
    supervisions = load_manifest(corpus.supervisions)
    cuts = CutSet.from_file(corpus.cuts)
    assert isinstance(recordings, RecordingSet) and isinstance(supervisions, SupervisionSet)
    nemo = _jsonl(corpus.nemo_manifest)
    ids = [row["id"] for row in nemo]
    assert ids == [f"demo-{'med' if i % 2 == 0 else 'bank'}-{i:04d}" for i in range(N)]
    assert [r.id for r in recordings] == ids
    assert [s.id for s in supervisions] == ids
    assert [c.id for c in cuts] == ids
    assert [t["utterance_id"] for t in _jsonl(corpus.word_timings)] == ids
    for row, rec, sup, cut in zip(nemo, recordings, supervisions, cuts):
        assert set(row) == {"audio_filepath", "text", "duration", "id", "domain", "entities"}
        path = Path(row["audio_filepath"])
        assert path.is_absolute() and path == corpus.audio_dir / f"{row['id']}.wav"
        assert rec.sources[0].source == str(path) and rec.sampling_rate == 22050
        assert rec.duration == row["duration"] == sup.duration == cut.duration
        assert sup.recording_id == rec.id and sup.start == 0 and sup.text == row["text"]
        assert sup.speaker in VOICES
        assert sup.custom == {"domain": row["domain"], "entities": row["entities"]}
        assert row["domain"] in DOMAINS
        assert row["entities"] and all(e in row["text"] for e in row["entities"])
        assert 6 <= len(split_words(row["text"])) <= 20
        assert [s.id for s in cut.supervisions] == [row["id"]]
    audio = cuts[0].load_audio()
    assert audio.shape == (1, recordings[0].num_samples)


def test_text_corpus_is_disjoint_from_the_speech_and_domain_tagged(corpus):
    spoken = {row["text"] for row in _jsonl(corpus.nemo_manifest)}
    lines = [line.split("\t") for line in corpus.text_corpus.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == N == corpus.text_sentences
    assert all(len(fields) == 2 and fields[0] in DOMAINS for fields in lines)
    sentences = [sentence for _, sentence in lines]
    assert len(set(sentences)) == N
    assert not set(sentences) & spoken
    assert {domain for domain, _ in lines} == set(DOMAINS)


def test_every_template_gets_one_espeak_word_event_per_word():
    # espeak-ng merges some word pairs ("for the", "of the") into one WORD event; a template with such a
    # pair would make reference_word_timings fail on some seed
    draw = 0
    for templates in TEMPLATES.values():
        for template in templates:
            for _ in range(4):
                rng = np.random.default_rng([1234, draw])
                text, entities = fill_template(template, rng)
                synthesis = synthesize(text, VOICES[draw % len(VOICES)], 140 + draw % 51)
                assert len(reference_word_timings(text, synthesis)) == len(split_words(text))
                assert all(e in text for e in entities)
                draw += 1


def test_word_starts_are_events_and_ends_the_last_audible_frame_before_the_next_start():
    sr = 22050  # 10 ms frames of 220 samples
    samples = np.zeros(11000, dtype=np.int16)
    tone = (8000 * np.sin(np.arange(11000) * 0.3)).astype(np.int16)
    samples[0:2200] = tone[0:2200]  # "alpha": 10 frames, then a pause
    samples[4400:6000] = tone[4400:6000]  # "beta": runs into "gamma" without a pause
    samples[6000:7980] = tone[6000:7980]  # "gamma": 9 frames, then a pause
    samples[8860:10000] = tone[8860:10000]  # "delta": starts with 3 silent frames, like a stop closure
    events = [WordEvent(0, 5, 0), WordEvent(6, 1, 3000), WordEvent(8, 4, 4400), WordEvent(13, 6, 6000),
              WordEvent(20, 6, 8200)]  # the event at character 6 is the "-", which is no word
    timings = reference_word_timings("alpha - beta gamma, delta.", Synthesis(samples, sr, events), offset_samples=1000)
    assert timings == [
        WordTiming("alpha", 0, round(1000 / sr, 6), round(3200 / sr, 6)),
        WordTiming("beta", 1, round(5400 / sr, 6), round(7000 / sr, 6)),
        WordTiming("gamma,", 2, round(7000 / sr, 6), round(8980 / sr, 6)),
        # the last audible frame starts at 9960 and holds the sound's last 40 samples: the end is where the
        # sound stops (sample 10000), not the frame's end
        WordTiming("delta.", 3, round(9200 / sr, 6), round(11000 / sr, 6)),
    ]


def test_a_word_without_an_espeak_event_is_an_error():
    synthesis = Synthesis(np.ones(4000, dtype=np.int16), 22050, [WordEvent(0, 3, 0)])
    with pytest.raises(ValueError, match="no WORD event for word 'the' at character 4"):
        reference_word_timings("for the", synthesis)


def test_novel_entities_appear_only_where_asked():
    from jstip.tasks.synth import NOVEL_FILLERS, demo_utterances, text_corpus_sentences

    novel = {v for values in NOVEL_FILLERS.values() for v in values}
    plain = demo_utterances(60, seed=5)
    assert not novel & {e for u in plain for e in u.entities}
    assert plain == demo_utterances(60, seed=5, novel_entities=0.0)  # no extra draws when off
    mixed = demo_utterances(60, seed=5, novel_entities=0.5)
    drawn = [e for u in mixed for e in u.entities]
    assert 10 < sum(e in novel for e in drawn) < len(drawn)
    from jstip.tasks import synth

    base_named = {*synth._DRUGS, *synth._CONDITIONS, *synth._PROCEDURES, *synth._DOCTORS, *synth._PRODUCTS,
                  *synth._MERCHANTS}
    with_novel = 0
    for domain, text, entities in text_corpus_sentences(40, seed=5, novel_entities=1.0):
        assert all(e in text for e in entities) and not base_named & set(entities), text
        with_novel += any(e in novel for e in entities)
    assert with_novel > 25  # the templates without a named-entity slot (amounts, dates, card digits) aside
