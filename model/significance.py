"""How sure a difference in a metric is: the paired bootstrap over test utterances (and training seeds), the
intervals it gives, and verdicts on a claim from them. Promotion (jstip.storage.promotion.decide_promotion) and
the benchmarks' claims (benchmarks/jstip_ablation.py, demo_recipe.py) decide with these.

Every ratio metric here is a ratio of sums of per-utterance counts, so its sampling noise on a test set
is estimated by the bootstrap over utterances (Bisani & Ney 2004, "Bootstrap estimates for confidence
intervals in ASR performance evaluation"): draw the test set's utterances with replacement, recompute the
ratio, repeat; the 2.5% and 97.5% quantiles of the replicates bound a 95% percentile interval. Two
systems scored on the same utterances are compared *paired*: every replicate uses the same draw for
both, so the interval of their difference leaves out the variation both share (hard utterances are
hard for both). With several training seeds per system, each replicate also draws the seeds with
replacement, per system, so the interval covers training noise as well as test-set noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from jstip.model.metrics import ratio_counts


@dataclass(frozen=True)
class Interval:
    value: float  # the statistic on the full test set (all seeds)
    low: float
    high: float

    def excludes(self, x: float) -> bool:
        return self.low > x or self.high < x


def bootstrap_ratios(groups: Mapping[str, tuple[np.ndarray, np.ndarray]], *, resamples: int = 2000,
                     seed: int = 0) -> dict[str, np.ndarray]:
    """Bootstrap replicates of a ratio of sums, for several systems scored on the same utterances.

    groups: name -> (numerators, denominators), each of shape (seeds, utterances): the counts of one
    system (trained with `seeds` training seeds) on the same utterances, in the same order, as every other
    group. Replicate r draws the utterances with replacement once for all groups (paired) and, per group,
    its seeds with replacement; its value is sum(numerators) / sum(denominators) over the drawn seeds and
    utterances. Returns name -> (resamples,) replicates; NaN where a replicate drew no denominator."""
    rng = np.random.default_rng(seed)
    shapes = {name: np.shape(num) for name, (num, _) in groups.items()}
    utterances = {shape[1] for shape in shapes.values()}
    if len(utterances) != 1:
        raise ValueError(f"groups are scored on different numbers of utterances: {shapes}")
    (n,) = utterances
    draws = rng.integers(0, n, size=(resamples, n))
    utterance_weights = np.stack([np.bincount(row, minlength=n) for row in draws]).astype(np.float64)  # (R, N)
    out = {}
    for name, (num, den) in groups.items():
        num, den = np.atleast_2d(np.asarray(num, np.float64)), np.atleast_2d(np.asarray(den, np.float64))
        seeds = num.shape[0]
        seed_draws = rng.integers(0, seeds, size=(resamples, seeds)) if seeds > 1 else np.zeros((resamples, 1), int)
        seed_weights = np.stack([np.bincount(row, minlength=seeds) for row in seed_draws]).astype(np.float64)
        top = np.einsum("rs,rn,sn->r", seed_weights, utterance_weights, num)
        bottom = np.einsum("rs,rn,sn->r", seed_weights, utterance_weights, den)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1), np.nan)
    return out


def percentile_interval(value: float, replicates: np.ndarray, confidence: float = 0.95) -> Interval:
    tail = (1 - confidence) / 2
    low, high = np.nanquantile(replicates, [tail, 1 - tail])
    return Interval(float(value), float(low), float(high))


@dataclass(frozen=True)
class PairedComparison:
    """Candidate vs baseline on one metric over the same utterances: each value with its interval, and
    the difference candidate - baseline with its paired interval."""

    metric: str
    utterances: int
    candidate: Interval
    baseline: Interval
    difference: Interval

    def as_dict(self) -> dict:
        return {"metric": self.metric, "utterances": self.utterances,
                **{k: {"value": v.value, "low": v.low, "high": v.high}
                   for k, v in (("candidate", self.candidate), ("baseline", self.baseline),
                                ("difference", self.difference))}}


def _aligned(candidate: pa.Table, baseline: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Both tables in the same utterance order; every utterance scored by both."""
    cand_ids = candidate["utterance_id"].to_pylist()
    base_ids = baseline["utterance_id"].to_pylist()
    if set(cand_ids) != set(base_ids):
        only_c, only_b = sorted(set(cand_ids) - set(base_ids)), sorted(set(base_ids) - set(cand_ids))
        raise ValueError(f"a paired comparison needs the same utterances on both sides: {len(only_c)} only in the "
                         f"candidate's scores (e.g. {only_c[:3]}), {len(only_b)} only in the baseline's "
                         f"(e.g. {only_b[:3]})")
    position = {u: i for i, u in enumerate(base_ids)}
    return candidate, baseline.take(pa.array([position[u] for u in cand_ids]))


def paired_comparison(candidate: pa.Table, baseline: pa.Table, metric: str, *, resamples: int = 2000,
                      confidence: float = 0.95, seed: int = 0) -> PairedComparison:
    """Compare two systems' `utterance_scores` tables (paired by utterance_id) on a ratio metric, with
    percentile intervals from the paired bootstrap over utterances (see above)."""
    candidate, baseline = _aligned(candidate, baseline)
    c_num, c_den = ratio_counts(candidate, metric)
    b_num, b_den = ratio_counts(baseline, metric)
    if c_den.sum() == 0:
        raise ValueError(f"metric {metric!r} is undefined on these utterances (its denominator is 0)")
    replicates = bootstrap_ratios({"c": (c_num[None], c_den[None]), "b": (b_num[None], b_den[None])},
                                  resamples=resamples, seed=seed)
    c_value, b_value = c_num.sum() / c_den.sum(), b_num.sum() / b_den.sum()
    return PairedComparison(
        metric, candidate.num_rows,
        percentile_interval(c_value, replicates["c"], confidence),
        percentile_interval(b_value, replicates["b"], confidence),
        percentile_interval(c_value - b_value, replicates["c"] - replicates["b"], confidence))


# -- verdicts on a claim, from intervals -------------------------------------------------------------------

REPRODUCED, CONTRADICTED, UNDECIDED = "reproduced", "contradicted", "undecided"


def superiority_verdict(differences: Sequence[Interval]) -> str:
    """A claim that one system beats each of several others, from the intervals of (claimed better minus
    other) in the direction where positive is better: reproduced when every interval lies above 0,
    contradicted when any lies below 0 (the other is better beyond noise), undecided otherwise."""
    if not differences:
        raise ValueError("no differences to decide on")
    if any(d.high < 0 for d in differences):
        return CONTRADICTED
    if all(d.low > 0 for d in differences):
        return REPRODUCED
    return UNDECIDED


def equivalence_verdict(difference: Interval, margin: float) -> str:
    """A claim that two systems are on par (an equivalence test with margin `margin`, in the metric's
    units): reproduced when the interval of their difference lies within [-margin, margin], contradicted
    when it lies wholly outside (beyond +margin or below -margin), undecided otherwise (the interval
    straddles a margin: this test set cannot tell)."""
    if margin <= 0:
        raise ValueError(f"the equivalence margin must be > 0, not {margin}")
    if -margin <= difference.low and difference.high <= margin:
        return REPRODUCED
    if difference.low > margin or difference.high < -margin:
        return CONTRADICTED
    return UNDECIDED
