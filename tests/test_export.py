"""`jstip export`: Lhotse, Lhotse Shar and NeMo exports of a published version read back exactly as the tables."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import soundfile as sf
from typer.testing import CliRunner

from jstip.cli import app
from jstip.config import load_config
from jstip.storage import DatasetStore, StoreError
from jstip.tasks import export as export_module
from jstip.tasks.export import ExportError, export_version
from jstip.tasks.ingest import ingest_manifest
from jstip.tasks.stages import build_in_process
from jstip.tasks.synth import synthesize_corpus

runner = CliRunner(env={"COLUMNS": "160"})
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A 4-utterance demo store with two versions: the default word plan, then a mixed plan whose text-only
    sequences come from the domain text (same audio and alignments, so the second build only re-plans)."""
    tmp = tmp_path_factory.mktemp("export")
    s = synthesize_corpus(tmp / "synth", utterances=4, seed=7)
    store = tmp / "store"
    word = build_in_process(str(s.nemo_manifest), str(s.out_dir / "text_corpus.tsv"), str(store), load_config(None))
    mixed_config = tmp / "mixed.yaml"
    mixed_config.write_text("plan:\n  strategy: mixed\n  text_share: 0.5\n")
    mixed = build_in_process(str(s.nemo_manifest), str(s.out_dir / "text_corpus.tsv"), str(store),
                             load_config(mixed_config))
    assert word.version_id != mixed.version_id
    return store, word.version_id, mixed.version_id


def _expected(store: Path, version_id: str) -> dict:
    """Per utterance (and text_id), what every export must carry, straight from the version's tables."""
    data = DatasetStore(store)
    read = lambda table: data.read_table(version_id, table).to_pylist()  # noqa: E731
    # flac_path is relative to the store root (relocatable stores)
    audio = {r["utterance_id"]: dict(r, flac_path=str(data.resolve(r["flac_path"]))) for r in read("normalized_audio")}
    words: dict[str, list] = {}
    for r in sorted(read("word_alignments"), key=lambda r: (r["utterance_id"], r["word_index"])):
        words.setdefault(r["utterance_id"], []).append((r["word"], r["start"], r["end"], r["score"]))
    plans: dict[str, list] = {}
    for r in sorted(read("interleave_plans"), key=lambda r: (r["utterance_id"], r["plan_id"])):
        plans.setdefault(r.pop("utterance_id"), []).append(r)
    spans: dict[str, list] = {}
    for r in sorted(read("spans"), key=lambda r: (r["utterance_id"], r["plan_id"], r["span_index"])):
        spans.setdefault(r.pop("utterance_id"), []).append(r)
    utterances = {r["utterance_id"]: dict(r, audio=audio[r["utterance_id"]], words=words[r["utterance_id"]],
                                          plans=plans.get(r["utterance_id"], []),
                                          spans=spans.get(r["utterance_id"], []))
                  for r in read("utterances")}
    texts = {r["text_id"]: dict(r, plans=plans.get(r["text_id"], []), spans=spans.get(r["text_id"], []))
             for r in read("text_corpus")}
    return {"utterances": utterances, "texts": texts}


def _check_words(got: list[tuple[str, float, float]], want: list[tuple]) -> None:
    assert [w for w, _, _ in got] == [w for w, *_ in want]
    for (_, start, end), (_, want_start, want_end, _) in zip(got, want):
        assert abs(start - want_start) <= TOLERANCE and abs(end - want_end) <= TOLERANCE


def _check_cuts(cuts, expected: dict) -> None:
    cuts = list(cuts)
    assert sorted(c.id for c in cuts) == sorted(expected["utterances"])
    for cut in cuts:
        want = expected["utterances"][cut.id]
        (supervision,) = cut.supervisions
        assert supervision.text == want["text"]
        assert (supervision.start, supervision.duration) == (0.0, want["audio"]["duration"])
        alignment = supervision.alignment["word"]
        _check_words([(a.symbol, a.start, a.start + a.duration) for a in alignment], want["words"])
        assert [a.score for a in alignment] == pytest.approx([w[3] for w in want["words"]], abs=TOLERANCE)
        assert supervision.custom["spans"] == want["spans"]
        assert supervision.custom["plans"] == want["plans"]
        assert supervision.custom["domain"] == want["domain"]
        assert supervision.custom["entities"] == want["entities"]
        samples = cut.load_audio()
        assert samples.shape == (1, want["audio"]["num_samples"])
        # the audio is the normalised FLAC of the pool, sample for sample (Shar re-encodes it losslessly)
        pool, _ = sf.read(want["audio"]["flac_path"], dtype="float32")
        assert np.array_equal(samples[0], pool)


