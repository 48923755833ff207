"""Evaluation stage: one model on BFCL and on held-out constructed data, plus a pass rate.

    counts = run_evaluate(job.evaluate, job.target, job.score, model="runs/x/train/model",
                          instances=Path("runs/x/construct/instances.parquet"), out=Path("runs/x/evaluate"),
                          seed=job.seed)

``model`` (a bundled name or a local HF folder; for ``backend: openai`` the server's model
name) replaces ``engine.model``, so the same engine section evaluates the base model and a
trained checkpoint. Everything runs in one Ray Data pass: the engine actor pool
(:class:`EvalBatch`, ``engine.pool``), then the ESM scoring pool
(:func:`~ttpa_ray.score.stage.score_dataset`); the model is loaded once.

1. **Single turns**: BFCL v4 AST categories from the ``bfcl-eval`` wheel
   (``evaluate.categories``, the first ``max_per_category`` entries of each), scored against
   BFCL's possible answers; and every assistant turn with gold calls of the held-out
   instances (:func:`~ttpa_ray.instances.held_out_ids` of (instances, ``held_out_fraction``,
   ``seed``), stratified by kind: sft and sample leave the same instances out), scored against
   the gold calls. Each prompt is rendered with the model's own chat template and tools and
   generated greedily.
2. **Pass rate** (ToolBench-style, the paper's second metric) on held-out user turns whose
   tools all run in the bundled sandbox: the model plays the episode. All rows of a batch
   advance in lockstep (one batched generation per step): generate, parse calls, execute
   them in the sandbox, feed results back as tool messages, up to ``max_steps`` model turns.
   Passed = it ended with a final answer (a turn without calls, not cut by ``max_tokens``)
   after calling every gold tool (by name) with schema-valid arguments.
3. **Metrics** (pure, :mod:`ttpa_ray.evaluate.metrics`) per category, overall, pass rate.

Output (``out/``): ``bfcl.parquet`` and ``held_out.parquet`` (every row: prompt, prediction,
ESM score, error codes, generation/score errors, category), ``episodes.parquet`` (every
episode: trace, calls, passed, reason), ``metrics.json``, and last ``counts.json`` (the
manifest's counts: a resumed stage keeps a model that has one); a short table is printed. Rows that
fail to render, generate or score are kept and counted (and count as wrong), never dropped.

Departures: BFCL prompts go through the model's chat template with the functions as
``tools`` (BFCL's "FC" mode, types mapped to JSON Schema names), not BFCL's own prompt-mode
system prompt; multi-turn/live categories are not run. Prompts are rendered locally, so
``backend: openai`` needs ``engine.tokenizer``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ttpa_ray.evaluate import metrics as em
from ttpa_ray.config import EngineConfig, EvaluateConfig, ScoreConfig
from ttpa_ray.engines.base import Generation, SamplingParams
from ttpa_ray.toolcall import parse_calls
from ttpa_ray.columns import none_if_nan, nulls_as_none, object_column
from ttpa_ray.console import collect

log = logging.getLogger(__name__)

_TURN_COLS = ("prompt", "prediction", "finish_reason", "completion_tokens", "generation_error", "esm_score",
              "errors", "valid", "score_error")


def _generate(engine: Any, convs: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]],
              params: SamplingParams) -> tuple[list[str | None], list[Generation]]:
    """Render (messages, tools) with the model's template and generate; a row that fails to
    render or generate gets a Generation with ``error`` set, the others go on."""
    prompts: list[str | None] = []
    gens: list[Generation] = [Generation(prompt_token_ids=[]) for _ in convs]
    for k, (messages, tools) in enumerate(convs):
        try:
            prompts.append(engine.apply_chat_template(messages, tools=tools or None))
        except Exception as exc:  # noqa: BLE001 - a row the template rejects is an error row
            prompts.append(None)
            gens[k].error = f"render: {type(exc).__name__}: {exc}"
    todo = [k for k, p in enumerate(prompts) if p is not None]
    try:
        done = engine.generate([prompts[k] for k in todo], params) if todo else []
    except Exception as exc:  # noqa: BLE001 - a failed batch becomes error rows, never a dead stage
        done = [Generation(prompt_token_ids=[], error=f"{type(exc).__name__}: {exc}") for _ in todo]
    for k, g in zip(todo, done):
        gens[k] = g
    return prompts, gens


class EvalBatch:
    """Ray Data callable class, one engine for both parts: rows with ``messages_json``,
    ``prompt_tools_json`` and ``max_steps`` in. A row of ``max_steps`` 1 is a single turn; a
    longer one is an episode: its calls run in the sandbox and the results go back to the model
    until it answers without calls, fails, or runs out of steps. All rows of a batch advance in
    lockstep (one batched generation per step). Out: the same rows plus, from the first turn,
    ``prompt``, ``prediction``, ``finish_reason``, ``completion_tokens``, ``generation_error``
    (None when it succeeded), and for the episode ``steps``, ``final``, ``failure``,
    ``calls_json`` (every call made) and ``trace_json`` (the messages the episode added)."""

    def __init__(self, engine: dict[str, Any], params: dict[str, Any], catalog: str = "bundled"):
        from ttpa_ray.engines.build import build_engine
        from ttpa_ray.tools.catalog import resolve_catalog

        self.engine = build_engine(EngineConfig.model_validate(engine))
        self.params = SamplingParams(**params)
        self.impls = {t.name: t.impl for t in resolve_catalog(catalog) if t.impl}
        self.sandbox: Any = None  # started on the first call to execute

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        states = [{"messages": json.loads(m), "tools": json.loads(t), "max_steps": int(n), "trace": [], "calls": [],
                   "steps": 0, "final": False, "failure": None}
                  for m, t, n in zip(batch["messages_json"], batch["prompt_tools_json"], batch["max_steps"])]
        for step in range(max((s["max_steps"] for s in states), default=0)):
            live = [s for s in states if not s["final"] and s["failure"] is None and s["steps"] < s["max_steps"]]
            if not live:
                break
            prompts, gens = _generate(self.engine, [(s["messages"], s["tools"]) for s in live], self.params)
            pending = []
            for s, p, g in zip(live, prompts, gens):
                if step == 0:
                    c = g.completions[0] if g.completions and not g.error else None
                    s["first"] = (p, c.text if c else None, (c.finish_reason or "") if c else None,
                                  len(c.token_ids) if c else 0, g.error or (None if c else "no completion"))
                s["steps"] += 1
                calls = self._take_turn(s, g, step)
                if s["steps"] < s["max_steps"]:
                    pending.extend(calls)
            if pending:
                self._execute(pending)
        out = nulls_as_none(batch)
        for k, name in enumerate(("prompt", "prediction", "finish_reason", "completion_tokens", "generation_error")):
            out[name] = object_column([s["first"][k] for s in states])
        out["steps"] = np.array([s["steps"] for s in states], dtype=np.int64)
        out["final"] = np.array([s["final"] for s in states], dtype=bool)
        out["failure"] = object_column([s["failure"] for s in states])
        out["calls_json"] = object_column([json.dumps(s["calls"], ensure_ascii=False) for s in states])
        out["trace_json"] = object_column([json.dumps(s["trace"], ensure_ascii=False) for s in states])
        return out

    def _take_turn(self, s: dict[str, Any], g: Generation, step: int) -> list[tuple[dict[str, Any], Any, str]]:
        """Record one model turn; returns its calls as (state, call, call id)."""
        if g.error or not g.completions:
            s["failure"] = f"generation_error: {g.error or 'no completion'}"
            return []
        text, finish = g.completions[0].text, g.completions[0].finish_reason
        parsed = parse_calls(text)
        s["trace"].append({"role": "assistant", "content": text})
        if parsed.error:
            s["failure"] = f"decode_failed: {parsed.reason}"
        elif not parsed.calls and finish == "length":
            s["failure"] = "truncated_answer: the turn has no call and was cut by max_tokens"
        elif not parsed.calls:
            s["final"] = True
        if parsed.error or not parsed.calls:
            return []
        ids = [f"call_{step}_{k}" for k in range(len(parsed.calls))]
        msg = {"role": "assistant", "content": parsed.content, "tool_calls": [
            {"id": i, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for i, c in zip(ids, parsed.calls)]}
        s["trace"][-1] = msg
        s["messages"].append(msg)
        s["calls"].extend(c.to_dict() for c in parsed.calls)
        return [(s, c, i) for c, i in zip(parsed.calls, ids)]

    def _execute(self, pending: list[tuple[dict[str, Any], Any, str]]) -> None:
        """Run every call of this step in the sandbox; results (or errors) become tool messages."""
        offered = [{t.get("function", t)["name"] for t in s["tools"]} for s, _, _ in pending]
        runnable = [k for k, (_, c, _) in enumerate(pending) if c.name in offered[k] and c.name in self.impls]
        if runnable and self.sandbox is None:
            from ttpa_ray.tools.sandbox import Sandbox

            self.sandbox = Sandbox(workers=1)
        results = dict(zip(runnable, self.sandbox.execute_many(
            [(self.impls[pending[k][1].name], pending[k][1].arguments) for k in runnable]) if runnable else []))
        for k, (s, c, call_id) in enumerate(pending):
            r = results.get(k)
            if r is None:
                content: Any = {"error": f"unknown tool {c.name!r}; available: {sorted(offered[k])}"}
            else:
                content = r.output if r.ok else {"error": r.error}
            msg = {"role": "tool", "tool_call_id": call_id, "name": c.name,
                   "content": json.dumps(content, ensure_ascii=False)}
            s["messages"].append(msg)
            s["trace"].append(msg)


def _read_instances(instances: Path | None) -> tuple[list[dict[str, Any]], str | None]:
    """(instances, why they are skipped or None)."""
    import pyarrow.parquet as pq

    if instances is None:
        return [], "no instances given"
    if not Path(instances).is_file():
        return [], f"{instances} does not exist (run the construct stage to evaluate on held-out data)"
    return pq.read_table(instances).to_pylist(), None


_SENT = ("row", "messages_json", "prompt_tools_json", "tools_json", "gold_json", "possible_answer_json", "max_steps")
_MISSING = "row missing from the pipeline output (a bug: please report it)"


def _run(rows: list[dict[str, Any]], cfg: EvaluateConfig, engine: EngineConfig, score: ScoreConfig,
         seed: int, catalog: str, label: str = "evaluate") -> dict[int, dict[str, Any]]:
    """Generate (engine pool) and ESM-score (scoring pool) every row in one Ray Data pass;
    results by ``row``. Episode rows have no gold: their score columns are not used."""
    import ray

    from ttpa_ray.engines.actors import engine_pool_kwargs
    from ttpa_ray.score.stage import score_dataset

    if not rows:
        return {}
    params = {"max_tokens": cfg.max_tokens, "temperature": 0.0, "seed": seed}
    if cfg.batch_size:
        engine = engine.model_copy(update={"pool": engine.pool.model_copy(update={"batch_size": cfg.batch_size})})
    # Blocks of one to two engine batches: Ray Data hands an actor whole blocks of at least one
    # batch, so smaller blocks would be merged into one task. Scoring takes no more than a
    # batch, so the rows of each block come out when it is generated (the progress line moves).
    ds = ray.data.from_items([{k: r[k] for k in _SENT} for r in rows],
                             override_num_blocks=max(1, len(rows) // engine.pool.batch_size))
    ds = ds.map_batches(EvalBatch, fn_constructor_kwargs={"engine": engine.model_dump(), "params": params,
                                                          "catalog": catalog},
                        **engine_pool_kwargs(engine))
    return {int(r["row"]): {k: none_if_nan(v) for k, v in r.items() if k not in _SENT}
            for r in collect(score_dataset(ds, score, engine.pool.batch_size).iter_rows(), label, len(rows))}


def _finish_turn(row: dict[str, Any], r: dict[str, Any] | None) -> dict[str, Any]:
    """An eval row with its generation and ESM results (a failed row: errors set, score None)."""
    r = r or {"generation_error": _MISSING}
    res = {k: r.get(k) for k in _TURN_COLS}
    res["completion_tokens"] = int(res["completion_tokens"] or 0)
    if res["generation_error"]:  # the scorer read a missing prediction as "no call": not a score
        res |= {"esm_score": None, "errors": [], "valid": False, "score_error": None}
    res["errors"] = [str(e) for e in res["errors"]]
    res["valid"] = bool(res["valid"])
    res["esm_score"] = None if res["esm_score"] is None or res["score_error"] else float(res["esm_score"])
    full = {k: v for k, v in row.items() if k not in ("prompt_tools_json", "max_steps", "kind")} | res
    full["predicted_names"] = None if res["generation_error"] else em.call_names(res["prediction"])
    full["gold_names"] = em.gold_names(row)
    full["selection_right"] = em.selection_right(full)
    full["correct"] = em.correct(full)  # the headline outcome (strict where no call is expected)
    full["correct_bfcl_rule"] = em.correct_bfcl_rule(full)
    return full


def _finish_episode(row: dict[str, Any], r: dict[str, Any] | None) -> dict[str, Any]:
    """An episode with its trace and the pass judgement."""
    r = r or {"failure": _MISSING, "final": False, "steps": 0, "calls_json": "[]", "trace_json": "[]"}
    calls = json.loads(r["calls_json"])
    passed, reason = em.judge_episode(calls, bool(r["final"]), r["failure"], json.loads(row["gold_names_json"]),
                                      json.loads(row["tools_json"]))
    return {k: row[k] for k in ("instance_id", "turn_index", "messages_json", "tools_json", "gold_names_json")} | {
        "steps": int(r["steps"]), "final": bool(r["final"]), "calls_json": r["calls_json"],
        "trace_json": r["trace_json"], "passed": passed, "reason": reason}


def _write(rows: list[dict[str, Any]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows) if rows else pa.table({"id": pa.array([], pa.string())}), path)


def run_evaluate(cfg: EvaluateConfig, engine: EngineConfig, score: ScoreConfig, model: str, instances: Path | None,
                 out: Path, seed: int = 0, catalog: str = "bundled", resume: bool = False) -> dict[str, Any]:
    """Evaluate ``model`` (replacing ``engine.model``); write ``out/`` (see the module doc) and
    return the counts for the stage manifest. ``catalog`` (the job's ``construct.catalog``)
    holds the implementations the pass-rate episodes run. With ``resume`` (an interrupted stage
    of the same config), a model whose evaluation finished (``out/counts.json``, written last)
    is not evaluated again."""
    done = out / "counts.json"
    if resume and done.is_file():
        counts = json.loads(done.read_text())
        if counts.pop("model", None) == model:
            log.info("evaluate %s: finished before the interruption, kept (%s)", out.name, done)
            return counts
    from ttpa_ray.evaluate.bfcl import load_category
    from ttpa_ray.models.registry import resolve
    from ttpa_ray.tools.catalog import resolve_catalog

    engine = engine.model_copy(update={"model": model})
    if engine.backend == "openai" and not engine.tokenizer:
        raise ValueError("evaluate renders prompts with the model's chat template: with backend=openai set "
                         "engine.tokenizer to a local model name or folder with that template")
    resolve(engine.tokenizer or engine.model)  # prepare once on the driver, not in every actor
    rows = [em.bfcl_row(e, cat) for cat in cfg.categories
            for e in load_category(em.BFCL_FILES[cat])[:cfg.max_per_category]]
    instance_rows, skipped = _read_instances(instances)
    if skipped:
        log.info("evaluate: held-out data and pass rate skipped: %s", skipped)
    rows += em.held_out_rows(instance_rows, cfg.held_out_fraction, seed)
    for r in rows:
        r |= {"kind": "turn", "max_steps": 1}
    run_pass_rate = cfg.pass_rate and not skipped
    if run_pass_rate:
        executable = {t.name for t in resolve_catalog(catalog) if t.impl}
        rows += [e | {"kind": "episode", "max_steps": cfg.max_steps, "prompt_tools_json": e["tools_json"],
                      "gold_json": None, "possible_answer_json": None}
                 for e in em.episode_rows(instance_rows, cfg.held_out_fraction, seed, executable)]
    for i, r in enumerate(rows):
        r["row"] = i
    results = _run(rows, cfg, engine, score, seed, catalog, label=f"evaluate {out.name}")
    turns = [_finish_turn(r, results.get(r["row"])) for r in rows if r["kind"] == "turn"]
    episodes = [_finish_episode(r, results.get(r["row"])) for r in rows if r["kind"] == "episode"]
    bfcl = [r for r in turns if r["category"] != "held_out"]
    held = [r for r in turns if r["category"] == "held_out"]

    metrics = {"model": model, "seed": seed, "held_out_fraction": cfg.held_out_fraction,
               "bfcl": em.group_metrics(bfcl, cfg.categories) if cfg.categories else {"skipped": "no categories"},
               "held_out": {"overall": em.category_metrics(held)} if not skipped else {"skipped": skipped},
               "pass_rate": em.pass_rate_metrics(episodes) if run_pass_rate else {
                   "skipped": skipped or "evaluate.pass_rate is off"}}
    out.mkdir(parents=True, exist_ok=True)
    _write(bfcl, out / "bfcl.parquet")
    _write(held, out / "held_out.parquet")
    _write(episodes, out / "episodes.parquet")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(em.format_table(metrics), flush=True)
    counts = {"bfcl_rows": len(bfcl), "held_out_rows": len(held), "episodes": len(episodes),
            "generation_errors": sum(bool(r["generation_error"]) for r in turns),
            "score_errors": sum(bool(r["score_error"]) for r in turns),
            "bfcl_accuracy": metrics["bfcl"].get("overall", {}).get("accuracy"),
            "bfcl_accuracy_ci": metrics["bfcl"].get("overall", {}).get("accuracy_ci"),
            "bfcl_irrelevance_accuracy_bfcl_rule": metrics["bfcl"].get("irrelevance", {}).get("accuracy_bfcl_rule"),
            "bfcl_simple_accuracy": metrics["bfcl"].get("simple", {}).get("accuracy"),
            "held_out_accuracy": metrics["held_out"].get("overall", {}).get("accuracy"),
            "pass_rate": metrics["pass_rate"].get("pass_rate")}
    done.write_text(json.dumps({"model": model} | counts, indent=2))
    return counts
