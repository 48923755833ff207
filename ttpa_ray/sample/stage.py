"""TPS as Ray Data stages: target engine pool -> scoring actor pool -> pairs.

    ttpa sample jobs/demo-cpu.yaml [key=value ...]

Per gold turn of the constructed instances (:func:`ttpa_ray.instances.turn_rows`: an assistant
message with one or more calls, or a no-call turn: a text answer right after a user message):

1. render the prompt (history + tools) with the *target* model's chat template and the gold
   turn (its calls, or its text) with the same template; teacher-force prompt + gold and read
   the top-k log-probs at every gold token in one forward pass (``prompt_logprobs``);
2. branch at decision tokens (:func:`ttpa_ray.sample.tps.branch_points`) and at the turn's first
   token (:func:`ttpa_ray.sample.tps.call_or_not_branch`, whatever its probability): gold prefix +
   alternative token, then the target completes the turn (greedy by default). All branches of
   a turn share the prompt and gold prefix, which vLLM's prefix cache computes once;
3. ``mode: nsample`` instead draws ``n_samples`` whole completions per call turn (the authors'
   released code);
4. no-call turns, in both modes, also get ``no_call_samples`` whole completions at
   ``nsample_temperature``: one that calls a tool is a rejected side (``unexpected_call``); the
   chosen side of a no-call turn is always the gold text;
5. a candidate ends after its last complete tool call (trailing prose is cut, the end token
   appended: the gold turn ends there too);
6. candidates are ESM-scored on the scoring actor pool; pairs per :func:`ttpa_ray.sample.tps.make_pairs`
   (with ``score.chosen_must_be_valid``, a departure from the released rule: see there).

Token ids are kept end to end (``TokensPrompt`` in, ids out), so chosen and rejected share
their prefix exactly and the trainer never re-tokenizes.

Output (``<run>/sample/``): ``pairs.parquet`` (id, instance_id, turn_index, prompt (JSON
messages), tools (JSON), prompt_token_ids, chosen, rejected (text, without the end token),
chosen_token_ids, rejected_token_ids, chosen/rejected ESM scores and error codes,
divergence_index, chosen_is_gold, branch_kind (of the rejected side), call_side (1/2: the
chosen/rejected side alone opens a call at the first token, else 0), mode),
``pairs_trl.jsonl`` (TRL conversational prompt/chosen/rejected + tools) and
``candidates.parquet`` (every scored candidate, gold included; ``branch_kind``: ``name``,
``key``, ``value``, ``call-or-not`` for a TPS branch, ``sample`` for a whole completion, ``""``
for the gold and for a turn's error row).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ttpa_ray.sample import tps
from ttpa_ray.config import EngineConfig, SampleConfig, ScoreConfig
from ttpa_ray.engines.base import SamplingParams
from ttpa_ray.instances import held_out_ids, turn_rows
from ttpa_ray.toolcall import ToolCall, render_with_template
from ttpa_ray.columns import none_if_nan, object_column
from ttpa_ray.console import collect

log = logging.getLogger(__name__)

Request = tuple[dict[str, Any], tps.Branch | None, list[int], SamplingParams]
"""A completion to run for a turn: (turn, its branch or None for whole samples, prompt ids, params)."""


class SampleBatch:
    """Ray Data callable class: turns in, candidate rows out (gold included, ``is_gold``)."""

    def __init__(self, cfg: dict[str, Any], engine: dict[str, Any], seed: int):
        from ttpa_ray.engines.build import build_engine

        self.cfg = SampleConfig.model_validate(cfg)
        self.engine = build_engine(EngineConfig.model_validate(engine))
        self.tok = self.engine.tokenizer
        self.seed = seed
        eos = self.tok.eos_token_id
        self.eos = eos

    def _render(self, row: dict[str, Any]) -> tuple[list[int], list[int], list[tuple[int, int]], str]:
        msgs = json.loads(row["prompt_json"])
        tools = json.loads(row["tools_json"])
        calls = [ToolCall(c["name"], c["arguments"]) for c in json.loads(row["gold_json"])]
        prompt = self.tok.apply_chat_template(msgs, tools=tools, add_generation_prompt=True, tokenize=False)
        gold = render_with_template(self.tok, msgs, calls, tools=tools, content=row["gold_text"]).rstrip("\n")
        enc = self.tok(gold, add_special_tokens=False, return_offsets_mapping=True)
        return (self.tok(prompt, add_special_tokens=False)["input_ids"], enc["input_ids"],
                [tuple(o) for o in enc["offset_mapping"]], gold)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        turns = [{k: batch[k][i] for k in batch} for i in range(len(batch["instance_id"]))]
        out: list[dict[str, Any]] = []
        for t in turns:
            t["candidates"] = []
            t["no_call"] = json.loads(t["gold_json"]) == []
            try:
                t["prompt_ids"], t["gold_ids"], t["offsets"], t["gold_render"] = self._render(t)
            except Exception as exc:  # noqa: BLE001 - a turn that cannot be rendered is an error row
                t["error"] = f"render: {type(exc).__name__}: {exc}"
        c = self.cfg
        ok = [t for t in turns if "error" not in t]
        # One completion batch per call: the branches (or samples) and the no-call samples together.
        requests = self._branches(ok) if c.mode == "tps" else self._samples(
            [t for t in ok if not t["no_call"]], c.n_samples)
        if c.no_call_samples:
            requests += self._samples([t for t in ok if t["no_call"] and "error" not in t], c.no_call_samples)
        self._complete(requests)
        for t in turns:
            base = {"instance_id": int(t["instance_id"]), "turn_index": int(t["turn_index"]),
                    "tools_json": t["tools_json"], "prompt_json": t["prompt_json"], "gold_json": t["gold_json"],
                    "prompt_token_ids": t.get("prompt_ids", [])}
            if "error" in t:
                out.append(base | {"is_gold": False, "token_ids": [], "text": "", "branch_position": -1,
                                   "branch_prob": 0.0, "branch_kind": "", "error": t["error"]})
                continue
            out.append(base | {"is_gold": True, "token_ids": t["gold_ids"], "text": self._strip_eos(t["gold_ids"]),
                               "branch_position": -1, "branch_prob": 1.0, "branch_kind": "", "error": None})
            for cand in t["candidates"]:
                out.append(base | {"is_gold": False, **cand, "error": None})
        return {k: object_column([r[k] for r in out]) for k in out[0]} if out else {}

    def _clip(self, ids: list[int], start: int) -> list[int]:
        """End a tool-call turn after its last complete call: prose a small model rambles on
        with after ``</tool_call>`` is cut and the end token appended (the gold turn ends
        there too). ``start``: tokens before it are never cut (the shared prefix)."""
        text = self.tok.decode(ids, skip_special_tokens=False)
        end = text.rfind("</tool_call>")
        if end < 0:
            return ids
        end += len("</tool_call>")
        rest = text[end:].replace(self.tok.eos_token or "", "").strip()
        if not rest:
            return ids
        for k in range(max(start, 1), len(ids) + 1):
            if len(self.tok.decode(ids[:k], skip_special_tokens=False)) >= end:
                return ids[:k] + [self.eos]
        return ids

    def _strip_eos(self, ids: list[int]) -> str:
        if ids and ids[-1] == self.eos:
            ids = ids[:-1]
        return self.tok.decode(ids, skip_special_tokens=False)

    def _opens_call(self, token_id: int) -> bool:
        return tps.opens_call(self.tok.decode([token_id], skip_special_tokens=False))

    def _branches(self, turns: list[dict[str, Any]]) -> list[Request]:
        """Teacher-force each turn's gold, then one completion request per branch point (decisions
        and the call-or-not branch at position 0). A turn whose forcing fails gets ``error``."""
        c = self.cfg
        full = [t["prompt_ids"] + t["gold_ids"] for t in turns]
        gens = self.engine.generate(full, [SamplingParams(max_tokens=1, prompt_logprobs=c.top_k,
                                                          prompt_logprobs_from=len(t["prompt_ids"])) for t in turns])
        params = SamplingParams(max_tokens=c.max_tokens, temperature=c.temperature, seed=self.seed)
        requests: list[Request] = []
        for t, g in zip(turns, gens):
            if g.error or g.prompt_logprobs is None:
                t["error"] = f"teacher forcing: {g.error}"
                continue
            gold_lps = g.prompt_logprobs[len(t["prompt_ids"]):]
            roles = tps.token_spans(t["offsets"], tps.decision_spans(t["gold_render"]))
            points = tps.branch_points(t["gold_ids"], gold_lps, roles, c.min_prob, c.max_branches_per_call)
            first = tps.call_or_not_branch(t["gold_ids"][0], gold_lps[0], self._opens_call) if t["gold_ids"] else None
            for b in ([first] if first else []) + points:
                prefix = t["gold_ids"][:b.position] + [b.token_id]
                if b is first and t["no_call"]:
                    # A one-token flip of a text answer rarely becomes a call in a small model ("<" goes
                    # on as "<tool_response>"): open the call whole, the model writes the rest.
                    prefix = self._call_opener()
                requests.append((t, b, t["prompt_ids"] + prefix, params))
        return requests

    def _call_opener(self) -> list[int]:
        """Token ids of the text that opens a call in the target's chat template."""
        return list(self.tok(tps.CALL_TAG + "\n", add_special_tokens=False)["input_ids"])

    def _samples(self, turns: list[dict[str, Any]], n: int) -> list[Request]:
        """One request per turn for ``n`` whole completions at ``nsample_temperature``."""
        c = self.cfg
        params = SamplingParams(max_tokens=c.max_tokens, temperature=c.nsample_temperature, n=n, seed=self.seed)
        return [(t, None, t["prompt_ids"], params) for t in turns]

    def _complete(self, requests: list[Request]) -> None:
        """Generate every request in one batch and add the candidates to their turns: a branch's
        completion after the gold prefix and the alternative token; a sample's completions
        whole, deduplicated (also against the turn's earlier candidates)."""
        if not requests:
            return
        gens = self.engine.generate([r[2] for r in requests], [r[3] for r in requests])
        for (t, b, r_prompt, _), g in zip(requests, gens):
            if b is not None:
                if g.error or not g.completions:
                    continue
                prefix = r_prompt[len(t["prompt_ids"]):]  # gold prefix + the alternative (or the call opener)
                ids = self._clip(prefix + list(g.completions[0].token_ids), len(prefix))
                t["candidates"].append({"token_ids": ids, "text": self._strip_eos(ids), "branch_position": b.position,
                                        "branch_prob": b.prob, "branch_kind": b.kind})
                continue
            seen = {tuple(x["token_ids"]) for x in t["candidates"]}
            for comp in g.completions:
                ids = self._clip(list(comp.token_ids), 0)
                if tuple(ids) in seen:
                    continue  # deduplicated
                seen.add(tuple(ids))
                t["candidates"].append({"token_ids": ids, "text": self._strip_eos(ids), "branch_position": -1,
                                        "branch_prob": 0.0, "branch_kind": "sample"})
            if g.error:
                t["error"] = f"sampling: {g.error}"


