"""The nightly retraining loop end to end on tiny data, on real Prefect: build -> train -> evaluate ->
promote only if better, with the promotion history in the catalog."""

from __future__ import annotations

import json

import pytest

from jstip.storage.promotion import decide_promotion
from jstip.storage.registry import ModelRegistry
from jstip.synth import synthesize_corpus

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_nightly_promotes_the_first_model_then_only_a_better_one(prefect_server, tmp_path):
    from jstip.flows.nightly_retrain import nightly_retrain

    store = tmp_path / "data"
    night1 = synthesize_corpus(tmp_path / "night1", utterances=4, seed=21)
    night2 = synthesize_corpus(tmp_path / "night2", utterances=6, seed=21)  # night 1's 4 utterances + 2 new
    test = synthesize_corpus(tmp_path / "test", utterances=3, seed=22)
    config = tmp_path / "train.yaml"
    config.write_text("steps: 6\nbatch_size: 2\nwarmup_steps: 1\nmodel:\n  llm:\n    tiny: {vocab_size: 300, "
                      "hidden: 32, intermediate: 64}\n  encoder: {d_model: 32, ffn_dim: 64, layers: 1}\n")
    common = dict(store=str(store), test_manifest=str(test.nemo_manifest), train_config=str(config),
                  decoding="greedy")

    first = nightly_retrain(manifest=str(night1.nemo_manifest), **common)
    registry = ModelRegistry(store)
    (model1,) = registry.models()
    assert first.promote and registry.promoted("nightly").model_id == model1.model_id
    assert model1.parent_model is None
    # what `jstip demo` prints of such a run: every decoding with its meaning, the metrics explained,
    # examples, the decision
    from jstip.cli.common import console
    from jstip.cli.demo import print_downstream

    width, console.width = console.width, 250  # no wrapping inside the table's cells
    try:
        with console.capture() as captured:
            print_downstream(store, first)
    finally:
        console.width = width
    printed = " ".join(captured.get().split())
    assert f"model {model1.model_id}" in printed and "held-out test set demo-test" in printed
    assert "greedy" in printed and "the LLM alone, greedy" in printed and "(best)" in printed
    assert "WER: word errors" in printed and "entity accuracy: share of entity mentions" in printed
    assert printed.count("reference:") == 3 and "promotion on channel nightly: promoted (no incumbent" in printed

    # the second night trains on 2 processes: the train flow runs a torchrun DDP job (gloo) and waits for it
    second = nightly_retrain(manifest=str(night2.nemo_manifest), nproc_per_node=2, **common)
    model2 = next(m for m in registry.models() if m.model_id != model1.model_id)
    assert model2.metrics["processes"] == 2 and model2.metrics["sharding"] == "ddp"
    assert model2.parent_model == model1.model_id  # init: promoted
    assert model2.dataset_version != model1.dataset_version  # trained on the grown corpus
    test_versions = {v.version_id for v in __import__("jstip").storage.DatasetStore(store).versions("demo-test")}
    (test_version,) = test_versions  # the unchanged test corpus was built once

    expected = decide_promotion(registry.eval_utterances(model2.model_id, test_version, "greedy"),
                                registry.eval_utterances(model1.model_id, test_version, "greedy"))
    assert second.promote == expected.promote
    history = registry.promotions("nightly").to_pylist()
    assert [(h["candidate_id"], h["incumbent_id"], h["promoted"]) for h in history] == [
        (model1.model_id, None, True), (model2.model_id, model1.model_id, expected.promote)]
    winner = model2 if expected.promote else model1
    assert registry.promoted("nightly").model_id == winner.model_id
    assert json.loads(model2.config_json)["steps"] == 6

    # the test set was built after night 1's training data, yet every default is training data (dataset roles)
    from jstip.storage import DatasetStore

    data = DatasetStore(store)
    (test_set,) = data.versions("demo-test")
    assert test_set.role == "test" and test_set.created_at > data.version(model1.dataset_version).created_at
    assert data.version().version_id == model2.dataset_version
    assert data.training_version().version_id == model2.dataset_version
    columns, rows = data.user_query("SELECT count(*) FROM utterances")  # the unqualified views
    assert rows == [(data.version().row_counts["utterances"],)] and rows != [(test_set.row_counts["utterances"],)]
