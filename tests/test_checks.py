"""Quality checks, the quarantine accounting and the Great Expectations publish gate, with exact expectations.

Per-utterance checks run on crafted shards (no audio needed): for each check, one utterance just past its
threshold and one exactly at it (or just inside). The gate and the accounting run on real speech through
the real stages (no Prefect: tests/test_build_flow.py covers the flow).
"""

from __future__ import annotations

import dataclasses
import json
import re
import unicodedata
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from jstip.config import BuildConfig, CheckConfig
from jstip.schemas import from_rows
from jstip.storage import DatasetStore
from jstip.tasks.checks import check_shard, count_words, duplicate_audio, fill_durations
from jstip.tasks.text import split_words

# -- crafted shards ---------------------------------------------------------------------------------------


def _utt(uid: str, text: str = "hello there", duration: float = 2.0, words: list | None = None, lead: float = 0.2,
         trail: float = 0.2, aligner: str = "pocketsphinx", **audio) -> dict:
    """An utterance's rows: words default to one per transcript word, evenly spread over [lead, duration-trail]."""
    tokens = split_words(text)
    if words is None:
        slot = (duration - lead - trail) / len(tokens)
        words = [(lead + i * slot, lead + (i + 1) * slot - 0.1 * slot) for i in range(len(tokens))]
    return dict(
        utterance=dict(utterance_id=uid, recording_id=uid, audio_path=f"/a/{uid}.wav", start=0.0, duration=duration,
                       text=text, source=f"m.jsonl:{uid}"),
        audio=dict(utterance_id=uid, audio_hash=uid, flac_path=f"/a/{uid}.flac", sampling_rate=16000,
                   num_samples=int(duration * 16000), duration=duration, **audio),
        words=[dict(utterance_id=uid, word_index=i, word=tokens[i] if i < len(tokens) else "w", start=w[0], end=w[1],
                    score=w[2] if len(w) > 2 else None, aligner=aligner) for i, w in enumerate(words)],
    )


def _check(*utts: dict, config: CheckConfig = CheckConfig()):
    return check_shard(from_rows("utterances", [u["utterance"] for u in utts]),
                       from_rows("normalized_audio", [u["audio"] for u in utts]),
                       from_rows("word_alignments", [w for u in utts for w in u["words"]]), config)


