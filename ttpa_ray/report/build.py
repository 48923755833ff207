"""The run report: one self-contained HTML page and a Markdown twin, with tables and PNG plots.

    paths = write_report(Path("runs/demo-cpu"))                        # -> runs/demo-cpu/report/
    paths = write_report(Path("runs/tps"), variants={"n-sample": Path("runs/nsample")})

Reads only files earlier stages wrote (``<stage>/manifest.json``, ``construct/instances.parquet``,
``sft/metrics.jsonl``, ``train/metrics.jsonl``, ``sample/pairs.parquet``,
``evaluate/{base,sft,trained}/metrics.json``,
``job.json``): no Ray, no engine. Three steps, each a plain function: :func:`read_run` (a run
folder -> :class:`RunData`), :func:`build_report` (runs -> sections of tables, figures, notes
and data cards), and the writers in
:mod:`ttpa_ray.report.render` (with the plots): ``render_html`` embeds every PNG as a ``data:``
URI, no external CSS, JS or fonts; ``render_markdown`` links the PNG files written next to it.

Contents: headline metrics and per-category accuracy, mean ESM, tool selection and parameter
accuracy, base vs SFT vs trained with deltas; pass rate; error codes before vs after; the
constructed data (instances attempted and kept per kind, the path that wrote each kept turn's
query and answer, and a data card: the first kept instance of each kind); the SFT summary;
loss and reward margin per step; ESM histograms of the chosen and rejected side of every pair,
TPS branches and pairs per decision kind, and pair examples (chosen vs rejected, the
divergence token highlighted, each side's ESM error codes, ``report/pairs.py``); stage timings
and row accounting from the manifests. A stage that did not run (disabled, interrupted, or
never started) becomes a "not run" note, never an error; so do counts an older run did not
record (construct before per-kind counts: "not recorded").

Variants put other trained models beside this run's: their ``evaluate/trained`` metrics,
training curves, pairs and stage timings, each under its label; the base model is this run's.
A job with ``variants`` (``job.json``) gets them all (``<run_dir>/variants/<name>/``, where the
pipeline runs sample -> evaluate of each while this run holds probe, construct and the base
evaluation); ``variants=`` adds other run folders (e.g. a TPS and an n-sample job run apart).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ttpa_ray.evaluate.compare import compare_models
from ttpa_ray.report import render as plots
from ttpa_ray.report.data import data_section, first_of_each_kind
from ttpa_ray.report.pairs import branch_table, pair_card, read_pairs
from ttpa_ray.manifest import STAGE_NAMES, read_manifest
from ttpa_ray.report.render import (Block, Figure, Note, Report, Section, Table, fmt, render_html,
                                    render_markdown)

log = logging.getLogger(__name__)

REPORT_STAGES = tuple(s for s in STAGE_NAMES if s != "report")
MAIN = "trained"
"""Label of this run's trained model; variants are named by their own labels."""

_HEADLINE = (("BFCL accuracy (overall)", "bfcl", "overall", "accuracy"),
             ("BFCL macro accuracy", "bfcl", "overall", "macro_accuracy"),
             ("BFCL mean ESM", "bfcl", "overall", "mean_esm"),
             ("held-out accuracy", "held_out", "overall", "accuracy"),
             ("held-out mean ESM", "held_out", "overall", "mean_esm"),
             ("pass rate", "pass_rate", None, "pass_rate"))
_CATEGORY_LABEL = {("bfcl", "overall"): "BFCL overall", ("held_out", "overall"): "held-out",
                   ("pass_rate", "episodes"): "pass rate"}
_PER_CATEGORY = (("accuracy", "Accuracy (ESM valid: BFCL's AST accept)"),
                 ("accuracy_bfcl_rule", "Accuracy under BFCL's irrelevance rule (the table above and the headline "
                                        "are strict where no call is expected: any call attempt is a call; BFCL "
                                        "counts an undecodable one as a correct abstention, gorilla#443)"),
                 ("mean_esm", "Mean ESM score"),
                 ("tool_selection_accuracy", "Tool selection accuracy"),
                 ("parameter_accuracy", "Parameter accuracy (right tools, no argument error; – when no row "
                                        "had the right tools and a gold call)"))
