"""Integrity (docs/RELIABILITY.md, guarantees 15-22): what a published version promises, tried from outside.

Hostile SQL through every SQL entry point; a store moved, copied (cp -a) and copied file by file (as rsync
does: no hard links) used through the `jstip` CLI in subprocesses while the original is out of reach; the
catalog opened by the DuckDB CLI binary of the `duckdb-cli` package; tampered files; touched, moved and
rewritten corpora; hostile manifest lines; a file swapped for a symlink between ingest and normalisation;
two trainings of one model."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from typer.testing import CliRunner

from jstip.config import load_config
from jstip.storage import DatasetStore, ModelBusyError, StoreError, VersionIntegrityError
from jstip.storage.content import ConfinementError, FileHashes, open_confined
from jstip.tasks import stages
from jstip.tasks.ingest import ingest_manifest
from jstip.synth import synthesize_corpus

pytestmark = pytest.mark.slow

JSTIP = [sys.executable, "-m", "jstip.cli"]
DUCKDB_CLI = Path(sys.executable).parent / "duckdb"  # the `duckdb-cli` package (a test dependency)


def _config(**overrides):
    config = load_config(None, shard_size=1, **overrides)
    return config


def _fast(config):
    """The same config without the Great Expectations suites (seconds saved where they are not under test)."""
    return config.model_copy(update={"checks": config.checks.model_copy(update={"gx": "off"})})


def _tree(*roots: Path) -> dict[str, str]:
    """sha256 of every file under the roots (by absolute path): what changed, appeared or vanished."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