TEN_WORDS = "one two three four five six seven eight nine ten"
# check, the utterance that trips it, the one that just passes, its value and threshold, config overrides
CASES = [
    ("duration_min", dict(text="yes", duration=0.499, words=[(0.1, 0.4)]),
     dict(text="yes", duration=0.5, words=[(0.1, 0.4)]), "0.499", "0.5", {}),
    ("duration_max", dict(text=TEN_WORDS, duration=30.001, lead=0.5, trail=0.5),
     dict(text=TEN_WORDS, duration=30.0, lead=0.5, trail=0.5), "30.001", "30", {}),
    ("chars_per_second_min", dict(text="I", duration=1.001, words=[(0.3, 0.7)]),
     dict(text="I", duration=1.0, words=[(0.3, 0.7)]), "0.999001", "1", {}),
    ("chars_per_second_max", dict(text="abcd efgh ijkl mnop q", duration=0.999, lead=0.05, trail=0.05),
     dict(text="abcd efgh ijkl mnop q", duration=1.0, lead=0.05, trail=0.05), "21.021", "21", {}),
    ("words_per_second_min", dict(text="aaaaa bbbbb ccccc", duration=10.001, lead=0.5, trail=0.5),
     dict(text="aaaaa bbbbb ccccc", duration=10.0, lead=0.5, trail=0.5), "0.29997", "0.3", {}),
    ("words_per_second_max", dict(text="a b c d e f", duration=0.999, lead=0.02, trail=0.02),
     dict(text="a b c d e f", duration=1.0, lead=0.02, trail=0.02), "6.00601", "6", {}),
    ("words_aligned", dict(text="one two three", words=[(0.2, 0.6), (0.7, 1.1)]),
     dict(text="one two three", words=[(0.2, 0.6), (0.7, 1.1), (1.2, 1.6)]), "2/3", "all", {}),
    ("word_score", dict(words=[(0.2, 0.9, -20.001), (1.0, 1.7, -3.0)]),
     dict(words=[(0.2, 0.9, -20.0), (1.0, 1.7, -3.0)]), "-20.001", "-20", {}),
    ("word_duration_min", dict(words=[(0.5, 0.519), (0.6, 1.0)]),
     dict(words=[(0.5, 0.52), (0.6, 1.0)]), "0.019", "0.02", {}),
    ("word_duration_max", dict(text="hello there friend", duration=5.0, words=[(0.5, 3.501), (3.6, 4.0), (4.1, 4.5)]),
     dict(text="hello there friend", duration=5.0, words=[(0.5, 3.5), (3.6, 4.0), (4.1, 4.5)]), "3.001", "3", {}),
    ("word_order", dict(text="one two three", words=[(0.5, 0.9), (0.4, 1.2), (1.3, 1.6)]),
     dict(text="one two three", words=[(0.5, 0.9), (0.9, 1.2), (1.3, 1.6)]), "0.4 < 0.5", "non-decreasing", {}),
    # a tolerance of 2^-6 s, so that the overlap at the threshold is exact in binary floating point
    ("word_overlap", dict(words=[(0.5, 1.0), (0.984, 1.5)]), dict(words=[(0.5, 1.0), (0.984375, 1.5)]),
     "0.016", "0.015625", {"word_time_tolerance_s": 0.015625}),
    ("word_outside_audio", dict(words=[(0.2, 0.9), (1.0, 2.011)]), dict(words=[(0.2, 0.9), (1.0, 2.01)]),
     "0.011", "0.01", {}),
    ("leading_silence", dict(duration=5.0, words=[(3.001, 3.5), (3.6, 4.2)]),
     dict(duration=5.0, words=[(3.0, 3.5), (3.6, 4.2)]), "3.001", "3", {}),
    ("trailing_silence", dict(duration=5.001, words=[(0.2, 1.0), (1.1, 2.0)]),
     dict(duration=5.0, words=[(0.2, 1.0), (1.1, 2.0)]), "3.001", "3", {}),
    ("clipping", dict(clipping_ratio=0.0101), dict(clipping_ratio=0.01), "0.0101", "0.01", {}),
    ("speech_ratio", dict(speech_ratio=0.299), dict(speech_ratio=0.3), "0.299", "0.3", {}),
    ("source_sampling_rate", dict(orig_sampling_rate=15999), dict(orig_sampling_rate=16000), "15999", "16000", {}),
    # ZWSP is a format character; ZWNJ is orthographic (Persian, Indic scripts) and passes
    ("text_nonprintable", dict(text="hello\u200bthere friend"), dict(text="hello\u200cthere friend"),
     "U+200B", "printable", {}),
    ("text_charset", dict(text="hello <unk>"), dict(text="héllo, there!"), "'<' '>'",
     "allowed_char_classes + allowed_chars", {}),
]


@pytest.mark.parametrize("check, trips, passes, value, threshold, overrides", CASES, ids=[c[0] for c in CASES])
def test_each_check_trips_just_past_its_threshold_and_passes_at_it(check, trips, passes, value, threshold, overrides):
    result = _check(_utt("passes", **passes), _utt("trips", **trips), config=CheckConfig(**overrides))

    assert result.accepted_ids == ["passes"]
    [row] = result.quarantine.to_pylist()
    assert (row["utterance_id"], row["stage"], row["check_name"], row["value"], row["threshold"]) == \
        ("trips", "check", check, value, threshold)
    assert row["source"] == "m.jsonl:trips" and row["reason"].startswith("m.jsonl:trips: utterance trips: ")
    assert row["duration"] == trips.get("duration", 2.0)


