"""The `train` flow on real Prefect, through the `jstip train` command."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from jstip.cli import app
from jstip.config import load_config
from jstip.storage.registry import ModelRegistry
from jstip.tasks.stages import build_in_process
from jstip.synth import synthesize_corpus

# A DataLoader worker forked from a flow run must exit cleanly (it once inherited Prefect's thread exit
# callbacks and failed at exit: "DataLoader worker exited unexpectedly", reported as an unraisable exception)
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")]


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_jstip_train_runs_the_flow_and_registers_a_model_naming_its_dataset(prefect_server, tmp_path):
    synth = synthesize_corpus(tmp_path / "synth", utterances=3, seed=2)
    store = tmp_path / "data"
    published = build_in_process(str(synth.nemo_manifest), None, str(store), load_config(None))
    config = tmp_path / "train.yaml"
    config.write_text("steps: 4\nbatch_size: 2\nwarmup_steps: 1\nmodel:\n  llm:\n    tiny: {vocab_size: 300, "
                      "hidden: 32, intermediate: 64}\n  encoder: {d_model: 32, ffn_dim: 64, layers: 1}\n")
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--store", str(store), "--config", str(config)])
    assert result.exit_code == 0, result.output
    (model,) = ModelRegistry(store).models()
    assert model.dataset_version == published.version_id and model.name == "jstip"
    assert f"model {model.model_id}" in result.output and published.version_id in result.output
    assert (model.path / "weights.pt").is_file() and model.metrics["steps_logged"] == 4

    listed = runner.invoke(app, ["models", "list", "--store", str(store)])
    assert listed.exit_code == 0 and model.model_id in listed.output

    missing = runner.invoke(app, ["train", "--store", str(store), "--version", "0000dead"])
    assert missing.exit_code == 1 and "no dataset version or dataset named '0000dead'" in missing.output


def test_jstip_pretrain_lm_registers_a_prior_and_train_starts_from_it(prefect_server, tmp_path):
    synth = synthesize_corpus(tmp_path / "synth", utterances=3, seed=2)
    store = tmp_path / "data"
    published = build_in_process(str(synth.nemo_manifest), None, str(store), load_config(None))
    prior_config = tmp_path / "prior.yaml"
    prior_config.write_text("lm: {vocab_size: 300, hidden: 32, intermediate: 64}\nbatch_size: 4\nwarmup_steps: 1\n")
    runner = CliRunner()
    result = runner.invoke(app, ["pretrain-lm", "--store", str(store), "--config", str(prior_config), "--steps", "3",
                                 "--general-sentences", "30"])
    assert result.exit_code == 0, result.output
    (prior,) = ModelRegistry(store).models()
    assert prior.name == "lm-prior" and prior.dataset_version == published.version_id
    printed = " ".join(result.output.split())  # rich wraps long lines
    assert f"LM prior {prior.model_id}" in printed and f"--base-llm {prior.model_id}" in printed

    config = tmp_path / "train.yaml"
    config.write_text("steps: 2\nbatch_size: 2\nwarmup_steps: 1\nmodel:\n  encoder: {d_model: 32, ffn_dim: 64, layers: 1}\n")
    trained = runner.invoke(app, ["train", "--store", str(store), "--config", str(config),
                                  "--base-llm", prior.model_id[:8]])
    assert trained.exit_code == 0, trained.output
    speech = next(m for m in ModelRegistry(store).models() if m.model_id != prior.model_id)
    assert speech.parent_model == prior.model_id and speech.config["model"]["llm"]["path"] == prior.model_id

    assert runner.invoke(app, ["pretrain-lm", "--help"]).exit_code == 0
    bad = runner.invoke(app, ["pretrain-lm", "--store", str(store), "--version", "0000dead"])
    assert bad.exit_code == 1 and "no dataset version or dataset named '0000dead'" in bad.output