# Row accounting: stage -> (rows in, rows out, errors, dropped); (manifest key, unit) or keys.
_FLOW: dict[str, tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...], tuple[str, ...], tuple[str, ...]]] = {
    "probe": ((("rows", "prompts"),), (("with_tool_call_tag", "with <tool_call>"),), ("errors",), ()),
    "construct": ((("attempted", "attempted"),), (("kept", "instances"),), ("errors",), ("filtered",)),
    "sample": ((("turns", "turns"),), (("candidates", "candidates"), ("pairs", "pairs")), ("turn_errors",),
               ("no_candidate", "no_rejected", "gold_not_valid")),
    "reference": ((("pairs", "pairs"),), (("pairs", "pairs"),), ("ref_errors",), ()),
    "train": ((("pairs", "pairs"),), (("steps", "steps"),), (), ("pairs_with_ref_error", "pairs_answer_rejected_dropped")),
    "evaluate": ((("bfcl_rows", "BFCL"), ("held_out_rows", "held-out"), ("episodes", "episodes")), (),
                 ("generation_errors", "score_errors"), ()),
}
_NOT_COUNTS = {"stage", "status", "fingerprint", "seconds", "model", "run"}


# --------------------------------------------------------------------------- reading


@dataclass
class RunData:
    """What the report needs from one run folder; stages that did not complete are left empty."""

    label: str
    run_dir: Path
    job: dict[str, Any]
    manifests: dict[str, dict[str, Any] | None]
    train_steps: list[dict[str, Any]] = field(default_factory=list)
    sft_steps: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)  # chosen_score, rejected_score, chosen_is_gold, mode
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)  # "base"/"sft"/"trained" -> metrics.json
    eval_dirs: dict[str, Path] = field(default_factory=dict)  # the same labels -> evaluate/<label> (row files)
    # The kept instance with the lowest id of each kind (rows of instances.parquet, in KINDS
    # order); None: instances.parquet has no ``kind`` column (an older run) or is missing.
    examples: list[dict[str, Any]] | None = None
    shared: set[str] = field(default_factory=set)  # stages linked from the parent run (a variant's construct)

    @property
    def name(self) -> str:
        return str(self.job.get("name") or self.run_dir.name)

    @property
    def variants(self) -> dict[str, Path]:
        """The job's own variants (the pipeline runs each under ``variants/<name>/``)."""
        return {v: self.run_dir / "variants" / v for v in self.job.get("variants") or {}}

    def complete(self, stage: str) -> bool:
        m = self.manifests.get(stage)
        return bool(m) and m.get("status") == "complete"

    def not_run(self, stage: str) -> str | None:
        """Why ``stage`` has no results here, or None when it completed."""
        m = self.manifests.get(stage)
        if self.complete(stage):
            return None
        if m:
            return f"{stage}: not complete (status {m.get('status')!r}: interrupted, or still running)"
        if self.variants and stage in ("sample", "reference", "train"):
            return f"{stage}: runs in each variant ({', '.join(self.variants)})"
        section = self.job.get(stage)
        if isinstance(section, dict) and section.get("enabled") is False:
            return f"{stage}: not run (disabled in the job: {stage}.enabled is false)"
        return f"{stage}: not run (no {stage}/manifest.json in {self.run_dir})"