def test_reasons_name_the_measurement_and_the_threshold():
    twice = _utt("c", text="one two three")
    twice["words"][2]["word_index"] = 1  # three rows for three words, but word 1 twice and word 2 never
    result = _check(_utt("a", words=[(0.2, 0.9, -25.0), (1.0, 1.7, -3.0)]), _utt("b", text="hello <unk>"), twice)
    reasons = {r["utterance_id"]: r["reason"] for r in result.quarantine.to_pylist()}
    assert reasons["a"] == ("m.jsonl:a: utterance a: word 0 'hello' has pocketsphinx score -25, below the floor -20: "
                            "the audio does not fit the word")
    assert reasons["b"] == ("m.jsonl:b: utterance b: the transcript holds character(s) outside the allowed set: "
                            "'<' '>'")
    assert reasons["c"].endswith("3 alignment rows for the transcript's 3 words but word_index is not 0..2; "
                                 "every word must be aligned once")


def test_unmeasured_values_pass_and_score_floors_are_per_aligner():
    result = _check(
        _utt("nulls"),  # no clipping, speech ratio, source rate or score measured
        _utt("whisperx", words=[(0.2, 0.9, 0.01), (1.0, 1.7, 0.5)], aligner="whisperx"),  # no whisperx floor
        _utt("nemo", words=[(0.2, 0.9, -50.0), (1.0, 1.7, -1.0)], aligner="nemo"),
        config=CheckConfig(min_word_score={"nemo": -40.0}),
    )
    assert result.accepted_ids == ["nulls", "whisperx"]
    assert [(r["utterance_id"], r["check_name"], r["threshold"]) for r in result.quarantine.to_pylist()] == [
        ("nemo", "word_score", "-40")]


def test_every_failed_check_is_a_row_and_each_utterance_ends_in_exactly_one_place():
    result = _check(
        _utt("good"),
        _utt("bad-twice", text="hello\tthere", clipping_ratio=0.5),  # a tab, and clipped
        _utt("bad-once", speech_ratio=0.1),
        _utt("good-too", text="well, hello there", duration=3.0),
    )
    rows = [(r["utterance_id"], r["check_name"]) for r in result.quarantine.to_pylist()]
    assert rows == [("bad-twice", "text_nonprintable"), ("bad-twice", "clipping"), ("bad-once", "speech_ratio")]
    assert result.accepted_ids == ["good", "good-too"]
    assert set(result.accepted_ids).isdisjoint(u for u, _ in rows)


def test_utterances_quarantined_by_an_earlier_stage_are_not_checked_again():
    utts = [_utt("ok"), _utt("no-audio", duration=0.1), _utt("no-words", duration=0.1)]
    result = check_shard(from_rows("utterances", [u["utterance"] for u in utts]),
                         from_rows("normalized_audio", [utts[0]["audio"], utts[2]["audio"]]),
                         from_rows("word_alignments", utts[0]["words"] + utts[1]["words"]), CheckConfig())
    assert result.accepted_ids == ["ok"]
    assert result.quarantine.num_rows == 0


def test_word_counts_agree_with_split_words_on_every_assigned_code_point():
    chars = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) not in ("Cn", "Cs")]
    texts = [f"a{c}b -{c}- {c}" for c in chars]
    assert count_words(pa.array(texts)).tolist() == [len(split_words(t)) for t in texts]


def test_a_charset_class_re2_does_not_know_is_rejected_at_the_edge():
    with pytest.raises(ValueError, match=r"allowed_char_classes \['Latin', 'Klingon'\] is not a list of RE2"):
        CheckConfig(allowed_char_classes=("Latin", "Klingon"))
    with pytest.raises(ValueError, match="min_word_duration .* must be below max_word_duration"):
        CheckConfig(min_word_duration=4.0)


