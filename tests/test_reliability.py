"""Reliability (docs/RELIABILITY.md): bad input is accounted for item by item, a killed build resumes to the
same bytes, concurrent builds share one store, the store's write lock names its holder.

Builds run `build_in_process` (the flow's stage functions without Prefect) on real espeak-ng speech, in
subprocesses where a process must die or run beside another one."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
import soundfile as sf
import soxr

from jstip.config import load_config
from jstip.storage import DatasetStore, StoreBusyError
from jstip.storage.lock import KILL_ENV, TIMEOUT_ENV
from jstip.tasks.stages import build_in_process
from jstip.tasks.synth import demo_utterances, synthesize_corpus, synthesize_in_fresh_process

pytestmark = pytest.mark.slow

OOV_TEXT = "Zyloprim, Xarelto, Brilinta and Keytruda after Ozempic."
NUMBERS_TEXT = "Pay $1,250.50 on 3/14/2024 at 5% APR, ref #42."

# One build in a fresh interpreter; prints the published version id as its last line.
BUILD_SCRIPT = """
import sys
from jstip.config import load_config
from jstip.tasks.stages import build_in_process
manifest, text_corpus, store, name, shard_size = sys.argv[1:6]
config = load_config(None, name=name, shard_size=int(shard_size))
print(build_in_process(manifest, text_corpus or None, store, config).version_id)
"""


def _build_process(manifest: Path, store: Path, *, name: str = "demo", shard_size: int = 1, text_corpus: str = "",
                   env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", BUILD_SCRIPT, str(manifest), text_corpus, str(store), name,
                             str(shard_size)], env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _digests(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory`, by relative path."""
    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _temporaries(store: Path) -> list[Path]:
    """Temporary files and directories anywhere in the store (the directories that hold them may stay)."""
    holders = {store / ".staging", store / "audio" / ".tmp"}
    return sorted({p for p in store.rglob("*") if p.name.endswith(".tmp") and p not in holders}
                  | {p for holder in holders for p in holder.glob("*")})


def _assert_every_visible_version_is_complete(store: Path) -> int:
    """Each version the catalog shows has every table, with the row counts it was registered with."""
    versions = DatasetStore(store).versions()
    for version in versions:
        for table, rows in version.row_counts.items():
            parts = sorted((version.path / table).glob("*.parquet"))
            assert parts, f"{version.version_id}: no files for {table}"
            with duckdb.connect() as con:
                assert con.execute("SELECT count(*) FROM read_parquet(?)", [[str(p) for p in parts]]
                                   ).fetchone()[0] == rows, (version.version_id, table)
    return len(versions)


class _CatalogWatcher(threading.Thread):
    """Reads the catalog over and over while builds run (a reader DuckDB makes writers wait for) and
    checks that every version it ever shows is complete."""

    def __init__(self, store: Path):
        super().__init__(daemon=True)
        self.store, self.stop, self.reads, self.errors = store, threading.Event(), 0, []

    def run(self):
        while not self.stop.is_set():
            try:
                if (self.store / "catalog.duckdb").exists():
                    _assert_every_visible_version_is_complete(self.store)
                    self.reads += 1
            except Exception as e:  # noqa: BLE001 - reported by the test, with its type
                self.errors.append(f"{type(e).__name__}: {e}")
            time.sleep(0.02)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.join()


# ------------------------------------------------------------------------------------------- corpora


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """Real speech: 9 demo utterances plus an OOV-heavy one and one of numbers and symbols."""
    root = tmp_path_factory.mktemp("reliability")
    corpus = root / "corpus"
    synth = synthesize_corpus(corpus / "synth", utterances=9, seed=11)
    good = [json.loads(line) for line in synth.nemo_manifest.read_text().splitlines()]
    voice = demo_utterances(1, 5)[0]
    extra = synthesize_in_fresh_process([dataclasses.replace(voice, id="oov", text=OOV_TEXT),
                                         dataclasses.replace(voice, id="numbers", text=NUMBERS_TEXT)])
    pad = np.zeros(3000, np.int16)  # ~0.14 s of silence around the speech, as the demo utterances have
    for name, synthesis in zip(("oov", "numbers"), extra):
        sf.write(corpus / f"{name}.wav", np.concatenate([pad, synthesis.samples, pad]), synthesis.sample_rate)
    return dict(root=root, corpus=corpus, good=good, text_corpus=synth.out_dir / "text_corpus.tsv")


