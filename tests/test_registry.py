"""The model registry (jstip.storage.registry) on a real DuckDB catalog, and the `jstip models` / `jstip evals`
commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jstip.cli import app
from jstip.storage import DatasetStore
from jstip.storage.registry import (
    EVAL_RESULTS_SCHEMA,
    ModelRegistry,
    PromotionDecision,
    RegistryError,
    decide_promotion,
)

runner = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    DatasetStore(tmp_path).connect().close()  # a catalog as a build leaves it, before any model
    return ModelRegistry(tmp_path)


def _register(registry: ModelRegistry, model_id: str, parent=None):
    return registry.register_model(model_id=model_id, name="speechlm", dataset_version="v0123",
                                   config_json=json.dumps({"lr": 1e-4}), metrics={"loss": 1.25},
                                   path=f"/ckpt/{model_id}", parent_model=parent)


def _evaluate(registry: ModelRegistry, model_id: str, entity_accuracy: float, wer: float, decoding="greedy"):
    return registry.record_eval(model_id=model_id, dataset_version="v0123", test_set="heldout", decoding=decoding,
                                metrics=[("all", "entity_accuracy", entity_accuracy), ("all", "wer", wer),
                                         ("med", "entity_accuracy", 0.0), ("med", "wer", 1.0)])


def test_reads_on_a_store_without_a_catalog_are_empty(tmp_path):
    registry = ModelRegistry(tmp_path / "nothing-here")
    assert registry.models() == [] and registry.promoted() is None and registry.channels() == {}
    assert registry.eval_results().schema == EVAL_RESULTS_SCHEMA and registry.eval_results().num_rows == 0
    assert registry.promotions().num_rows == 0
    assert not (tmp_path / "nothing-here").exists()  # reading creates nothing


def test_register_and_look_up(registry):
    first = _register(registry, "a1b2c3")
    second = _register(registry, "a1ffff", parent="a1b2c3")
    assert [m.model_id for m in registry.models()] == ["a1b2c3", "a1ffff"]  # oldest first
    assert registry.models(name="other") == []
    found = registry.model("a1b")  # unique prefix
    assert found == first
    assert (found.name, found.dataset_version, found.metrics, found.path, found.config) == \
        ("speechlm", "v0123", {"loss": 1.25}, Path("/ckpt/a1b2c3"), {"lr": 1e-4})
    assert registry.model("a1ffff").parent_model == "a1b2c3" == second.parent_model
    with pytest.raises(RegistryError, match=r"ambiguous: \['a1b2c3', 'a1ffff'\].*jstip models list"):
        registry.model("a1")
    with pytest.raises(RegistryError, match="no model 'zz'.*jstip models list"):
        registry.model("zz")


def test_register_is_idempotent_per_model_id(registry):
    first = _register(registry, "m1")
    assert _register(registry, "m1") == first
    assert len(registry.models()) == 1
    with pytest.raises(RegistryError, match="m1 is already registered with a different dataset_version"):
        registry.register_model(model_id="m1", name="speechlm", dataset_version="other", config_json='{"lr": 0.0001}',
                                metrics={}, path="/ckpt/m1")
    with pytest.raises(RegistryError, match="config_json is not JSON"):
        registry.register_model(model_id="m2", name="x", dataset_version="v", config_json="{", metrics={}, path="/p")
    with pytest.raises(RegistryError, match="parent model 'nope' is not registered"):
        _register(registry, "m3", parent="nope")


def test_eval_results_round_trip(registry):
    _register(registry, "m1")
    _register(registry, "m2")
    assert _evaluate(registry, "m1", 0.5, 0.2) == 4
    registry.record_eval(model_id="m2", dataset_version="v0123", test_set="other", decoding="beam4",
                         metrics=[("all", "wer", 0.3)])
    rows = registry.eval_results("m1").to_pylist()
    assert [(r["model_id"], r["dataset_version"], r["test_set"], r["decoding"], r["domain"], r["metric"], r["value"])
            for r in rows] == [("m1", "v0123", "heldout", "greedy", "all", "entity_accuracy", 0.5),
                               ("m1", "v0123", "heldout", "greedy", "all", "wer", 0.2),
                               ("m1", "v0123", "heldout", "greedy", "med", "entity_accuracy", 0.0),
                               ("m1", "v0123", "heldout", "greedy", "med", "wer", 1.0)]
    assert registry.eval_results(test_set="other").column("model_id").to_pylist() == ["m2"]
    assert registry.eval_results().num_rows == 5
    # the same evaluation again replaces its rows
    _evaluate(registry, "m1", 0.75, 0.1)
    assert sorted(registry.eval_results("m1").column("value").to_pylist()) == [0.0, 0.1, 0.75, 1.0]
    with pytest.raises(RegistryError, match=r"\(all, wer\) given twice"):
        registry.record_eval(model_id="m1", dataset_version="v", test_set="t", decoding="d",
                             metrics=[("all", "wer", 0.1), ("all", "wer", 0.2)])
    with pytest.raises(RegistryError, match="not a finite number"):
        registry.record_eval(model_id="m1", dataset_version="v", test_set="t", decoding="d",
                             metrics=[("all", "wer", float("nan"))])
    with pytest.raises(RegistryError, match="no model 'zz'"):
        registry.record_eval(model_id="zz", dataset_version="v", test_set="t", decoding="d",
                             metrics=[("all", "wer", 0)])


def test_decide_promotion():
    assert decide_promotion({"entity_accuracy": 0.5}, None) == \
        PromotionDecision(True, "no incumbent: promoted with entity_accuracy 0.5", 0.5, None)
    better = decide_promotion({"entity_accuracy": 0.8, "wer": 0.3}, {"entity_accuracy": 0.7, "wer": 0.1})
    assert better == PromotionDecision(True, "entity_accuracy better: 0.8 vs 0.7 (higher is better)", 0.8, 0.7)
    assert not decide_promotion({"wer": 0.2}, {"wer": 0.1}, metric="wer", tie_break=None).promote  # lower is better
    assert decide_promotion({"wer": 0.1}, {"wer": 0.2}, metric="wer", tie_break=None).promote
    small = decide_promotion({"entity_accuracy": 0.705}, {"entity_accuracy": 0.7}, min_improvement=0.01)
    assert not small.promote and "not more than min_improvement 0.01" in small.reason
    tie = decide_promotion({"entity_accuracy": 0.7, "wer": 0.1}, {"entity_accuracy": 0.7 + 1e-15, "wer": 0.1})
    assert tie == PromotionDecision(False, "entity_accuracy tied at 0.7 and wer tied at 0.1: the incumbent stays",
                                    0.7, 0.7 + 1e-15)
    with pytest.raises(RegistryError, match="no known direction for metric 'bogus'"):
        decide_promotion({"bogus": 1.0}, None, metric="bogus")
    with pytest.raises(RegistryError, match="the incumbent has no 'wer' result"):
        decide_promotion({"entity_accuracy": 0.7, "wer": 0.1}, {"entity_accuracy": 0.7})


def test_promote_if_better(registry, tmp_path):
    for model_id in ("m1", "m2", "m3", "m4", "m5"):
        _register(registry, model_id)
    _evaluate(registry, "m1", 0.50, 0.20)
    _evaluate(registry, "m2", 0.60, 0.25)  # better entity accuracy: promoted
    _evaluate(registry, "m3", 0.55, 0.05)  # worse entity accuracy (better WER does not matter): not promoted
    _evaluate(registry, "m4", 0.60, 0.30)  # tied with m2, worse WER: not promoted
    _evaluate(registry, "m5", 0.60, 0.24)  # tied with m2, better WER: promoted
    promote = dict(channel="nightly", test_set="heldout", decoding="greedy")
    assert registry.promoted("nightly") is None
    decisions = [registry.promote_if_better(m, **promote) for m in ("m1", "m2", "m3", "m4", "m5")]
    assert [d.promote for d in decisions] == [True, True, False, False, True]
    assert registry.promoted("nightly").model_id == "m5"
    assert registry.promoted("release") is None
    assert registry.channels() == {"nightly": "m5"}
    history = registry.promotions("nightly").to_pylist()
    assert [(h["candidate_id"], h["incumbent_id"], h["promoted"], h["metric"], h["candidate_value"],
             h["incumbent_value"], h["reason"]) for h in history] == [
        ("m1", None, True, "entity_accuracy", 0.5, None, "no incumbent: promoted with entity_accuracy 0.5"),
        ("m2", "m1", True, "entity_accuracy", 0.6, 0.5, "entity_accuracy better: 0.6 vs 0.5 (higher is better)"),
        ("m3", "m2", False, "entity_accuracy", 0.55, 0.6, "entity_accuracy worse: 0.55 vs 0.6 (higher is better)"),
        ("m4", "m2", False, "entity_accuracy", 0.6, 0.6,
         "entity_accuracy tied at 0.6; wer worse: 0.3 vs 0.25 (lower is better)"),
        ("m5", "m2", True, "entity_accuracy", 0.6, 0.6,
         "entity_accuracy tied at 0.6; wer better: 0.24 vs 0.25 (lower is better)"),
    ]
    assert decisions[4].candidate_id == "m5" and decisions[4].incumbent_id == "m2"
    # the promoted model again: recorded, not promoted
    again = registry.promote_if_better("m5", **promote)
    assert not again.promote and again.reason == "already the promoted model of channel 'nightly'"
    assert registry.promotions().num_rows == 6 and registry.promoted("nightly").model_id == "m5"
    # the dataset catalog is untouched
    assert DatasetStore(tmp_path).versions() == []


def test_promotion_needs_eval_results(registry):
    _register(registry, "m1")
    _register(registry, "m2")
    with pytest.raises(RegistryError, match="model m1 has no eval results on test set 'heldout' with decoding "
                                            "'greedy'.*jstip evals"):
        registry.promote_if_better("m1", channel="nightly", test_set="heldout", decoding="greedy")
    _evaluate(registry, "m1", 0.5, 0.2)
    registry.promote_if_better("m1", channel="nightly", test_set="heldout", decoding="greedy")
    _evaluate(registry, "m2", 0.6, 0.2, decoding="beam4")
    # the incumbent was never evaluated with beam4: no comparison on different figures
    with pytest.raises(RegistryError, match="the incumbent of channel 'nightly', model m1, has no eval results"):
        registry.promote_if_better("m2", channel="nightly", test_set="heldout", decoding="beam4")
    assert registry.promotions().num_rows == 1  # a failed decision records nothing


def test_models_and_evals_commands(registry, tmp_path):
    store = ["--store", str(tmp_path)]
    assert "no models registered" in runner.invoke(app, ["models", "list", *store]).output
    assert "no eval results" in runner.invoke(app, ["evals", *store]).output
    _register(registry, "m1")
    _evaluate(registry, "m1", 0.5, 0.2)
    registry.promote_if_better("m1", channel="nightly", test_set="heldout", decoding="greedy")

    listing = runner.invoke(app, ["models", "list", *store])
    assert listing.exit_code == 0, listing.output
    assert "m1" in listing.output and "speechlm" in listing.output and "nightly" in listing.output
    shown = runner.invoke(app, ["models", "show", "m", *store])
    assert shown.exit_code == 0, shown.output
    assert "speechlm/m1" in shown.output and "heldout" in shown.output and "0.5000" in shown.output
    assert '"lr": 0.0001' in shown.output
    evals = runner.invoke(app, ["evals", "--model", "m1", "--test-set", "heldout", "-m", "wer", *store])
    assert evals.exit_code == 0, evals.output
    lines = [line for line in evals.output.splitlines() if "heldout" in line]
    assert len(lines) == 2 and "0.2000" in lines[0] and "1.0000" in lines[1]  # the all and med rows
    unknown = runner.invoke(app, ["models", "show", "zz", *store])
    assert unknown.exit_code == 1 and "no model 'zz'" in unknown.output and "Traceback" not in unknown.output


@pytest.mark.parametrize("command", [["models"], ["models", "list"], ["models", "show"], ["evals"]])
def test_registry_commands_have_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output