def test_duplicate_audio_across_shards_keeps_the_lowest_id(tmp_path):
    def shard(name: str, rows: list[tuple[str, str]]) -> tuple[str, str]:
        audio = from_rows("normalized_audio", [dict(utterance_id=u, audio_hash=h * 64, flac_path="/x.flac",
                                                    sampling_rate=16000, num_samples=16000, duration=1.5)
                                               for u, h in rows])
        utts = from_rows("utterances", [_utt(u)["utterance"] for u, _ in rows])
        pq.write_table(audio, tmp_path / f"{name}-audio.parquet")
        pq.write_table(utts, tmp_path / f"{name}-utts.parquet")
        return str(tmp_path / f"{name}-audio.parquet"), str(tmp_path / f"{name}-utts.parquet")

    a = shard("s0", [("u1", "a"), ("u2", "b"), ("u3", "a")])
    b = shard("s1", [("u0", "c"), ("u4", "b"), ("u5", "d"), ("u6", "a")])
    rows = duplicate_audio([a[0], b[0]], [a[1], b[1]]).to_pylist()
    assert [(r["utterance_id"], r["check_name"], r["value"], r["duration"]) for r in rows] == [
        ("u3", "duplicate_audio", "a" * 16, 1.5), ("u4", "duplicate_audio", "b" * 16, 1.5),
        ("u6", "duplicate_audio", "a" * 16, 1.5)]
    assert rows[0]["reason"] == (f"m.jsonl:u3: utterance u3: the same audio (sha256 {'a' * 16}...) as utterance u1 "
                                 "(m.jsonl:u1), 3 copies in this build; the lowest id keeps it")
    assert duplicate_audio([], []).num_rows == 0


def test_quarantine_rows_get_the_measured_or_else_the_manifest_duration():
    quarantine = from_rows("quarantine", [
        dict(utterance_id=u, stage="align", check_name="x", reason="r") for u in ("measured", "manifest", "unknown")])
    utts = from_rows("utterances", [dict(_utt(u)["utterance"], duration=d)
                                    for u, d in (("measured", 9.0), ("manifest", 4.0), ("unknown", None))])
    audio = from_rows("normalized_audio", [dict(_utt("measured")["audio"], duration=8.5)])
    assert fill_durations(quarantine, utts, audio).column("duration").to_pylist() == [8.5, 4.0, None]