def _check_text_corpus(out: Path, expected: dict) -> None:
    rows = [json.loads(line) for line in (out / "text_corpus.jsonl").read_text().splitlines()]
    assert {r["text_id"]: r for r in rows} == expected["texts"]


def test_lhotse_export_round_trips(built, tmp_path):
    from lhotse import CutSet

    store, _, version_id = built
    summary = export_version(store, version_id, "lhotse", tmp_path / "out")
    expected = _expected(store, version_id)
    _check_cuts(CutSet.from_file(tmp_path / "out" / "cuts.jsonl.gz"), expected)
    _check_text_corpus(tmp_path / "out", expected)
    assert any(t["plans"] for t in expected["texts"].values()), "the mixed plan has text-only sequences"
    counts = DatasetStore(store).version(version_id).row_counts
    assert (summary.utterances, summary.words, summary.plans, summary.spans, summary.text_sentences) == (
        counts["utterances"], counts["word_alignments"], counts["interleave_plans"], counts["spans"],
        counts["text_corpus"])
    metadata = json.loads((tmp_path / "out" / "jstip_export.json").read_text())
    assert metadata["version_id"] == version_id and metadata["spans"] == counts["spans"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cuts.jsonl.gz", "jstip_export.json",
                                                                   "text_corpus.jsonl"]


def test_lhotse_shar_export_round_trips(built, tmp_path):
    from lhotse import CutSet

    store, version_id, _ = built
    summary = export_version(store, version_id, "lhotse-shar", tmp_path / "out", shard_size=3)
    assert summary.files == ("shar/cuts.000000.jsonl.gz", "shar/cuts.000001.jsonl.gz", "shar/recording.000000.tar",
                             "shar/recording.000001.tar", "text_corpus.jsonl", "jstip_export.json")
    expected = _expected(store, version_id)
    _check_cuts(CutSet.from_shar(in_dir=tmp_path / "out" / "shar"), expected)
    _check_text_corpus(tmp_path / "out", expected)


def test_nemo_export_round_trips(built, tmp_path):
    store, version_id, _ = built
    export_version(store, version_id, "nemo", tmp_path / "out")
    expected = _expected(store, version_id)
    lines = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == sorted(expected["utterances"])
    for line in lines:
        want = expected["utterances"][line["id"]]
        assert (line["text"], line["offset"], line["duration"]) == (want["text"], 0.0, want["audio"]["duration"])
        _check_words([(w["word"], w["start"], w["end"]) for w in line["words"]], want["words"])
        assert line["spans"] == want["spans"] and line["plans"] == want["plans"]
        assert (line["domain"], line["entities"]) == (want["domain"], want["entities"])
        info = sf.info(line["audio_filepath"])
        assert (info.frames, info.samplerate) == (want["audio"]["num_samples"], 16000)
    _check_text_corpus(tmp_path / "out", expected)


@pytest.mark.parametrize("format_, manifest", [("lhotse", "cuts.jsonl.gz"), ("nemo", "manifest.jsonl")])
def test_exports_can_be_ingested_again(built, tmp_path, format_, manifest):
    store, version_id, _ = built
    export_version(store, version_id, format_, tmp_path / "out")
    ingested = ingest_manifest(tmp_path / "out" / manifest)
    assert ingested.quarantine.num_rows == 0
    utterances = DatasetStore(store).read_table(version_id, "utterances").sort_by("utterance_id")
    again = ingested.utterances.sort_by("utterance_id")
    for column in ("utterance_id", "text", "domain", "entities"):
        assert again.column(column).to_pylist() == utterances.column(column).to_pylist()


