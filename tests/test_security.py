"""Security (docs/RELIABILITY.md): manifests cannot reach outside their corpus, user SQL cannot write or read
outside the store, no shell ever sees a user string, and what we start listens on loopback only."""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from jstip.schemas import from_rows
from jstip.storage import DatasetStore, StoreError
from jstip.tasks.ingest import ingest_manifest

REPO = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("jstip", "tasks", "flows", "storage", "schemas", "model", "benchmarks")


def _wav(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.3 * np.sin(np.arange(8000) / 8), 16000)
    return path


def _checks(result) -> dict[str, str]:
    """utterance_id -> check_name of each quarantine row ("accepted" for accepted utterances)."""
    out = {row["utterance_id"]: row["check_name"] for row in result.quarantine.to_pylist()}
    out.update({uid: "accepted" for uid in result.utterances.column("utterance_id").to_pylist()})
    return out


@pytest.fixture
def escapes(tmp_path):
    """A NeMo manifest in corpus/ whose entries point inside, outside, and outside by `..` and symlinks."""
    corpus, outside = tmp_path / "corpus", tmp_path / "outside"
    _wav(corpus / "audio" / "a.wav")
    _wav(outside / "b.wav")
    (corpus / "audio" / "link.wav").symlink_to(outside / "b.wav")
    (corpus / "linked_dir").symlink_to(outside, target_is_directory=True)
    (corpus / "audio" / "inner_link.wav").symlink_to(corpus / "audio" / "a.wav")
    entries = {
        "inside": "audio/a.wav",
        "inside-dotdot": "audio/../audio/a.wav",  # `..` that stays inside is fine
        "inside-symlink": "audio/inner_link.wav",  # a symlink to a file inside is fine
        "relative-escape": "../outside/b.wav",
        "absolute-escape": str(outside / "b.wav"),
        "symlink-escape": "audio/link.wav",
        "symlinked-dir-escape": "linked_dir/b.wav",
        "system-file": "/etc/passwd",
        "nowhere": "/nonexistent/x.wav",  # outside and missing: never probed, so not audio_not_found
    }
    manifest = corpus / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"audio_filepath": audio, "text": "hello there", "id": uid}) + "\n"
                                for uid, audio in entries.items()))
    return manifest


OUTSIDE = "path_outside_allowed_roots"


def test_manifest_paths_are_confined_to_the_manifest_directory_and_allowed_roots(escapes):
    confined = ingest_manifest(escapes, allowed_roots=[])
    assert _checks(confined) == {
        "inside": "accepted", "inside-dotdot": "accepted", "inside-symlink": "accepted",
        "relative-escape": OUTSIDE, "absolute-escape": OUTSIDE, "symlink-escape": OUTSIDE,
        "symlinked-dir-escape": OUTSIDE, "system-file": OUTSIDE, "nowhere": OUTSIDE,
    }
    reasons = {r["utterance_id"]: r["reason"] for r in confined.quarantine.to_pylist()}
    assert f"resolves to {escapes.parent.parent / 'outside' / 'b.wav'}" in reasons["symlink-escape"]
    assert "outside the allowed roots (the manifest's directory)" in reasons["system-file"]

    # a root relative to the manifest's directory lets that corpus in, and nothing else
    widened = ingest_manifest(escapes, allowed_roots=["../outside"])
    assert {uid for uid, check in _checks(widened).items() if check != "accepted"} == {"system-file", "nowhere"}

    # None (trusted manifests, library use) and "/" confine nothing
    for unconfined in (ingest_manifest(escapes), ingest_manifest(escapes, allowed_roots=["/"])):
        assert {uid: c for uid, c in _checks(unconfined).items() if c != "accepted"} == {"nowhere": "audio_not_found"}


def test_a_symlink_in_an_audio_directory_is_confined_too(tmp_path):
    corpus = tmp_path / "corpus"
    _wav(corpus / "a.wav")
    (corpus / "a.txt").write_text("hello there")
    (corpus / "b.wav").symlink_to(_wav(tmp_path / "outside" / "b.wav"))
    (corpus / "b.txt").write_text("hello there")
    assert _checks(ingest_manifest(corpus, allowed_roots=[])) == {"a": "accepted", "b": OUTSIDE}
    assert _checks(ingest_manifest(corpus)) == {"a": "accepted", "b": "accepted"}


def test_lhotse_recording_sources_are_confined(tmp_path):
    from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

    recording = Recording.from_file(_wav(tmp_path / "outside" / "b.wav"), recording_id="rec")
    supervision = SupervisionSegment(id="s1", recording_id="rec", start=0.0, duration=0.5, text="hello there")
    cuts = tmp_path / "corpus" / "cuts.jsonl.gz"
    cuts.parent.mkdir()
    CutSet.from_cuts([MonoCut(id="c1", start=0.0, duration=0.5, channel=0, recording=recording,
                              supervisions=[supervision])]).to_file(cuts)
    assert _checks(ingest_manifest(cuts, allowed_roots=[])) == {"s1": OUTSIDE}
    assert _checks(ingest_manifest(cuts, allowed_roots=[str(tmp_path / "outside")])) == {"s1": "accepted"}


