"""Paired statistics over seeds: is an arm's difference to the baseline larger than seed-to-seed noise?

Runs with the same seed see the same data in the same order and start from the same weights, so
an arm and the baseline form a pair per seed. The test works on the per-seed differences
d_i = arm_i - baseline_i:

- a two-sided paired t-test: t = mean(d) / (sd(d) / sqrt(n)), n - 1 degrees of freedom;
- a percentile bootstrap interval of mean(d): resample the n seeds with replacement.

With fewer than two pairs there is no test. The bootstrap interval is crude with a handful of
seeds (with two it is [min d, max d]): the t-test is the judgement, the interval is context.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import t as student_t

ALPHA = 0.05
TEST_NAME = "paired t-test (two-sided) on the per-seed differences arm - baseline"
BOOTSTRAP_NAME = "95% percentile bootstrap interval of the mean per-seed difference"
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


@dataclass
class Summary:
    """A metric over seeds: the values, their mean and sample standard deviation (None with one value)."""

    values: list[float]
    mean: float
    std: float | None
    min: float
    max: float

    def to_dict(self) -> dict[str, Any]:
        """As plain JSON-ready values."""
        return asdict(self)


@dataclass
class PairedDifference:
    """An arm against the baseline, seed by seed: the differences, the t-test and the bootstrap interval."""

    differences: list[float]
    mean: float
    std: float | None
    t: float | None  # None: fewer than two pairs, or differences without spread (see paired_t_test)
    p_value: float | None  # None: fewer than two pairs, no test
    ci_low: float | None
    ci_high: float | None

    @property
    def beyond_noise(self) -> bool | None:
        """Whether the paired t-test rejects "no difference" at ALPHA; None without a test."""
        return None if self.p_value is None else self.p_value < ALPHA

    def to_dict(self) -> dict[str, Any]:
        """As plain JSON-ready values, with the judgement."""
        return {**asdict(self), "beyond_noise": self.beyond_noise}


def summarise(values: Sequence[float]) -> Summary:
    """Mean, sample standard deviation (ddof 1), min and max of one metric over seeds."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("no values to summarise")
    std = float(x.std(ddof=1)) if x.size > 1 else None
    return Summary([float(v) for v in x], float(x.mean()), std, float(x.min()), float(x.max()))


def paired_t_test(differences: Sequence[float]) -> tuple[float | None, float | None]:
    """The t statistic and two-sided p-value of "the mean difference is 0"; (None, None) with < 2 pairs.

    Differences without spread have no t statistic: every seed then agrees exactly, so p is 1
    when they are all 0 and 0 when they are all the same non-zero number.
    """
    d = np.asarray(differences, dtype=float)
    n = d.size
    if n < 2:
        return None, None
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0 or not math.isfinite(sd):
        return None, (1.0 if mean == 0.0 else 0.0)
    t = mean / (sd / math.sqrt(n))
    return t, float(2.0 * student_t.sf(abs(t), n - 1))


def bootstrap_interval(
    differences: Sequence[float],
    level: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float] | None:
    """The percentile bootstrap interval of the mean difference (seeds resampled with replacement); None with < 2."""
    d = np.asarray(differences, dtype=float)
    if d.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_difference(arm: Sequence[float], baseline: Sequence[float]) -> PairedDifference:
    """Arm against baseline, pairs in the same order (the same seed at the same position)."""
    if len(arm) != len(baseline):
        raise ValueError(f"{len(arm)} arm values but {len(baseline)} baseline values: the pairs must match")
    d = [float(a) - float(b) for a, b in zip(arm, baseline)]
    summary = summarise(d)
    t, p = paired_t_test(d)
    ci = bootstrap_interval(d)
    return PairedDifference(d, summary.mean, summary.std, t, p, *(ci or (None, None)))
