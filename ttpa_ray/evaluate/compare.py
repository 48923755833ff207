"""Paired comparisons of the models a run evaluated, on the same entries.

    dirs = model_dirs(Path("runs/demo-cpu"))          # {"base": .../evaluate/base, "sft": ..., "trained": ...}
    comparisons = compare_models(dirs)              # every model vs base, and vs sft when there is one
    print(format_comparisons(comparisons))

Reads the rows each evaluation wrote (``bfcl.parquet``, ``held_out.parquet``,
``episodes.parquet``; pyarrow, no Ray) and joins two models on the entry id within each
category, so every difference is paired (:func:`~ttpa_ray.evaluate.stats.paired_comparison`).
An entry that only one side has (a different ``max_per_category``, say) is left out of that
comparison and counted in ``unpaired``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ttpa_ray.evaluate.metrics import correct
from ttpa_ray.evaluate.stats import paired_comparison

BASELINES = ("base", "sft")
"""Each later model is compared with each of these that the run evaluated."""


def model_dirs(run_dir: Path, variants: Sequence[str] = ()) -> dict[str, Path]:
    """Label -> evaluation folder of every model evaluated in ``run_dir``: base, sft and trained
    (``evaluate/<label>``), then each variant's trained model (``variants/<name>/evaluate/trained``)."""
    ev = Path(run_dir) / "evaluate"
    out = {m: ev / m for m in ("base", "sft", "trained") if (ev / m / "metrics.json").is_file()}
    for v in variants:
        d = Path(run_dir) / "variants" / v / "evaluate" / "trained"
        if (d / "metrics.json").is_file():
            out[v] = d
    return out


def _rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist() if path.is_file() else []


def outcomes(eval_dir: Path) -> dict[tuple[str, str], dict[str, bool]]:
    """(group, category) -> {entry id: correct} of one evaluation: each BFCL category and
    ``("bfcl", "overall")``, ``("held_out", "overall")`` and ``("pass_rate", "episodes")``."""
    out: dict[tuple[str, str], dict[str, bool]] = {}
    overall: dict[str, bool] = {}
    for r in _rows(Path(eval_dir) / "bfcl.parquet"):
        ok = correct(r)
        out.setdefault(("bfcl", r["category"]), {})[r["id"]] = ok
        overall[f"{r['category']}/{r['id']}"] = ok
    if overall:  # after the categories, in their order
        out[("bfcl", "overall")] = overall
    for r in _rows(Path(eval_dir) / "held_out.parquet"):
        out.setdefault(("held_out", "overall"), {})[r["id"]] = correct(r)
    for r in _rows(Path(eval_dir) / "episodes.parquet"):
        out.setdefault(("pass_rate", "episodes"), {})[f"{r['instance_id']}:{r['turn_index']}"] = bool(r["passed"])
    return out


def compare_models(dirs: dict[str, Path], baselines: Sequence[str] = BASELINES) -> list[dict[str, Any]]:
    """Every model after a baseline against that baseline, per (group, category): one record
    ``{"a", "b", "group", "category", "unpaired", **paired_comparison}`` each."""
    labels = list(dirs)
    results = {label: outcomes(d) for label, d in dirs.items()}
    records = []
    for base in (b for b in baselines if b in results):
        for other in labels[labels.index(base) + 1:]:
            for key, a in results[base].items():
                b = results[other].get(key, {})
                common = sorted(set(a) & set(b))
                rec = paired_comparison([a[i] for i in common], [b[i] for i in common])
                records.append({"a": base, "b": other, "group": key[0], "category": key[1],
                                "unpaired": len(set(a) ^ set(b))} | rec)
    return records


def format_comparisons(records: Sequence[dict[str, Any]]) -> str:
    """Fixed-width lines: b vs a, the difference, its 95% paired bootstrap CI, McNemar's p."""
    if not records:
        return ""
    lines = [f"{'paired (same entries)':<26}{'group/category':<26}{'n':>5}{'a':>7}{'b':>7}{'b - a':>8}"
             f"{'95% CI':>17}{'b only':>8}{'a only':>8}{'McNemar p':>11}"]
    for r in records:
        if not r["n"]:
            continue
        ci = f"[{r['ci'][0]:+.3f},{r['ci'][1]:+.3f}]"
        lines.append(f"{r['b'] + ' vs ' + r['a']:<26}{r['group'] + '/' + r['category']:<26}{r['n']:>5}"
                     f"{r['a_mean']:>7.3f}{r['b_mean']:>7.3f}{r['diff']:>+8.3f}{ci:>17}{r['b_only']:>8}"
                     f"{r['a_only']:>8}{r['mcnemar_p']:>11.4f}{' *' if r['significant'] else ''}")
    return "\n".join(lines)
