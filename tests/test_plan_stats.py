"""Plan statistics: the catalog's stats_* views against Python counts, `jstip stats` and `jstip report`."""

from __future__ import annotations

from collections import Counter

import duckdb
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from jstip.cli import app
from jstip.config import PlanConfig
from jstip.schemas import from_rows
from jstip.storage import DatasetStore
from jstip.storage.views import PLAN_STATISTICS_VIEWS
from jstip.tasks.plan import plan_shard, plan_text_corpus

runner = CliRunner(env={"COLUMNS": "200"})
WORDS = "Please take Metformin twice daily with food and water at noon".split()


def _tables() -> dict[str, pa.Table]:
    utts, words, audio = [], [], []
    for k in range(24):
        n = 3 + k % 9
        domain = ("medical", "banking")[k % 2]
        for i in range(n):
            words.append(dict(utterance_id=f"u{k:02d}", word_index=i, word=WORDS[i], start=0.3 + 0.4 * i,
                              end=0.6 + 0.4 * i, score=-1.0 - i / 10, aligner="pocketsphinx"))
        duration = 0.4 * n + 0.5
        audio.append(dict(utterance_id=f"u{k:02d}", audio_hash=f"h{k}", flac_path="/x.flac", sampling_rate=16000,
                          num_samples=int(duration * 16000), duration=duration))
        utts.append(dict(utterance_id=f"u{k:02d}", recording_id="r", audio_path="/x.wav", start=0.0, source=f"m:{k}",
                         text=" ".join(WORDS[:n]), domain=domain, entities=["metformin", "food and water"]))
    tables = {"utterances": from_rows("utterances", utts), "word_alignments": from_rows("word_alignments", words),
              "normalized_audio": from_rows("normalized_audio", audio)}
    config = PlanConfig(strategy="mixed", text_share=0.2, seed=1)
    plans = plan_shard(tables["utterances"], tables["word_alignments"], tables["normalized_audio"], config)
    corpus = from_rows("text_corpus", [dict(text_id=f"medical-{i}", domain="medical", text=f"Dose {i} of insulin.",
                                            source=f"t:{i}") for i in range(10)])
    text = plan_text_corpus(corpus, plans.interleave_plans.num_rows, config)
    tables.update(interleave_plans=pa.concat_tables([plans.interleave_plans, text.interleave_plans]),
                  spans=pa.concat_tables([plans.spans, text.spans]), text_corpus=corpus,
                  quarantine=from_rows("quarantine", [
                      dict(utterance_id="bad1", stage="ingest", check_name="audio_not_found", reason="m:30: no audio"),
                      dict(utterance_id="bad2", stage="check", check_name="duration_max", reason="m:31: too long")]))
    return tables


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    tables = _tables()
    store = DatasetStore(tmp_path_factory.mktemp("store") / "data")
    version = store.publish("demo", tables, input_hash="x", config_json="{}", code_version="test")
    return store, version, tables


def _view(store: DatasetStore, name: str) -> list[dict]:
    with store.connect(read_only=True) as con:
        rel = con.execute(f"SELECT * FROM {name}")
        columns = [d[0] for d in rel.description]
        return [dict(zip(columns, row)) for row in rel.fetchall()]


def test_statistics_views_agree_with_python_counts(published):
    store, _, tables = published
    spans, plans = tables["spans"].to_pylist(), tables["interleave_plans"].to_pylist()
    assert {p["strategy"] for p in plans} == {"word", "segment", "asr", "text"}

    lengths = {(r["strategy"], r["modality"], r["role"]): r for r in _view(store, "stats_span_lengths")}
    assert {k: r["spans"] for k, r in lengths.items()} == Counter(
        (s["strategy"], s["modality"], s["role"]) for s in spans)
    asr = lengths["asr", "speech", "speech"]
    asr_spans = [s for s in spans if s["strategy"] == "asr" and s["role"] == "speech"]
    assert asr["mean_seconds"] == pytest.approx(
        sum(s["audio_end"] - s["audio_start"] for s in asr_spans) / len(asr_spans), abs=1e-3)

    histogram = _view(store, "stats_span_length_histogram")
    assert sum(r["spans"] for r in histogram if r["unit"] == "words") == len(spans)
    assert sum(r["spans"] for r in histogram if r["unit"] == "seconds") == sum(s["modality"] == "speech" for s in spans)

    total = {r["strategy"]: r for r in _view(store, "stats_speech_fraction")}["(all)"]
    assert total["plans"] == len(plans)
    assert total["speech_word_share"] == pytest.approx(
        sum(p["speech_words"] for p in plans) / sum(p["num_words"] for p in plans), abs=1e-4)

    per_utt = {r["strategy"]: r for r in _view(store, "stats_spans_per_utterance")}
    assert per_utt["text"]["max_spans"] == 1 and per_utt["asr"]["mean_spans"] == 2.0
    assert sum(r["plans"] for r in _view(store, "stats_spans_per_utterance_histogram")) == len(plans)
    assert sum(r["plans"] for r in _view(store, "stats_speech_fraction_histogram")) == len(plans)

    domains = {r["domain"]: r for r in _view(store, "stats_hours_per_domain")}
    audio = tables["normalized_audio"].to_pylist()
    assert domains["banking"]["hours"] == pytest.approx(
        round(sum(a["duration"] for k, a in enumerate(audio) if k % 2) / 3600, 3))
    assert domains["medical"]["text_sequences"] == sum(p["strategy"] == "text" for p in plans) > 0
    assert domains["banking"]["utterances"] == 12

    placement = {r["strategy"]: r for r in _view(store, "stats_entity_placement")}["(all)"]
    told = [s for s in spans if s["role"] != "transcript" and s["entity_words"] is not None]
    assert placement["entity_words"] == sum(s["entity_words"] for s in told) > 0
    assert placement["in_speech"] == sum(s["entity_words"] for s in told if s["modality"] == "speech")
    assert placement["in_speech"] + placement["in_text"] == placement["entity_words"]