def build_pairs(scored: list[dict[str, Any]], threshold: float, mode: str, *, chosen_must_be_valid: bool
                ) -> tuple[list[dict[str, Any]], dict]:
    """Pairs per turn from scored candidate rows (gold included) by :func:`tps.make_pairs`, and
    the counts of turns without pairs by reason. A no-call turn (gold ``[]``) keeps its gold
    text as the chosen side."""
    turns: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for r in scored:
        turns.setdefault((r["instance_id"], r["turn_index"]), []).append(r)
    pairs, reasons = [], {"turns": len(turns), "turn_errors": 0, "no_candidate": 0, "no_rejected": 0,
                          "gold_not_valid": 0}
    for key in sorted(turns):
        rows = turns[key]
        if any(r["error"] for r in rows):
            reasons["turn_errors"] += 1
            continue
        gold = next(r for r in rows if r["is_gold"])
        if not gold["valid"]:
            reasons["gold_not_valid"] += 1  # the scorer disagrees with the gold: a data problem, counted
        made, why = tps.make_pairs([r for r in rows if not r["is_gold"]], gold, threshold,
                                   chosen_must_be_valid=chosen_must_be_valid,
                                   no_call=json.loads(gold["gold_json"]) == [])
        if why:
            reasons[why] += 1
        for chosen, rejected in made:
            ci, ri = list(chosen["token_ids"]), list(rejected["token_ids"])
            pairs.append({
                "id": len(pairs), "instance_id": key[0], "turn_index": key[1], "prompt": gold["prompt_json"],
                "tools": gold["tools_json"], "prompt_token_ids": list(gold["prompt_token_ids"]),
                "chosen": chosen["text"], "rejected": rejected["text"], "chosen_token_ids": ci,
                "rejected_token_ids": ri, "chosen_score": float(chosen["esm_score"]),
                "rejected_score": float(rejected["esm_score"]), "chosen_errors": list(chosen["errors"]),
                "rejected_errors": list(rejected["errors"]), "divergence_index": tps.first_difference(ci, ri),
                "chosen_is_gold": bool(chosen["is_gold"]), "branch_kind": str(rejected["branch_kind"]),
                "call_side": tps.call_side(chosen["text"], rejected["text"], tps.first_difference(ci, ri)),
                "mode": mode})
    return pairs, reasons


