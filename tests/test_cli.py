"""The `jstip` command line: every command has --help; errors are one clear line, not a traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from jstip.cli import app

runner = CliRunner(env={"COLUMNS": "160"})


@pytest.mark.parametrize("command", [[], ["synth"], ["build"], ["demo"], ["query"], ["catalog"],
                                     ["catalog", "list"], ["catalog", "show"]])
def test_every_command_has_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_synth_writes_a_corpus(tmp_path):
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "c"), "--utterances", "2", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "c" / "audio").glob("*.wav"))) == 2
    assert (tmp_path / "c" / "nemo_manifest.jsonl").read_text().count("\n") == 2
    # a short summary a person reads, not a Python repr
    assert result.output.startswith("synthesised 2 utterances (") and "SynthResult(" not in result.output
    # rich folds a long path over lines padded to the table's width
    assert str(tmp_path / "c" / "nemo_manifest.jsonl") in "".join(result.output.split())


def test_catalog_and_query_on_an_empty_store_say_so(tmp_path):
    # a --store without a catalog is no store: an error, not an empty list
    listing = runner.invoke(app, ["catalog", "list", "--store", str(tmp_path)])
    assert listing.exit_code == 1 and "nothing has been published to this store yet" in listing.output
    query = runner.invoke(app, ["query", "SELECT 1", "--store", str(tmp_path)])
    assert query.exit_code == 1 and "nothing has been published to this store yet" in query.output


def test_build_with_a_missing_manifest_is_one_clear_error(tmp_path):
    result = runner.invoke(app, ["build", "--manifest", str(tmp_path / "nope.jsonl"), "--store", str(tmp_path)])
    assert result.exit_code == 1
    assert "manifest not found" in result.output and "nope.jsonl" in result.output
    assert "Traceback" not in result.output


def test_build_with_an_invalid_config_is_one_clear_error(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("plan:\n  format: F9\n")
    result = runner.invoke(app, ["build", "--config", str(config), "--store", str(tmp_path)])
    assert result.exit_code == 1 and "bad.yaml: invalid configuration" in result.output
