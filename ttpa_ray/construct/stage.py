"""Reversed dataset construction as a Ray Data stage over a pool of generator engine actors.

    ttpa construct jobs/demo-cpu.yaml [key=value ...]

Each batch of instance plans goes through the steps of :mod:`ttpa_ray.construct.steps` in
lockstep (one batched generation per step): scenario -> calls one at a time (JSON-schema
constrained, executed in the sandbox or simulated by the generator) -> final answer -> user
query, for each turn. Every attempted instance leaves the stage as a row whose ``status``
is ``kept``, a filter name, or ``error``; the manifest counts them all.

Output (``<run>/construct/``): ``instances.parquet`` (kept rows), ``rejected.parquet``
(everything else, with ``reason``), ``instances.jsonl`` (OpenAI messages + tools). Columns:
id, status, reason, domain, tools (JSON: OpenAI schemas), messages (JSON: OpenAI chat with
tool calls and tool results), query (first turn), answer (last turn), scenario, constraints
(JSON), provenance (JSON: generator, seed, simulated tools, executed calls).
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np

from ttpa_ray.construct import steps
from ttpa_ray.construct.grounding import ungrounded
from ttpa_ray import faults
from ttpa_ray.config import ConstructConfig
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
            states.append({"id": int(batch["id"][i]), "domain": str(batch["domain"][i]),
                           "schemas": [self.tools[n].schema for n in names],
                           "calls": [int(c) for c in batch["num_calls"][i]],
                           "constraints": json.loads(str(batch["constraints"][i])),
                           "hints": json.loads(str(batch["hints"][i])),
                           "status": None, "reason": "", "turns": [], "simulated": set()})
        try:
            self._scenarios(states)
            faults.kill_once(self.fault_marker, "construct batch, after the scenario step")
            for t in range(max(len(s["calls"]) for s in states)):
                self._turn(states, t)
        except Exception as exc:  # noqa: BLE001 - an engine failure marks the batch's rows, the stage goes on
            log.exception("construct batch failed")
            for s in states:
                if s["status"] is None:
                    s["status"], s["reason"] = "error", f"{type(exc).__name__}: {exc}"
        return self._rows(states)

    def _scenarios(self, states: list[dict[str, Any]]) -> None:
        convs = [steps.scenario_messages(s["schemas"], s["constraints"]["style"], s["hints"]) for s in states]
        outs = self._chat(convs, [self._params(self.cfg.max_tokens.scenario, salt=s["id"]) for s in states])
        for s, (text, _, err) in zip(states, outs):
            if err:
                s["status"], s["reason"] = "error", f"scenario: {err}"
            s["scenario"] = text

    def _turn(self, states: list[dict[str, Any]], t: int) -> None:
        live = [s for s in states if s["status"] is None and t < len(s["calls"])]
        for s in live:
            s["memory"] = []
        for step in range(max((s["calls"][t] for s in live), default=0)):
            active = [s for s in live if s["status"] is None and step < s["calls"][t]]
            convs, params = [], []
            for s in active:
                convs.append(steps.call_messages(s["scenario"], s["schemas"], s["memory"], step + 1, s["calls"][t],
                                                 s["hints"]))
                params.append(self._params(self.cfg.max_tokens.call, steps.call_grammar(s["schemas"]),
                                           salt=s["id"] * 31 + step))
            for s, (text, finish, err) in zip(active, self._chat(convs, params)):
                self._take_call(s, text, finish, err)
            self._execute([s for s in active if s["status"] is None and s["memory"] and "result" not in s["memory"][-1]])
        live = [s for s in live if s["status"] is None]
        outs = self._chat([steps.answer_messages(s["scenario"], s["memory"]) for s in live],
                          [self._params(self.cfg.max_tokens.answer, salt=s["id"] + 7) for s in live])
        for s, (text, finish, err) in zip(live, outs):
            s["answer"], s["answer_finish"] = text, finish
            if err:
                s["status"], s["reason"] = "error", f"answer: {err}"
        live = [s for s in live if s["status"] is None]
        outs = self._chat([steps.query_messages(s["scenario"], s["memory"], s["answer"]) for s in live],
                          [self._params(self.cfg.max_tokens.query, salt=s["id"] + 13, stop=("\n\n",)) for s in live])
        for s, (text, finish, err) in zip(live, outs):
            if err:
                s["status"], s["reason"] = "error", f"query: {err}"
                continue
            text = steps.clean_text(text)
            s["turns"].append({"index": t, "query": text, "answer": s["answer"], "memory": s["memory"]})
            self._filter_turn(s, text, finish)

    def _take_call(self, s: dict[str, Any], text: str, finish: str, err: str) -> None:
        import jsonschema

        if err:
            s["status"], s["reason"] = "error", f"call: {err}"
            return
        try:
            call = json.loads(text)
            schema = next(x for x in s["schemas"] if x.name == call["name"])
            jsonschema.validate(call["arguments"], {"type": "object", "properties": schema.properties,
                                                    "required": list(schema.required)})
        except (ValueError, KeyError, TypeError, StopIteration, jsonschema.ValidationError) as exc:
            s["status"], s["reason"] = "invalid_call", f"{type(exc).__name__}: {str(exc)[:200]} in {text[:200]!r}"
            return
        s["memory"].append({"name": call["name"], "arguments": call["arguments"]})

    def _execute(self, states: list[dict[str, Any]]) -> None:
        real = [s for s in states if self.tools[s["memory"][-1]["name"]].executable]
        sim = [s for s in states if not self.tools[s["memory"][-1]["name"]].executable]
        results = self.sandbox.execute_many([(self.tools[s["memory"][-1]["name"]].impl,
                                              s["memory"][-1]["arguments"]) for s in real])
        for s, r in zip(real, results):
            s["memory"][-1]["result"] = r.output if r.ok else {"error": r.error}
            if not r.ok:
                s["status"], s["reason"] = "tool_error", f"{s['memory'][-1]['name']}: {r.error}"
        if sim:
            convs = [steps.simulate_messages(self._schema(s, s["memory"][-1]["name"]), s["memory"][-1]["arguments"])
                     for s in sim]
            outs = self._chat(convs, [self._params(self.cfg.max_tokens.simulate, {"type": "object"}, salt=s["id"])
                                      for s in sim])
            for s, (text, _, err) in zip(sim, outs):
                s["simulated"].add(s["memory"][-1]["name"])
                try:
                    s["memory"][-1]["result"] = json.loads(text)
                except ValueError:
                    s["memory"][-1]["result"] = {"error": "simulation failed"}
                    s["status"], s["reason"] = "tool_error", f"simulated {s['memory'][-1]['name']}: {err or text[:100]}"

    @staticmethod
    def _schema(s: dict[str, Any], name: str) -> ToolSchema:
        return next(x for x in s["schemas"] if x.name == name)

    def _filter_turn(self, s: dict[str, Any], query: str, finish: str) -> None:
        f = self.cfg.filters
        answer = s["answer"]
        checks = [
            ("empty_answer", len(answer) < f.min_answer_chars),
            ("truncated_answer", f.drop_truncated and s["answer_finish"] == "length"),
            ("empty_query", len(query) < f.min_query_chars),
            ("truncated_query", f.drop_truncated and finish == "length"),
            ("query_names_tool", f.forbid_tool_names and steps.names_tool(query, [x.name for x in s["schemas"]])),
            ("query_leaks_arguments", f.forbid_argument_leak and steps.leaks_arguments(query, s["memory"])),
        ]
        # The turn is already in s["turns"]: the conversation so far, this turn's calls included.
        missing = ungrounded(steps.build_messages(s["turns"]), [x.openai() for x in s["schemas"]]) \
            if f.require_grounded_query else []
        checks.append(("query_ungrounded", bool(missing)))
        for name, failed in checks:
            if failed:
                detail = f" ({', '.join(missing[:3])} not in the conversation)" if name == "query_ungrounded" else ""
                s["status"], s["reason"] = name, f"turn {len(s['turns'])}: {name}{detail}"
                return

    def _rows(self, states: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        cols: dict[str, list[Any]] = {k: [] for k in ("id", "status", "reason", "domain", "tools", "messages",
                                                       "query", "answer", "scenario", "constraints", "provenance")}
        for s in states:
            cols["id"].append(s["id"])
            cols["status"].append(s["status"] or "kept")
            cols["reason"].append(s["reason"])
            cols["domain"].append(s["domain"])
            cols["tools"].append(json.dumps([x.openai() for x in s["schemas"]], ensure_ascii=False))
            cols["messages"].append(json.dumps(steps.build_messages(s["turns"]), ensure_ascii=False))
            cols["query"].append(s["turns"][0]["query"] if s["turns"] else "")
            cols["answer"].append(s["turns"][-1]["answer"] if s["turns"] else "")
            cols["scenario"].append(s.get("scenario", ""))
            cols["constraints"].append(json.dumps(s["constraints"] | {"hints": s["hints"]}, ensure_ascii=False))
            cols["provenance"].append(json.dumps({
                "generator": self.cfg.generator.model, "backend": self.cfg.generator.backend, "seed": self.seed,
                "simulated_tools": sorted(s["simulated"]),
                "calls": sum(len(t["memory"]) for t in s["turns"])}))
        return {k: np.array(v, dtype=object if k != "id" else np.int64) for k, v in cols.items()}


def plans(cfg: ConstructConfig, seed: int) -> list[dict[str, Any]]:
    tools = resolve_catalog(cfg.catalog)
    domains: dict[str, list[str]] = {}
    for t in tools:
        domains.setdefault(t.domain, []).append(t.name)
    by_name = {t.name: t for t in tools}
    out = []
    for i in range(cfg.num_instances):
        p = steps.sample_plan(i, domains, seed, tuple(cfg.tools_per_instance), tuple(cfg.calls_per_turn), cfg.turns)
        rng = random.Random(f"hints:{seed}:{i}")
        hints = {n: rng.choice(by_name[n].examples) for n in p.tools if cfg.grounded and by_name[n].examples}
        out.append({"id": i, "domain": p.domain, "tools": p.tools, "num_calls": p.num_calls,
                    "constraints": json.dumps(p.constraints), "hints": json.dumps(hints, ensure_ascii=False)})
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
    kept = [r for r in done if r["status"] == "kept"]
    rejected = [r for r in done if r["status"] != "kept"]
    schema = pa.schema([("id", pa.int64())] + [(k, pa.string()) for k in (
        "status", "reason", "domain", "tools", "messages", "query", "answer", "scenario", "constraints",
        "provenance")])
    pq.write_table(pa.Table.from_pylist(kept, schema=schema), out / "instances.parquet")
    pq.write_table(pa.Table.from_pylist(rejected, schema=schema), out / "rejected.parquet")
    with open(out / "instances.jsonl", "w", encoding="utf-8") as f:
        for r in kept:
            f.write(json.dumps({"id": r["id"], "messages": json.loads(r["messages"]),
                                "tools": json.loads(r["tools"])}, ensure_ascii=False) + "\n")
    counts: dict[str, Any] = {"attempted": len(rows), "rows_out": len(done), "kept": len(kept),
                              "errors": sum(r["status"] == "error" for r in done)}
    counts["filtered"] = {f: sum(r["status"] == f for r in done) for f in steps.FILTERS}
    counts["kept_share"] = round(len(kept) / max(1, len(rows)), 3)
    return counts
