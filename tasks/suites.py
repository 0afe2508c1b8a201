"""Great Expectations suites over a dataset version's tables: the gate between staging and publishing.

Entry point: `validate_version(version_dir, docs_dir, config) -> SuiteReport`, over the staged Parquet
files `version_dir/<table>/*.parquet` (jstip.storage.DatasetStore.publish calls it through its `validate`
hook, before the rename that makes a version visible). Two kinds of suite, both GX 1.x expectations run in
an ephemeral context on pandas frames that DuckDB reads from the Parquet files:

- one suite per table (`recordings`, `utterances`, ...): schema (the exact ordered column list, required
  columns never null), ranges (durations within the check bounds, the target sampling rate, word times
  >= 0 and end > start, aligner score ranges, span word ranges) and value sets (stages, modalities, roles,
  formats). A table of at most `checks.gx_max_rows` rows is validated whole; a bigger one through a
  reservoir sample of that many rows (fixed seed): row-level rules are what a sample can test;
- `integrity`: one row of exact counts that DuckDB computes over every row of every table, each expected
  to be 0: uniqueness (ids, (utterance, word_index), audio hashes), monotonic word times, words inside the
  audio and within the word duration bounds, referential integrity (words <-> utterances <-> audio <->
  plans <-> spans), plan coverage (the speech and text spans of each plan tile the utterance's words
  0..n-1 in order, each F1 transcript repeats the speech span before it, speech spans lie inside the
  audio around their words) and no entry both accepted and quarantined. These cross-row rules stay exact
  at any size, which a pandas frame of 400 M words could not be.

Data Docs (static HTML: every suite, every expectation, observed values) are built into `docs_dir`
(the store keeps them at <store>/gx/data_docs/<version>/index.html) whether the suites pass or not, so a
blocked publish can be read there; they read offline (jstip.tasks.data_docs: our index of every validation,
no CDN assets). GX is imported here only: it costs ~2 s.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from jstip.config import BuildConfig
from jstip.schemas import DATASET_TABLES, schema_for
from jstip.storage.lock import temp_name
from jstip.storage.work import install_directory
from jstip.tasks.checks import WORD_PATTERN
from jstip.tasks.data_docs import SuiteOutcome, write_offline_docs

# Stages that write quarantine rows (text_corpus: rows of the domain text, jstip.tasks.stages).
QUARANTINE_STAGES = ["ingest", "normalize", "align", "check", "plan", "text_corpus"]
PLAN_STRATEGIES = ["word", "segment", "asr", "text"]
# Word score ranges by aligner (jstip.tasks.align*): pocketsphinx and nemo log-likelihoods per frame,
# floored at -100; whisperx mean CTC probability.
SCORE_RANGES = {"pocketsphinx": (-100.0, 0.0), "nemo": (-100.0, 0.0), "whisperx": (0.0, 1.0)}
EXAMPLES = 3


class QualityGateError(RuntimeError):
    """A Great Expectations suite failed on a staged version: nothing was published."""


@dataclass
class SuiteReport:
    success: bool
    data_docs_path: Path
    failures: list[str] = field(default_factory=list)  # one line per failed expectation
    sampled: dict[str, tuple[int, int]] = field(default_factory=dict)  # table -> (rows validated, rows)

    def message(self, what: str) -> str:
        lines = "\n".join(f"  - {f}" for f in self.failures)
        return f"Great Expectations suites failed for {what}:\n{lines}\nData Docs: {self.data_docs_path}"


def _missing(table: str, other: str, key: str) -> str:
    """Utterances of `table` whose `key` has no row in `other`."""
    return f"SELECT utterance_id FROM {table} ANTI JOIN {other} USING ({key})"


def _integrity_checks(config: BuildConfig) -> dict[str, tuple[str, str]]:
    """name -> (what must hold, SQL listing the offenders as one `example` column), over views of the tables."""
    checks = config.checks
    tol = float(checks.word_time_tolerance_s)
    sql = {
        "utterance_id_duplicates": ("utterances.utterance_id is unique",
                                    "SELECT utterance_id FROM utterances GROUP BY 1 HAVING count(*) > 1"),
        "recording_id_duplicates": ("recordings.recording_id is unique",
                                    "SELECT recording_id FROM recordings GROUP BY 1 HAVING count(*) > 1"),
        "text_id_duplicates": ("text_corpus.text_id is unique",
                               "SELECT text_id FROM text_corpus GROUP BY 1 HAVING count(*) > 1"),
        "audio_utterance_id_duplicates": ("normalized_audio.utterance_id is unique",
                                          "SELECT utterance_id FROM normalized_audio GROUP BY 1 HAVING count(*) > 1"),
        "word_duplicates": ("(utterance_id, word_index) of word_alignments is unique",
                            "SELECT utterance_id || ':' || word_index FROM word_alignments GROUP BY utterance_id, "
                            "word_index HAVING count(*) > 1"),
        "word_index_gaps": ("each utterance's word_index runs 0..n-1",
                            "SELECT utterance_id FROM word_alignments GROUP BY 1 "
                            "HAVING min(word_index) <> 0 OR max(word_index) <> count(*) - 1"),
        "word_count_mismatch": ("each utterance has one aligned word per transcript word",
                                "SELECT u.utterance_id FROM utterances u JOIN (SELECT utterance_id, count(*) AS n "
                                "FROM word_alignments GROUP BY 1) w USING (utterance_id) "
                                f"WHERE len(regexp_extract_all(u.text, '{WORD_PATTERN}')) <> w.n"),
        "word_times_not_monotonic": (
            f"word times are in order and overlap the previous word by at most {tol:g} s",
            f"""SELECT DISTINCT utterance_id FROM (
                  SELECT utterance_id, start, "end", lag(start) OVER w AS prev_start, lag("end") OVER w AS prev_end
                  FROM word_alignments WINDOW w AS (PARTITION BY utterance_id ORDER BY word_index))
                WHERE "end" <= start OR start < prev_start OR start < prev_end - {tol!r}"""),
        "words_outside_audio": (f"words lie inside their audio (tolerance {tol:g} s)",
                                f"""SELECT DISTINCT w.utterance_id FROM word_alignments w
                                    JOIN normalized_audio a USING (utterance_id)
                                    WHERE w.start < -{tol!r} OR w."end" > a.duration + {tol!r}"""),
        "word_duration_out_of_bounds": (
            f"word durations lie in [{checks.min_word_duration:g}, {checks.max_word_duration:g}] s",
            f"""SELECT DISTINCT utterance_id FROM word_alignments
                WHERE "end" - start < {checks.min_word_duration!r} OR "end" - start > {checks.max_word_duration!r}"""),
        "words_without_utterance": ("every word_alignments row has its utterance",
                                    "SELECT DISTINCT utterance_id FROM word_alignments ANTI JOIN utterances "
                                    "USING (utterance_id)"),
        "utterances_without_words": ("every utterance has word alignments",
                                     _missing("utterances", "word_alignments", "utterance_id")),
        "utterances_without_audio": ("every utterance has normalised audio",
                                     _missing("utterances", "normalized_audio", "utterance_id")),
        "audio_without_utterance": ("every normalized_audio row has its utterance",
                                    _missing("normalized_audio", "utterances", "utterance_id")),
        "utterances_without_recording": ("every utterance's recording is in recordings",
                                         _missing("utterances", "recordings", "recording_id")),
        "utterances_without_plan": ("every utterance has an interleave plan",
                                    _missing("utterances", "interleave_plans", "utterance_id")),
        "plans_without_utterance": ("every speech plan's utterance is accepted (text plans: a text_corpus sentence)",
                                    "SELECT p.utterance_id FROM interleave_plans p ANTI JOIN utterances u "
                                    "USING (utterance_id) WHERE p.strategy <> 'text' UNION ALL "
                                    "SELECT p.utterance_id FROM interleave_plans p ANTI JOIN text_corpus t "
                                    "ON p.utterance_id = t.text_id WHERE p.strategy = 'text'"),
        "spans_without_plan": ("every span belongs to a plan",
                               "SELECT DISTINCT utterance_id FROM spans ANTI JOIN interleave_plans "
                               "USING (plan_id, utterance_id)"),
        "plans_without_spans": ("every plan has its num_spans spans, span_index 0..num_spans-1",
                                """SELECT p.utterance_id FROM interleave_plans p LEFT JOIN (
                                     SELECT plan_id, utterance_id, count(*) AS n, min(span_index) AS lo,
                                            max(span_index) AS hi FROM spans GROUP BY ALL) s
                                     USING (plan_id, utterance_id)
                                   WHERE s.n IS NULL OR s.n <> p.num_spans OR s.lo <> 0 OR s.hi <> s.n - 1"""),
        "plan_coverage": (
            "the speech and text spans of every speech plan tile its utterance's words 0..n-1 in order",
            """WITH s AS (
                 SELECT s.plan_id, s.utterance_id, s.first_word, s.last_word,
                        lag(s.last_word) OVER (PARTITION BY s.plan_id, s.utterance_id ORDER BY s.span_index)
                            AS prev_last
                 FROM spans s JOIN interleave_plans p USING (plan_id, utterance_id)
                 WHERE p.strategy <> 'text' AND s.role <> 'transcript'),
               n AS (SELECT utterance_id, count(*) AS words FROM word_alignments GROUP BY 1)
               SELECT DISTINCT utterance_id FROM s
               WHERE last_word < first_word OR first_word <> coalesce(prev_last + 1, 0)
               UNION
               SELECT utterance_id FROM (SELECT plan_id, utterance_id, max(last_word) AS last FROM s GROUP BY ALL)
               LEFT JOIN n USING (utterance_id) WHERE n.words IS NULL OR last <> n.words - 1"""),
        "plan_word_count": ("interleave_plans.num_words is the utterance's word count",
                            "SELECT p.utterance_id FROM interleave_plans p JOIN (SELECT utterance_id, count(*) AS n "
                            "FROM word_alignments GROUP BY 1) w USING (utterance_id) "
                            "WHERE p.strategy <> 'text' AND p.num_words <> w.n"),
        "transcript_spans": ("each transcript span repeats the words of the speech span just before it",
                             """SELECT DISTINCT utterance_id FROM (
                                  SELECT utterance_id, role, first_word, last_word,
                                         lag(role) OVER w AS prev_role, lag(first_word) OVER w AS prev_first,
                                         lag(last_word) OVER w AS prev_last FROM spans
                                  WINDOW w AS (PARTITION BY plan_id, utterance_id ORDER BY span_index))
                                WHERE role = 'transcript' AND (prev_role IS DISTINCT FROM 'speech'
                                      OR first_word <> prev_first OR last_word <> prev_last)"""),
        "speech_spans_outside_audio": (
            "speech spans have audio bounds inside the audio that contain their words",
            f"""SELECT DISTINCT s.utterance_id FROM spans s
                JOIN normalized_audio a USING (utterance_id)
                LEFT JOIN word_alignments f ON f.utterance_id = s.utterance_id AND f.word_index = s.first_word
                LEFT JOIN word_alignments l ON l.utterance_id = s.utterance_id AND l.word_index = s.last_word
                WHERE s.modality = 'speech' AND (s.audio_start IS NULL OR s.audio_end IS NULL
                      OR s.audio_start < -{tol!r} OR s.audio_end > a.duration + {tol!r} OR s.audio_end <= s.audio_start
                      OR f.start IS NULL OR l."end" IS NULL
                      OR s.audio_start > f.start + {tol!r} OR s.audio_end < l."end" - {tol!r})"""),
        "accepted_and_quarantined": ("no manifest entry is both accepted and quarantined",
                                     "SELECT DISTINCT u.source FROM utterances u JOIN quarantine q USING (source) "
                                     "WHERE q.stage <> 'text_corpus'"),
    }
    if checks.drop_duplicate_audio:
        sql["audio_hash_duplicates"] = ("no two accepted utterances share their audio (drop_duplicate_audio)",
                                        "SELECT audio_hash FROM normalized_audio GROUP BY 1 HAVING count(*) > 1")
    return sql


def _table_expectations(table: str, config: BuildConfig) -> list:
    import great_expectations.expectations as gxe

    checks = config.checks
    schema = schema_for(table)
    tol = checks.word_time_tolerance_s
    out = [gxe.ExpectTableColumnsToMatchOrderedList(column_list=schema.names)]
    out += [gxe.ExpectColumnValuesToNotBeNull(column=f.name) for f in schema if not f.nullable]

    def between(column, low=None, high=None, **kw):
        out.append(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high, **kw))

    def in_set(column, values):
        out.append(gxe.ExpectColumnValuesToBeInSet(column=column, value_set=list(values)))

    def pair(a, b, or_equal=False):
        out.append(gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A=a, column_B=b, or_equal=or_equal,
                                                                ignore_row_if="either_value_is_missing"))

    if table == "utterances":
        between("start", 0)
        between("duration", 0, strict_min=True)
        out.append(gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1))
    elif table == "normalized_audio":
        between("duration", checks.min_duration, checks.max_duration)
        in_set("sampling_rate", [config.normalize.sample_rate])
        between("num_samples", 1)
        out.append(gxe.ExpectColumnValuesToMatchRegex(column="audio_hash", regex=r"^[0-9a-f]{64}$"))
        between("clipping_ratio", 0, checks.max_clipping_ratio)
        between("speech_ratio", checks.min_speech_ratio, 1)
        between("orig_sampling_rate", checks.min_source_sampling_rate)
    elif table == "word_alignments":
        between("word_index", 0)
        between("start", -tol)
        pair("end", "start")
        in_set("aligner", [config.align.aligner])
        if config.align.aligner in SCORE_RANGES:
            between("score", *SCORE_RANGES[config.align.aligner])
    elif table == "interleave_plans":
        in_set("strategy", PLAN_STRATEGIES)
        in_set("format", ["F1", "F2"])
        between("num_spans", 1)
        between("num_words", 1)
        between("speech_words", 0)
        between("speech_seconds", 0)
        pair("num_words", "speech_words", or_equal=True)
    elif table == "spans":
        in_set("modality", ["speech", "text"])
        in_set("role", ["speech", "text", "transcript"])
        between("span_index", 0)
        between("first_word", 0)
        between("num_words", 1)
        pair("last_word", "first_word", or_equal=True)
        between("audio_start", -tol)
        pair("audio_end", "audio_start")
        pair("end_sample", "start_sample")
    elif table == "quarantine":
        in_set("stage", QUARANTINE_STAGES)
        between("duration", 0)
    elif table == "recordings":
        between("sampling_rate", 1)
        between("duration", 0)
    elif table == "text_corpus":
        out.append(gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1))
    return out


def _raised(info: dict | None) -> str | None:
    """The message of an exception GX caught while computing an expectation (e.g. a missing column)."""
    if not info:
        return None
    if info.get("raised_exception"):
        return info.get("exception_message")
    for value in info.values():  # keyed by metric, in GX 1.x
        if isinstance(value, dict) and value.get("raised_exception"):
            return value.get("exception_message")
    return None


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")


def _frames(version_dir: Path, config: BuildConfig) -> tuple[dict, dict, dict[str, list], dict[str, str]]:
    """(table -> pandas frame, table -> (validated, total rows), integrity counts, integrity examples)."""
    max_rows = int(config.checks.gx_max_rows)
    frames, sampled, examples = {}, {}, {}
    with duckdb.connect() as con:
        for table in DATASET_TABLES:
            # DDL takes no bound parameters; the path is the store's own staging directory, quoted.
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{_quote(version_dir / table)}/*.parquet')")
        for table in DATASET_TABLES:
            total = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            sample = f" USING SAMPLE reservoir({max_rows} ROWS) REPEATABLE (0)" if total > max_rows else ""
            frames[table] = con.execute(f"SELECT * FROM {table}{sample}").df()
            sampled[table] = (min(total, max_rows), total)
        counts = {}
        for name, (_, query) in _integrity_checks(config).items():
            n, first = con.execute(f"SELECT count(*), list(CAST(example AS VARCHAR) ORDER BY example)[1:{EXAMPLES}] "
                                   f"FROM ({query}) AS offenders(example)").fetchone()
            counts[name] = [n]
            examples[name] = first or []
    return frames, sampled, counts, examples


def validate_version(version_dir: Path, docs_dir: Path, config: BuildConfig) -> SuiteReport:
    """Run every suite over the tables under `version_dir`; build Data Docs into `docs_dir`."""
    import great_expectations as gx
    import pandas as pd
    from great_expectations.data_context.types.base import (
        DataContextConfig, InMemoryStoreBackendDefaults, ProgressBarsConfig)

    frames, sampled, counts, examples = _frames(Path(version_dir), config)
    integrity = _integrity_checks(config)
    final_docs = Path(docs_dir)
    # built aside and installed whole at the end: a rerun of a version that failed before replaces its docs,
    # and two builds of the same version at once never delete each other's pages mid-write
    final_docs.parent.mkdir(parents=True, exist_ok=True)
    docs_dir = final_docs.parent / temp_name(final_docs.name)
    site = {"class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)}}
    context = gx.get_context(mode="ephemeral", project_config=DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites={"version": site}, progress_bars=ProgressBarsConfig(globally=False),
        analytics_enabled=False))
    source = context.data_sources.add_pandas("version")

    failures: list[str] = []
    outcomes: list[SuiteOutcome] = []

    def run(name: str, frame, expectations: list, describe, rows: str) -> None:
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        result = definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
        failed = [r for r in result.results if not r.success]
        failures.extend(describe(r) for r in failed)
        outcomes.append(SuiteOutcome(name, not failed, len(result.results), len(failed), rows))

    def describe_row_level(table: str):
        validated, total = sampled[table]
        rows = f"{validated} rows" + (f", a sample of {total}" if validated < total else "")

        def describe(r) -> str:
            kwargs = {k: v for k, v in r.expectation_config.kwargs.items() if k != "batch_id"}
            raised = _raised(r.exception_info)
            if raised:
                return f"{table}: {r.expectation_config.type} {kwargs}: {raised}"
            res = r.result or {}
            if "unexpected_count" in res:
                found = (f"{res['unexpected_count']} of {res.get('element_count')} {rows} unexpected, e.g. "
                         f"{res.get('partial_unexpected_list', [])[:EXAMPLES]}")
            else:
                found = f"observed {res.get('observed_value')}"
            return f"{table}: {r.expectation_config.type} {kwargs}: {found}"
        return describe

    for table in DATASET_TABLES:
        validated, total = sampled[table]
        rows = f"{total:,}" if validated == total else f"{validated:,} of {total:,} (reservoir sample)"
        run(table, frames[table], _table_expectations(table, config), describe_row_level(table), rows)

    import great_expectations.expectations as gxe

    def describe_integrity(r) -> str:
        name = r.expectation_config.kwargs["column"]
        return f"integrity: {name} = {counts[name][0]} ({integrity[name][0]}), e.g. {examples[name]}"

    run("integrity", pd.DataFrame(counts),
        [gxe.ExpectColumnValuesToBeBetween(column=name, min_value=0, max_value=0, description=what)
         for name, (what, _) in integrity.items()], describe_integrity, "every row (exact SQL counts)")
    try:
        context.build_data_docs(site_names=["version"])
        write_offline_docs(docs_dir, outcomes, f"Data Docs of dataset version {final_docs.name}")
        install_directory(docs_dir, final_docs)
    finally:
        shutil.rmtree(docs_dir, ignore_errors=True)
    return SuiteReport(success=not failures, data_docs_path=final_docs / "index.html", failures=failures,
                       sampled=sampled)