def read_run(run_dir: Path, label: str = MAIN) -> RunData:
    """Read a run folder (``<output_dir>/<name>``) into plain data."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir} is not a run folder: give <output_dir>/<name> of a job that ran, "
                         "e.g. runs/tiny-cpu")
    job_file = run_dir / "job.json"
    run = RunData(label=label, run_dir=run_dir, job=json.loads(job_file.read_text()) if job_file.is_file() else {},
                  manifests={s: read_manifest(run_dir / s) for s in REPORT_STAGES},
                  shared={s for s in REPORT_STAGES if (run_dir / s).is_symlink()})
    instances = run_dir / "construct" / "instances.parquet"
    if run.complete("construct") and instances.is_file():
        run.examples = first_of_each_kind(instances)
    for stage in ("sft", "train"):
        steps = run_dir / stage / "metrics.jsonl"
        if run.complete(stage) and steps.is_file():
            setattr(run, f"{stage}_steps", [json.loads(x) for x in steps.read_text().splitlines() if x.strip()])
    pairs = run_dir / "sample" / "pairs.parquet"
    if run.complete("sample") and pairs.is_file():
        run.pairs = read_pairs(pairs)  # scores of every pair, the text of the example pairs
    if run.complete("evaluate"):
        for model in ("base", "sft", "trained"):
            f = run_dir / "evaluate" / model / "metrics.json"
            if f.is_file():
                run.evaluations[model] = json.loads(f.read_text())
                run.eval_dirs[model] = f.parent
    return run


def _delta(v: Any, base: Any, digits: int = 3) -> str:
    if not isinstance(v, (int, float)) or not isinstance(base, (int, float)):
        return "–"
    d = v - base
    return f"{d:+.{digits}f}" if digits else f"{d:+d}"


def _get(metrics: dict[str, Any], group: str, cat: str | None, key: str) -> Any:
    node = metrics.get(group)
    node = node.get(cat) if isinstance(node, dict) and cat else node
    return node.get(key) if isinstance(node, dict) else None


def _compare(title: str, rows: list[tuple[str, list[Any]]], models: list[str], digits: int = 3,
             first: str = "") -> Table:
    """Rows of per-model values; each model after ``base`` gets a delta column against base."""
    header = [first] + models + [f"Δ {m}" for m in models[1:]] if models[0] == "base" else [first] + models
    out = []
    for name, vals in rows:
        cells = [name] + [fmt(v) for v in vals]
        if models[0] == "base":
            cells += [_delta(v, vals[0], digits) for v in vals[1:]]
        out.append(cells)
    return Table(title, header, out)


# --------------------------------------------------------------------------- sections


def _categories(models: dict[str, dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(group, category) -> row label: BFCL categories in run order, BFCL overall, held-out."""
    cats = {("bfcl", cat): f"BFCL {cat}" for m in models.values() for cat, v in (m.get("bfcl") or {}).items()
            if isinstance(v, dict) and "n" in v and cat != "overall"}
    for group, label in (("bfcl", "BFCL overall"), ("held_out", "held-out")):
        if any(isinstance((m.get(group) or {}).get("overall"), dict) for m in models.values()):
            cats[(group, "overall")] = label
    return cats


def _pass_rate(models: dict[str, dict[str, Any]]) -> Table:
    base = (models["base"].get("pass_rate") or {}).get("pass_rate")
    rows = []
    for label, m in models.items():
        pr = m.get("pass_rate") or {}
        reasons = ", ".join(f"{k} {v}" for k, v in (pr.get("fail_reasons") or {}).items()) or "–"
        rows.append([label, fmt(pr.get("episodes")), fmt(pr.get("passed")), fmt(pr.get("pass_rate")),
                     _delta(pr.get("pass_rate"), base) if label != "base" else "", reasons])
    return Table("Pass rate (held-out episodes in the sandbox)",
                 ["model", "episodes", "passed", "pass rate", "Δ vs base", "fail reasons"], rows)


def _error_codes(models: dict[str, dict[str, Any]]) -> tuple[Table, list[str], dict[str, list[int]]]:
    """Rows per ESM error code over BFCL + held-out (disjoint rows, so counts add), the
    generation/score failures and the rows scored; and the codes with their counts per model."""
    counts: dict[str, Counter[str]] = {}
    for label, m in models.items():
        c: Counter[str] = Counter()
        for group in ("bfcl", "held_out"):
            overall = (m.get(group) or {}).get("overall") or {}
            c.update(overall.get("error_codes") or {})
            c.update({"(generation error)": overall.get("generation_errors") or 0,
                      "(score error)": overall.get("score_errors") or 0, "(rows scored)": overall.get("n") or 0})
        counts[label] = c
    codes = sorted({k for c in counts.values() for k in c if not k.startswith("(")},
                   key=lambda k: (-counts["base"][k], k))
    rows = [(k, [counts[m][k] for m in models]) for k in codes + ["(generation error)", "(score error)",
                                                                  "(rows scored)"]]
    table = _compare("Error codes (rows with each ESM code, BFCL + held-out)", rows, list(models), digits=0,
                     first="error code")
    table.lower_is_better = True
    return table, codes, {m: [counts[m][k] for k in codes] for m in models}