def test_every_plan_of_a_version_is_exported_and_told_apart_by_plan_id(built, tmp_path):
    """A version with two plans (published by hand: the build makes one) exports both, grouped by plan_id."""
    store, version_id, _ = built
    source = DatasetStore(store)
    tables = {t: source.read_table(version_id, t) for t in ("recordings", "utterances", "normalized_audio",
                                                            "word_alignments", "text_corpus")}
    for table in ("interleave_plans", "spans"):
        original = source.read_table(version_id, table)
        copy = original.set_column(original.schema.get_field_index("plan_id"), "plan_id",
                                   pc.binary_join_element_wise(original.column("plan_id"), "-copy", ""))
        tables[table] = [original, copy]
    two = DatasetStore(tmp_path / "store").publish("two-plans", tables, input_hash="test", config_json="{}",
                                                   code_version="test")
    # the audio the version names (an export verifies every file a version uses before reading it)
    shutil.copytree(Path(store) / "audio", tmp_path / "store" / "audio")
    export_version(tmp_path / "store", two.version_id, "nemo", tmp_path / "out")
    expected = _expected(store, version_id)["utterances"]
    for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines():
        line = json.loads(line)
        (plan_id,) = {s["plan_id"] for s in expected[line["id"]]["spans"]}
        assert [p["plan_id"] for p in line["plans"]] == [plan_id, f"{plan_id}-copy"]
        assert [s for s in line["spans"] if s["plan_id"] == plan_id] == expected[line["id"]]["spans"]
        copies = [dict(s, plan_id=plan_id) for s in line["spans"] if s["plan_id"] == f"{plan_id}-copy"]
        assert copies == expected[line["id"]]["spans"]


def test_out_is_refused_when_not_empty_and_replaced_whole_with_overwrite(built, tmp_path, monkeypatch):
    store, version_id, _ = built
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty; pass --overwrite"):
        export_version(store, version_id, "nemo", out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]

    def fail(*_):
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "_write_text", fail)
    with pytest.raises(OSError, match="disk full"):
        export_version(store, version_id, "nemo", out, overwrite=True)
    # a failed export changes nothing and leaves no staging directory behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    monkeypatch.undo()

    export_version(store, version_id, "nemo", out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["jstip_export.json", "manifest.jsonl", "text_corpus.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_unknown_version_and_format_are_clear_errors(built, tmp_path):
    store, version_id, _ = built
    with pytest.raises(StoreError, match="no dataset version or dataset named 'ffff'"):
        export_version(store, "ffff", "nemo", tmp_path / "out")
    with pytest.raises(ExportError, match="--format must be one of lhotse, lhotse-shar, nemo"):
        export_version(store, version_id, "kaldi", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_export(built, tmp_path):
    store, version_id, _ = built
    out = tmp_path / "out"
    result = runner.invoke(app, ["export", version_id[:8], "--format", "nemo", "--out", str(out),
                                 "--store", str(store)])
    assert result.exit_code == 0, result.output
    counts = DatasetStore(store).version(version_id).row_counts
    assert f"exported {counts['utterances']} utterances" in result.output
    assert f"{counts['spans']} spans" in result.output and str(out) in result.output
    assert (out / "manifest.jsonl").read_text().count("\n") == counts["utterances"]

    again = runner.invoke(app, ["export", version_id, "--format", "nemo", "--out", str(out), "--store", str(store)])
    assert again.exit_code == 1 and "not empty; pass --overwrite" in again.output
    replaced = runner.invoke(app, ["export", "latest", "--format", "lhotse", "--out", str(out),
                                   "--store", str(store), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert (out / "cuts.jsonl.gz").exists() and not (out / "manifest.jsonl").exists()

    unknown = runner.invoke(app, ["export", "ffff", "--format", "nemo", "--out", str(tmp_path / "x"),
                                  "--store", str(store)])
    assert unknown.exit_code == 1
    assert "no dataset version or dataset named 'ffff'" in unknown.output and "Traceback" not in unknown.output
    bad_format = runner.invoke(app, ["export", version_id, "--format", "kaldi", "--out", str(tmp_path / "x"),
                                     "--store", str(store)])
    assert bad_format.exit_code == 1 and "--format must be one of" in bad_format.output
    assert not (tmp_path / "x").exists()
    assert runner.invoke(app, ["export", "--help"]).exit_code == 0
