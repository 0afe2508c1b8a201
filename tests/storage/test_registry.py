"""The model registry (jstip.storage.registry) on a real DuckDB catalog, and the `jstip models` / `jstip evals`
commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jstip.cli import app
from jstip.storage import DatasetStore
from jstip.storage.promotion import PromotionPolicy, decide_promotion
from jstip.storage.registry import EVAL_RESULTS_SCHEMA, ModelRegistry
from jstip.storage.store import RegistryError
from jstip.model.metrics import score_hypotheses, utterance_scores

runner = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    DatasetStore(tmp_path).connect().close()  # a catalog as a build leaves it, before any model
    return ModelRegistry(tmp_path)


def _register(registry: ModelRegistry, model_id: str, parent=None):
    return registry.register_model(model_id=model_id, name="speechlm", dataset_version="v0123",
                                   config_json=json.dumps({"lr": 1e-4}), metrics={"loss": 1.25},
                                   path=f"/ckpt/{model_id}", parent_model=parent)


REFERENCE = "please take metformin today now"  # 5 words, one entity


def _rows(entity_right: list[bool], extra_errors: list[int] | None = None) -> list[dict]:
    """One utterance per item: its entity recognised or not ("metoprolol" for "metformin"), and that many
    more words substituted (0-4): exact, known entity accuracy and WER."""
    rows = []
    for i, right in enumerate(entity_right):
        words = REFERENCE.split()
        words[2] = "metformin" if right else "metoprolol"
        for j in [0, 1, 3, 4][:(extra_errors or [0] * len(entity_right))[i]]:
            words[j] = "x"
        rows.append({"utterance_id": f"u{i:03d}", "domain": "med" if i % 2 else "bank", "reference": REFERENCE,
                     "hypothesis": " ".join(words), "entities": ["metformin"]})
    return rows


def _evaluate(registry: ModelRegistry, model_id: str, entity_right: list[bool], extra_errors=None,
              decoding="greedy"):
    rows = _rows(entity_right, extra_errors)
    return registry.record_eval(model_id=model_id, dataset_version="v0123", test_set="heldout", decoding=decoding,
                                metrics=score_hypotheses(rows), utterances=utterance_scores(rows))


def _record(registry: ModelRegistry, model_id: str, entity_accuracy: float, wer: float, decoding="greedy"):
    """Aggregate figures only (no per-utterance scores)."""
    return registry.record_eval(model_id=model_id, dataset_version="v0123", test_set="heldout", decoding=decoding,
                                metrics=[("all", "entity_accuracy", entity_accuracy), ("all", "wer", wer),
                                         ("med", "entity_accuracy", 0.0), ("med", "wer", 1.0)])


def _pattern(n: int, right: set[int]) -> list[bool]:
    return [i in right for i in range(n)]


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
    assert _record(registry, "m1", 0.5, 0.2) == 4
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
    _record(registry, "m1", 0.75, 0.1)
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


N = 150  # test utterances, one entity each


def test_decide_promotion_promotes_only_gains_beyond_noise():
    incumbent = utterance_scores(_rows(_pattern(N, set(range(60)))))  # entity accuracy 0.4
    first = decide_promotion(incumbent, None)
    assert first.promote and first.reason == "no incumbent: promoted with entity_accuracy 0.4 (150 utterances)"

    # 40 more entities right, none lost: +0.267, far beyond noise (WER better too)
    clear = decide_promotion(utterance_scores(_rows(_pattern(N, set(range(100))))), incumbent)
    assert clear.promote and (clear.candidate_value, clear.incumbent_value) == (100 / 150, 0.4)
    assert "better beyond noise and min_gain 0" in clear.reason
    difference = clear.evidence["entity_accuracy"]["difference"]
    assert difference["value"] == pytest.approx(40 / 150) and 0.15 < difference["low"] < difference["value"]
    assert clear.evidence["wer"]["difference"]["value"] == pytest.approx(-40 / 750)
    assert clear.evidence["utterances"] == N and clear.evidence["policy"]["guard_margin"] == 0.02

    # +3 net (10 gained, 7 lost): within noise, the incumbent stays
    noisy = set(range(7, 70))
    within = decide_promotion(utterance_scores(_rows(_pattern(N, noisy))), incumbent)
    assert not within.promote and within.candidate_value == pytest.approx(63 / 150)
    assert "not better beyond noise" in within.reason and "the incumbent stays" in within.reason
    interval = within.evidence["entity_accuracy"]["difference"]
    assert interval["low"] < 0 < interval["high"]

    # a real entity gain, but every utterance has one more word wrong: WER +0.2 > guard margin 0.02
    worse_wer = decide_promotion(utterance_scores(_rows(_pattern(N, set(range(100))), [1] * N)), incumbent)
    assert not worse_wer.promote
    assert "worse by more than guard_margin 0.02, so not promoted whatever its entity_accuracy" in worse_wer.reason
    # ... while a margin that allows it promotes
    lenient = decide_promotion(utterance_scores(_rows(_pattern(N, set(range(100))), [1] * N)), incumbent,
                               PromotionPolicy(guard_margin=0.5))
    assert lenient.promote

    # same entities, fewer other word errors beyond noise: the WER tie-break promotes
    base = utterance_scores(_rows(_pattern(N, set(range(60))), [1] * N))
    tie = decide_promotion(utterance_scores(_rows(_pattern(N, set(range(60))))), base)
    assert tie.promote and "not worse; wer 0.12 vs 0.32 (difference -0.2000" in tie.reason
    assert tie.reason.endswith("lower is better): better beyond noise (tie-break)")
    assert not decide_promotion(base, base).promote  # identical: nothing to gain

    # +0.267 beyond noise but not beyond min_gain 0.3 (and WER unchanged: each gained entity costs a word)
    traded = utterance_scores(_rows(_pattern(N, set(range(100))), [0] * 60 + [1] * 40 + [0] * 50))
    assert decide_promotion(traded, incumbent).promote
    short = decide_promotion(traded, incumbent, PromotionPolicy(min_gain=0.3))
    assert not short.promote and "not better beyond noise and min_gain 0.3" in short.reason
    # entity accuracy clearly worse (the WER guard would refuse it first)
    worse = decide_promotion(utterance_scores(_rows(_pattern(N, set(range(20))))), incumbent,
                             PromotionPolicy(guard_metric=None))
    assert not worse.promote and worse.reason == (
        "entity_accuracy 0.1333 vs 0.4 (difference -0.2667, 95% interval -0.3400..-0.1933, higher is better); "
        "paired bootstrap over 150 utterances: worse beyond noise")


def test_promotion_policy_and_paired_scores_are_checked():
    with pytest.raises(RegistryError, match="per-utterance ratio metric"):
        PromotionPolicy(metric="bleu")
    with pytest.raises(RegistryError, match="confidence must lie in"):
        PromotionPolicy(confidence=1.0)
    with pytest.raises(RegistryError, match="guard_metric must differ"):
        PromotionPolicy(metric="wer", guard_metric="wer")
    with pytest.raises(RegistryError, match="min_gain and guard_margin must be >= 0"):
        PromotionPolicy(guard_margin=-0.1)
    one = utterance_scores(_rows(_pattern(4, {0})))
    other = utterance_scores(_rows(_pattern(5, {0})))
    with pytest.raises(RegistryError, match="the same utterances on both sides: 0 only in the candidate's .* 1 "
                                            r"only in the baseline's \(e.g. \['u004'\]\)"):
        decide_promotion(one, other)


def test_promote_if_better(registry, tmp_path):
    for model_id in ("m1", "m2", "m3", "m4", "m5"):
        _register(registry, model_id)
    _evaluate(registry, "m1", _pattern(N, set(range(60))))  # 0.4
    _evaluate(registry, "m2", _pattern(N, set(range(100))))  # 0.667, beyond noise: promoted
    _evaluate(registry, "m3", _pattern(N, set(range(3, 103))))  # same accuracy as m2, other utterances: kept
    _evaluate(registry, "m4", _pattern(N, set(range(140))), [2] * N)  # far better entities, WER +0.4: kept
    _evaluate(registry, "m5", _pattern(N, set(range(130))))  # 0.867: promoted
    promote = dict(channel="nightly", test_set="heldout", decoding="greedy")
    assert registry.promoted("nightly") is None
    decisions = [registry.promote_if_better(m, **promote) for m in ("m1", "m2", "m3", "m4", "m5")]
    assert [d.promote for d in decisions] == [True, True, False, False, True]
    assert registry.promoted("nightly").model_id == "m5"
    assert registry.promoted("release") is None
    assert registry.channels() == {"nightly": "m5"}
    history = registry.promotions("nightly").to_pylist()
    assert [(h["candidate_id"], h["incumbent_id"], h["promoted"], h["metric"], h["candidate_value"],
             h["incumbent_value"]) for h in history] == [
        ("m1", None, True, "entity_accuracy", 0.4, None),
        ("m2", "m1", True, "entity_accuracy", 100 / 150, 0.4),
        ("m3", "m2", False, "entity_accuracy", 100 / 150, 100 / 150),
        ("m4", "m2", False, "entity_accuracy", 140 / 150, 100 / 150),
        ("m5", "m2", True, "entity_accuracy", 130 / 150, 100 / 150),
    ]
    for h, d in zip(history, decisions):
        assert h["reason"] == d.reason
    # every decision carries its numbers
    evidence = json.loads(history[3]["evidence_json"])
    assert (evidence["test_set"], evidence["dataset_version"], evidence["decoding"]) == ("heldout", "v0123", "greedy")
    assert evidence["wer"]["candidate"]["value"] == pytest.approx((300 + 10) / 750)
    assert evidence["wer"]["baseline"]["value"] == pytest.approx(50 / 750)
    assert evidence["entity_accuracy"]["difference"]["value"] == pytest.approx(40 / 150)
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
    _register(registry, "m3")
    with pytest.raises(RegistryError, match="model m1 has no eval results on test set 'heldout' with decoding "
                                            "'greedy'.*jstip evals"):
        registry.promote_if_better("m1", channel="nightly", test_set="heldout", decoding="greedy")
    _evaluate(registry, "m1", _pattern(4, {0, 1}))
    registry.promote_if_better("m1", channel="nightly", test_set="heldout", decoding="greedy")
    _evaluate(registry, "m2", _pattern(4, {0, 1, 2}), decoding="beam4")
    # the incumbent was never evaluated with beam4: no comparison on different figures
    with pytest.raises(RegistryError, match="the incumbent of channel 'nightly', model m1, has no eval results"):
        registry.promote_if_better("m2", channel="nightly", test_set="heldout", decoding="beam4")
    # figures without the per-utterance scores behind them cannot be compared with a paired test
    _record(registry, "m3", 0.9, 0.1)
    with pytest.raises(RegistryError, match="no per-utterance scores of model m3 .* `jstip evaluate m3 --test-version v0123 --decoding greedy"):
        registry.promote_if_better("m3", channel="nightly", test_set="heldout", decoding="greedy")
    assert registry.promotions().num_rows == 1  # a failed decision records nothing


def test_models_and_evals_commands(registry, tmp_path):
    store = ["--store", str(tmp_path)]
    assert "no models registered" in runner.invoke(app, ["models", "list", *store]).output
    assert "no eval results" in runner.invoke(app, ["evals", *store]).output
    _register(registry, "m1")
    _evaluate(registry, "m1", _pattern(4, {0, 1}), [0, 0, 2, 0])  # entity accuracy 0.5; WER 0.2: bank 0.3, med 0.1
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
    assert len(lines) == 3 and "0.2000" in lines[0] and "0.3000" in lines[1] and "0.1000" in lines[2]  # all, bank, med
    unknown = runner.invoke(app, ["models", "show", "zz", *store])
    assert unknown.exit_code == 1 and "no model 'zz'" in unknown.output and "Traceback" not in unknown.output


@pytest.mark.parametrize("command", [["models"], ["models", "list"], ["models", "show"], ["evals"]])
def test_registry_commands_have_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output
