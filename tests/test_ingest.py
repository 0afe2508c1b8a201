"""Ingestion of Lhotse / NeMo / audio-directory manifests and of text corpora, on tiny real audio files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.audio import AudioSource

from jstip.schemas.tables import QUARANTINE, RECORDINGS, TEXT_CORPUS, UTTERANCES
from jstip.tasks.ingest import ManifestError, ingest_manifest, ingest_text_corpus

SR = 16000


def _wav(path: Path, seconds: float = 0.5) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, 0.3 * np.sin(2 * np.pi * 440 * t), SR)
    return path


def _relative_recording(tmp_path: Path, rel: str, recording_id: str) -> Recording:
    """A Lhotse recording measured from a real file, whose source is written relative to tmp_path."""
    recording = Recording.from_file(_wav(tmp_path / rel), recording_id=recording_id)
    return dataclasses.replace(recording, sources=[AudioSource(type="file", channels=[0], source=rel)])


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _quarantine(result) -> list[tuple[str, str, str]]:
    """(utterance_id, check, source) of each quarantine row."""
    return [(r["utterance_id"], r["check_name"], r["source"]) for r in result.quarantine.to_pylist()]


def _assert_accounted(result) -> None:
    assert result.recordings.schema.equals(RECORDINGS, check_metadata=True)
    assert result.utterances.schema.equals(UTTERANCES, check_metadata=True)
    assert result.quarantine.schema.equals(QUARANTINE, check_metadata=True)
    assert result.utterances.num_rows + result.quarantine.num_rows == result.num_entries
    # callers count entries by `source` (tasks/stages.py accounting): one distinct source per entry
    sources = result.utterances.column("source").to_pylist() + result.quarantine.column("source").to_pylist()
    assert len(set(sources)) == result.num_entries
    assert set(result.quarantine.column("stage").to_pylist()) <= {"ingest"}
    for row in result.quarantine.to_pylist():
        assert row["reason"].startswith(row["source"] + ": ")
    # the recordings table holds exactly the recordings the accepted utterances use
    assert sorted(result.recordings.column("recording_id").to_pylist()) == \
        sorted(set(result.utterances.column("recording_id").to_pylist()))
    # no accepted id is also quarantined by this stage
    assert not set(result.utterances.column("utterance_id").to_pylist()) & \
        set(result.quarantine.column("utterance_id").to_pylist())


@pytest.fixture
def lhotse_corpus(tmp_path):
    recordings = RecordingSet.from_recordings([
        _relative_recording(tmp_path, "audio/a.wav", "rec-a"),
        _relative_recording(tmp_path, "audio/b.wav", "rec-b"),
    ])
    supervisions = SupervisionSet.from_segments([
        SupervisionSegment(id="s1", recording_id="rec-a", start=0.0, duration=0.2, text="take two tablets",
                           speaker="spk1", language="en", custom={"domain": "medical", "entities": ["tablets"]}),
        SupervisionSegment(id="s2", recording_id="rec-a", start=0.2, duration=0.3, text="daily"),
        SupervisionSegment(id="s3", recording_id="rec-b", start=0.1, duration=0.3, text="hello there"),
    ])
    return recordings, supervisions


# ---------------------------------------------------------------------------------------------- Lhotse


def test_lhotse_supervisions_with_recordings_beside_them(tmp_path, lhotse_corpus):
    recordings, supervisions = lhotse_corpus
    recordings.to_file(tmp_path / "corpus_recordings_train.jsonl.gz")
    supervisions.to_file(tmp_path / "corpus_supervisions_train.jsonl.gz")
    RecordingSet.from_recordings([]).to_file(tmp_path / "corpus_recordings_dev.jsonl.gz")  # naming picks train

    result = ingest_manifest(tmp_path / "corpus_supervisions_train.jsonl.gz")

    assert result.format == "lhotse_supervisions"
    assert result.num_entries == 3
    assert result.quarantine.num_rows == 0
    sup_file = tmp_path / "corpus_supervisions_train.jsonl.gz"
    assert result.utterances.drop_columns(["audio_sha256"]).to_pylist() == [
        dict(utterance_id="s1", recording_id="rec-a", audio_path="audio/a.wav", start=0.0,
             duration=0.2, text="take two tablets", channel=0, language="en", speaker="spk1", domain="medical",
             entities=["tablets"], source=f"{sup_file.name}:1"),
        dict(utterance_id="s2", recording_id="rec-a", audio_path="audio/a.wav", start=0.2,
             duration=0.3, text="daily", channel=0, language=None, speaker=None, domain=None, entities=None,
             source=f"{sup_file.name}:2"),
        dict(utterance_id="s3", recording_id="rec-b", audio_path="audio/b.wav", start=0.1,
             duration=0.3, text="hello there", channel=0, language=None, speaker=None, domain=None,
             entities=None, source=f"{sup_file.name}:3"),
    ]
    assert result.recordings.drop_columns(["audio_sha256"]).to_pylist() == [
        dict(recording_id="rec-a", audio_path="audio/a.wav", sampling_rate=SR, num_samples=8000,
             duration=0.5, num_channels=1),
        dict(recording_id="rec-b", audio_path="audio/b.wav", sampling_rate=SR, num_samples=8000,
             duration=0.5, num_channels=1),
    ]
    _assert_accounted(result)
    # the recordings manifest finds its supervisions the same way
    assert ingest_manifest(tmp_path / "corpus_recordings_train.jsonl.gz").utterances.equals(result.utterances)


def test_lhotse_directory_needs_exactly_one_pair(tmp_path, lhotse_corpus):
    recordings, supervisions = lhotse_corpus
    recordings.to_file(tmp_path / "recordings.jsonl.gz")
    supervisions.to_file(tmp_path / "supervisions.jsonl.gz")

    result = ingest_manifest(tmp_path)
    assert result.format == "lhotse_supervisions"
    assert result.utterances.column("utterance_id").to_pylist() == ["s1", "s2", "s3"]
    _assert_accounted(result)

    supervisions.to_file(tmp_path / "more_supervisions.jsonl.gz")
    with pytest.raises(ManifestError, match="not exactly one recordings"):
        ingest_manifest(tmp_path)


def test_lhotse_cutset(tmp_path, lhotse_corpus):
    recordings, supervisions = lhotse_corpus
    cuts = CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
    # rec-a: one cut from 0 s holding s1 + s2; rec-b: trimmed to s3, so the cut starts at 0.1 s and s3 at 0 in it
    cut_a = cuts.filter(lambda c: c.recording_id == "rec-a")
    cut_b = cuts.filter(lambda c: c.recording_id == "rec-b").trim_to_supervisions()
    manifest = tmp_path / "cuts_train.jsonl"
    (cut_a + cut_b).to_file(manifest)
    no_supervision = next(iter(cut_b)).drop_supervisions().with_id("silent")
    with manifest.open("a") as f:
        f.write('{"id": "broken", "type": "MonoCut", \n')
        f.write(json.dumps({**no_supervision.to_dict()}) + "\n")

    result = ingest_manifest(manifest)

    assert result.format == "lhotse_cuts"
    utterances = result.utterances.drop_columns(["audio_sha256"]).to_pylist()
    assert [(u["utterance_id"], u["recording_id"], u["start"], u["duration"]) for u in utterances] == [
        ("s1", "rec-a", 0.0, 0.2), ("s2", "rec-a", 0.2, 0.3), ("s3", "rec-b", pytest.approx(0.1), 0.3)]
    assert utterances[0]["domain"] == "medical" and utterances[0]["entities"] == ["tablets"]
    assert utterances[2]["audio_path"] == "audio/b.wav"
    # one source per entry: the supervisions of a cut that holds two are told apart
    assert [u["source"] for u in utterances] == [f"{manifest.name}:1#1", f"{manifest.name}:1#2", f"{manifest.name}:2"]
    assert result.recordings.column("recording_id").to_pylist() == ["rec-a", "rec-b"]
    assert _quarantine(result) == [
        ("cuts_train:line3", "malformed_json", f"{manifest.name}:3"),
        ("cuts_train:line4", "no_supervision", f"{manifest.name}:4"),
    ]
    assert result.num_entries == 5
    _assert_accounted(result)


def test_lhotse_bad_lines_are_quarantined(tmp_path, lhotse_corpus):
    recordings, supervisions = lhotse_corpus
    ghost = dataclasses.replace(recordings["rec-b"], id="rec-ghost",
                                sources=[AudioSource(type="file", channels=[0], source="audio/ghost.wav")])
    rec_file = tmp_path / "x_recordings.jsonl"
    RecordingSet.from_recordings([*recordings, ghost]).to_file(rec_file)
    with rec_file.open("a") as f:
        f.write('{"id": "rec-bad", "sources": []}\n')  # no sampling_rate etc.
    sup_file = tmp_path / "x_supervisions.jsonl"
    good = [s.to_dict() for s in supervisions]
    _write_lines(sup_file, [
        json.dumps(good[0]),
        "{not json",
        json.dumps({**good[1], "text": "  "}),
        json.dumps({**good[1], "id": "s-neg", "duration": -0.5}),
        json.dumps({"id": "s-nostart", "recording_id": "rec-a", "duration": 0.1, "text": "x"}),
        json.dumps({**good[1], "id": "s1"}),
        json.dumps({**good[1], "id": "s-ghost", "recording_id": "rec-ghost"}),
        json.dumps({**good[1], "id": "s-unknown", "recording_id": "rec-nowhere"}),
        json.dumps({**good[1], "id": "s-bad", "recording_id": "rec-bad"}),
        json.dumps(good[2]),
    ])

    result = ingest_manifest(sup_file)

    assert result.utterances.column("utterance_id").to_pylist() == ["s1", "s3"]
    assert _quarantine(result) == [
        ("x_recordings:line4", "missing_field", f"{rec_file.name}:4"),
        ("x_supervisions:line2", "malformed_json", f"{sup_file.name}:2"),
        ("s2", "empty_text", f"{sup_file.name}:3"),
        ("s-neg", "invalid_duration", f"{sup_file.name}:4"),
        ("s-nostart", "missing_field", f"{sup_file.name}:5"),
        ("x_supervisions:line6", "duplicate_id", f"{sup_file.name}:6"),  # filed under its line
        ("s-ghost", "audio_not_found", f"{sup_file.name}:7"),
        ("s-unknown", "unknown_recording", f"{sup_file.name}:8"),
        ("s-bad", "bad_recording", f"{sup_file.name}:9"),
    ]
    reasons = result.quarantine.column("reason").to_pylist()
    assert reasons[6] == f"{sup_file.name}:7: audio file not found: audio/ghost.wav"
    assert reasons[5] == f"{sup_file.name}:6: duplicate utterance id 's1' (first at {sup_file.name}:1)"
    assert result.num_entries == 11  # 10 supervision lines + 1 quarantined recordings line
    _assert_accounted(result)


# ---------------------------------------------------------------------------------------------- NeMo


def _nemo_id(audio_path: str, offset: float, duration: float | None) -> str:
    """The documented derivation: <audio stem>-<sha1(path relative to the manifest|offset|duration)[:12]>."""
    key = f"{audio_path}|{offset:.3f}|{'' if duration is None else f'{duration:.3f}'}"
    return f"{Path(audio_path).stem}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def test_nemo_manifest(tmp_path):
    a = _wav(tmp_path / "data/audio/a.wav")
    b = _wav(tmp_path / "elsewhere/b.flac")
    manifest = _write_lines(tmp_path / "data/train_manifest.json", [
        json.dumps({"audio_filepath": "audio/a.wav", "text": "take two tablets", "duration": 0.2, "offset": 0.0,
                    "domain": "medical", "entities": ["tablets"], "speaker": 7, "lang": "en"}),
        json.dumps({"audio_filepath": "audio/a.wav", "text": " daily ", "duration": 0.3, "offset": 0.2}),
        json.dumps({"audio_filepath": str(b), "text": "hello there", "id": "utt-b"}),
    ])

    result = ingest_manifest(manifest)

    assert result.format == "nemo"
    assert result.num_entries == 3 and result.quarantine.num_rows == 0
    # paths relative to the manifest's directory: the same corpus elsewhere gives the same ids and rows
    a, b = "audio/a.wav", "../elsewhere/b.flac"
    rec_a = f"a-{hashlib.sha1(a.encode()).hexdigest()[:12]}"
    rec_b = f"b-{hashlib.sha1(b.encode()).hexdigest()[:12]}"
    assert result.utterances.drop_columns(["audio_sha256"]).to_pylist() == [
        dict(utterance_id=_nemo_id(a, 0.0, 0.2), recording_id=rec_a, audio_path=a, start=0.0, duration=0.2,
             text="take two tablets", channel=None, language="en", speaker="7", domain="medical",
             entities=["tablets"], source=f"{manifest.name}:1"),
        dict(utterance_id=_nemo_id(a, 0.2, 0.3), recording_id=rec_a, audio_path=a, start=0.2, duration=0.3,
             text="daily", channel=None, language=None, speaker=None, domain=None, entities=None,
             source=f"{manifest.name}:2"),
        dict(utterance_id="utt-b", recording_id=rec_b, audio_path=b, start=0.0, duration=None,
             text="hello there", channel=None, language=None, speaker=None, domain=None, entities=None,
             source=f"{manifest.name}:3"),
    ]
    # one recordings row per audio file, metadata left to the normaliser
    assert result.recordings.drop_columns(["audio_sha256"]).to_pylist() == [
        dict(recording_id=rec_a, audio_path=a, sampling_rate=None, num_samples=None, duration=None,
             num_channels=None),
        dict(recording_id=rec_b, audio_path=b, sampling_rate=None, num_samples=None, duration=None,
             num_channels=None),
    ]
    _assert_accounted(result)
    again = ingest_manifest(manifest)
    assert again.utterances.equals(result.utterances) and again.recordings.equals(result.recordings)


def test_nemo_bad_lines_are_quarantined(tmp_path, caplog):
    _wav(tmp_path / "a.wav")
    _wav(tmp_path / "b.wav")
    manifest = _write_lines(tmp_path / "manifest.jsonl", [
        json.dumps({"audio_filepath": "a.wav", "text": "good one", "id": "u1"}),
        '{"audio_filepath": "a.wav", "text": "broken"',
        json.dumps({"audio_filepath": "missing.flac", "text": "no audio", "id": "u3"}),
        "",
        json.dumps({"audio_filepath": "b.wav", "text": "   ", "id": "u5"}),
        json.dumps({"audio_filepath": "b.wav", "text": "again", "id": "u1"}),
        json.dumps({"text": "no path", "id": "u7"}),
        json.dumps({"audio_filepath": "b.wav", "text": "backwards", "duration": -1.0, "id": "u8"}),
        json.dumps({"audio_filepath": "b.wav", "id": "u9"}),
        json.dumps({"audio_filepath": "b.wav", "text": "good two", "id": "u10", "duration": 0.5}),
    ])

    with caplog.at_level(logging.WARNING, logger="jstip.tasks.ingest"):
        result = ingest_manifest(manifest)

    assert result.utterances.column("utterance_id").to_pylist() == ["u1", "u10"]
    assert _quarantine(result) == [
        ("manifest:line2", "malformed_json", f"{manifest.name}:2"),
        ("u3", "audio_not_found", f"{manifest.name}:3"),
        ("u5", "empty_text", f"{manifest.name}:5"),
        ("manifest:line6", "duplicate_id", f"{manifest.name}:6"),
        ("u7", "missing_field", f"{manifest.name}:7"),
        ("u8", "invalid_duration", f"{manifest.name}:8"),
        ("u9", "missing_field", f"{manifest.name}:9"),
    ]
    reasons = result.quarantine.column("reason").to_pylist()
    assert reasons[1] == f"{manifest.name}:3: audio file not found: missing.flac"
    assert reasons[3] == f"{manifest.name}:6: duplicate utterance id 'u1' (first at {manifest.name}:1)"
    assert result.quarantine.column("value").to_pylist()[3] == "u1"
    assert result.num_entries == 9  # the blank line is not an entry
    assert [r.getMessage() for r in caplog.records] == reasons
    _assert_accounted(result)


# ---------------------------------------------------------------------------------------------- audio directory


def test_audio_directory_with_transcripts(tmp_path):
    root = tmp_path / "corpus"
    _wav(root / "spk1/a.wav")
    (root / "spk1/a.txt").write_text("take two tablets\n")
    _wav(root / "spk1/b.flac")
    (root / "spk1/b.txt").write_text("hello\nthere\n")
    _wav(root / "spk1/b.wav")  # same utterance id as b.flac, which sorts first and keeps it
    _wav(root / "spk2/c.wav")  # no transcript
    (root / "spk2/d.txt").write_text("orphan transcript\n")  # no audio
    _wav(root / "e.wav")
    (root / "e.txt").write_text("  \n")

    result = ingest_manifest(root)

    assert result.format == "audio_dir"
    assert result.utterances.select(["utterance_id", "recording_id", "audio_path", "start", "duration", "text",
                                     "source"]).to_pylist() == [
        dict(utterance_id="spk1_a", recording_id="spk1_a", audio_path="spk1/a.wav", start=0.0,
             duration=None, text="take two tablets", source="spk1/a.wav"),
        dict(utterance_id="spk1_b", recording_id="spk1_b", audio_path="spk1/b.flac", start=0.0,
             duration=None, text="hello there", source="spk1/b.flac"),
    ]
    assert result.recordings.column("audio_path").to_pylist() == ["spk1/a.wav", "spk1/b.flac"]
    assert _quarantine(result) == [
        ("e", "empty_text", "e.wav"),
        ("spk1/b.wav", "duplicate_id", "spk1/b.wav"),
        ("spk2_c", "no_transcript", "spk2/c.wav"),
        ("spk2_d", "audio_not_found", "spk2/d.txt"),
    ]
    assert result.quarantine.column("reason").to_pylist()[2] == \
        "spk2/c.wav: no transcript (expected spk2/c.txt)"
    assert result.num_entries == 6
    _assert_accounted(result)


# ---------------------------------------------------------------------------------------------- whole-manifest errors


def test_missing_or_unknown_manifest_raises(tmp_path):
    missing = tmp_path / "nowhere" / "manifest.jsonl"
    with pytest.raises(ManifestError, match=f"manifest not found: {missing} "):
        ingest_manifest(missing)
    odd = _write_lines(tmp_path / "odd.jsonl", [json.dumps({"path": "a.wav", "sentence": "hi"})])
    with pytest.raises(ManifestError, match="unknown manifest format.*'path', 'sentence'"):
        ingest_manifest(odd)
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    SupervisionSet.from_segments([]).to_file(lonely / "x_supervisions.jsonl")
    _write_lines(lonely / "x_supervisions.jsonl", [json.dumps({"id": "s", "recording_id": "r", "start": 0,
                                                                "duration": 1, "text": "t"})])
    with pytest.raises(ManifestError, match="x_recordings.jsonl"):
        ingest_manifest(lonely / "x_supervisions.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    result = ingest_manifest(empty)
    assert result.format == "empty" and result.num_entries == 0 and result.utterances.num_rows == 0


# ---------------------------------------------------------------------------------------------- text corpus


def _text_id(domain: str, text: str) -> str:
    return f"{domain}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"


def test_text_corpus_with_domain_tags(tmp_path, caplog):
    corpus = _write_lines(tmp_path / "domain_text.tsv", [
        "medical\tTake two tablets daily.",
        "",
        "legal\tThe lessee shall pay rent.",
        "medical\tTake two tablets daily.",
        "legal\tTake two tablets daily.",  # same sentence, other domain: kept
        "\tNo domain here.",
        "medical\t  ",
        "   ",
    ])

    with caplog.at_level(logging.WARNING, logger="jstip.tasks.ingest"):
        result = ingest_text_corpus(corpus)

    assert result.text_corpus.schema.equals(TEXT_CORPUS, check_metadata=True)
    assert result.text_corpus.to_pylist() == [
        dict(text_id=_text_id("medical", "Take two tablets daily."), domain="medical",
             text="Take two tablets daily.", source=f"{corpus.name}:1"),
        dict(text_id=_text_id("legal", "The lessee shall pay rent."), domain="legal",
             text="The lessee shall pay rent.", source=f"{corpus.name}:3"),
        dict(text_id=_text_id("legal", "Take two tablets daily."), domain="legal",
             text="Take two tablets daily.", source=f"{corpus.name}:5"),
    ]
    assert _quarantine(result) == [
        ("domain_text:line4", "duplicate_sentence", f"{corpus.name}:4"),
        ("domain_text:line6", "missing_domain", f"{corpus.name}:6"),
        ("domain_text:line7", "empty_text", f"{corpus.name}:7"),
    ]
    assert result.quarantine.column("reason").to_pylist()[0] == \
        f"{corpus.name}:4: duplicate sentence (first at {corpus.name}:1)"
    assert result.num_lines == 6 == result.text_corpus.num_rows + result.quarantine.num_rows
    assert len(caplog.records) == 3


def test_text_corpus_plain_lines_take_the_domain_argument(tmp_path):
    corpus = _write_lines(tmp_path / "plain.txt", ["First sentence.", "", "Second one!", "First sentence.", "..."])

    result = ingest_text_corpus(corpus, domain="finance")

    assert result.text_corpus.column("text").to_pylist() == ["First sentence.", "Second one!"]
    assert result.text_corpus.column("domain").to_pylist() == ["finance", "finance"]
    assert result.text_corpus.column("text_id").to_pylist()[0] == _text_id("finance", "First sentence.")
    assert [c for _, c, _ in _quarantine(result)] == ["duplicate_sentence", "empty_text"]
    assert result.num_lines == 4
    # without a domain, every plain line is quarantined rather than dropped
    untagged = ingest_text_corpus(corpus)
    assert untagged.text_corpus.num_rows == 0
    assert [c for _, c, _ in _quarantine(untagged)] == ["missing_domain"] * 4
    with pytest.raises(ManifestError, match="text corpus not found"):
        ingest_text_corpus(tmp_path / "nope.txt")