def _evaluation(main: RunData, variants: list[RunData]) -> Section:
    title = "Evaluation: base vs trained"
    if "base" not in main.evaluations:
        return Section(title, [Note(main.not_run("evaluate") or "evaluate: no base model metrics in this run")])
    notes: list[Table | Figure | Note] = []
    models = {"base": main.evaluations["base"]}
    dirs = {"base": main.eval_dirs["base"]}
    if "sft" in main.evaluations:
        models["sft"], dirs["sft"] = main.evaluations["sft"], main.eval_dirs["sft"]
    for run, key in [(main, MAIN)] + [(v, v.label) for v in variants]:
        if "trained" in run.evaluations:
            models[key], dirs[key] = run.evaluations["trained"], run.eval_dirs["trained"]
        elif not (run is main and main.variants):  # a parent run trains in its variants
            why = run.not_run("evaluate") or run.not_run("train") or "evaluate ran without a trained model"
            notes.append(Note(f"{key} ({run.run_dir}): no trained model evaluated: {why}"))
    for group, what in (("bfcl", "BFCL"), ("held_out", "held-out"), ("pass_rate", "pass rate")):
        notes += [Note(f"{what} ({label}): not run ({m[group]['skipped']})") for label, m in models.items()
                  if isinstance(m.get(group), dict) and "skipped" in m[group]]
    labels, cats = list(models), _categories(models)
    headline = _compare("Headline", [(name, [_get(m, g, c, k) for m in models.values()])
                                     for name, g, c, k in _HEADLINE], labels, first="metric")
    acc = {label: [_get(m, g, c, "accuracy") for g, c in cats] + [_get(m, "pass_rate", None, "pass_rate")]
           for label, m in models.items()}
    cis = {label: [_get(m, g, c, "accuracy_ci") for g, c in cats] + [_get(m, "pass_rate", None, "pass_rate_ci")]
           for label, m in models.items()}
    blocks = [*notes, headline,
              Figure("accuracy", "Accuracy per category and pass rate, before vs after training (error bars: 95% "
                                 "bootstrap intervals over the entries)",
                     plots.grouped_bars([*cats.values(), "pass rate"], acc, "share", "accuracy per category",
                                        intervals=cis)),
              _paired(compare_models(dirs))]
    for key, name in _PER_CATEGORY:
        t = _compare(name, [(row, [_get(m, g, c, key) for m in models.values()]) for (g, c), row in cats.items()],
                     labels, first="category")
        t.header.insert(1, "n")
        for row, (g, c) in zip(t.rows, cats):
            row.insert(1, fmt(next((n for m in models.values() if (n := _get(m, g, c, "n")) is not None), None)))
        blocks.append(t)
    table, codes, per_model = _error_codes(models)
    blocks += [_pass_rate(models), table]
    if codes:
        blocks.append(Figure("error_codes", "Rows per ESM error code, before vs after training",
                             plots.grouped_bars(codes, per_model, "rows",
                                                "error codes (BFCL + held-out)", share=False)))
    else:
        blocks.append(Note("No ESM error codes in any evaluated row."))
    return Section(title, blocks)


def _paired(records: list[dict[str, Any]]) -> Table | Note:
    """Every model against base (and against sft) on the same entries, per category."""
    rows = [[f"{r['b']} vs {r['a']}", _CATEGORY_LABEL.get((r["group"], r["category"]), f"BFCL {r['category']}"), fmt(r["n"]),
             fmt(r["a_mean"]), fmt(r["b_mean"]), f"{r['diff']:+.3f}", f"[{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]",
             fmt(r["b_only"]), fmt(r["a_only"]), f"{r['mcnemar_p']:.4f}", "yes" if r["significant"] else "no"]
            for r in records if r["n"]]
    if not rows:
        return Note("Paired comparisons: no two evaluated models share entries.")
    return Table("Paired comparisons on the same entries (b - a; 95% paired bootstrap CI of the difference; "
                 "McNemar's exact test on the entries only one model got right)",
                 ["b vs a", "category", "n", "a", "b", "b - a", "95% CI", "only b right", "only a right",
                  "McNemar p", "significant (CI excludes 0, p < 0.05)"], rows)


def _sft(run: RunData) -> Table:
    s, m = run.sft_steps, run.manifests.get("sft") or {}
    tps = [x["tokens_per_s"] for x in s if isinstance(x.get("tokens_per_s"), (int, float))]
    return Table("SFT (assistant tokens of the constructed conversations)",
                 ["conversations", "assistant tokens", "steps", "first loss", "final loss", "final token acc.",
                  "tokens/s", "seconds"],
                 [[fmt(m.get("conversations")), fmt(m.get("assistant_tokens")), str(len(s)), fmt(s[0].get("loss")),
                   fmt(s[-1].get("loss")), fmt(s[-1].get("mean_token_accuracy")),
                   fmt(sum(tps) / len(tps) if tps else None, 0), fmt(m.get("seconds"), 1)]])