# -- real speech through the stages: accounting, duplicate audio, the Great Expectations gate ------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """4 synthetic utterances plus: a copy of one's audio under another id (in another shard), one's
    transcript with a tab for a space, a malformed line, a missing file; the longest utterance is over
    max_duration. Run through ingest/normalize/align/check/plan, not yet published."""
    from jstip.tasks import stages
    from jstip.tasks.synth import synthesize_corpus

    root = tmp_path_factory.mktemp("qc")
    synth = synthesize_corpus(root / "synth", utterances=4, seed=6)
    good = sorted((json.loads(line) for line in synth.nemo_manifest.read_text().splitlines()), key=lambda g: g["id"])
    by_length = sorted(good, key=lambda g: g["duration"])
    longest = by_length[-1]
    assert longest["id"] not in (good[0]["id"], good[1]["id"])  # the copy's and the tab's sources stay accepted
    lines = [json.dumps(g) for g in good]
    lines.append(json.dumps(dict(good[0], id="zz-copy")))
    lines.append(json.dumps(dict(good[1], id="zz-tab", text=good[1]["text"].replace(" ", "\t", 1))))
    lines.append('{"audio_filepath": "x.wav", "text": ')
    lines.append(json.dumps({"audio_filepath": str(root / "nope.wav"), "text": "hello", "id": "zz-missing"}))
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")

    max_duration = (by_length[-2]["duration"] + longest["duration"]) / 2
    config = BuildConfig(shard_size=3, checks=CheckConfig(max_duration=max_duration))
    store = str(root / "data")
    ingested = stages.ingest(str(manifest), None, store, config)
    checked, planned = [], []
    for shard in ingested.shards:
        normalized = stages.normalize(shard, store, config)
        checked.append(stages.check(shard, normalized, stages.align(shard, normalized, store, config), store, config))
        planned.append(stages.plan(shard, checked[-1], store, config))
    shard_of = {uid: k for k, shard in enumerate(ingested.shards)
                for uid in pq.read_table(shard.path)["utterance_id"].to_pylist()}
    assert shard_of["zz-copy"] != shard_of[good[0]["id"]]  # the duplicate is found across shards
    return dict(ingested=ingested, checked=checked, planned=planned, store=store, config=config, good=good,
                longest=longest, manifest=str(manifest), root=root)


@pytest.fixture(scope="module")
def published(built):
    from jstip.tasks import stages

    return stages.publish(built["ingested"], built["checked"], built["planned"], built["store"], built["config"])


def test_accounting_holds_under_a_mix_of_good_and_bad_items(built, published):
    manifest, good = Path(built["manifest"]).name, built["good"]  # sources name the manifest relative to its directory
    assert (published.ingested, published.accepted, published.quarantined) == (8, 3, 5)
    with DatasetStore(built["store"]).connect(read_only=True) as con:
        accepted = {r[0] for r in con.execute("SELECT utterance_id FROM utterances").fetchall()}
        assert accepted == {g["id"] for g in good} - {built["longest"]["id"]}
        rows = con.execute("SELECT stage, check_name, utterance_id, source, duration IS NOT NULL FROM quarantine "
                           "ORDER BY stage, check_name").fetchall()
        assert rows == [
            ("check", "duplicate_audio", "zz-copy", f"{manifest}:5", True),
            ("check", "duration_max", built["longest"]["id"], f"{manifest}:{good.index(built['longest']) + 1}", True),
            ("check", "text_nonprintable", "zz-tab", f"{manifest}:6", True),
            ("ingest", "audio_not_found", "zz-missing", f"{manifest}:8", False),
            ("ingest", "malformed_json", "manifest:line7", f"{manifest}:7", False),
        ]
        # duplicates are gone from every per-utterance table
        for table in ("normalized_audio", "word_alignments", "interleave_plans", "spans"):
            assert con.execute(f"SELECT count(*) FROM {table} WHERE utterance_id = 'zz-copy'").fetchone() == (0,)
        summary = con.execute("SELECT stage, check_name, count, hours > 0, unknown_duration FROM quarantine_summary "
                              "ORDER BY stage, check_name").fetchall()
        assert summary == [("check", "duplicate_audio", 1, True, 0), ("check", "duration_max", 1, True, 0),
                           ("check", "text_nonprintable", 1, True, 0), ("ingest", "audio_not_found", 1, False, 1),
                           ("ingest", "malformed_json", 1, False, 1)]
        [(docs,)] = con.execute("SELECT data_docs_path FROM dataset_versions").fetchall()
    assert docs == f"gx/data_docs/{published.version_id}/index.html"  # relative to the store root: relocatable
    docs = str(DatasetStore(built["store"]).resolve(docs))
    assert docs == published.data_docs_path == str(DatasetStore(built["store"]).data_docs_dir(published.version_id)
                                                   / "index.html")
    assert Path(docs).is_file() and "integrity" in Path(docs).read_text()
    assert published.suite_failures == ()


def test_data_docs_read_offline_and_the_index_lists_every_validation(published):
    """Parsed as a browser would: no page loads anything from the network, every local asset exists, and the
    index links each suite's validation page with its status."""
    from html.parser import HTMLParser

    from jstip.schemas import DATASET_TABLES

    class Assets(HTMLParser):
        def __init__(self):
            super().__init__()
            self.loaded, self.links = [], []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag in ("script", "img") and a.get("src"):
                self.loaded.append(a["src"])
            if tag == "link" and a.get("href"):
                self.loaded.append(a["href"])
            if tag == "a" and a.get("href"):
                self.links.append(a["href"])

    docs = Path(published.data_docs_path).parent
    pages = sorted(docs.rglob("*.html"))
    assert len(pages) >= 1 + 2 * (len(DATASET_TABLES) + 1)  # the index, a suite and a validation page per suite
    for page in pages:
        parser = Assets()
        parser.feed(page.read_text())
        for url in parser.loaded:
            assert not url.startswith(("http:", "https:", "//")), f"{page.name} loads {url} from the network"
            assert (page.parent / url).resolve().is_file(), f"{page.name}: {url} is missing"

    index = Assets()
    text = (docs / "index.html").read_text()
    index.feed(text)
    validations = [link for link in index.links if link.startswith("validations/")]
    suites = [*DATASET_TABLES, "integrity"]
    assert sorted(link.split("/")[1] for link in validations) == sorted(suites)
    assert all((docs / link).is_file() for link in index.links)
    assert f"all {len(suites)} suites passed" in text and text.count("passed</span>") == len(suites)


