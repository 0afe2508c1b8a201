"""The promotion rule: a pure function of two models' per-utterance scores (`decide_promotion`, with the rule
in `PromotionPolicy`) that says whether a candidate replaces the incumbent on a channel, and why, with every
number it used. ModelRegistry.promote_if_better applies it under the store's write lock and records it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from jstip.storage.store import RegistryError

# Which way is better, per metric of jstip.model.metrics (and the usual others). +1: higher is better.
METRIC_DIRECTIONS: dict[str, int] = {
    "entity_accuracy": +1, "accuracy": +1, "entity_hits": +1, "hits": +1, "bleu": +1,
    "wer": -1, "cer": -1, "eer": -1, "hallucination_rate": -1, "empty_hypothesis_rate": -1,
    "substitutions": -1, "deletions": -1, "insertions": -1, "entity_errors": -1, "hallucinations": -1,
    "empty_hypotheses": -1, "loss": -1,
}


def metric_direction(metric: str) -> int:
    """+1 when a higher value of `metric` is better, -1 when lower is better."""
    if metric in METRIC_DIRECTIONS:
        return METRIC_DIRECTIONS[metric]
    if metric.endswith("accuracy"):
        return +1
    if metric.endswith(("error_rate", "_wer", "_cer", "_loss")):
        return -1
    raise RegistryError(f"no known direction for metric {metric!r}: use one of {sorted(METRIC_DIRECTIONS)} "
                        "(or a name ending in accuracy / error_rate)")


@dataclass(frozen=True)
class PromotionPolicy:
    """When a candidate replaces the incumbent (`decide_promotion`); every field is a parameter of the
    nightly-retrain flow.

    metric: the metric a candidate must improve (entity accuracy, the JSTIP paper's measure).
    min_gain: the improvement it must show, in the metric's units, *beyond noise*: the lower end of the
        `confidence` interval of the paired difference (bootstrap over the test set's utterances,
        jstip.model.significance.paired_comparison) must exceed it. 0 with confidence 0.95 is a one-sided
        test at the 2.5% level: a gain the test set cannot tell from luck does not promote.
    guard_metric / guard_margin: a candidate worse on `guard_metric` (WER) than the incumbent by more than
        `guard_margin` (absolute, point estimates on the whole test set) is never promoted, whatever it
        gains on `metric`. When the `metric` change is within noise, a `guard_metric` improvement beyond
        noise promotes (the tie-break).
    resamples / seed: of the bootstrap (a decision is reproducible).
    """

    metric: str = "entity_accuracy"
    min_gain: float = 0.0
    confidence: float = 0.95
    guard_metric: str | None = "wer"
    guard_margin: float = 0.02
    resamples: int = 2000
    seed: int = 0

    def __post_init__(self):
        from jstip.model.metrics import RATIO_COUNTS

        for name in (self.metric, self.guard_metric):
            if name is not None and name not in RATIO_COUNTS:
                raise RegistryError(f"promotion metric {name!r}: the paired test needs a per-utterance ratio metric, "
                                    f"one of {sorted(RATIO_COUNTS)}")
            if name is not None:
                metric_direction(name)
        if self.guard_metric == self.metric:
            raise RegistryError(f"guard_metric must differ from metric ({self.metric!r}), or be None")
        if self.min_gain < 0 or self.guard_margin < 0:
            raise RegistryError(f"min_gain and guard_margin must be >= 0, not {self.min_gain} and {self.guard_margin}")
        if not 0 < self.confidence < 1:
            raise RegistryError(f"confidence must lie in (0, 1), not {self.confidence}")
        if self.resamples < 100:
            raise RegistryError(f"resamples must be >= 100 for a usable interval, not {self.resamples}")


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str
    candidate_value: float
    incumbent_value: float | None
    candidate_id: str | None = None  # set by ModelRegistry.promote_if_better; decide_promotion knows no ids
    incumbent_id: str | None = None
    evidence: dict | None = None  # the numbers behind it: policy, intervals, utterances (promotions.evidence_json)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _signed(value: float) -> str:
    return f"{value:+.4f}"


def _comparison_text(comparison, confidence: float) -> str:
    d = comparison.difference
    better = "higher" if metric_direction(comparison.metric) > 0 else "lower"
    return (f"{comparison.metric} {_fmt(comparison.candidate.value)} vs {_fmt(comparison.baseline.value)} "
            f"(difference {_signed(d.value)}, {confidence:.0%} interval {_signed(d.low)}..{_signed(d.high)}, "
            f"{better} is better)")


def _improvement(comparison, direction: int):
    """The interval of candidate-minus-incumbent turned so that positive means better."""
    from jstip.model.significance import Interval

    d = comparison.difference
    return d if direction > 0 else Interval(-d.value, -d.high, -d.low)


def decide_promotion(candidate: pa.Table, incumbent: pa.Table | None,
                     policy: PromotionPolicy = PromotionPolicy()) -> PromotionDecision:
    """Whether a candidate should replace the incumbent, from both models' per-utterance scores on the
    same test utterances (jstip.model.metrics.utterance_scores tables); the rule is PromotionPolicy's.

    In order: no incumbent -> promote. The guard metric worse by more than guard_margin -> keep the
    incumbent. The metric better with the whole interval above min_gain -> promote. The metric worse
    with the whole interval below 0 -> keep. Otherwise the metric's change is within noise: promote only
    if the guard metric is better with its whole interval above 0, else keep. `evidence` holds every
    number the decision used.
    """
    from jstip.model.metrics import ratio_counts
    from jstip.model.significance import paired_comparison

    options = dict(resamples=policy.resamples, confidence=policy.confidence, seed=policy.seed)
    metric = policy.metric
    numerator, denominator = ratio_counts(candidate, metric)
    if denominator.sum() == 0:
        raise RegistryError(f"the candidate's {metric} is undefined on this test set (no reference "
                            f"{'entities' if metric == 'entity_accuracy' else 'words'})")
    value = float(numerator.sum() / denominator.sum())
    evidence: dict = {"policy": {k: getattr(policy, k) for k in policy.__dataclass_fields__},
                      "utterances": candidate.num_rows}
    if incumbent is None:
        evidence["candidate"] = {metric: value}
        return PromotionDecision(True, f"no incumbent: promoted with {metric} {_fmt(value)} "
                                 f"({candidate.num_rows} utterances)", value, None, evidence=evidence)
    try:
        main = paired_comparison(candidate, incumbent, metric, **options)
        guard = (paired_comparison(candidate, incumbent, policy.guard_metric, **options)
                 if policy.guard_metric else None)
    except ValueError as e:
        raise RegistryError(f"cannot compare candidate and incumbent: {e}") from None
    evidence[metric] = main.as_dict()
    held = main.baseline.value
    gain = _improvement(main, metric_direction(metric))
    gain_text = _comparison_text(main, policy.confidence) + f"; paired bootstrap over {main.utterances} utterances"
    guard_text, guard_gain = "", None
    if guard is not None:
        evidence[policy.guard_metric] = guard.as_dict()
        guard_gain = _improvement(guard, metric_direction(policy.guard_metric))
        guard_text = _comparison_text(guard, policy.confidence)
        if -guard_gain.value > policy.guard_margin:
            return PromotionDecision(False, f"{guard_text}: worse by more than guard_margin "
                                     f"{_fmt(policy.guard_margin)}, so not promoted whatever its {metric} "
                                     f"({gain_text})", value, held, evidence=evidence)
    guard_note = f"; {guard_text}" if guard_text else ""
    if gain.low > policy.min_gain:
        return PromotionDecision(True, f"{gain_text}: better beyond noise and min_gain {_fmt(policy.min_gain)}"
                                 f"{guard_note}", value, held, evidence=evidence)
    if gain.high < 0:
        return PromotionDecision(False, f"{gain_text}: worse beyond noise{guard_note}", value, held, evidence=evidence)
    if guard_gain is not None and guard_gain.low > 0:
        return PromotionDecision(True, f"{gain_text}: not better beyond noise and min_gain {_fmt(policy.min_gain)}, "
                                 f"not worse; {guard_text}: better beyond noise (tie-break)",
                                 value, held, evidence=evidence)
    return PromotionDecision(False, f"{gain_text}: not better beyond noise and min_gain {_fmt(policy.min_gain)}"
                             f"{guard_note}: the incumbent stays", value, held, evidence=evidence)
