"""Uncertainty of evaluation scores: bootstrap confidence intervals and paired tests.

Pure functions on per-row 0/1 outcomes (numpy only). An accuracy is a mean of outcomes, so:

- :func:`bootstrap_ci`: percentile bootstrap interval of the mean (rows resampled with
  replacement, ``n_boot`` times, a fixed ``seed``: the same rows give the same interval);
- :func:`paired_comparison`: two models on the *same* entries. The difference of accuracies
  (b - a), its paired bootstrap interval (entries resampled, both models' outcomes kept
  together) and McNemar's exact test (:func:`mcnemar_exact`) on the discordant entries.
  Pairing is what makes a 5-point difference on 100 entries testable: entries both models get
  right or both get wrong carry no information about which model is better.

>>> bootstrap_ci([1, 1, 1])
(1.0, 1.0)
>>> mcnemar_exact(1, 5)   # 6 discordant entries, 1 vs 5: 2 * (C(6,0) + C(6,1)) / 2**6
0.21875
>>> c = paired_comparison([0, 0, 1, 1], [1, 1, 1, 1])
>>> (c["n"], c["a_mean"], c["b_mean"], c["diff"], c["b_only"], c["a_only"], c["mcnemar_p"])
(4, 0.5, 1.0, 0.5, 2, 0, 0.5)
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb
from typing import Any

import numpy as np

CONFIDENCE = 0.95
ALPHA = 0.05
N_BOOT = 2000


def _means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of the rows of ``values`` (1-D or 2-D:
    rows are entries, columns are resampled together)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    return values[idx].mean(axis=1)


def bootstrap_ci(values: Sequence[float], confidence: float = CONFIDENCE, n_boot: int = N_BOOT,
                 seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of ``values``; None for no values.

    Two rows [0, 1]: a resample's mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so the
    2.5% and 97.5% points are 0 and 1:

    >>> bootstrap_ci([0, 1])
    (0.0, 1.0)
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return None
    means = _means(v, n_boot, seed)
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return round(float(lo), 4), round(float(hi), 4)


def mcnemar_exact(b_only: int, a_only: int) -> float:
    """Two-sided exact McNemar p-value: under "no difference" each of the ``b_only + a_only``
    discordant entries is equally likely to favour either model (a binomial with p = 1/2).
    1.0 when there is no discordant entry."""
    if b_only < 0 or a_only < 0:
        raise ValueError(f"counts must be >= 0, got {b_only}, {a_only}")
    n, k = b_only + a_only, min(b_only, a_only)
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(k + 1)) / 2 ** n
    return round(min(1.0, 2 * tail), 6)


def paired_comparison(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE,
                      n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """Model ``b`` against model ``a`` on the same entries (``a[i]`` and ``b[i]`` are the 0/1
    outcomes of entry i). Returns ``n``, both accuracies (``a_mean``, ``b_mean``), ``diff`` (b - a), ``ci`` (paired
    bootstrap interval of the difference), ``b_only`` / ``a_only`` (entries only b / only a got
    right) and ``mcnemar_p``; ``significant``: the interval excludes 0 *and* McNemar's p < 0.05
    (on a handful of entries the bootstrap interval collapses, e.g. to [-1, -1] on 3 entries
    that all flipped, while the exact test says p = 0.25).

    >>> paired_comparison([1, 0], [1])
    Traceback (most recent call last):
    ...
    ValueError: paired comparison needs the same entries on both sides: 2 outcomes vs 1
    """
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs the same entries on both sides: {len(a)} outcomes vs {len(b)}")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size == 0:
        return {"n": 0, "a_mean": None, "b_mean": None, "diff": None, "ci": None, "b_only": 0, "a_only": 0,
                "mcnemar_p": None, "significant": False}
    diffs = _means(y - x, n_boot, seed)
    tail = (1 - confidence) / 2
    lo, hi = (round(float(q), 4) for q in np.quantile(diffs, [tail, 1 - tail]))
    b_only, a_only = int(((y > 0.5) & (x < 0.5)).sum()), int(((x > 0.5) & (y < 0.5)).sum())
    return {"n": int(x.size), "a_mean": round(float(x.mean()), 4), "b_mean": round(float(y.mean()), 4),
            "diff": round(float(y.mean() - x.mean()), 4), "ci": [lo, hi], "b_only": b_only, "a_only": a_only,
            "mcnemar_p": (p := mcnemar_exact(b_only, a_only)),
            "significant": bool((lo > 0 or hi < 0) and p < ALPHA)}
