"""Reversed dataset construction as a Ray Data stage over a pool of generator engine actors.

    ttpa construct jobs/demo-cpu.yaml [key=value ...]

A plan per instance (:func:`plans`) fixes its kind (``construct.mix``: single, multiple,
parallel, parallel_multiple, irrelevance), the offered tools (used ones plus
``construct.distractors``, shuffled) and per turn the calls to make. Each batch of plans goes
through the steps of :mod:`ttpa_ray.construct.steps` in lockstep (one batched generation per
step): scenario -> per turn, the calls step by step (JSON-schema constrained to the planned
tool, executed in the sandbox or simulated by the generator; a parallel step's calls go in one
assistant message) -> final answer (retried until it states a result value) -> user query
(retried until it determines every call; template seeds when the generator cannot). Every
attempted instance leaves the stage as a row whose ``status`` is ``kept``, a filter name, or
``error``; the manifest counts them all, per kind.

Output (``<run>/construct/``): ``instances.parquet`` (kept rows), ``rejected.parquet``
(everything else, with ``reason``), ``instances.jsonl`` (OpenAI messages + tools). Columns:
id, status, reason, kind, domain, tools (JSON: OpenAI schemas), messages (JSON: OpenAI chat with
tool calls and tool results), query (first turn), answer (last turn), scenario, constraints
(JSON: kind, style, the plan), provenance (JSON: generator, seed, simulated tools, per turn
the path that wrote the query (generated / rewrite / template) and the answer (generated /
template), executed calls), twin_of (the source id of an irrelevance twin,
``construct.irrelevance_twins``: :mod:`ttpa_ray.construct.twins`; null otherwise). The
manifest's ``kept`` counts generated instances; ``instances.parquet`` holds them and the
``irrelevance_twins.made`` twins.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np

from ttpa_ray.construct import steps
from ttpa_ray.construct import templates
from ttpa_ray.construct.grounding import answer_grounded, ungrounded
from ttpa_ray.construct.twins import add_twins
from ttpa_ray import faults
from ttpa_ray.config import KINDS, ConstructConfig
from ttpa_ray.engines.base import SamplingParams
from ttpa_ray.toolcall import ToolSchema
from ttpa_ray.tools.catalog import resolve_catalog
from ttpa_ray.console import collect

log = logging.getLogger(__name__)


class ConstructBatch:
    """Ray Data callable class: plan rows in, instance rows out (same count, same order)."""

    def __init__(self, cfg: dict[str, Any], seed: int, fault_marker: str | None = None):
        from ttpa_ray.engines.build import build_engine
        from ttpa_ray.tools.sandbox import Sandbox, SandboxConfig

        self.cfg = ConstructConfig.model_validate(cfg)
        self.seed = seed
        self.fault_marker = fault_marker
        self.tools = {t.name: t for t in resolve_catalog(self.cfg.catalog)}
        self.engine = build_engine(self.cfg.generator)
        self.sandbox = Sandbox(SandboxConfig(timeout_s=self.cfg.sandbox.timeout_s,
                                             memory_mb=self.cfg.sandbox.memory_mb), workers=1)

    def _params(self, max_tokens: int, schema: dict[str, Any] | None = None, salt: int = 0,
                stop: tuple[str, ...] = ()) -> SamplingParams:
        return SamplingParams(max_tokens=max_tokens, temperature=self.cfg.temperature, top_p=0.95,
                              seed=self.seed * 100003 + salt, json_schema=schema, stop=stop)

    def _chat(self, convs: list[list[dict[str, str]]], params: list[SamplingParams]) -> list[tuple[str, str, str]]:
        """(text, finish_reason, error) per conversation."""
        if not convs:
            return []
        gens = self.engine.chat(convs, params)
        return [(g.completions[0].text.strip() if g.completions else "",
                 (g.completions[0].finish_reason or "") if g.completions else "", g.error or "") for g in gens]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        states = []
        for i in range(len(batch["id"])):
            names = [str(n) for n in batch["tools"][i]]
            states.append({"id": int(batch["id"][i]), "domain": str(batch["domain"][i]), "kind": str(batch["kind"][i]),
                           "schemas": [self.tools[n].schema for n in names],
                           "plan": json.loads(str(batch["turns"][i])),
                           "constraints": json.loads(str(batch["constraints"][i])),
                           "status": None, "reason": "", "turns": [], "simulated": set(), "paths": []})
        try:
            self._scenarios(states)
            faults.kill_once(self.fault_marker, "construct batch, after the scenario step")
            for t in range(max(len(s["plan"]) for s in states)):
                self._turn(states, t)
        except Exception as exc:  # noqa: BLE001 - an engine failure marks the batch's rows, the stage goes on
            log.exception("construct batch failed")
            for s in states:
                if s["status"] is None:
                    s["status"], s["reason"] = "error", f"{type(exc).__name__}: {exc}"
        return self._rows(states)

    @staticmethod
    def _fail(s: dict[str, Any], status: str, reason: str) -> None:
        s["status"], s["reason"] = status, reason

    def _scenarios(self, states: list[dict[str, Any]]) -> None:
        convs = []
        for s in states:
            calls = [c for turn in s["plan"] for step in turn["steps"] for c in step]
            calls += [turn["need"] for turn in s["plan"] if turn["need"]]
            tools = [self.tools[n].schema for n in dict.fromkeys(c[0] for c in calls)]
            hints = [(n, h) for n, h in calls if h] if self.cfg.grounded else []
            convs.append(steps.scenario_messages(tools, s["constraints"]["style"], hints))
        outs = self._chat(convs, [self._params(self.cfg.max_tokens.scenario, salt=s["id"]) for s in states])
        for s, (text, _, err) in zip(states, outs):
            if err:
                self._fail(s, "error", f"scenario: {err}")
            s["scenario"] = text

    # ------------------------------------------------------------------ one turn

    def _turn(self, states: list[dict[str, Any]], t: int) -> None:
        live = [s for s in states if s["status"] is None and t < len(s["plan"])]
        for s in live:
            s["cur"] = {"index": t, "steps": [], "plan": s["plan"][t]}
        n_steps = max((len(s["cur"]["plan"]["steps"]) for s in live), default=0)
        for k in range(n_steps):
            self._step([s for s in live if s["status"] is None and k < len(s["cur"]["plan"]["steps"])], k)
        live = [s for s in live if s["status"] is None]
        self._answers(live)
        live = [s for s in live if s["status"] is None]
        self._queries(live)

    def _memory(self, s: dict[str, Any]) -> list[dict[str, Any]]:
        """The calls of the current turn so far (with results once executed)."""
        return [m for step in s["cur"]["steps"] for m in step]

    def _step(self, states: list[dict[str, Any]], k: int) -> None:
        """Step ``k`` of each state's current turn: its planned calls (one message; several are
        independent, generated one after another without results), then their execution."""
        for s in states:
            s["cur"]["steps"].append([])
        width = max(len(s["cur"]["plan"]["steps"][k]) for s in states)
        for j in range(width):
            active = [s for s in states if s["status"] is None and j < len(s["cur"]["plan"]["steps"][k])]
            convs, params = [], []
            for s in active:
                name, hint = s["cur"]["plan"]["steps"][k][j]
                total = sum(len(x) for x in s["cur"]["plan"]["steps"])
                schema = self.tools[name].schema
                earlier = [m for t in s["turns"] for step in t["steps"] for m in step]  # earlier turns' calls too
                convs.append(steps.call_messages(s["scenario"], schema, earlier + self._memory(s),
                                                 len(self._memory(s)) + 1, total, hint if self.cfg.grounded else None))
                params.append(self._params(self.cfg.max_tokens.call, steps.call_grammar([schema]),
                                           salt=s["id"] * 31 + k * 7 + j + 7919 * s["cur"]["index"]))
            for s, (text, finish, err) in zip(active, self._chat(convs, params)):
                name, hint = s["cur"]["plan"]["steps"][k][j]
                self._take_call(s, text, err, {"name": name, "arguments": hint} if hint else None)
        self._execute([(s, m) for s in states if s["status"] is None for m in s["cur"]["steps"][k]])

    def _take_call(self, s: dict[str, Any], text: str, err: str, hint: dict[str, Any] | None = None) -> None:
        """Validate a generated call and add it to the turn. An invalid one (cut by max_tokens,
        off the schema, or repeating an earlier call) is replaced by the planned known-good
        ``hint`` when templates are on (counted in ``provenance.calls_from_hint``), else the
        instance is dropped as ``invalid_call``."""
        import jsonschema

        if err:
            self._fail(s, "error", f"call: {err}")
            return
        made = [m for t in s["turns"] for step in t["steps"] for m in step] + self._memory(s)
        try:
            call = json.loads(text)
            schema = self._schema(s, call["name"])
            jsonschema.validate(call["arguments"], {"type": "object", "properties": schema.properties,
                                                    "required": list(schema.required)})
            if any(m["name"] == call["name"] and m["arguments"] == call["arguments"] for m in made):
                # A parallel call twice, or a follow-up asking again: nothing new to determine.
                raise ValueError("repeats an earlier call")
        except (ValueError, KeyError, TypeError, StopIteration, jsonschema.ValidationError) as exc:
            if self.cfg.use_templates and hint and not any(m["name"] == hint["name"] and m["arguments"] ==
                                                           hint["arguments"] for m in made):
                s["cur"]["steps"][-1].append({"name": hint["name"], "arguments": dict(hint["arguments"])})
                s["calls_from_hint"] = s.get("calls_from_hint", 0) + 1
                return
            self._fail(s, "invalid_call", f"{type(exc).__name__}: {str(exc)[:200]} in {text[:200]!r}")
            return
        s["cur"]["steps"][-1].append({"name": call["name"], "arguments": call["arguments"]})

    def _execute(self, calls: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        real = [(s, m) for s, m in calls if self.tools[m["name"]].executable]
        sim = [(s, m) for s, m in calls if not self.tools[m["name"]].executable]
        results = self.sandbox.execute_many([(self.tools[m["name"]].impl, m["arguments"]) for _, m in real])
        for (s, m), r in zip(real, results):
            m["result"] = r.output if r.ok else {"error": r.error}
            if not r.ok and s["status"] is None:
                self._fail(s, "tool_error", f"{m['name']}: {r.error}")
        for attempt in range(2):  # a simulated result that is not JSON (cut by max_tokens) gets one retry
            if not sim:
                break
            convs = [steps.simulate_messages(self.tools[m["name"]].schema, m["arguments"]) for _, m in sim]
            outs = self._chat(convs, [self._params(self.cfg.max_tokens.simulate, steps.SIMULATED_RESULT,
                                                   salt=s["id"] + i + 4099 * attempt) for i, (s, _) in enumerate(sim)])
            failed = []
            for (s, m), (text, _, err) in zip(sim, outs):
                s["simulated"].add(m["name"])
                try:
                    m["result"] = json.loads(text)
                except ValueError:
                    m["result"] = {"error": "simulation failed"}
                    failed.append((s, m))
                    if attempt == 1 and s["status"] is None:
                        self._fail(s, "tool_error", f"simulated {m['name']}: {err or text[:100]}")
            sim = failed

    def _schema(self, s: dict[str, Any], name: str) -> ToolSchema:
        if name in self.tools and self.tools[name].schema in s["schemas"]:
            return self.tools[name].schema
        raise KeyError(f"{name!r} is not offered")

    # ------------------------------------------------------------------ answer, then query

    def _answers(self, live: list[dict[str, Any]]) -> None:
        """The final answer, before the query (reversed order). Retried with new seeds until it
        passes its filters (``answer_attempts``; 0: no generation); then the template answer,
        when templates are on."""
        pending = list(live)
        for attempt in range(self.cfg.answer_attempts):
            if not pending:
                break
            convs = []
            for s in pending:
                need = s["cur"]["plan"]["need"]
                convs.append(steps.no_fit_answer_messages(self.tools[need[0]].schema, need[1] or {}) if need else
                             steps.answer_messages(s["scenario"], self._memory(s)))
            outs = self._chat(convs, [self._params(self.cfg.max_tokens.answer, salt=s["id"] + 7 + 1009 * attempt)
                                      for s in pending])
            still = []
            for s, (text, finish, err) in zip(pending, outs):
                if err:
                    self._fail(s, "error", f"answer: {err}")
                    continue
                s["cur"]["answer"], s["cur"]["answer_path"] = text, "generated"
                s["cur"]["answer_problem"] = self._answer_problem(s, text, finish)
                if s["cur"]["answer_problem"]:
                    still.append(s)
            pending = still
        for s in pending:
            problem = s["cur"].get("answer_problem", "")
            if self.cfg.use_templates:
                need = s["cur"]["plan"]["need"]
                s["cur"]["answer"] = (templates.no_tool_answer(self.tools[need[0]].schema.description) if need
                                      else templates.fallback_answer(self._memory(s)))
                s["cur"]["answer_path"] = "template"
                problem = self._answer_problem(s, s["cur"]["answer"], "stop")
            if problem:
                self._fail(s, problem, f"turn {s['cur']['index'] + 1}: {problem}")

    def _answer_problem(self, s: dict[str, Any], answer: str, finish: str) -> str:
        f = self.cfg.filters
        if len(answer) < f.min_answer_chars:
            return "empty_answer"
        if f.drop_truncated and finish == "length":
            return "truncated_answer"
        if f.forbid_task_talk and steps.talks_about_the_task(answer):
            return "talks_about_task"
        if f.require_grounded_answer:
            if s["cur"]["plan"]["need"]:
                if not steps.declines(answer) or "<tool_call>" in answer:
                    return "answer_ungrounded"
            elif not answer_grounded(answer, self._memory(s)):
                return "answer_ungrounded"
        return ""

    def _gold_calls(self, s: dict[str, Any]) -> list[dict[str, Any]]:
        """The calls the query must determine: the turn's, or a no-tool-fits turn's needed call."""
        need = s["cur"]["plan"]["need"]
        if need:
            return [{"name": need[0], "arguments": need[1] or {}}]
        return [{"name": m["name"], "arguments": m["arguments"]} for m in self._memory(s)]

    def _queries(self, live: list[dict[str, Any]]) -> None:
        """The user message, written last. Attempt 1 is free (shown the exact values); later
        attempts rewrite the template seed; the seed itself is the last resort (templates on).
        The path that wrote each query is kept in ``provenance.query_paths``."""
        use_seed = self.cfg.use_templates
        pending = list(live)
        for s in pending:
            calls = self._gold_calls(s)
            seed = templates.seed_query([(self.tools[c["name"]].schema, self.tools[c["name"]].query_template,
                                          c["arguments"]) for c in calls])
            s["cur"]["seed"] = ("Thanks. " + seed) if s["turns"] else seed
            s["cur"]["query"], s["cur"]["query_problem"] = "", ""
        for attempt in range(self.cfg.query_attempts):
            if not pending:
                break
            rewrite = use_seed and attempt > 0
            convs = []
            for s in pending:
                previous = s["turns"][-1]["answer"] if s["turns"] else None
                convs.append(steps.rewrite_messages(s["cur"]["seed"], self._gold_calls(s), s["constraints"]["style"])
                             if rewrite else
                             steps.query_messages(s["scenario"], self._gold_calls(s), s["cur"]["answer"], previous))
            outs = self._chat(convs, [self._params(self.cfg.max_tokens.query, salt=s["id"] + 13 + 1009 * attempt,
                                                   stop=("\n\n",)) for s in pending])
            still = []
            for s, (text, finish, err) in zip(pending, outs):
                if err:
                    self._fail(s, "error", f"query: {err}")
                    continue
                text = steps.clean_text(text)
                problem, detail = self._query_problem(s, text, finish)
                if problem:
                    s["cur"]["query_problem"], s["cur"]["query_detail"] = problem, detail
                    s["cur"]["query"] = s["cur"]["query"] or text
                    still.append(s)
                else:
                    self._finish_turn(s, text, "rewrite" if rewrite else "generated")
            pending = still
        for s in pending:
            if use_seed:
                problem, detail = self._query_problem(s, s["cur"]["seed"], "stop")
                if not problem:
                    self._finish_turn(s, s["cur"]["seed"], "template")
                    continue
            else:
                problem, detail = s["cur"]["query_problem"], s["cur"].get("query_detail", "")
            self._finish_turn(s, s["cur"]["query"], "")
            self._fail(s, problem, f"turn {s['cur']['index'] + 1}: {problem}{detail}")

    def _finish_turn(self, s: dict[str, Any], query: str, path: str) -> None:
        cur = s["cur"]
        s["turns"].append({"index": cur["index"], "query": query, "answer": cur.get("answer", ""),
                           "steps": [step for step in cur["steps"] if step]})
        s["paths"].append({"query": path, "answer": cur.get("answer_path", "")})
        cur["done"] = True

    def _query_problem(self, s: dict[str, Any], query: str, finish: str) -> tuple[str, str]:
        f = self.cfg.filters
        memory = self._gold_calls(s)
        names = [x.name for x in s["schemas"]] + [c["name"] for c in memory]
        if len(query) < f.min_query_chars:
            return "empty_query", ""
        if f.drop_truncated and finish == "length":
            return "truncated_query", ""
        if f.require_request and not steps.is_request(query):
            return "query_not_request", ""
        if f.forbid_tool_names and steps.names_tool(query, names):
            return "query_names_tool", ""
        if f.forbid_argument_leak and steps.leaks_arguments(query, memory):
            return "query_leaks_arguments", ""
        if f.require_grounded_query:
            # The conversation so far, this turn's query and its calls (the needed call for a
            # no-tool-fits turn: its query must still say what it asks for).
            done = s["cur"]["steps"] or [[c | {"result": None} for c in memory]]
            turn = {"index": s["cur"]["index"], "query": query, "answer": "", "steps": done}
            history = steps.build_messages(s["turns"] + [turn])
            tools = [x.openai() for x in s["schemas"]] + [self.tools[c["name"]].openai() for c in memory]
            missing = ungrounded(history, tools)
            if missing:
                return "query_ungrounded", f" ({', '.join(missing[:3])} not in the conversation)"
        if f.forbid_task_talk:
            if steps.talks_about_the_task(query):
                return "talks_about_task", ""
            seeds = [templates.seed_query([(self.tools[c["name"]].schema, self.tools[c["name"]].query_template,
                                            c["arguments"])]) for c in memory]
            if not steps.on_topic(query, seeds, memory):
                return "query_off_topic", ""
        return "", ""

    def _rows(self, states: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        cols: dict[str, list[Any]] = {k: [] for k in ("id", "status", "reason", "kind", "domain", "tools", "messages",
                                                       "query", "answer", "scenario", "constraints", "provenance")}
        for s in states:
            if s["status"] is not None and "cur" in s and not s["cur"].get("done"):
                # A rejected turn keeps what it got to (calls, results, answer), for the reader of rejected.parquet.
                for step in s["cur"]["steps"]:
                    for m in step:
                        m.setdefault("result", None)
                self._finish_turn(s, s["cur"].get("query", ""), "")
            cols["id"].append(s["id"])
            cols["status"].append(s["status"] or "kept")
            cols["reason"].append(s["reason"])
            cols["kind"].append(s["kind"])
            cols["domain"].append(s["domain"])
            cols["tools"].append(json.dumps([x.openai() for x in s["schemas"]], ensure_ascii=False))
            cols["messages"].append(json.dumps(steps.build_messages(s["turns"]), ensure_ascii=False))
            cols["query"].append(s["turns"][0]["query"] if s["turns"] else "")
            cols["answer"].append(s["turns"][-1]["answer"] if s["turns"] else "")
            cols["scenario"].append(s.get("scenario", ""))
            cols["constraints"].append(json.dumps(s["constraints"] | {"plan": s["plan"]}, ensure_ascii=False))
            cols["provenance"].append(json.dumps({
                "generator": self.cfg.generator.model, "backend": self.cfg.generator.backend, "seed": self.seed,
                "simulated_tools": sorted(s["simulated"]),
                "query_paths": [p["query"] for p in s["paths"]], "answer_paths": [p["answer"] for p in s["paths"]],
                "calls_from_hint": s.get("calls_from_hint", 0),
                "calls": sum(len(step) for t in s["turns"] for step in t["steps"])}))
        return {k: np.array(v, dtype=object if k != "id" else np.int64) for k, v in cols.items()}


def plans(cfg: ConstructConfig, seed: int) -> list[dict[str, Any]]:
    """One plan row per instance: its kind (in ``cfg.mix``'s shares), offered tools and calls."""
    tools = resolve_catalog(cfg.catalog)
    domains: dict[str, list[str]] = {}
    for t in tools:
        domains.setdefault(t.domain, []).append(t.name)
    examples = {t.name: [dict(e) for e in t.examples] for t in tools} if cfg.grounded else {}
    kinds = steps.kind_quota(cfg.mix.shares(), cfg.num_instances, seed)
    if "irrelevance" in kinds and len(domains) < 2:
        raise ValueError(f"construct.mix.irrelevance needs a catalog with at least two domains (tools that do "
                         f"not fit); {cfg.catalog!r} has {sorted(domains)}. Set mix.irrelevance: 0 or add tools")
    out = []
    for i, kind in enumerate(kinds):
        p = steps.sample_plan(i, kind, domains, examples, seed, tuple(cfg.distractors), tuple(cfg.calls_per_turn),
                              cfg.turns)
        out.append({"id": i, "domain": p.domain, "kind": p.kind, "tools": p.tools,
                    "turns": json.dumps(p.turns, ensure_ascii=False), "constraints": json.dumps(p.constraints)})
    return out


def run_construct(cfg: ConstructConfig, out: Path, seed: int = 0) -> dict[str, Any]:
    """The stage: plans -> generator actor pool -> dedupe -> Parquet + JSONL + counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from ttpa_ray.engines.actors import engine_pool_kwargs
    from ttpa_ray.models.registry import resolve

    if cfg.generator.backend != "openai":
        resolve(cfg.generator.model)  # prepare once on the driver, not in every actor
    rows = plans(cfg, seed)
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // cfg.generator.pool.batch_size))
    # A dead generator actor is restarted by Ray Data and its batch retried (max_restarts and
    # max_task_retries are unlimited for actor pools): rows in = rows out + counted errors.
    ds = ds.map_batches(ConstructBatch, fn_constructor_kwargs={"cfg": cfg.model_dump(), "seed": seed,
                                                               "fault_marker": faults.marker(faults.KILL_ENGINE_ACTOR)},
                        **engine_pool_kwargs(cfg.generator))
    done = sorted(collect(ds.iter_rows(), "construct", len(rows)), key=lambda r: r["id"])
    seen: set[str] = set()
    for r in done:  # duplicates: same normalised first query as an earlier kept instance
        if r["status"] == "kept" and cfg.filters.dedupe:
            key = steps.normalize_query(r["query"])
            if key in seen:
                r["status"], r["reason"] = "duplicate", "same query as an earlier instance"
            seen.add(key)
    out.mkdir(parents=True, exist_ok=True)
    kept = [r | {"twin_of": None} for r in done if r["status"] == "kept"]
    rejected = [r | {"twin_of": None} for r in done if r["status"] != "kept"]
    kept, twins = add_twins(kept, cfg.irrelevance_twins, seed,
                            resolve_catalog(cfg.catalog) if cfg.irrelevance_twins else [], next_id=len(rows))
    schema = pa.schema([("id", pa.int64())] + [(k, pa.string()) for k in (
        "status", "reason", "kind", "domain", "tools", "messages", "query", "answer", "scenario", "constraints",
        "provenance")] + [("twin_of", pa.int64())])
    pq.write_table(pa.Table.from_pylist(kept, schema=schema), out / "instances.parquet")
    pq.write_table(pa.Table.from_pylist(rejected, schema=schema), out / "rejected.parquet")
    with open(out / "instances.jsonl", "w", encoding="utf-8") as f:
        for r in kept:
            f.write(json.dumps({"id": r["id"], "messages": json.loads(r["messages"]),
                                "tools": json.loads(r["tools"])}, ensure_ascii=False) + "\n")
    generated = [r for r in kept if r["twin_of"] is None]
    counts: dict[str, Any] = {"attempted": len(rows), "rows_out": len(done), "kept": len(generated),
                              "errors": sum(r["status"] == "error" for r in done)}
    counts["filtered"] = {f: sum(r["status"] == f for r in done) for f in steps.FILTERS}
    counts["kept_share"] = round(len(generated) / max(1, len(rows)), 3)
    counts["kinds"] = {k: {"attempted": sum(r["kind"] == k for r in done),
                           "kept": sum(r["kind"] == k for r in generated)} for k in KINDS}
    if cfg.irrelevance_twins:
        counts["irrelevance_twins"], counts["twins_without_other_domain"] = twins["made"], twins["no_other_domain"]
    paths: dict[str, dict[str, int]] = {"query": {}, "answer": {}}
    for r in generated:
        prov = json.loads(r["provenance"])
        for what in paths:
            for p in prov[f"{what}_paths"]:
                paths[what][p] = paths[what].get(p, 0) + 1
    counts["query_paths"], counts["answer_paths"] = paths["query"], paths["answer"]
    counts["calls_from_hint"] = sum(json.loads(r["provenance"]).get("calls_from_hint", 0) for r in generated)
    return counts
