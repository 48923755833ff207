"""The run report: one self-contained HTML page and a Markdown twin, with tables and PNG plots.

    paths = write_report(Path("runs/demo-cpu"))                        # -> runs/demo-cpu/report/
    paths = write_report(Path("runs/tps"), variants={"n-sample": Path("runs/nsample")})

Reads only files earlier stages wrote (``<stage>/manifest.json``, ``construct/instances.parquet``,
``train/metrics.jsonl``, ``sample/pairs.parquet``, ``evaluate/{base,trained}/metrics.json``,
``job.json``): no Ray, no engine. Three steps, each a plain function: :func:`read_run` (a run
folder -> :class:`RunData`), :func:`build_report` (runs -> sections of tables, figures, notes
and data cards), and the writers in
:mod:`ttpa_ray.report.render` (with the plots): ``render_html`` embeds every PNG as a ``data:``
URI, no external CSS, JS or fonts; ``render_markdown`` links the PNG files written next to it.

Contents: headline metrics and per-category accuracy, mean ESM, tool selection and parameter
accuracy, base vs trained with deltas; pass rate; error codes before vs after; the constructed
data (instances attempted and kept per kind, the path that wrote each kept turn's query and
answer, and a data card: the first kept instance of each kind); loss and reward
margin per step; ESM histograms of the chosen and rejected side of every pair; stage timings
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

from ttpa_ray.config import KINDS
from ttpa_ray.report import render as plots
from ttpa_ray.manifest import STAGE_NAMES, read_manifest
from ttpa_ray.report.render import (Block, Call, DataCard, Example, Figure, Note, Report, Section, Table, Turn,
                                    render_html, render_markdown)

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
_PER_CATEGORY = (("accuracy", "Accuracy (ESM valid: BFCL's AST accept)"), ("mean_esm", "Mean ESM score"),
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
    "train": ((("pairs", "pairs"),), (("steps", "steps"),), (), ("pairs_with_ref_error",)),
    "evaluate": ((("bfcl_rows", "BFCL"), ("held_out_rows", "held-out"), ("episodes", "episodes")), (),
                 ("generation_errors", "score_errors"), ()),
}
_NOT_COUNTS = {"stage", "status", "fingerprint", "seconds", "model", "run"}
# The construct paths that write a turn's user query and its final answer (manifest
# ``query_paths`` / ``answer_paths``): a path missing from a manifest wrote no turn.
_PATHS = {"query": ("generated", "rewrite", "template"), "answer": ("generated", "template")}
_PATH_LABELS = {"rewrite": "rewrite (of a template seed)", "template": "template (the seed itself)"}
# Data card text limits (characters): long queries and answers are cut, saying by how much.
_QUERY_CHARS, _ANSWER_CHARS, _ARGUMENTS_CHARS = 600, 400, 300


# --------------------------------------------------------------------------- reading


@dataclass
class RunData:
    """What the report needs from one run folder; stages that did not complete are left empty."""

    label: str
    run_dir: Path
    job: dict[str, Any]
    manifests: dict[str, dict[str, Any] | None]
    train_steps: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)  # chosen_score, rejected_score, chosen_is_gold, mode
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)  # "base"/"trained" -> metrics.json
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
    import pyarrow.parquet as pq

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
        run.examples = _first_of_each_kind(instances)
    steps = run_dir / "train" / "metrics.jsonl"
    if run.complete("train") and steps.is_file():
        run.train_steps = [json.loads(line) for line in steps.read_text().splitlines() if line.strip()]
    pairs = run_dir / "sample" / "pairs.parquet"
    if run.complete("sample") and pairs.is_file():
        names = pq.read_schema(pairs).names  # an empty pairs file has only an id column
        wanted = [c for c in ("chosen_score", "rejected_score", "chosen_is_gold", "mode") if c in names]
        if "chosen_score" in wanted:
            run.pairs = pq.read_table(pairs, columns=wanted).to_pylist()
    if run.complete("evaluate"):
        for model in ("base", "trained"):
            f = run_dir / "evaluate" / model / "metrics.json"
            if f.is_file():
                run.evaluations[model] = json.loads(f.read_text())
    return run


def _first_of_each_kind(path: Path) -> list[dict[str, Any]] | None:
    """The row with the lowest id of each kind, in KINDS order; None without a ``kind`` column."""
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    if "kind" not in names:
        return None
    first: dict[str, int] = {}
    for r in pq.read_table(path, columns=["id", "kind"]).to_pylist():
        first[r["kind"]] = min(r["id"], first.get(r["kind"], r["id"]))
    if not first:
        return []
    columns = [c for c in ("id", "kind", "domain", "tools", "messages") if c in names]
    rows = pq.read_table(path, columns=columns, filters=[("id", "in", list(first.values()))]).to_pylist()
    order = {k: i for i, k in enumerate(KINDS)}
    return sorted(rows, key=lambda r: (order.get(r["kind"], len(order)), r["kind"], r["id"]))


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 1e3 else f"{v:.0f}"
    return str(v)


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
        cells = [name] + [_fmt(v) for v in vals]
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
        rows.append([label, _fmt(pr.get("episodes")), _fmt(pr.get("passed")), _fmt(pr.get("pass_rate")),
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
    for run, key in [(main, MAIN)] + [(v, v.label) for v in variants]:
        if "trained" in run.evaluations:
            models[key] = run.evaluations["trained"]
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
    blocks = [*notes, headline, Figure("accuracy", "Accuracy per category and pass rate, before vs after training",
                                       plots.grouped_bars([*cats.values(), "pass rate"], acc, "share",
                                                          "accuracy per category"))]
    for key, name in _PER_CATEGORY:
        t = _compare(name, [(row, [_get(m, g, c, key) for m in models.values()]) for (g, c), row in cats.items()],
                     labels, first="category")
        t.header.insert(1, "n")
        for row, (g, c) in zip(t.rows, cats):
            row.insert(1, _fmt(next((n for m in models.values() if (n := _get(m, g, c, "n")) is not None), None)))
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


def _training(runs: list[RunData]) -> Section:
    blocks: list[Table | Figure | Note] = [Note(r.not_run("train") or f"train ({r.label}): metrics.jsonl missing")
                                           for r in runs if not r.train_steps]
    done = [r for r in runs if r.train_steps]
    if done:
        rows = []
        for r in done:
            s, m = r.train_steps, r.manifests["train"] or {}
            tps = [x["tokens_per_s"] for x in s if isinstance(x.get("tokens_per_s"), (int, float))]
            rows.append([r.label, str(len(s)), _fmt(s[0].get("loss")), _fmt(s[-1].get("loss")),
                         _fmt(s[-1].get("rewards/margins")), _fmt(s[-1].get("rewards/accuracies")),
                         _fmt(sum(tps) / len(tps) if tps else None, 0), _fmt(m.get("seconds"), 1)])
        header = ["run", "steps", "first loss", "final loss", "final margin", "final reward acc.", "tokens/s",
                  "seconds"]
        blocks.append(Table("Training summary", header, rows))
        blocks.append(Figure("train_curves", "DPO loss and reward margin per optimizer step",
                             plots.train_curves({r.label: r.train_steps for r in done})))
    return Section("Training", blocks)


def _pairs(runs: list[RunData]) -> Section:
    blocks: list[Table | Figure | Note] = []
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
                         _fmt(sum(c) / len(c)), _fmt(sum(j) / len(j)), _fmt(sum(c) / len(c) - sum(j) / len(j)),
                         _fmt(sum(gold) / len(gold))])
        blocks.append(Table("Pair statistics", ["run", "pairs", "mode", "chosen mean ESM", "rejected mean ESM",
                                                 "mean gap", "chosen = gold"], rows))
        blocks.append(Figure("esm_histogram", "ESM score of the chosen and the rejected side of each pair",
                             plots.esm_histograms({r.label: ([p["chosen_score"] for p in r.pairs],
                                                             [p["rejected_score"] for p in r.pairs]) for r in done})))
    return Section("Preference pairs", blocks)


def _share(n: int, total: int) -> str:
    return _fmt(n / total) if total else "–"


def _clip(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters (at a space when one is near), saying how many
    characters were cut."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    if (space := cut.rfind(" ")) > limit * 0.8:
        cut = cut[:space]
    return f"{cut.rstrip()} … [{len(text) - len(cut)} more characters]"


def _example(row: dict[str, Any]) -> Example:
    """A data card entry from an instances.parquet row (OpenAI chat messages and tool schemas)."""
    turns: list[Turn] = []
    for m in json.loads(row["messages"]):
        if m["role"] == "user":
            turns.append(Turn(_clip(m.get("content") or "", _QUERY_CHARS), [], ""))
        elif m["role"] == "assistant" and m.get("tool_calls"):
            turns[-1].steps.append([Call(c["function"]["name"], _clip(
                a if isinstance(a := c["function"]["arguments"], str) else json.dumps(a, ensure_ascii=False),
                _ARGUMENTS_CHARS)) for c in m["tool_calls"]])
        elif m["role"] == "assistant":
            turns[-1].answer = _clip(m.get("content") or "", _ANSWER_CHARS)
    used = {c.name for t in turns for step in t.steps for c in step}
    tools = [t["function"]["name"] for t in json.loads(row["tools"])]
    return Example(str(row["kind"]), int(row["id"]), str(row.get("domain") or ""),
                   [(n, n in used) for n in tools], turns)


def _data(run: RunData) -> Section:
    """What construct made: instances per kind, who wrote each kept turn, one example per kind."""
    title = "Data: constructed instances"
    m = run.manifests.get("construct")
    if not m or not run.complete("construct"):
        return Section(title, [Note(run.not_run("construct") or "construct: not run")])
    older = "an older run: construct recorded no"
    blocks: list[Block] = []
    kinds = m.get("kinds")
    if isinstance(kinds, dict):
        order = {k: i for i, k in enumerate(KINDS)}
        rows = [[k, _fmt(v["attempted"]), _fmt(v["kept"]), _share(v["kept"], v["attempted"])]
                for k, v in sorted(kinds.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))]
        tried, kept = (sum(int(v[key]) for v in kinds.values()) for key in ("attempted", "kept"))
        rows.append(["total", _fmt(tried), _fmt(kept), _share(kept, tried)])
        blocks.append(Table("Instances per kind", ["kind", "attempted", "kept", "kept share"], rows))
    else:
        blocks.append(Note(f"construct: instances per kind not recorded ({older} kinds)"))
    counts = {w: m.get(f"{w}_paths") for w in _PATHS}
    if all(isinstance(c, dict) for c in counts.values()):
        totals = {w: sum(int(n) for n in c.values()) for w, c in counts.items()}
        rows = []
        for p in dict.fromkeys([*_PATHS["query"], *_PATHS["answer"], *counts["query"], *counts["answer"]]):
            row = [_PATH_LABELS.get(p, p)]
            for w, c in counts.items():
                row += ([_fmt(c.get(p, 0)), _share(int(c.get(p, 0)), totals[w])]
                        if p in c or p in _PATHS[w] else ["–", "–"])
            rows.append(row)
        rows.append(["turns", _fmt(totals["query"]), "", _fmt(totals["answer"]), ""])
        blocks.append(Table("Kept turns by the path that wrote them",
                            ["path", "user queries", "query share", "final answers", "answer share"], rows))
    else:
        blocks.append(Note(f"construct: query and answer paths not recorded ({older} query_paths/answer_paths)"))
    if not (run.run_dir / "construct" / "instances.parquet").is_file():
        blocks.append(Note(f"construct: no data card (no instances.parquet in {run.run_dir / 'construct'})"))
    elif run.examples is None:
        blocks.append(Note(f"construct: data card not recorded ({older} kind column in instances.parquet)"))
    elif not run.examples:
        blocks.append(Note("construct: no kept instances, so no data card"))
    else:
        blocks.append(DataCard("Data card: the first kept instance (lowest id) of each kind; ✓ marks the tools "
                               "its gold calls use", [_example(r) for r in run.examples]))
    return Section(title, blocks)


def _counts(m: dict[str, Any], keys: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{_fmt(m[k])} {unit}" for k, unit in keys if k in m) or "–"


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
            [f"evaluate: {k}", "", "", _counts(v, inn), "–", _fmt(sum(int(v.get(e) or 0) for e in errs)), "–",
             ", ".join(f"{kk} {_fmt(vv)}" for kk, vv in v.items() if kk.endswith(("accuracy", "pass_rate")))]
            for k, v in models.items()]
    used = {k for k, _ in inn + out} | set(errs) | set(drop) | _NOT_COUNTS
    other = ", ".join(f"{k} {len(v) if isinstance(v, list) else _fmt(v)}" for k, v in m.items()
                      if k not in used and not isinstance(v, dict))
    return [[stage, "", "", _counts(m, inn), _counts(m, out),
             _fmt(sum(int(m.get(e) or 0) for e in errs)) if errs else "–", _dropped(m, drop), other or "–"]]


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
                first[1:3] = [str(m.get("status")), _fmt(m.get("seconds"), 1)]
                rows += [first, *rest]
        rows.append(["total", "", _fmt(sum(secs[r.label].values()), 1), "", "", "", "", ""])
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
    bad = [label for label in extra if label in ("base", MAIN) or label in own or not label.strip()]
    if bad:
        raise ValueError(f"variant label(s) {bad}: 'base', '{MAIN}' and the job's own variants "
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
