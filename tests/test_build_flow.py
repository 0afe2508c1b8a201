"""The build-interleaved flow end to end, on real Prefect, real synthetic speech and bad input mixed in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
from typer.testing import CliRunner

from jstip.storage import DatasetStore
from jstip.tasks.synth import synthesize_corpus
from jstip.tasks.text import split_words

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """5 synthetic utterances plus 4 bad entries: malformed JSON, missing audio, empty text, unreadable audio."""
    root = tmp_path_factory.mktemp("corpus")
    synth = synthesize_corpus(root / "synth", utterances=5, seed=3)
    good = [json.loads(line) for line in synth.nemo_manifest.read_text().splitlines()]
    (root / "junk.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    lines = [json.dumps(g) for g in good[:3]]
    lines.append('{"audio_filepath": "broken.wav", "text": ')  # line 4
    lines.append(json.dumps({"audio_filepath": str(root / "nope.wav"), "text": "hello", "id": "missing"}))
    lines.append(json.dumps({"audio_filepath": good[0]["audio_filepath"], "text": "  ", "id": "empty"}))
    lines.append(json.dumps({"audio_filepath": str(root / "junk.wav"), "text": "hello world", "id": "junk"}))
    lines += [json.dumps(g) for g in good[3:]]
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return {"manifest": manifest, "good": good, "text_corpus": synth.out_dir / "text_corpus.tsv"}


def _work_keys(store: Path, stage: str) -> set[str]:
    return {p.name for p in (store / "work" / stage).iterdir() if not p.name.startswith(".")}


def test_build_publishes_with_exact_accounting_then_rebuilds_with_lineage(prefect_server, corpus, tmp_path):
    from jstip.flows.build_interleaved import build_interleaved

    store = tmp_path / "data"
    published = build_interleaved(manifest=str(corpus["manifest"]), store=str(store),
                                  text_corpus=str(corpus["text_corpus"]), shard_size=2)

    assert (published.ingested, published.accepted, published.quarantined) == (9, 5, 4)
    good_ids = sorted(g["id"] for g in corpus["good"])
    with DatasetStore(store).connect(read_only=True) as con:
        assert [r[0] for r in con.execute("SELECT utterance_id FROM utterances ORDER BY 1").fetchall()] == good_ids
        quarantine = con.execute("SELECT stage, check_name, source FROM quarantine ORDER BY stage, check_name").fetchall()
        manifest = Path(corpus["manifest"])
        assert quarantine == [
            ("ingest", "audio_not_found", f"{manifest.name}:5"),
            ("ingest", "empty_text", f"{manifest.name}:6"),
            ("ingest", "malformed_json", f"{manifest.name}:4"),
            ("normalize", "audio_unreadable", f"{manifest.name}:7"),
        ]
        # every transcript word has exactly one alignment, in order and inside the audio
        words = dict(con.execute("SELECT utterance_id, count(*) FROM word_alignments GROUP BY 1").fetchall())
        assert words == {g["id"]: len(split_words(g["text"])) for g in corpus["good"]}
        assert con.execute("""
            SELECT count(*) FROM word_alignments w JOIN normalized_audio a USING (utterance_id)
            WHERE w.start < 0 OR w."end" <= w.start OR w."end" > a.duration + 1e-6""").fetchone() == (0,)
        # F1 plans: every word in exactly one speech or text span; transcripts repeat speech spans
        assert con.execute("""
            SELECT count(*) FROM (
              SELECT utterance_id, sum(num_words) AS n FROM spans WHERE role <> 'transcript' GROUP BY 1
            ) s JOIN (SELECT utterance_id, count(*) AS n FROM word_alignments GROUP BY 1) w USING (utterance_id)
            WHERE s.n = w.n""").fetchone() == (5,)
        assert con.execute("SELECT count(*) FROM spans WHERE role = 'speech'").fetchone() == \
            con.execute("SELECT count(*) FROM spans WHERE role = 'transcript'").fetchone()
        assert con.execute("SELECT count(*) FROM text_corpus").fetchone()[0] > 0
        [(version_id, parent, counts)] = con.execute(
            "SELECT version_id, parent_version, row_counts_json FROM dataset_versions").fetchall()
    assert version_id == published.version_id and parent is None
    assert json.loads(counts)["utterances"] == 5
    assert published.row_counts["word_alignments"] == sum(len(split_words(g["text"])) for g in corpus["good"])

    # the same inputs and config: the same version, no new stage work
    normalize_keys, align_keys = _work_keys(store, "normalize"), _work_keys(store, "align")
    # (work/file_hashes is the cache of audio file hashes, not stage work: it may be refreshed)
    results = {p: p.stat().st_mtime_ns for p in (store / "work").glob("*/*")
               if not p.name.startswith(".") and p.parent.name != "file_hashes"}
    again = build_interleaved(manifest=str(corpus["manifest"]), store=str(store),
                              text_corpus=str(corpus["text_corpus"]), shard_size=2)
    assert again.version_id == published.version_id
    # no stage work: not one stage result was added or rewritten
    assert {p: p.stat().st_mtime_ns for p in (store / "work").glob("*/*")
            if not p.name.startswith(".") and p.parent.name != "file_hashes"} == results

    # a changed plan config: a new version whose parent is the first; audio and alignments are reused
    config = tmp_path / "f2.yaml"
    config.write_text("plan:\n  format: F2\n")
    changed = build_interleaved(manifest=str(corpus["manifest"]), store=str(store), config_path=str(config),
                                text_corpus=str(corpus["text_corpus"]), shard_size=2)
    assert changed.version_id != published.version_id
    assert changed.parent_version == published.version_id
    assert _work_keys(store, "normalize") == normalize_keys and _work_keys(store, "align") == align_keys
    with DatasetStore(store).connect(read_only=True) as con:
        assert con.execute("SELECT count(*) FROM spans WHERE role = 'transcript'").fetchone() == (0,)
        assert con.execute(f"SELECT count(*) FROM v_{published.version_id}.spans WHERE role = 'transcript'"
                           ).fetchone()[0] > 0
        assert con.execute("SELECT count(*) FROM dataset_versions").fetchone() == (2,)

    # the CLI reads the same catalog
    from jstip.cli import app

    runner = CliRunner(env={"COLUMNS": "160"})
    listing = runner.invoke(app, ["catalog", "list", "--store", str(store)])
    assert listing.exit_code == 0 and published.version_id in listing.output and changed.version_id in listing.output
    shown = runner.invoke(app, ["catalog", "show", changed.version_id[:6], "--store", str(store)])
    assert shown.exit_code == 0 and f"parent:  {published.version_id}" in shown.output
    assert sf.info(next((store / "audio").rglob("*.flac"))).samplerate == 16000


def test_a_missing_manifest_fails_with_its_path(prefect_server, tmp_path):
    from jstip.flows.build_interleaved import build_interleaved
    from jstip.tasks.ingest import ManifestError

    with pytest.raises(ManifestError, match="nope.jsonl"):
        build_interleaved(manifest=str(tmp_path / "nope.jsonl"), store=str(tmp_path / "data"))
    assert not (tmp_path / "data" / "catalog.duckdb").exists()


def _digests(directory: Path) -> dict[str, str]:
    import hashlib

    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_dask_local_cluster_publishes_the_same_version_as_the_local_runner(prefect_server, corpus, tmp_path):
    """Same inputs + config + seed: the same version id and the same Parquet bytes, whoever ran the tasks
    (built at the same store path: tables name their audio files by absolute path)."""
    import os

    from jstip.flows.build_interleaved import build_interleaved

    kwargs = dict(manifest=str(corpus["manifest"]), text_corpus=str(corpus["text_corpus"]), shard_size=2)
    store = tmp_path / "store"
    local = build_interleaved(store=str(store), **kwargs)
    local_files = _digests(Path(local.path))
    os.rename(store, tmp_path / "local")
    dask = build_interleaved(store=str(store), runner="dask", **kwargs)

    assert dask.version_id == local.version_id
    assert (dask.accepted, dask.quarantined) == (local.accepted, local.quarantined)
    assert len(local_files) >= 8 and _digests(Path(dask.path)) == local_files


def test_a_build_killed_mid_alignment_resumes_and_publishes_the_same_version(prefect_server, corpus, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from jstip.flows.build_interleaved import build_interleaved
    from jstip.storage import DatasetStore

    kwargs = dict(manifest=str(corpus["manifest"]), text_corpus=str(corpus["text_corpus"]), shard_size=1)
    store = tmp_path / "killed"
    script = ("import sys; from jstip.flows.build_interleaved import build_interleaved; "
              f"build_interleaved(store=sys.argv[1], **{kwargs!r})")
    child = subprocess.Popen([sys.executable, "-c", script, str(store)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    align_dir = store / "work" / "align"
    deadline = time.monotonic() + 180
    while not (align_dir.is_dir() and any(p for p in align_dir.iterdir() if not p.name.startswith("."))):
        assert child.poll() is None, "the build ended before it could be killed"
        assert time.monotonic() < deadline, "no shard was aligned within 180 s"
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()

    finished = {p.name: p.stat().st_mtime_ns for p in align_dir.iterdir() if not p.name.startswith(".")}
    assert DatasetStore(store).versions() == []  # nothing visible after the kill
    assert not (store / "catalog.duckdb").exists() or DatasetStore(store).latest() is None

    resumed = build_interleaved(store=str(store), **kwargs)
    uninterrupted = build_interleaved(store=str(tmp_path / "clean"), **kwargs)
    assert resumed.version_id == uninterrupted.version_id
    # the shards aligned before the kill were reused, not redone
    assert {n: (align_dir / n).stat().st_mtime_ns for n in finished} == finished
    assert not any((store / ".staging").iterdir())
    for table, key in (("spans", ["plan_id", "utterance_id", "span_index"]), ("word_alignments", ["utterance_id", "word_index"]),
                       ("quarantine", ["source", "check_name"])):
        order = [(k, "ascending") for k in key]
        ours = DatasetStore(store).read_table(resumed.version_id, table).sort_by(order)
        theirs = DatasetStore(tmp_path / "clean").read_table(uninterrupted.version_id, table).sort_by(order)
        assert ours.equals(theirs), table
