"""Confidence intervals and paired tests (ttpa_ray/evaluate/stats.py) against values computed by
hand, and the paired comparisons of evaluated models read from their row files
(ttpa_ray/evaluate/compare.py)."""

from __future__ import annotations

from math import comb
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ttpa_ray.evaluate.compare import compare_models, format_comparisons, model_dirs
from ttpa_ray.evaluate.stats import bootstrap_ci, mcnemar_exact, paired_comparison


def test_bootstrap_ci_hand_cases():
    assert bootstrap_ci([]) is None
    assert bootstrap_ci([0, 0, 0, 0]) == (0.0, 0.0)
    # Two rows 0 and 1: a resample's mean is 0 (p 1/4), 0.5 (1/2) or 1 (1/4), so the 2.5% and
    # 97.5% points are the extremes; at 40% the interval (30%..70% points) is 0.5 on both ends.
    assert bootstrap_ci([0, 1]) == (0.0, 1.0)
    assert bootstrap_ci([0, 1], confidence=0.4) == (0.5, 0.5)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1], confidence=1.0)


def test_bootstrap_ci_matches_the_normal_interval_on_many_rows():
    # 200 rows, 60 right: p = 0.3, the normal 95% half-width 1.96 * sqrt(0.3 * 0.7 / 200) = 0.0635.
    lo, hi = bootstrap_ci([1] * 60 + [0] * 140, n_boot=4000)
    assert lo == pytest.approx(0.3 - 0.0635, abs=0.012) and hi == pytest.approx(0.3 + 0.0635, abs=0.012)
    # The same rows and seed give the same interval (a rerun prints the same table).
    assert bootstrap_ci([1] * 60 + [0] * 140) == bootstrap_ci([1] * 60 + [0] * 140)


def test_mcnemar_exact_hand_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 5) == mcnemar_exact(5, 1) == 2 * (comb(6, 0) + comb(6, 1)) / 2 ** 6 == 0.21875
    assert mcnemar_exact(0, 6) == 2 / 64
    assert mcnemar_exact(3, 3) == 1.0  # the two-sided sum is capped at 1
    assert mcnemar_exact(0, 10) == round(2 / 1024, 6)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_paired_comparison_hand_cases():
    same = paired_comparison([1, 0, 1, 0], [1, 0, 1, 0])
    assert same["diff"] == 0.0 and same["ci"] == [0.0, 0.0] and same["mcnemar_p"] == 1.0
    assert not same["significant"]
    # b fixes 10 of a's 20 errors and breaks nothing: +0.5, p = 2 / 2**10, the interval above 0.
    a, b = [0] * 20, [1] * 10 + [0] * 10
    c = paired_comparison(a, b)
    assert (c["n"], c["a_mean"], c["b_mean"], c["diff"], c["b_only"], c["a_only"]) == (20, 0.0, 0.5, 0.5, 10, 0)
    assert c["mcnemar_p"] == round(2 / 1024, 6) and c["significant"] and c["ci"][0] > 0.2
    # Equal accuracies can still disagree entry by entry: 0 difference, a wide interval around it.
    d = paired_comparison([1] * 5 + [0] * 5, [0] * 5 + [1] * 5)
    assert d["diff"] == 0.0 and d["ci"][0] < -0.2 < 0.2 < d["ci"][1] and d["mcnemar_p"] == 1.0
    # 3 entries that all flipped: the bootstrap interval collapses to [-1, -1], the exact test
    # says p = 0.25: not significant.
    few = paired_comparison([1, 1, 1], [0, 0, 0])
    assert few["ci"] == [-1.0, -1.0] and few["mcnemar_p"] == 0.25 and not few["significant"]
    empty = paired_comparison([], [])
    assert empty["n"] == 0 and empty["ci"] is None
    with pytest.raises(ValueError, match="same entries"):
        paired_comparison([1, 0], [1])


def _evaluation(d: Path, simple: list[bool], held: list[bool], passed: list[bool]) -> None:
    d.mkdir(parents=True)
    (d / "metrics.json").write_text("{}")
    row = {"valid": True, "errors": [], "generation_error": None, "score_error": None, "gold_names": ["f"]}
    pq.write_table(pa.Table.from_pylist([row | {"category": "simple", "id": f"s{k}", "valid": v}
                                         for k, v in enumerate(simple)]), d / "bfcl.parquet")
    pq.write_table(pa.Table.from_pylist([row | {"category": "held_out", "id": f"h{k}", "valid": v}
                                         for k, v in enumerate(held)]), d / "held_out.parquet")
    pq.write_table(pa.Table.from_pylist([{"instance_id": k, "turn_index": 1, "passed": v}
                                         for k, v in enumerate(passed)]), d / "episodes.parquet")


def test_compare_models_pairs_entries_by_id(tmp_path: Path):
    ev = tmp_path / "evaluate"
    _evaluation(ev / "base", [False, False, True, False], [True, False], [False])
    _evaluation(ev / "sft", [True, True, True, False], [True, True], [True])
    _evaluation(ev / "trained", [True, True, False], [True, True], [True])  # one simple entry fewer
    dirs = model_dirs(tmp_path)
    assert list(dirs) == ["base", "sft", "trained"]
    recs = {(r["b"], r["a"], r["group"], r["category"]): r for r in compare_models(dirs)}
    assert set(recs) >= {("sft", "base", "bfcl", "simple"), ("trained", "base", "bfcl", "overall"),
                         ("trained", "sft", "held_out", "overall"), ("sft", "base", "pass_rate", "episodes")}
    r = recs[("sft", "base", "bfcl", "simple")]
    assert (r["n"], r["a_mean"], r["b_mean"], r["diff"], r["b_only"], r["a_only"], r["unpaired"]) == \
        (4, 0.25, 0.75, 0.5, 2, 0, 0)
    assert r["mcnemar_p"] == 0.5
    t = recs[("trained", "base", "bfcl", "simple")]
    assert t["n"] == 3 and t["unpaired"] == 1 and (t["b_only"], t["a_only"]) == (2, 1)
    text = format_comparisons(list(recs.values()))
    assert "sft vs base" in text and "bfcl/simple" in text and "+0.500" in text