def test_a_lost_entry_fails_the_accounting_and_publishes_nothing(built, tmp_path):
    from jstip.tasks import stages

    store = tmp_path / "data"
    kept = built["checked"][:1]  # the other shards' utterances and quarantine rows go missing
    accepted = kept[0].row_counts["utterances"]
    quarantined = 2 + len(set(pq.read_table(kept[0].tables["quarantine"])["source"].to_pylist()))  # + ingest's 2
    with pytest.raises(stages.AccountingError, match=re.escape(
            f"accounting failed for {built['manifest']}; nothing was published: accepted ({accepted}) + "
            f"quarantined ({quarantined}) != ingested (8)")):
        stages.publish(built["ingested"], kept, built["planned"][:1], str(store), built["config"])
    assert DatasetStore(store).versions() == []
    assert not (store / "datasets").exists() or not any((store / "datasets").rglob("*.parquet"))
    assert not any((store / ".staging").iterdir())


def _tampered(planned, directory: Path):
    """The first shard's plan with one speech span stretched 100 s past its audio."""
    spans = pq.read_table(planned[0].tables["spans"])
    speech = pc.equal(spans.column("modality"), "speech").to_numpy(zero_copy_only=False)
    first = int(speech.argmax())
    ends = spans.column("audio_end").to_pylist()
    ends[first] += 100.0
    spans = spans.set_column(spans.schema.get_field_index("audio_end"), "audio_end", pa.array(ends, pa.float64()))
    path = directory / "tampered-spans.parquet"
    pq.write_table(spans, path)
    return [dataclasses.replace(planned[0], tables={**planned[0].tables, "spans": str(path)}), *planned[1:]]


def test_a_failing_suite_blocks_publishing_unless_configured_to_warn(built, tmp_path):
    from jstip.tasks import stages
    from jstip.tasks.suites import QualityGateError

    planned = _tampered(built["planned"], tmp_path)
    store = tmp_path / "data"
    with pytest.raises(QualityGateError) as info:
        stages.publish(built["ingested"], built["checked"], planned, str(store), built["config"])
    message = str(info.value)
    assert "integrity: speech_spans_outside_audio = 1 (speech spans have audio bounds inside the audio" in message
    assert "spans: expect_column_values_to_be_between" not in message  # audio_end has no row-level upper bound
    assert "Nothing was published (checks.gx: warn publishes anyway)." in message
    assert DatasetStore(store).versions() == [] and not any((store / ".staging").iterdir())
    docs = Path(re.search(r"Data Docs: (\S+)", message).group(1))
    assert docs.is_file() and docs.parent.parent == store / "gx" / "data_docs"

    warn = built["config"].model_copy(update={"checks": built["config"].checks.model_copy(update={"gx": "warn"})})
    published = stages.publish(built["ingested"], built["checked"], planned, str(store), warn)
    assert [v.version_id for v in DatasetStore(store).versions()] == [published.version_id]
    assert [f.split(" = ")[0] for f in published.suite_failures] == ["integrity: speech_spans_outside_audio"]
    assert DatasetStore(store).version(published.version_id).data_docs_path == Path(published.data_docs_path)


