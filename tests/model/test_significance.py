"""Paired bootstrap intervals and verdicts (jstip.model.significance), on constructed numbers."""

from __future__ import annotations

import pytest


def test_bootstrap_is_paired_over_utterances_and_resamples_seeds():
    import numpy as np

    from jstip.model.significance import bootstrap_ratios, percentile_interval

    hits = np.array([1.0] * 60 + [0.0] * 90)
    ones = np.ones(150)
    same = bootstrap_ratios({"a": (hits[None], ones[None]), "b": (hits[None], ones[None])}, resamples=500)
    assert np.array_equal(same["a"], same["b"])  # the same draw for both: their difference is exactly 0
    interval = percentile_interval(0.4, same["a"])  # 0.4 +- the sampling noise of 150 utterances (se 0.04)
    assert 0.3 < interval.low < 0.36 and 0.44 < interval.high < 0.5

    better = np.array([1.0] * 100 + [0.0] * 50)  # right on 40 more utterances, wrong on none more
    reps = bootstrap_ratios({"c": (better[None], ones[None]), "b": (hits[None], ones[None])}, resamples=2000)
    diff = percentile_interval(100 / 150 - 60 / 150, reps["c"] - reps["b"])
    assert diff.value == pytest.approx(40 / 150) and 0.17 < diff.low < diff.value < diff.high < 0.36

    # two training seeds, one perfect and one always wrong: pooled it is 0.5, but the seed draw is resampled
    seeds = bootstrap_ratios({"s": (np.stack([ones, 0 * ones]), np.stack([ones, ones]))}, resamples=400)
    assert set(np.round(seeds["s"], 6)) == {0.0, 0.5, 1.0}


@pytest.mark.parametrize("bounds, verdict", [
    ([(0.01, 0.2), (0.05, 0.3)], "reproduced"),
    ([(0.01, 0.2), (-0.05, 0.3)], "undecided"),
    ([(0.01, 0.2), (-0.3, -0.02)], "contradicted"),
    ([(-0.1, 0.1)], "undecided"),
])
def test_superiority_verdict(bounds, verdict):
    from jstip.model.significance import Interval, superiority_verdict

    assert superiority_verdict([Interval((lo + hi) / 2, lo, hi) for lo, hi in bounds]) == verdict


@pytest.mark.parametrize("bounds, verdict", [
    ((-0.04, 0.03), "reproduced"),   # on par: the whole interval within +-0.05
    ((-0.02, 0.09), "undecided"),    # cannot tell at this noise
    ((0.06, 0.2), "contradicted"),   # the first is better beyond the margin
    ((-0.3, -0.051), "contradicted"),
])
def test_equivalence_verdict(bounds, verdict):
    from jstip.model.significance import Interval, equivalence_verdict

    lo, hi = bounds
    assert equivalence_verdict(Interval((lo + hi) / 2, lo, hi), margin=0.05) == verdict
    with pytest.raises(ValueError, match="margin must be > 0"):
        equivalence_verdict(Interval(0, -0.01, 0.01), margin=0)