def _entry(audio, text, utterance_id) -> str:
    return json.dumps({"audio_filepath": str(audio), "text": text, "id": utterance_id}, ensure_ascii=False)


@pytest.fixture(scope="module")
def bad_corpus(speech):
    """A NeMo manifest with every kind of bad input the issue lists (and three path escapes), each entry
    with the one (stage, check) that must catch it, or None where it must be accepted."""
    corpus, good = speech["corpus"], speech["good"]
    bad = corpus / "bad"
    bad.mkdir()
    outside = speech["root"] / "outside"  # beside the corpus, not in it
    outside.mkdir()

    def audio(k: int) -> tuple[np.ndarray, int]:
        return sf.read(good[k]["audio_filepath"], dtype="float32")

    (bad / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage" + bytes(range(256)))
    (bad / "empty.wav").write_bytes(b"")
    x, rate = audio(1)
    x[len(x) // 2], x[len(x) // 2 + 5] = np.nan, np.inf
    sf.write(bad / "nan.wav", x, rate, subtype="FLOAT")
    x, rate = audio(2)
    sf.write(bad / "stereo.wav", np.stack([x, 0.5 * x], axis=1), rate)
    x, rate = audio(3)
    sf.write(bad / "8k.wav", soxr.resample(x, rate, 8000), 8000)
    x, rate = audio(4)
    sf.write(bad / "48k.wav", soxr.resample(x, rate, 48000), 48000)
    # one hour at 8 kHz, written a minute at a time (FLAC of silence: a few hundred KB on disk)
    with sf.SoundFile(bad / "hour.flac", "w", 8000, 1, subtype="PCM_16", format="FLAC") as f:
        minute = np.zeros(8000 * 60, np.int16)
        for _ in range(60):
            f.write(minute)
    sf.write(bad / "silence.wav", np.zeros(16000 * 3, np.int16), 16000)
    x, rate = audio(5)
    sf.write(bad / "clipped.wav", np.clip(20 * x, -1, 1), rate)
    spaced = bad / "dir with space" / "ünïcødé"
    spaced.mkdir(parents=True)
    x, rate = audio(8)
    sf.write(spaced / "naïve file.wav", x, rate)
    x, rate = audio(7)
    sf.write(outside / "elsewhere.wav", x, rate)  # real audio: only confinement keeps it out
    (bad / "link.wav").symlink_to(outside / "elsewhere.wav")

    g = good
    manifest = corpus / "manifest.jsonl"
    rows = [  # (manifest line, quarantine id or None when accepted, (stage, check) or None)
        (_entry(g[0]["audio_filepath"], g[0]["text"], "a-good"), "a-good", None),
        (_entry(bad / "corrupt.wav", "hello there", "corrupt"), "corrupt", ("normalize", "audio_unreadable")),
        (_entry(bad / "empty.wav", "hello there", "zero-length"), "zero-length", ("normalize", "audio_empty")),
        (_entry(bad / "nan.wav", g[1]["text"], "nan-inf"), "nan-inf", ("normalize", "audio_nonfinite")),
        (_entry(bad / "stereo.wav", g[2]["text"], "stereo"), "stereo", None),
        (_entry(bad / "8k.wav", g[3]["text"], "rate-8k"), "rate-8k", ("check", "source_sampling_rate")),
        (_entry(bad / "48k.wav", g[4]["text"], "rate-48k"), "rate-48k", None),
        (_entry(bad / "hour.flac", "a whole hour of nothing at all", "one-hour"), "one-hour", ("check", "duration_max")),
        (_entry(bad / "silence.wav", "nothing to hear here", "silence"), "silence", ("align", "no_speech")),
        (_entry(bad / "clipped.wav", g[5]["text"], "clipped"), "clipped", ("check", "clipping")),
        (_entry(g[6]["audio_filepath"], " \t ", "blank-text"), "blank-text", ("ingest", "empty_text")),
        (_entry(g[6]["audio_filepath"], "caf\udce9 au lait", "latin-1"), "manifest:line12", ("ingest", "malformed_text")),
        (_entry(g[6]["audio_filepath"], g[7]["text"], "wrong-text"), "wrong-text", ("align", "transcript_mismatch")),
        (_entry(corpus / "oov.wav", OOV_TEXT, "oov-heavy"), "oov-heavy", None),
        (_entry(corpus / "numbers.wav", NUMBERS_TEXT, "numbers"), "numbers", None),
        (_entry(g[0]["audio_filepath"], g[0]["text"], "a-good"), "manifest:line16", ("ingest", "duplicate_id")),
        (_entry(g[0]["audio_filepath"], g[0]["text"], "b-dup-audio"), "b-dup-audio", ("check", "duplicate_audio")),
        (_entry(bad / "nope.wav", "hello there", "missing"), "missing", ("ingest", "audio_not_found")),
        (_entry(spaced / "naïve file.wav", g[8]["text"], "unicode-path"), "unicode-path", None),
        (_entry("../outside/elsewhere.wav", g[7]["text"], "escape-dotdot"), "escape-dotdot",
         ("ingest", "path_outside_allowed_roots")),
        (_entry(bad / "link.wav", g[7]["text"], "escape-symlink"), "escape-symlink",
         ("ingest", "path_outside_allowed_roots")),
        (_entry("/etc/passwd", "root", "escape-absolute"), "escape-absolute", ("ingest", "path_outside_allowed_roots")),
    ]
    # the non-UTF-8 line: Latin-1 bytes where the transcript's "é" is (surrogateescape writes the raw byte)
    manifest.write_bytes(b"".join(line.encode("utf-8", "surrogateescape") + b"\n" for line, _, _ in rows))
    assert b"caf\xe9 au lait" in manifest.read_bytes()
    accepted = {uid for _, uid, reason in rows if reason is None}
    quarantined = {(uid, *reason) for _, uid, reason in rows if reason is not None}
    return dict(manifest=manifest, entries=len(rows), accepted=accepted, quarantined=quarantined)


# --------------------------------------------------------------------------------------- 1. bad input


def test_a_build_over_every_kind_of_bad_input_accounts_for_each_entry_with_its_reason(bad_corpus, tmp_path):
    store = tmp_path / "store"
    started = time.monotonic()
    published = build_in_process(str(bad_corpus["manifest"]), None, str(store), load_config(None))
    seconds = time.monotonic() - started

    assert seconds < 300, f"the build took {seconds:.0f} s"  # the 1-hour file is bounded, not aligned
    assert published.ingested == bad_corpus["entries"]
    assert published.accepted + published.quarantined == published.ingested
    assert (published.accepted, published.quarantined) == (len(bad_corpus["accepted"]), len(bad_corpus["quarantined"]))
    with DatasetStore(store).connect(read_only=True) as con:
        accepted = {uid for (uid,) in con.execute("SELECT utterance_id FROM utterances").fetchall()}
        rows = con.execute("SELECT utterance_id, stage, check_name, reason, source FROM quarantine").fetchall()
        # counted in SQL too: every manifest line is exactly one accepted utterance or one quarantined source
        assert con.execute("SELECT (SELECT count(*) FROM utterances) + (SELECT count(DISTINCT source) FROM "
                           "quarantine)").fetchone() == (bad_corpus["entries"],)
    assert accepted == bad_corpus["accepted"]
    assert {(uid, stage, check) for uid, stage, check, _, _ in rows} == bad_corpus["quarantined"]
    assert len(rows) == len(bad_corpus["quarantined"])  # one specific reason each, none doubled
    manifest = Path(bad_corpus["manifest"])
    for uid, stage, check, reason, source in rows:
        assert source.startswith(f"{manifest.name}:") and reason.startswith(f"{source}: "), (uid, reason)
    reasons = {uid: reason for uid, _, _, reason, _ in rows}
    assert "outside the allowed roots" in reasons["escape-dotdot"] and "ingest.allowed_roots" in reasons["escape-dotdot"]
    assert "resolves to" in reasons["escape-symlink"]  # the symlink's target is named
    assert "not UTF-8" in reasons["manifest:line12"]


# ----------------------------------------------------------------------------------- 2. kill and resume


def test_a_build_killed_at_normalize_align_and_publish_resumes_to_the_same_bytes(speech, tmp_path):
    """One store, builds killed (SIGKILL, by the JSTIP_KILL_AT hook) at four points in turn, each rerun
    going one step further; the last rerun publishes exactly the bytes of an uninterrupted build made at
    the same path. A reader watches the catalog throughout: it never shows an incomplete version."""
    manifest = speech["corpus"] / "three.jsonl"  # in the corpus: its audio lies under the manifest's directory
    manifest.write_text("".join(_entry(g["audio_filepath"], g["text"], g["id"]) + "\n" for g in speech["good"][:3]))
    store, text_corpus = tmp_path / "store", str(speech["text_corpus"])

    uninterrupted = build_in_process(str(manifest), text_corpus, str(store), load_config(None, shard_size=1))
    expected = _digests(Path(uninterrupted.path))
    assert len(expected) >= 8 and any(name.startswith("spans/") for name in expected)
    os.rename(store, tmp_path / "uninterrupted")  # the next builds write to the same path: same bytes expected

    vid = uninterrupted.version_id
    with _CatalogWatcher(store) as watcher:
        for point in ("normalize", "align", "publish-staged", "publish-renamed"):
            child = _build_process(manifest, store, text_corpus=text_corpus, env={KILL_ENV: point})
            _, stderr = child.communicate(timeout=300)
            assert child.returncode == -signal.SIGKILL, f"{point}: {stderr[-2000:]}"
            assert DatasetStore(store).versions() == [], point  # nothing visible after any of the kills
            if point in ("normalize", "align"):  # killed with its shard result written, not yet in place
                assert any(p.name.endswith(".tmp") for p in (store / "work" / point).iterdir()), point
            if point == "publish-staged":
                assert list((store / ".staging").iterdir()), "the killed publish left its staging directory"
            if point == "publish-renamed":  # renamed into place, never registered: invisible
                assert (store / "datasets" / "demo" / vid / "spans").is_dir()
        child = _build_process(manifest, store, text_corpus=text_corpus)
        stdout, stderr = child.communicate(timeout=300)
        assert child.returncode == 0, stderr[-2000:]
        time.sleep(0.2)  # let the watcher read the published catalog
    assert watcher.errors == [] and watcher.reads > 0

    assert stdout.split()[-1] == vid
    [version] = DatasetStore(store).versions()
    assert version.version_id == vid and version.row_counts == uninterrupted.row_counts
    assert _digests(version.path) == expected  # byte for byte: same Parquet files, same content hash
    assert _temporaries(store) == []  # what the killed builds left was cleaned up


# ------------------------------------------------------------------------------------- 3. concurrency


def test_builds_into_one_store_at_once_all_succeed_and_the_catalog_stays_consistent(speech, tmp_path):
    """Three builds start together on one store: two of the same inputs and config (one publishes, the
    other finds the version published and returns it) and one of another dataset name. A reader holds
    the catalog open over and over meanwhile."""
    manifest = speech["corpus"] / "two.jsonl"
    manifest.write_text("".join(_entry(g["audio_filepath"], g["text"], g["id"]) + "\n" for g in speech["good"][:2]))
    store = tmp_path / "store"
    with _CatalogWatcher(store) as watcher:
        children = [_build_process(manifest, store, name=name, shard_size=1) for name in ("alpha", "alpha", "beta")]
        results = [child.communicate(timeout=300) for child in children]
        time.sleep(0.2)
    for child, (_, stderr) in zip(children, results):
        assert child.returncode == 0, stderr[-3000:]
    assert watcher.errors == [] and watcher.reads > 0
    alpha, again, beta = (stdout.split()[-1] for stdout, _ in results)
    assert alpha == again != beta

    assert _assert_every_visible_version_is_complete(store) == 2
    assert {(v.name, v.version_id) for v in DatasetStore(store).versions()} == {("alpha", alpha), ("beta", beta)}
    with DatasetStore(store).connect(read_only=True) as con:
        assert con.execute("PRAGMA database_size").fetchone()[0] == "catalog"
        assert con.execute("SELECT count(*) FROM dataset_versions").fetchone() == (2,)
        for vid in (alpha, beta):
            assert con.execute(f"SELECT count(*) FROM v_{vid}.utterances").fetchone() == (2,)
    assert sorted(p.name for p in (store / "datasets").iterdir()) == ["alpha", "beta"]
    assert _temporaries(store) == []


# Publishes a one-row version into the store named by argv[1] (no build: just the store's publish).
PUBLISH_SCRIPT = """
import sys
from jstip.schemas import from_rows
from jstip.storage import DatasetStore
utterances = from_rows("utterances", [dict(utterance_id="u1", recording_id="r1", audio_path="/a.wav", start=0.0,
                                           duration=1.0, text="hello", source="m.jsonl:1")])
store = DatasetStore(sys.argv[1], lock_timeout_s=float(sys.argv[2]))
print(store.publish("lock", {"utterances": utterances}, input_hash=sys.argv[3], config_json="{}",
                    code_version="test").version_id)
"""


def _publisher(store: Path, timeout_s: float, input_hash: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PUBLISH_SCRIPT, str(store), str(timeout_s), input_hash],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_store_write_lock_makes_writers_wait_then_fail_naming_the_holder(tmp_path):
    store = DatasetStore(tmp_path / "store")
    # held here: a publisher with a short timeout fails, naming this process, and publishes nothing
    with store.write_lock(purpose="a test holding the lock"):
        child = _publisher(store.root, 1, "first")
        _, stderr = child.communicate(timeout=60)
    assert child.returncode == 1
    assert "StoreBusyError" in stderr and f"pid {os.getpid()} on host {socket.gethostname()}" in stderr
    assert "a test holding the lock" in stderr
    assert store.versions() == [] and not any((store.root / ".staging").iterdir())

    # held for a second: a publisher with a longer timeout waits, then publishes
    with store.write_lock(purpose="a short hold"):
        child = _publisher(store.root, 60, "second")
        time.sleep(1.0)
        assert child.poll() is None  # still waiting
    stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == 0, stderr
    assert [v.version_id for v in store.versions()] == [stdout.split()[-1]]

    # the catalog held open by a reader (DuckDB: then nobody may write it): a writer waits, then says so
    with duckdb.connect(str(store.catalog_path), read_only=True):
        child = _publisher(store.root, 1, "third")
        _, stderr = child.communicate(timeout=60)
    assert child.returncode == 1 and "StoreBusyError" in stderr and "is held by another process" in stderr
    assert f"PID {os.getpid()}" in stderr  # DuckDB's own words name the reader
    assert len(store.versions()) == 1

    # a holder killed with SIGKILL holds nothing: the kernel drops its flock
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from jstip.storage import DatasetStore\n"
        "with DatasetStore(sys.argv[1]).write_lock(purpose='doomed'):\n"
        "    print('locked', flush=True); time.sleep(600)"), str(store.root)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(StoreBusyError, match="doomed"):
        with DatasetStore(store.root, lock_timeout_s=0.2).write_lock():
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with DatasetStore(store.root, lock_timeout_s=5).write_lock():
        pass


def test_the_write_lock_is_reentrant_and_excludes_other_threads(tmp_path):
    store = DatasetStore(tmp_path, lock_timeout_s=0.3)
    with store.write_lock(purpose="outer"):
        with store.write_lock(purpose="inner"):  # publish takes it again inside a caller's hold
            pass
        failures = []

        def other_thread():
            try:
                with store.write_lock():
                    pass
            except StoreBusyError as e:
                failures.append(str(e))

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert len(failures) == 1 and "outer" in failures[0]
    with store.write_lock():  # released by the outer block
        pass


def test_a_bad_lock_timeout_setting_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=f"{TIMEOUT_ENV}='soon'"):
        with DatasetStore(tmp_path).write_lock():
            pass