def _training(runs: list[RunData]) -> Section:
    blocks: list[Table | Figure | Note] = [_sft(runs[0])] if runs and runs[0].sft_steps else []
    blocks += [Note(r.not_run("train") or f"train ({r.label}): metrics.jsonl missing")
               for r in runs if not r.train_steps]
    done = [r for r in runs if r.train_steps]
    if done:
        rows = []
        for r in done:
            s, m = r.train_steps, r.manifests["train"] or {}
            tps = [x["tokens_per_s"] for x in s if isinstance(x.get("tokens_per_s"), (int, float))]
            rows.append([r.label, str(len(s)), fmt(s[0].get("loss")), fmt(s[-1].get("loss")),
                         fmt(s[-1].get("rewards/margins")), fmt(s[-1].get("rewards/accuracies")),
                         fmt(sum(tps) / len(tps) if tps else None, 0), fmt(m.get("seconds"), 1)])
        header = ["run", "steps", "first loss", "final loss", "final margin", "final reward acc.", "tokens/s",
                  "seconds"]
        blocks.append(Table("Training summary", header, rows))
        blocks.append(Figure("train_curves", "DPO loss and reward margin per optimizer step",
                             plots.train_curves({r.label: r.train_steps for r in done})))
    return Section("Training", blocks)


def _pairs(runs: list[RunData]) -> Section:
    """Pair statistics, the TPS branches and pairs per decision kind, the ESM histogram of the
    pair sides, and pair examples (:mod:`ttpa_ray.report.pairs`)."""
    blocks: list[Block] = []
    for r in runs:
        if not r.pairs:
            blocks.append(Note(r.not_run("sample") or f"sample ({r.label}): no preference pairs"))
    done = [r for r in runs if r.pairs]
    if done:
        rows = []
        for r in done:
            c = [p["chosen_score"] for p in r.pairs]
            j = [p["rejected_score"] for p in r.pairs]
            modes = Counter(str(p.get("mode")) for p in r.pairs)
            gold = [bool(p.get("chosen_is_gold")) for p in r.pairs]
            rows.append([r.label, str(len(r.pairs)), ", ".join(f"{k} {v}" for k, v in modes.items()),
                         fmt(sum(c) / len(c)), fmt(sum(j) / len(j)), fmt(sum(c) / len(c) - sum(j) / len(j)),
                         fmt(sum(gold) / len(gold))])
        blocks.append(Table("Pair statistics", ["run", "pairs", "mode", "chosen mean ESM", "rejected mean ESM",
                                                 "mean gap", "chosen = gold"], rows))
    blocks += branch_table([(r.label, r.manifests.get("sample")) for r in runs if r.complete("sample")])
    if done:
        blocks.append(Figure("esm_histogram", "ESM score of the chosen and the rejected side of each pair",
                             plots.esm_histograms({r.label: ([p["chosen_score"] for p in r.pairs],
                                                             [p["rejected_score"] for p in r.pairs]) for r in done})))
        blocks += [pair_card(r.label, r.pairs) for r in done]
    return Section("Preference pairs", blocks)


def _data(run: RunData) -> Section:
    why = None if run.complete("construct") else (run.not_run("construct") or "construct: not run")
    return data_section(run.manifests.get("construct"), why, run.run_dir / "construct", run.examples)


