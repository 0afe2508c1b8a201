"""Dataset roles: a version knows what it is for, and no default of any command is a held-out test set.

A store holds a training version, then a test version published after it (as `make demo` and the nightly loop
do); every default is then checked from outside: the CLI, and the catalog's unqualified views through another
DuckDB client. The same small stores show how the CLI prints what users' manifests hold (literally)."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from jstip.cli import app
from jstip.config import PlanConfig
from jstip.schemas import from_rows
from jstip.storage import DatasetStore, StoreError
from jstip.tasks.plan import plan_shard

WORDS = "Please take Metformin twice daily with food and water at noon".split()


def _tables(utterances: int, prefix: str) -> dict[str, pa.Table]:
    utts, words, audio = [], [], []
    for k in range(utterances):
        n = 3 + k % 8
        uid = f"{prefix}{k:02d}"
        for i in range(n):
            words.append(dict(utterance_id=uid, word_index=i, word=WORDS[i], start=0.3 + 0.4 * i, end=0.6 + 0.4 * i,
                              score=-1.0, aligner="pocketsphinx"))
        duration = 0.4 * n + 0.5
        audio.append(dict(utterance_id=uid, audio_hash=f"h{uid}", flac_path=f"audio/{uid}.flac", sampling_rate=16000,
                          num_samples=int(duration * 16000), duration=duration))
        utts.append(dict(utterance_id=uid, recording_id=uid, audio_path=f"{uid}.wav", start=0.0, source=f"m:{k}",
                         text=" ".join(WORDS[:n]), domain="medical", entities=[]))
    tables = {"utterances": from_rows("utterances", utts), "word_alignments": from_rows("word_alignments", words),
              "normalized_audio": from_rows("normalized_audio", audio)}
    plans = plan_shard(tables["utterances"], tables["word_alignments"], tables["normalized_audio"], PlanConfig())
    tables.update(interleave_plans=plans.interleave_plans, spans=plans.spans)
    return tables


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """`demo` (12 utterances, training), then `demo-test` (5, held out), published last."""
    store = DatasetStore(tmp_path_factory.mktemp("roles") / "data")
    train = store.publish("demo", _tables(12, "tr"), input_hash="a", config_json="{}", code_version="t")
    test = store.publish("demo-test", _tables(5, "te"), input_hash="b", config_json="{}", code_version="t",
                         role="test")
    assert (train.role, test.role) == ("train", "test") and test.created_at > train.created_at
    return store, train, test


runner = CliRunner(env={"COLUMNS": "80"})


def test_every_default_is_the_training_version_never_the_newer_test_set(store):
    data, train, test = store
    assert data.version().version_id == train.version_id
    assert data.version("latest").version_id == train.version_id
    assert data.training_version().version_id == train.version_id
    # named, a held-out version is used: a dataset name means its newest version
    assert data.version("demo-test").version_id == test.version_id
    assert data.newest_test_set().version_id == test.version_id

    # the unqualified views, through another DuckDB client: the training data
    with duckdb.connect(str(data.catalog_path), read_only=True, config={"file_search_path": str(data.root)}) as con:
        assert con.execute("SELECT count(*) FROM utterances").fetchone()[0] == 12
        assert con.execute("SELECT count(DISTINCT utterance_id) FROM spans").fetchone()[0] == 12
        assert con.execute(f"SELECT count(*) FROM v_{test.version_id}.utterances").fetchone()[0] == 5

    stats = runner.invoke(app, ["stats", "--store", str(data.root)])
    assert stats.exit_code == 0, stats.output
    assert stats.output.startswith(f"demo/{train.version_id}:")
    quarantine = runner.invoke(app, ["quarantine", "--store", str(data.root)])
    assert quarantine.exit_code == 0 and quarantine.output.startswith(f"demo/{train.version_id}:"), quarantine.output
    report = runner.invoke(app, ["report", "--store", str(data.root)])
    assert report.exit_code == 0 and f"reports/{train.version_id}/index.html" in report.output, report.output
    named = runner.invoke(app, ["stats", "demo-test", "--store", str(data.root)])
    assert named.exit_code == 0 and named.output.startswith(f"demo-test/{test.version_id}:"), named.output


def test_catalog_list_shows_name_role_and_the_default_at_80_columns(store):
    data, train, test = store
    listing = runner.invoke(app, ["catalog", "list", "--store", str(data.root)])
    assert listing.exit_code == 0, listing.output
    lines = listing.output.splitlines()
    assert all(len(line) <= 80 for line in lines), listing.output
    assert "…" not in listing.output  # nothing truncated
    train_row = next(line for line in lines if train.version_id in line)
    test_row = next(line for line in lines if test.version_id in line)
    assert "demo " in train_row and " train " in train_row and f"{train.version_id} *" in train_row
    assert "demo-test" in test_row and " test " in test_row and "*" not in test_row


def test_training_refuses_a_test_set_unless_told(store):
    data, train, test = store
    with pytest.raises(StoreError, match="held-out test set"):
        data.training_version("demo-test")
    assert data.training_version("demo-test", allow_held_out=True).version_id == test.version_id
    # the command stops at the edge, before any Prefect server or flow starts
    refused = runner.invoke(app, ["train", "--store", str(data.root), "--version", test.version_id[:6]])
    assert refused.exit_code == 1, refused.output
    assert "held-out test set" in refused.output and "--allow-test-set" in refused.output
    assert "Traceback" not in refused.output


def test_a_store_with_only_a_test_set_has_no_default(tmp_path):
    data = DatasetStore(tmp_path / "data")
    data.publish("only-test", _tables(3, "x"), input_hash="c", config_json="{}", code_version="t", role="test")
    with pytest.raises(StoreError, match=r"no training version .* only held-out ones: only-test \(test\)"):
        data.version()
    stats = runner.invoke(app, ["stats", "--store", str(data.root)])
    assert stats.exit_code == 1 and "never a default" in stats.output, stats.output
    # no unqualified views point at it
    with duckdb.connect(str(data.catalog_path), read_only=True) as con:
        with pytest.raises(duckdb.CatalogException):
            con.execute("SELECT count(*) FROM utterances")


def test_a_role_is_one_of_train_dev_test(tmp_path):
    with pytest.raises(StoreError, match="unknown dataset role 'holdout'"):
        DatasetStore(tmp_path / "d").publish("x", _tables(1, "y"), input_hash="d", config_json="{}",
                                              code_version="t", role="holdout")
    from jstip.config import ConfigError, load_config

    assert load_config(role="test").role == "test"
    with pytest.raises(ConfigError, match="role"):
        load_config(role="holdout")
    help_text = runner.invoke(app, ["build", "--help"], env={"COLUMNS": "200"}).output
    assert "train|dev|test" in help_text.replace(" ", "")


def test_a_store_path_that_is_no_store_is_an_error(tmp_path):
    listing = runner.invoke(app, ["catalog", "list", "--store", str(tmp_path / "nothing-here")])
    assert listing.exit_code == 1 and "no catalog" in listing.output, listing.output


def test_printed_values_are_shown_literally_never_as_markup(tmp_path):
    """Ids and reasons come from users' manifests: `[red]X[/red]` must print as itself, `[/]` must not crash."""
    data = DatasetStore(tmp_path / "data")
    tables = _tables(2, "[red]X[/red]")
    tables["quarantine"] = from_rows("quarantine", [dict(
        utterance_id="[/]", stage="ingest", check_name="audio_not_found", reason="m:9: [/] [bold]not bold[/bold]")])
    version = data.publish("demo", tables, input_hash="e", config_json="{}", code_version="t")
    wide = {"COLUMNS": "200"}
    query = runner.invoke(app, ["query", "SELECT utterance_id FROM utterances ORDER BY 1", "--store", str(data.root)],
                          env=wide)
    assert query.exit_code == 0, query.output
    assert "[red]X[/red]00" in query.output and "[red]X[/red]01" in query.output
    quarantine = runner.invoke(app, ["quarantine", "--store", str(data.root)], env=wide)
    assert quarantine.exit_code == 0, quarantine.output
    assert "m:9: [/] [bold]not bold[/bold]" in quarantine.output and "Traceback" not in quarantine.output
    shown = runner.invoke(app, ["catalog", "show", version.version_id, "--store", str(data.root)], env=wide)
    assert shown.exit_code == 0 and shown.output.startswith(f"demo/{version.version_id}  role=train"), shown.output