def test_suites_name_each_broken_rule(built, tmp_path):
    """Crafted breakage in a copy of a good version: row-level and exact cross-table rules."""
    from jstip.tasks.suites import validate_version

    version = DatasetStore(built["store"]).latest()
    staged = tmp_path / "version"
    for table in version.row_counts:
        (staged / table).mkdir(parents=True)
        frame = pq.read_table(version.path / table)
        if table == "word_alignments":  # the second word of one utterance starts before the first
            starts = frame.column("start").to_pylist()
            starts[1] = starts[0] - 0.05
            frame = frame.set_column(frame.schema.get_field_index("start"), "start", pa.array(starts, pa.float64()))
        if table == "normalized_audio":  # one utterance at another sampling rate
            rates = frame.column("sampling_rate").to_pylist()
            rates[0] = 8000
            frame = frame.set_column(frame.schema.get_field_index("sampling_rate"), "sampling_rate",
                                     pa.array(rates, pa.int32()))
        if table == "spans":  # a plan's first span lost: its words 0.. are no longer covered
            frame = frame.slice(1)
        pq.write_table(frame, staged / table / "part-00000.parquet")

    report = validate_version(staged, tmp_path / "docs", built["config"])
    assert not report.success
    failed = {re.match(r"(\w+: \w+)", f).group(1) for f in report.failures}
    assert failed == {"normalized_audio: expect_column_values_to_be_in_set", "integrity: word_times_not_monotonic",
                      "integrity: plans_without_spans", "integrity: plan_coverage",
                      # the moved word now starts before the speech span that holds it
                      "integrity: speech_spans_outside_audio"}
    assert "8000" in next(f for f in report.failures if f.startswith("normalized_audio"))
    assert (tmp_path / "docs" / "index.html").is_file()


def test_jstip_quarantine_lists_items_by_reason_with_examples(built, published):
    from jstip.cli import app

    runner = CliRunner(env={"COLUMNS": "200"})
    shown = runner.invoke(app, ["quarantine", published.version_id[:8], "--store", built["store"]])
    assert shown.exit_code == 0, shown.output
    assert f"{published.name}/{published.version_id}: 5 quarantine row(s); accepted utterances: 3" in shown.output
    for reason in ("duplicate_audio", "duration_max", "text_nonprintable", "audio_not_found", "malformed_json"):
        assert reason in shown.output
    assert "check / duplicate_audio: examples" in shown.output and "zz-copy" in shown.output

    one = runner.invoke(app, ["quarantine", "latest", "--check", "text_nonprintable", "--store", built["store"]])
    assert one.exit_code == 0 and "zz-tab" in one.output and "zz-copy" not in one.output
    missing = runner.invoke(app, ["quarantine", "nope", "--store", built["store"]])
    assert missing.exit_code == 1 and "no dataset version or dataset named 'nope'" in missing.output



def test_catalogs_from_before_data_docs_gain_the_column(tmp_path):
    store = DatasetStore(tmp_path)
    utterances = from_rows("utterances", [_utt("u1")["utterance"]])
    old = store.publish("demo", {"utterances": utterances}, input_hash="a", config_json="{}", code_version="t")
    with duckdb.connect(str(store.catalog_path)) as con:  # as a catalog written before the column existed
        con.execute("DROP VIEW dataset_versions")
        con.execute("ALTER TABLE dataset_versions_table DROP COLUMN data_docs_path")
    assert store.version(old.version_id).data_docs_path is None

    new = store.publish("demo", {"utterances": utterances}, input_hash="b", config_json="{}", code_version="t",
                        validate=lambda staged, version_id: tmp_path / "docs" / version_id / "index.html")
    assert [(v.version_id, v.data_docs_path) for v in store.versions()] == [
        (old.version_id, None), (new.version_id, tmp_path / "docs" / new.version_id / "index.html")]


def test_big_tables_are_validated_on_a_sample_and_cross_table_rules_on_every_row(built, published, tmp_path):
    from jstip.tasks.suites import validate_version

    config = built["config"].model_copy(update={"checks": built["config"].checks.model_copy(update={"gx_max_rows": 5})})
    report = validate_version(Path(published.path), tmp_path / "docs", config)
    assert report.success, report.failures
    words = published.row_counts["word_alignments"]
    assert words > 5 and report.sampled["word_alignments"] == (5, words)
    assert report.sampled["utterances"] == (3, 3)