def _counts(m: dict[str, Any], keys: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{fmt(m[k])} {unit}" for k, unit in keys if k in m) or "–"


def _dropped(m: dict[str, Any], keys: tuple[str, ...]) -> str:
    parts: dict[str, int] = {}
    for k in keys:
        v = m.get(k)
        if isinstance(v, dict):
            parts.update({kk: int(vv) for kk, vv in v.items()})  # construct's filter reasons
        elif isinstance(v, int):
            parts[k] = v
    if not parts:
        return "–"
    nonzero = ", ".join(f"{k} {v}" for k, v in parts.items() if v)
    return str(sum(parts.values())) + (f" ({nonzero})" if nonzero else "")


def _stage_rows(stage: str, m: dict[str, Any]) -> list[list[str]]:
    inn, out, errs, drop = _FLOW.get(stage, ((), (), (), ()))
    if stage == "evaluate":  # a row for the stage, then one per evaluated model
        models = {k: v for k, v in m.items() if isinstance(v, dict)}
        return [["evaluate", "", "", f"{len(models)} model(s)", "–", "–", "–", "–"]] + [
            [f"evaluate: {k}", "", "", _counts(v, inn), "–", fmt(sum(int(v.get(e) or 0) for e in errs)), "–",
             ", ".join(f"{kk} {fmt(vv)}" for kk, vv in v.items() if kk.endswith(("accuracy", "pass_rate")))]
            for k, v in models.items()]
    used = {k for k, _ in inn + out} | set(errs) | set(drop) | _NOT_COUNTS
    other = ", ".join(f"{k} {len(v) if isinstance(v, list) else fmt(v)}" for k, v in m.items()
                      if k not in used and not isinstance(v, dict))
    return [[stage, "", "", _counts(m, inn), _counts(m, out),
             fmt(sum(int(m.get(e) or 0) for e in errs)) if errs else "–", _dropped(m, drop), other or "–"]]


def _stages(runs: list[RunData]) -> Section:
    header = ["stage", "status", "seconds", "rows in", "rows out", "errors", "dropped", "other"]
    # Seconds of the stages each run did itself (a variant's linked construct counts in the parent).
    secs = {r.label: {s: float((r.manifests[s] or {}).get("seconds") or 0) for s in REPORT_STAGES
                      if r.complete(s) and s not in r.shared} for r in runs}
    blocks: list[Table | Figure | Note] = []
    for r in runs:
        rows = []
        for stage in REPORT_STAGES:
            m = r.manifests[stage]
            if stage in r.shared:
                rows.append([stage, "shared", "–", "–", "–", "–", "–",
                             f"linked to {(r.run_dir / stage).resolve()} (counted there)"])
            elif m is None or not r.complete(stage):
                rows.append([stage, str((m or {}).get("status", "not run")), "–", "–", "–", "–", "–",
                             r.not_run(stage) or ""])
            else:
                first, *rest = _stage_rows(stage, m)
                first[1:3] = [str(m.get("status")), fmt(m.get("seconds"), 1)]
                rows += [first, *rest]
        rows.append(["total", "", fmt(sum(secs[r.label].values()), 1), "", "", "", "", ""])
        title = r.name if r.label in (MAIN, r.name) else f"{r.name} ({r.label})"
        blocks.append(Table(f"Stages and row accounting: {title}", header, rows))
    if any(secs.values()):
        blocks.append(Figure("stage_timings", "Wall-clock seconds per stage", plots.stage_timings(secs)))
    return Section("Stages: timings and row accounting", blocks)


def build_report(main: RunData, variants: list[RunData] | None = None) -> Report:
    """Every section of the report for ``main`` (and the variants beside it)."""
    variants = variants or []
    runs = [main, *variants]
    job = main.job
    target = (job.get("target") or {}).get("model")
    train = job.get("train") or {}
    facts = [("run", main.name), ("folder", str(main.run_dir)), ("target model", str(target or "–")),
             ("training", f"{train.get('loss_type', '–')} (beta {train.get('beta', '–')})" if train else "–"),
             ("generated", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))]
    facts += [(f"variant {v.label}", str(v.run_dir)) for v in variants]
    trained = [r for r in runs if not (r is main and main.variants)]  # a parent trains in its variants
    return Report(f"TTPA report: {main.name}", facts,
                  [_evaluation(main, variants), _data(main), _training(trained), _pairs(trained), _stages(runs)])


def write_report(run_dir: Path, variants: dict[str, Path] | None = None, out: Path | None = None) -> dict[str, Any]:
    """Build the report of ``run_dir`` into ``out`` (default ``<run_dir>/report``): ``report.html``,
    ``report.md`` and the PNGs. Beside this run's models: the job's own variants, then
    ``variants`` (label -> another run folder). Returns the counts for the stage manifest."""
    main = read_run(Path(run_dir), MAIN)
    own, extra = main.variants, variants or {}
    bad = [label for label in extra if label in ("base", "sft", MAIN) or label in own or not label.strip()]
    if bad:
        raise ValueError(f"variant label(s) {bad}: 'base', 'sft', '{MAIN}' and the job's own variants "
                         f"({', '.join(own) or 'none'}) are taken; label variants by what differs, "
                         "e.g. n-sample=runs/nsample")
    # A job variant that has not run yet is shown as not run; a folder asked for must exist.
    runs = [read_run(p, label) if p.is_dir() else RunData(label, p, {}, {s: None for s in REPORT_STAGES})
            for label, p in own.items()]
    report = build_report(main, runs + [read_run(Path(p), label) for label, p in extra.items()])
    out = Path(out) if out is not None else Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):  # a figure no longer drawn must not linger beside the Markdown
        old.unlink()
    for fig in report.figures():
        (out / f"{fig.name}.png").write_bytes(fig.png)
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    (out / "report.html").write_text(render_html(report), encoding="utf-8")
    log.info("report: %s (%d plots, %d notes)", out / "report.html", len(report.figures()), len(report.notes()))
    return {"html": str(out / "report.html"), "markdown": str(out / "report.md"), "plots": len(report.figures()),
            "notes": len(report.notes())}