def run_sample(cfg: SampleConfig, target: EngineConfig, score: ScoreConfig, instances: Path, out: Path,
               seed: int = 0, held_out_fraction: float = 0.0) -> dict[str, Any]:
    """TPS (or n-sample) over the instances' gold turns -> scored candidates -> pairs.
    Instances in the held-out split (``evaluate.held_out_fraction``) are never sampled."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from ttpa_ray.engines.actors import engine_pool_kwargs
    from ttpa_ray.models.registry import resolve
    from ttpa_ray.score.stage import score_dataset

    if target.backend == "openai":
        raise ValueError("sample needs token-level access to the target (prompt_logprobs, token ids): use "
                         "target.backend vllm or transformers")
    resolve(target.model)

    rows = pq.read_table(instances).to_pylist()
    held = held_out_ids(rows, held_out_fraction, seed)
    kept = [r for r in rows if int(r["id"]) not in held]
    held_out = len(rows) - len(kept)
    turns = turn_rows(kept)
    no_call_turns = sum(t["gold_json"] == "[]" for t in turns)
    out.mkdir(parents=True, exist_ok=True)
    if not turns:
        log.warning("%s has no kept instance with a gold turn: no pairs (see the construct manifest)", instances)
        pq.write_table(pa.table({"id": pa.array([], pa.int64())}), out / "pairs.parquet")
        (out / "pairs_trl.jsonl").write_text("")
        return {"turns": 0, "candidates": 0, "pairs": 0, "held_out_instances": held_out, "no_call_turns": 0,
                "branches_by_kind": {}, "pairs_by_kind": {}}
    ds = ray.data.from_items(turns, override_num_blocks=max(1, len(turns) // target.pool.batch_size))
    ds = ds.map_batches(SampleBatch, fn_constructor_kwargs={"cfg": cfg.model_dump(), "engine": target.model_dump(),
                                                            "seed": seed}, **engine_pool_kwargs(target))
    ds = ds.map(_to_score_row)
    scored = collect(score_dataset(ds, score, target.pool.batch_size).iter_rows(), f"sample ({len(turns)} turns)", None)
    for r in scored:
        # Ray Data turns an all-None column into NaN floats: normalise back to None.
        r["error"], r["score_error"] = none_if_nan(r["error"]), none_if_nan(r["score_error"])
        r["esm_score"] = None if r["score_error"] or r["esm_score"] != r["esm_score"] else float(r["esm_score"])
        r["token_ids"] = [int(x) for x in r["token_ids"]]
        r["prompt_token_ids"] = [int(x) for x in r["prompt_token_ids"]]
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k not in ("tools_json", "prompt_json",
                                                                                    "prompt_token_ids")}
                                         for r in scored]), out / "candidates.parquet")
    pairs, reasons = build_pairs(scored, score.threshold, cfg.mode, chosen_must_be_valid=score.chosen_must_be_valid)
    pq.write_table(pa.Table.from_pylist(pairs) if pairs else pa.table({"id": pa.array([], pa.int64())}),
                   out / "pairs.parquet")
    with open(out / "pairs_trl.jsonl", "w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps(trl_record(p), ensure_ascii=False) + "\n")
    cands = [r for r in scored if not r["is_gold"] and not r["error"]]
    return {"turns": len(turns), "candidates": len(cands), "pairs": len(pairs), "held_out_instances": held_out,
            **reasons, "no_call_turns": no_call_turns,
            "branches_by_kind": dict(sorted(Counter(r["branch_kind"] for r in cands).items())),
            "pairs_by_kind": dict(sorted(Counter(p["branch_kind"] for p in pairs).items())),
            "tokens_per_candidate": round(sum(len(r["token_ids"]) for r in cands) / max(1, len(cands)), 1)}


def _to_score_row(r: dict[str, Any]) -> dict[str, Any]:
    return r | {"prediction": r["text"], "possible_answer_json": None}


def trl_record(p: dict[str, Any]) -> dict[str, Any]:
    """TRL's conversational preference format (DPOTrainer loads it as is)."""
    return {"prompt": json.loads(p["prompt"]), "chosen": [{"role": "assistant", "content": p["chosen"]}],
            "rejected": [{"role": "assistant", "content": p["rejected"]}], "tools": json.loads(p["tools"])}