# ------------------------------------------------------------------------------------------- user SQL


@pytest.fixture
def store(tmp_path):
    store = DatasetStore(tmp_path / "data")
    spans = from_rows("spans", [
        dict(plan_id="p", utterance_id=f"u{i}", span_index=0, modality="speech", role="speech", first_word=0,
             last_word=1, num_words=2, text="hello there", audio_start=0.0, audio_end=1.0, start_sample=0,
             end_sample=16000) for i in range(3)])
    store.publish("demo", {"spans": spans}, input_hash="in", config_json="{}", code_version="t")
    return store


@pytest.mark.parametrize("sql, message", [
    ("INSERT INTO dataset_versions_table (version_id) VALUES ('x')", "of type INSERT"),
    ("CREATE TABLE x (a INTEGER)", "of type CREATE"),
    ("DROP VIEW spans", "of type DROP"),
    ("SELECT 1; DROP VIEW spans", "got 2 statement(s)"),
    ("COPY (SELECT 1) TO 'leak.csv'", "of type COPY"),
    ("ATTACH 'other.duckdb' AS other", "of type ATTACH"),
    ("SET enable_external_access = true", "of type SET"),
])
def test_jstip_query_refuses_anything_but_one_select(store, sql, message, tmp_path, monkeypatch):
    from jstip.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["query", sql, "--store", str(store.root)])
    assert result.exit_code == 1
    assert "user SQL runs read-only" in result.output and message in result.output, result.output
    assert not (tmp_path / "leak.csv").exists() and not (tmp_path / "other.duckdb").exists()
    assert len(store.versions()) == 1


def test_user_select_reads_the_catalog_and_nothing_outside_the_datasets(store, tmp_path):
    from jstip.cli import app

    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["query", "SELECT count(*) AS n FROM spans",
                                                            "--store", str(store.root)])
    assert result.exit_code == 0 and "3" in result.output, result.output
    version = store.latest()
    assert store.user_query("SELECT count(*) FROM spans WHERE num_words = ?", [2],
                            schema=f"v_{version.version_id}")[1] == [(3,)]
    # the store's own Parquet files may be read directly; any other file may not
    assert store.user_query(f"SELECT count(*) FROM read_parquet('{version.path}/spans/*.parquet')")[1] == [(3,)]
    (tmp_path / "secret.csv").write_text("a\n1\n")
    for sql in (f"SELECT * FROM read_csv('{tmp_path / 'secret.csv'}')", "SELECT * FROM glob('/etc/*')"):
        with pytest.raises(StoreError, match="disabled by configuration"):
            store.user_query(sql)
    # sandboxing one connection leaves the store's own connections as they were
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT current_setting('enable_external_access')").fetchone() == (True,)


# ------------------------------------------------------------------------------------ shell and servers


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            yield node, owner, name


def test_no_shell_is_ever_invoked_and_subprocesses_take_argument_lists():
    problems, subprocess_calls = [], 0
    for directory in SOURCE_DIRS:
        for path in sorted((REPO / directory).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            where = path.relative_to(REPO)
            for node, owner, name in _calls(tree):
                if any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                       for k in node.keywords):
                    problems.append(f"{where}:{node.lineno}: shell=...")
                if (owner, name) in {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"),
                                     ("subprocess", "getstatusoutput")} or (owner == "os" and name.startswith(
                                         ("spawn", "exec"))):
                    problems.append(f"{where}:{node.lineno}: {owner}.{name}")
                if owner == "subprocess" and name in {"run", "Popen", "call", "check_call", "check_output"}:
                    subprocess_calls += 1
                    if not node.args or not isinstance(node.args[0], (ast.List, ast.Tuple)):
                        problems.append(f"{where}:{node.lineno}: subprocess.{name} without an argument list")
            for constant in ast.walk(tree):
                if isinstance(constant, ast.Constant) and constant.value == "0.0.0.0":
                    problems.append(f"{where}:{constant.lineno}: binds every interface")
    assert problems == []
    assert subprocess_calls >= 1  # the scan sees the one we have (espeak-ng synthesis in a fresh interpreter)


def test_what_we_start_listens_on_loopback_only():
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    from jstip.config import RunnerConfig
    from jstip.flows.build_interleaved import task_runner_for

    dask = task_runner_for(RunnerConfig(kind="dask"))
    assert dask.cluster_kwargs["host"] == "127.0.0.1" and dask.cluster_kwargs["dashboard_address"] is None
    # the server a jstip command starts (tests/test_clean_stops.py checks its sockets), Prefect's own ephemeral
    # server and `prefect server start`
    assert '"127.0.0.1"' in inspect.getsource(SubprocessASGIServer)
    assert get_current_settings().server.api.host == "127.0.0.1"