def _jstip(*args: str, cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*JSTIP, *args], cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "250", **(env or {})}, timeout=300)
    if check:
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """3 real synthetic utterances in a corpus directory whose NeMo manifest names its audio relatively."""
    root = tmp_path_factory.mktemp("integrity")
    synth = synthesize_corpus(root / "synth", utterances=3, seed=24)
    corpus = root / "corpus"
    (corpus / "audio").mkdir(parents=True)
    lines = []
    for line in synth.nemo_manifest.read_text().splitlines():
        entry = json.loads(line)
        wav = Path(entry["audio_filepath"])
        shutil.copy2(wav, corpus / "audio" / wav.name)
        lines.append(json.dumps({**entry, "audio_filepath": f"audio/{wav.name}"}))
    (corpus / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    shutil.copy2(synth.out_dir / "text_corpus.tsv", corpus / "text_corpus.tsv")
    return corpus


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    """A store built from the corpus with the demo config (GX suites and Data Docs included)."""
    store = tmp_path_factory.mktemp("built") / "store"
    published = stages.build_in_process(str(corpus / "manifest.jsonl"), str(corpus / "text_corpus.tsv"), str(store),
                                        _config())
    assert published.accepted == 3
    return store, published.version_id


# ------------------------------------------------------------------------------- 1. read-only user SQL

# (statement, what the refusal or failure must say): the issue's own attacks first, then every other way
# to write, attach, install, load, set or read outside the store that we know of.
ATTACKS = [
    ("EXPLAIN ANALYZE COPY (SELECT 1 AS a, 2 AS b) TO '{store}/datasets/{name}' (FORMAT parquet, PARTITION_BY (a), "
     "OVERWRITE)", "of type EXPLAIN"),
    ("EXPLAIN ANALYZE COPY (SELECT 1 AS a) TO '{spans_file}'", "of type EXPLAIN"),
    ("EXPLAIN SELECT 1", "of type EXPLAIN"),
    ("COPY (SELECT 1 AS a) TO '{spans_file}' (FORMAT parquet)", "of type COPY"),
    ("COPY (SELECT 1) TO '{outside}/leak.csv'", "of type COPY"),
    ("COPY spans TO '{store}/datasets/x.parquet'", "of type COPY"),
    ("COPY spans FROM '{outside}/x.csv'", "of type COPY"),
    ("EXPORT DATABASE '{outside}/dump'", "of type EXPORT"),
    ("ATTACH '{outside}/other.duckdb' AS other", "of type ATTACH"),
    ("ATTACH '{store}/catalog.duckdb' AS rw", "of type ATTACH"),
    ("DETACH catalog", "of type DETACH"),
    ("INSTALL httpfs", "of type LOAD"),
    ("LOAD httpfs", "of type LOAD"),
    ("SET enable_external_access = true", "of type SET"),
    ("SET temp_directory = '{outside}/tmp'", "of type SET"),
    ("RESET lock_configuration", "of type SET"),
    ("USE main", "of type SET"),
    ("PRAGMA enable_profiling", "of type PRAGMA"),
    ("CALL pragma_version()", "of type CALL"),
    ("CHECKPOINT", "of type CALL"),
    ("CREATE TABLE t AS SELECT 1", "of type CREATE"),
    ("CREATE OR REPLACE VIEW spans AS SELECT 1 AS x", "of type CREATE"),
    ("CREATE SECRET s (TYPE s3, KEY_ID 'k', SECRET 'v')", "of type CREATE"),
    ("INSERT INTO dataset_versions_table SELECT * FROM dataset_versions_table", "of type INSERT"),
    ("UPDATE dataset_files SET sha256 = 'x'", "of type UPDATE"),
    ("DELETE FROM dataset_files", "of type DELETE"),
    ("DROP VIEW spans", "of type DROP"),
    ("ALTER TABLE dataset_files RENAME TO f", "of type ALTER"),
    ("VACUUM", "of type VACUUM"),
    ("BEGIN TRANSACTION", "of type TRANSACTION"),
    ("SELECT 1; DROP VIEW spans", "got 2 statement(s)"),
    ("SELECT 1; COPY (SELECT 1) TO '{outside}/chained.csv'", "got 2 statement(s)"),
    ("", "got 0 statement(s)"),
    ("UPDATE EXTENSIONS", "query refused"),
    # SELECTs that try to reach outside: refused by DuckDB's own sandbox in the query process
    ("SELECT * FROM query('COPY (SELECT 1) TO ''{outside}/q.csv''')", "Expected a single SELECT statement"),
    ("SELECT * FROM read_text('{outside}/secret.txt')", "disabled by configuration"),
    ("SELECT * FROM read_blob('{outside}/secret.txt')", "disabled by configuration"),
    ("SELECT * FROM read_csv('{outside}/secret.txt')", "disabled by configuration"),
    ("SELECT * FROM glob('{outside}/*')", "disabled by configuration"),
    ("SELECT * FROM read_text('datasets/../../outside/secret.txt')", "disabled by configuration"),
    ("SELECT * FROM read_text('/etc/passwd')", "disabled by configuration"),
    ("SELECT * FROM read_parquet('{store}/work/**/*.parquet')", "disabled by configuration"),
    ("SELECT * FROM read_json('http://127.0.0.1:9/x.json')", "disabled by configuration"),
]


@pytest.fixture
def sandbox(built, tmp_path, monkeypatch):
    """The built store copied, an outside directory with a secret, and HOME/TMPDIR/cwd in watched places."""
    source, version_id = built
    store = tmp_path / "store"
    shutil.copytree(source, store, symlinks=True)
    outside, home, cwd = tmp_path / "outside", tmp_path / "home", tmp_path / "cwd"
    for d in (outside, home, cwd):
        d.mkdir()
    (outside / "secret.txt").write_text("secret\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(home))
    monkeypatch.chdir(cwd)
    spans_file = next((DatasetStore(store).version(version_id).path / "spans").glob("*.parquet"))
    values = {"store": store, "outside": outside, "name": "demo", "spans_file": spans_file}
    return store, version_id, tmp_path, values


def test_thirty_attacks_through_every_sql_entry_point_change_and_create_nothing(sandbox, monkeypatch):
    from jstip.cli import app

    store, version_id, watched, values = sandbox
    monkeypatch.setenv("JSTIP_QUERY_TIMEOUT_S", "20")
    data_store = DatasetStore(store)
    before = _tree(watched)
    assert len(ATTACKS) >= 30
    runner = CliRunner(env={"COLUMNS": "400"})
    entry_points = {
        "DatasetStore.user_query": lambda sql: data_store.user_query(sql),
        "jstip query": lambda sql: runner.invoke(app, ["query", sql, "--store", str(store)]),
        "jstip stats --sql": lambda sql: runner.invoke(app, ["stats", version_id, "--sql", sql, "--store", str(store)]),
    }
    for template, message in ATTACKS:
        sql = template.format(**values)
        for entry, run in entry_points.items():
            if entry == "DatasetStore.user_query":
                with pytest.raises(StoreError) as refused:
                    run(sql)
                output = str(refused.value)
            else:
                result = run(sql)
                output = " ".join(result.output.split())
                assert result.exit_code == 1, (entry, sql, output)
            assert message in output, (entry, sql, output)
    # the headline attack through the real command in its own process, too
    result = _jstip("query", ATTACKS[0][0].format(**values), "--store", str(store), cwd=values["outside"].parent,
                    check=False)
    assert result.returncode == 1 and "of type EXPLAIN" in result.stdout
    # nothing can spill to disk either: DuckDB's temp directory is off in the query process
    assert data_store.user_query("SELECT current_setting('temp_directory')") == (
        ["current_setting('temp_directory')"], [("",)])
    assert _tree(watched) == before  # every file's sha256 unchanged, and not one file more anywhere
    assert data_store.verify_version(version_id, full=True).ok


def test_a_runaway_query_is_stopped_at_the_time_limit(sandbox):
    store, _, _, _ = sandbox
    started = time.monotonic()
    result = _jstip("query", "SELECT count(*) FROM range(1000000000000) a", "--timeout", "1", "--store",
                    str(store), cwd=store, check=False)
    assert result.returncode == 1 and "query stopped after 1 s, its time limit" in result.stdout, result.stdout
    assert time.monotonic() - started < 20
    ok = _jstip("query", "SELECT count(*) AS spans FROM spans", "--store", str(store), cwd=store)
    assert "spans" in ok.stdout


# ------------------------------------------------------------------------------- 2. tamper evidence


def _flip_byte(path: Path, offset: int | None = None) -> None:
    """Change one byte in place, keeping the size (and the mtime: tampering need not leave one)."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_tampered_version_is_reported_and_never_used(sandbox):
    from jstip.storage.export import export_version
    from jstip.model.training import train

    store, version_id, tmp_path, values = sandbox
    data_store = DatasetStore(store)
    version = data_store.version(version_id)
    assert "ok" in _jstip("verify", version_id, "--store", str(store), cwd=store).stdout
    recorded = {p for (p,) in data_store.connect(read_only=True).execute(
        "SELECT path FROM dataset_files WHERE version_id = ?", [version_id]).fetchall()}
    assert recorded == {data_store.relative(p) for p in version.path.rglob("*") if p.is_file()}

    spans = values["spans_file"]
    _flip_byte(spans)
    shown = data_store.relative(spans)
    result = _jstip("verify", version_id, "--store", str(store), cwd=store, check=False)
    assert result.returncode == 1 and "TAMPERED" in result.stdout and shown in result.stdout, result.stdout
    with pytest.raises(VersionIntegrityError, match=f"training stopped before reading it: {shown}: sha256"):
        train(store, version_id)
    result = _jstip("export", version_id, "--format", "nemo", "--out", str(tmp_path / "export"), "--store",
                    str(store), cwd=store, check=False)
    assert result.returncode == 1 and shown in " ".join(result.stdout.split()), result.stdout
    assert not (tmp_path / "export").exists()
    _flip_byte(spans)  # restored: intact again
    assert data_store.verify_version(version_id).ok

    # a file added to a version's table (its views would read it), and a normalised audio file changed
    extra = spans.with_name("part-99999.parquet")
    shutil.copy(spans, extra)
    flac = data_store.resolve(pq.read_table(next((version.path / "normalized_audio").glob("*.parquet")))
                              .column("flac_path")[0].as_py())
    _flip_byte(flac, offset=flac.stat().st_size - 10)
    problems = data_store.verify_version(version_id, full=True).problems
    assert problems == [f"{data_store.relative(extra)}: not part of the version as published (added after "
                        f"publishing; DuckDB's views would read it)",
                        f"{data_store.relative(flac)}: sha256 " + problems[1].split("sha256 ")[1]]
    with pytest.raises(VersionIntegrityError, match="export stopped before reading it"):
        export_version(store, version_id, "lhotse", tmp_path / "export")


# ------------------------------------------------------------------ 4. + 5. relocatable, readable by DuckDB 1.x


def _duckdb_cli(catalog_dir: Path, sql: str, cwd: Path, search_path: Path | None = None) -> str:
    prefix = [] if search_path is None else ["-cmd", f"SET file_search_path = '{search_path}'"]
    result = subprocess.run([str(DUCKDB_CLI), "-readonly", *prefix, "-csv", str(catalog_dir / "catalog.duckdb"),
                             "-c", sql], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, (sql, result.stdout, result.stderr)
    return result.stdout


def _check_store_in_place(store: Path, version_id: str, tmp_path: Path, full: bool) -> None:
    """Every command on `store`, which must never need the original (moved out of reach by the caller)."""
    out = _jstip("query", "SELECT count(*) AS n FROM spans", "--store", str(store), cwd=tmp_path).stdout
    assert "n" in out and "error" not in out
    assert "ok" in _jstip("verify", "--full", "--store", str(store), cwd=tmp_path).stdout
    # the DuckDB CLI 1.5 (reads storage versions 64-68 only) runs every stats_* view, read-only, from the
    # store root and from elsewhere with file_search_path
    with DatasetStore(store).connect(read_only=True) as con:
        views = {v: con.execute(f"SELECT count(*) FROM {v}").fetchone()[0] for (v,) in con.execute(
            "SELECT view_name FROM duckdb_views() WHERE schema_name = 'main' AND view_name LIKE 'stats_%'").fetchall()}
    assert len(views) == 8 and sum(views.values()) > 0
    for view, rows in views.items():
        assert _duckdb_cli(store, f"SELECT count(*) AS n FROM {view}", cwd=store).split() == ["n", str(rows)]
    assert _duckdb_cli(store, "SELECT count(*) FROM utterances", cwd=tmp_path, search_path=store).split()[-1] == "3"
    if not full:
        return
    stats = _jstip("stats", "--store", str(store), cwd=tmp_path).stdout
    assert "stats_span_lengths" in stats
    index = Path(_jstip("report", "--store", str(store), cwd=tmp_path).stdout.split("wrote ")[1].strip())
    assert index == store / "reports" / version_id / "index.html"
    docs = index.read_text().split("<a href='")[1].split("'")[0]
    assert (index.parent / docs).resolve() == (store / "gx" / "data_docs" / version_id / "index.html")
    out = tmp_path / "export"
    _jstip("export", "latest", "--format", "nemo", "--out", str(out), "--store", str(store), cwd=tmp_path)
    for line in (out / "manifest.jsonl").read_text().splitlines():
        assert json.loads(line)["audio_filepath"].startswith(f"{store}/audio/")


def test_a_moved_copied_and_rsynced_store_works_everywhere_and_never_reads_the_original(built, tmp_path):
    from jstip.model.config import TrainConfig
    from jstip.model.decode import DecodeOptions
    from jstip.model.evaluation import evaluate
    from jstip.model.training import train
    from tiny_model import TINY

    source, version_id = built
    original = tmp_path / "original"
    shutil.copytree(source, original, symlinks=True)  # this test moves things: on its own copy
    away = tmp_path / ".out-of-reach"

    # nothing in the store names where it was built (the catalog, reports, Data Docs, stage results)
    mentions = [p.relative_to(original) for p in original.rglob("*")
                if p.is_file() and str(source).encode() in p.read_bytes()]
    assert mentions == []

    moved = tmp_path / "moved"
    subprocess.run(["mv", str(original), str(moved)], check=True)  # mv: the original path is gone
    _check_store_in_place(moved, version_id, tmp_path, full=False)

    copied = tmp_path / "copied"
    subprocess.run(["cp", "-a", str(moved), str(copied)], check=True)
    moved.rename(away)  # every read of the copy that went to the original would now fail
    try:
        _check_store_in_place(copied, version_id, tmp_path, full=True)
        # train and evaluate on the copy, too
        result = train(copied, version_id, TrainConfig.model_validate({**TINY.model_dump(), "steps": 2}))
        assert result.model_dir.is_relative_to(copied)
        report = evaluate(copied, result.model_id, version_id, decodings=[DecodeOptions(beam_size=1)], limit=1)
        assert report.utterances == 1 and report.hypotheses["greedy"].is_relative_to(copied)
        # rsync to another machine: every file copied on its own (no hard links), under another root
        rsynced = tmp_path / "rsynced"
        shutil.copytree(copied, rsynced, symlinks=True)
        copied.rename(tmp_path / ".copy-out-of-reach")
        try:
            _check_store_in_place(rsynced, version_id, tmp_path, full=False)
            models = _jstip("models", "show", result.model_id, "--store", str(rsynced), cwd=tmp_path).stdout
            assert str(rsynced / "models" / result.model_id / "final") in "".join(models.split())
        finally:
            (tmp_path / ".copy-out-of-reach").rename(copied)
    finally:
        away.rename(moved)


# ---------------------------------------------------------------------------------- 3. content identity


def _work_results(store: Path) -> set[str]:
    return {f"{p.parent.name}/{p.name}" for p in (store / "work").glob("*/*") if p.is_dir()}


def test_content_not_paths_sizes_or_mtimes_names_shards_caches_and_versions(corpus, tmp_path):
    config = _fast(_config())
    work = tmp_path / "corpus"
    shutil.copytree(corpus, work)
    store = tmp_path / "store"

    def build(where: Path, into: Path = store):
        return stages.build_in_process(str(where / "manifest.jsonl"), str(where / "text_corpus.tsv"), str(into),
                                       config)

    first = build(work)
    results = _work_results(store)

    # touch every file: same id, no stage result computed again
    later = time.time() + 3600
    for wav in (work / "audio").iterdir():
        os.utime(wav, (later, later))
    assert build(work).version_id == first.version_id
    assert _work_results(store) == results

    # move the corpus elsewhere: same id, every cached result reused; a fresh store publishes the same bytes
    moved = tmp_path / "elsewhere" / "corpus-moved"
    moved.parent.mkdir()
    work.rename(moved)
    assert build(moved).version_id == first.version_id
    assert _work_results(store) == results
    fresh = build(moved, tmp_path / "fresh")
    assert fresh.version_id == first.version_id

    def files(root: Path, version_id: str) -> list:
        with DatasetStore(root).connect(read_only=True) as con:
            return con.execute("SELECT path, bytes, sha256 FROM dataset_files WHERE version_id = ? ORDER BY path",
                               [version_id]).fetchall()
    assert files(tmp_path / "fresh", fresh.version_id) == files(store, first.version_id)

    # one file's content replaced by other audio of the same size, its mtime put back: a new id, and only that
    # shard (one utterance per shard here) normalised again
    wav = sorted((moved / "audio").iterdir())[0]
    stat = wav.stat()
    samples, rate = sf.read(wav, dtype="int16")
    sf.write(wav, np.ascontiguousarray(samples[::-1]), rate, subtype="PCM_16")
    os.utime(wav, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (wav.stat().st_size, wav.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    changed = build(moved)
    assert changed.version_id != first.version_id
    new = _work_results(store) - results
    assert sorted(r.split("/")[0] for r in new if r.split("/")[0] in ("normalize", "align", "check", "plan")) == \
        ["align", "check", "normalize", "plan"], new


def test_file_hashes_reuse_only_what_stat_proves_unchanged(tmp_path):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF" + bytes(1000))
    past = time.time() - 100
    os.utime(audio, (past, past))
    cache = tmp_path / "hashes.parquet"
    racy = FileHashes(cache)
    racy.hash_many([str(audio)], None)
    racy.save()
    assert not cache.exists()  # its ctime is now (the utime above): a hash of this moment is not cached
    first = FileHashes(cache, racy_s=0.0)
    digest = first.hash_many([str(audio)], None)[str(audio)]
    assert digest == hashlib.sha256(audio.read_bytes()).hexdigest() and first.hashed_files == 1
    first.save()
    again = FileHashes(cache)
    assert again.hash_many([str(audio)], None)[str(audio)] == digest and (again.reused, again.hashed_files) == (1, 0)
    # same size, same mtime, new bytes: the ctime moved, so the file is read again
    time.sleep(0.05)  # past the kernel's timestamp granularity (a few ms)
    stat = audio.stat()
    audio.write_bytes(b"RIFF" + bytes(999) + b"\x01")
    os.utime(audio, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    third = FileHashes(cache)
    assert third.hash_many([str(audio)], None)[str(audio)] == hashlib.sha256(audio.read_bytes()).hexdigest() != digest
    assert (third.reused, third.hashed_files) == (0, 1)


# --------------------------------------------------------------------------------- 7. ingest is total


def test_no_manifest_line_can_stop_ingest(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "audio").mkdir(parents=True)
    sf.write(corpus / "audio" / "good.wav", 0.3 * np.sin(np.arange(8000) / 8), 16000)
    os.mkfifo(corpus / "audio" / "fifo.wav")
    (corpus / "audio" / "dir.wav").mkdir()
    lines = {
        "good": {"audio_filepath": "audio/good.wav", "text": "hello there", "id": "good"},
        "nul-path": {"audio_filepath": "audio/go\u0000od.wav", "text": "hello", "id": "nul-path"},
        "long-path": {"audio_filepath": "a" * 10_000 + ".wav", "text": "hello", "id": "long-path"},
        "fifo": {"audio_filepath": "audio/fifo.wav", "text": "hello", "id": "fifo"},
        "directory": {"audio_filepath": "audio/dir.wav", "text": "hello", "id": "directory"},
    }
    raw = [json.dumps(entry) for entry in lines.values()]
    raw += [
        '{"audio_filepath": "audio/good.wav", "text": "bad \\ud800 surrogate", "id": "surrogate-text"}',
        '{"audio_filepath": "audio/\\udcff.wav", "text": "hello", "id": "surrogate-path"}',
        '{"audio_filepath": "audio/good.wav", "text": "hello", "id": "\\udfff-id"}',
        "[" * 100_000 + "]" * 100_000,  # deeper than any JSON parser recurses
        '{"audio_filepath": "audio/good.wav", "text": "hello", "id": "nan", "duration": NaN}',
    ]
    (corpus / "manifest.jsonl").write_text("\n".join(raw) + "\n")
    result = ingest_manifest(corpus / "manifest.jsonl", allowed_roots=[])
    checks = {r["source"]: r["check_name"] for r in result.quarantine.to_pylist()}
    assert result.utterances.column("utterance_id").to_pylist() == ["good"]
    assert checks == {"manifest.jsonl:2": "invalid_path", "manifest.jsonl:3": "invalid_path",
                      "manifest.jsonl:4": "audio_unreadable", "manifest.jsonl:5": "audio_unreadable",
                      "manifest.jsonl:6": "malformed_text", "manifest.jsonl:7": "malformed_text",
                      "manifest.jsonl:8": "malformed_text", "manifest.jsonl:9": "invalid_entry",
                      "manifest.jsonl:10": "invalid_duration"}
    assert result.num_entries == 10 == result.utterances.num_rows + result.quarantine.num_rows
    # what the hostile lines held is stored escaped and bounded, never refused by Arrow
    reasons = dict(zip(result.quarantine.column("source").to_pylist(), result.quarantine.column("reason").to_pylist()))
    values = dict(zip(result.quarantine.column("source").to_pylist(), result.quarantine.column("value").to_pylist()))
    assert values["manifest.jsonl:6"] == "bad \\ud800 surrogate" and "not valid Unicode" in reasons["manifest.jsonl:6"]
    assert "not a regular file" in reasons["manifest.jsonl:4"]
    assert "10004 bytes" in reasons["manifest.jsonl:3"]
    assert "cannot read this entry: RecursionError" in reasons["manifest.jsonl:9"]  # the guard of every line

    # a file name that is not UTF-8 in an audio directory
    audio_dir = tmp_path / "dir"
    audio_dir.mkdir()
    sf.write(audio_dir / "ok.wav", 0.3 * np.sin(np.arange(8000) / 8), 16000)
    (audio_dir / "ok.txt").write_text("hello there")
    for suffix in (b".wav", b".txt"):  # bytes paths: the name is not UTF-8
        shutil.copyfile(audio_dir / f"ok{suffix.decode()}", os.fsencode(audio_dir) + b"/bad\xff" + suffix)
    result = ingest_manifest(audio_dir, allowed_roots=[])
    assert result.utterances.column("utterance_id").to_pylist() == ["ok"]
    assert result.quarantine.column("check_name").to_pylist() == ["malformed_text"]
    assert result.quarantine.column("source").to_pylist() == ["bad\\udcff.wav"]


# ---------------------------------------------------------------------------- 8. race-free confinement


def test_a_file_swapped_for_a_symlink_after_ingest_is_never_read(corpus, tmp_path):
    work, outside = tmp_path / "corpus", tmp_path / "outside"
    shutil.copytree(corpus, work)
    outside.mkdir()
    config = _fast(_config())
    store = str(tmp_path / "store")
    ingested = stages.ingest(str(work / "manifest.jsonl"), None, store, config)
    wavs = sorted((work / "audio").iterdir())
    # one swapped for a symlink to other audio outside, one for a symlink to an outside copy of its own bytes
    other = outside / "other.wav"
    samples, rate = sf.read(wavs[2], dtype="int16")
    sf.write(other, np.ascontiguousarray(samples[::-1]), rate, subtype="PCM_16")
    twin = outside / "twin.wav"
    shutil.copy(wavs[1], twin)
    for wav, target in ((wavs[0], other), (wavs[1], twin)):
        wav.unlink()
        wav.symlink_to(target)
    outputs = [stages.normalize(shard, store, config) for shard in ingested.shards]
    quarantine = [row for o in outputs for row in o.read("quarantine").to_pylist()]
    assert sorted((row["check_name"], row["source"].split(":")[0]) for row in quarantine) == [
        ("path_outside_allowed_roots", "manifest.jsonl"), ("path_outside_allowed_roots", "manifest.jsonl")]
    assert all("outside the allowed roots" in row["reason"] for row in quarantine)
    assert sum(o.row_counts["normalized_audio"] for o in outputs) == 1
    pool = sorted(p.stem for p in (Path(store) / "audio").glob("*/*.flac"))
    accepted = [row["audio_hash"] for o in outputs for row in o.read("normalized_audio").to_pylist()]
    assert pool == accepted  # nothing from outside reached the audio pool


def test_the_file_checked_is_the_file_read_while_a_symlink_flips(tmp_path):
    inside, outside = tmp_path / "corpus", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    (inside / "real.wav").write_bytes(b"inside")
    (outside / "secret.wav").write_bytes(b"OUTSIDE")
    path = inside / "a.wav"
    path.write_bytes(b"inside")
    stop = threading.Event()

    def flip():
        while not stop.is_set():  # a regular file inside, then a symlink to outside, over and over
            tmp = inside / ".swap"
            tmp.symlink_to(outside / "secret.wav")
            os.replace(tmp, path)
            shutil.copy(inside / "real.wav", tmp)
            os.replace(tmp, path)

    flipper = threading.Thread(target=flip)
    flipper.start()
    read, refused = [], 0
    try:
        for _ in range(3000):
            try:
                fd = open_confined(str(path), [str(inside)])
            except ConfinementError:
                refused += 1
                continue
            except FileNotFoundError:
                continue
            try:
                read.append(os.read(fd, 100))
            finally:
                os.close(fd)
    finally:
        stop.set()
        flipper.join()
    assert read and refused, (len(read), refused)  # both sides of the race happened
    assert set(read) == {b"inside"}


# ------------------------------------------------------------------------------ 6. writers serialised

HOLD_MODEL_LOCK = """
import sys, time
from jstip.storage import DatasetStore
with DatasetStore(sys.argv[1]).model_lock(sys.argv[2], purpose="train model " + sys.argv[2]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_training_of_the_same_model_names_the_first_and_a_torn_log_breaks_nothing(built, tmp_path):
    import csv

    from jstip.model.config import TrainConfig
    from jstip.model.checkpoints import TRAIN_LOG
    from jstip.model.training import model_id_for, train
    from tiny_model import TINY

    source, version_id = built
    store = tmp_path / "store"
    shutil.copytree(source, store, symlinks=True)
    config = TrainConfig.model_validate({**TINY.model_dump(), "steps": 4, "checkpoint_every": 2})
    model_id = model_id_for(version_id, config, None)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_MODEL_LOCK, str(store), model_id], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ModelBusyError, match=f"model {model_id} is busy: .* held by pid {holder.pid} on host "):
            train(store, version_id, config)
    finally:
        holder.kill()
        holder.wait()
    assert not (store / "models" / model_id / "final").exists()

    # a run stopped after step 2, then its log torn as a kill mid-write (or an old concurrent run) leaves it
    train(store, version_id, config, stop_after=2)
    log = store / "models" / model_id / TRAIN_LOG
    with log.open("a") as f:
        f.write("step,loss,llm_loss\n3,0.5")  # a second header and half a row
    result = train(store, version_id, config)
    assert result.steps == 4 and result.resumed_from_step == 2
    with log.open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]