def test_statistics_views_bind_on_versions_published_before_their_columns():
    spans = from_rows("spans", [dict(plan_id="p", utterance_id="u", span_index=0, modality="speech", role="speech",
                                     first_word=0, last_word=1, num_words=2, text="a b", audio_start=0.0,
                                     audio_end=1.0, start_sample=0, end_sample=16000)])
    plans = from_rows("interleave_plans", [dict(plan_id="p", utterance_id="u", strategy="word", format="F2", seed=0,
                                                num_spans=1, num_words=2, speech_words=2, speech_seconds=1.0)])
    with duckdb.connect() as con:
        con.register("old_spans", spans.drop_columns(["strategy", "format", "entity_words"]))
        con.register("old_plans", plans.drop_columns(["domain", "audio_seconds"]))
        con.execute("CREATE TABLE spans AS SELECT * FROM old_spans")
        con.execute("CREATE TABLE interleave_plans AS SELECT * FROM old_plans")
        for name, sql in PLAN_STATISTICS_VIEWS.items():
            con.execute(f"CREATE VIEW {name} AS {sql}")
            con.execute(f"SELECT * FROM {name}").fetchall()
        assert con.execute("SELECT hours FROM stats_hours_per_domain").fetchall() == [(0.0,)]


def test_jstip_stats_prints_every_summary_and_runs_bound_read_only_sql(published):
    store, version, tables = published
    result = runner.invoke(app, ["stats", "--store", str(store.root)])
    assert result.exit_code == 0, result.output
    assert all(name in result.output for name in PLAN_STATISTICS_VIEWS)  # summaries, then the histograms' names
    assert f"{version.version_id}" in result.output

    words = sum(s["num_words"] for s in tables["spans"].to_pylist() if s["strategy"] == "word")
    sql = runner.invoke(app, ["stats", version.version_id[:6], "--store", str(store.root), "--sql",
                              "SELECT sum(num_words) AS n FROM spans WHERE strategy = ? AND num_words >= ?",
                              "-p", "word", "-p", "1"])
    assert sql.exit_code == 0 and str(words) in sql.output, sql.output
    write = runner.invoke(app, ["stats", "--store", str(store.root), "--sql", "CREATE TABLE x (a INTEGER)"])
    assert write.exit_code == 1 and "query refused" in write.output and "read-only" in write.output
    missing = runner.invoke(app, ["stats", "ffff", "--store", str(store.root)])
    assert missing.exit_code == 1 and "no dataset version or dataset named 'ffff'" in missing.output


def test_stats_and_report_on_an_empty_store_say_so(tmp_path):
    for command in (["stats"], ["report"]):
        result = runner.invoke(app, [*command, "--store", str(tmp_path)])
        assert result.exit_code == 1 and "nothing has been published to this store yet" in result.output
        assert "Traceback" not in result.output
        assert runner.invoke(app, [*command, "--help"]).exit_code == 0


def test_report_writes_plots_and_links_the_data_docs(published):
    store, version, _ = published
    result = runner.invoke(app, ["report", "--store", str(store.root)])
    assert result.exit_code == 0, result.output
    out = store.root / "reports" / version.version_id
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["alignment_scores.png", "quarantine_reasons.png", "span_lengths_seconds.png",
                    "span_lengths_words.png", "speech_fraction.png", "utterance_durations.png"]
    assert all((out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    page = (out / "index.html").read_text()
    assert all(f"src='{p}'" in page for p in pngs) and "stats_entity_placement" in page
    assert "No Great Expectations Data Docs" in page

    docs = store.root / "gx" / "data_docs" / version.version_id / "index.html"
    with store.connect() as con:  # the GX suites record their Data Docs here
        con.execute("ALTER TABLE dataset_versions_table ADD COLUMN IF NOT EXISTS data_docs_path VARCHAR")
        con.execute("UPDATE dataset_versions_table SET data_docs_path = ? WHERE version_id = ?",
                    [str(docs), version.version_id])
    runner.invoke(app, ["report", version.version_id, "--store", str(store.root)])
    assert f"href='../../gx/data_docs/{version.version_id}/index.html'" in (out / "index.html").read_text()


def test_report_shows_the_build_config_as_yaml_a_user_can_rebuild_with(tmp_path):
    import html
    import re

    import yaml

    from jstip.config import BuildConfig, load_config

    config = BuildConfig(name="demo", plan=PlanConfig(strategy="mixed", text_share=0.2))
    store = DatasetStore(tmp_path / "data")
    version = store.publish("demo", _tables(), input_hash="y", config_json=config.version_config_json(),
                            code_version="test")
    result = runner.invoke(app, ["report", version.version_id, "--store", str(store.root)])
    assert result.exit_code == 0, result.output
    page = (store.root / "reports" / version.version_id / "index.html").read_text()
    shown = html.unescape(re.search(r"<h2>Configuration</h2>.*?<pre>(.*?)</pre>", page, re.S).group(1))
    assert shown.startswith("name: demo\nrole: train\nshard_size: ") and shown.count("\n") > 40
    (tmp_path / "rebuild.yaml").write_text(shown)
    assert load_config(tmp_path / "rebuild.yaml").version_config_json() == config.version_config_json()
    assert yaml.safe_load(shown)["plan"]["strategy"] == "mixed"
