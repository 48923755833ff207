"""Evaluation: pure metrics on hand-made rows, the held-out split, eval/episode rows, the
episode loop with a scripted engine and the real sandbox; then (slow) run_evaluate on the
tiny random model with vLLM actor pools, checking that every row is accounted for."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ttpa_ray.evaluate import metrics as em
from ttpa_ray.instances import held_out_ids
from ttpa_ray.config import EngineConfig, EvaluateConfig, JobConfig, ScoreConfig
from ttpa_ray.engines.base import Completion, Generation, SamplingParams
from ttpa_ray.score.esm import esm_score

WEATHER = {"type": "function", "function": {
    "name": "get_current_weather", "description": "Weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "units": {"type": "string", "enum": ["metric", "imperial"]}},
                   "required": ["city"]}}}
NO_IMPL = {"type": "function", "function": {
    "name": "book_spaceship", "description": "Not in the bundled catalog.",
    "parameters": {"type": "object", "properties": {"planet": {"type": "string"}}, "required": ["planet"]}}}


def scored(prediction: str | None, gold: list[dict], category: str = "c", tools: list | None = None,
           generation_error: str | None = None, score_error: str | None = None) -> dict[str, Any]:
    """An eval row as the stage leaves it, scored by the real ESM."""
    row = {"category": category, "gold_json": json.dumps(gold), "possible_answer_json": None,
           "prediction": prediction, "generation_error": generation_error, "score_error": score_error}
    if generation_error or score_error:
        row |= {"esm_score": None, "errors": [], "valid": False}
    else:
        r = esm_score(prediction, tools or [WEATHER], gold=gold)
        row |= {"esm_score": r.score, "errors": r.errors, "valid": r.valid}
    row["predicted_names"] = None if generation_error else em.call_names(prediction)
    row["gold_names"] = em.gold_names(row)
    return row


def call(name: str = "get_current_weather", **args: Any) -> str:
    return f'<tool_call>{json.dumps({"name": name, "arguments": args})}</tool_call>'


GOLD = [{"name": "get_current_weather", "arguments": {"city": "Lisbon"}}]


# --------------------------------------------------------------------------- metrics


def test_category_metrics_hand_made_rows():
    rows = [scored(call(city="Lisbon"), GOLD),                    # right
            scored(call(city="Porto"), GOLD),                     # right tool, wrong value
            scored(call("get_time", city="Lisbon"), GOLD),        # wrong tool
            scored("It is sunny in Lisbon.", GOLD),               # no call
            scored('<tool_call>{"name": </tool_call>', GOLD),     # undecodable
            scored(None, GOLD, generation_error="prompt too long"),
            scored(call(city="Lisbon"), GOLD, score_error="SchemaError: bad gold")]
    m = em.category_metrics(rows)
    assert m["n"] == 7                                            # failed rows are counted, not dropped
    assert m["accuracy"] == round(1 / 7, 4)
    assert m["tool_selection_accuracy"] == round(2 / 7, 4)        # the first two rows
    assert m["parameter_accuracy"] == 0.5                         # of those two, one has right arguments
    assert m["generation_errors"] == 1 and m["score_errors"] == 1
    expected_esm = (1.0 + rows[1]["esm_score"] + rows[2]["esm_score"]) / 7   # failed rows count as 0
    assert m["mean_esm"] == round(expected_esm, 4)
    assert m["error_codes"] == {"decode_failed": 1, "missing_call": 1, "value_error": 1, "wrong_func_name": 1}


def test_irrelevance_rows_select_no_call():
    rows = [scored("I cannot help with that.", [], "irrelevance"),
            scored(call(city="Lisbon"), [], "irrelevance"),
            scored(None, [], "irrelevance", generation_error="engine died")]
    m = em.category_metrics(rows)
    assert m["accuracy"] == m["tool_selection_accuracy"] == round(1 / 3, 4)
    assert m["parameter_accuracy"] is None                        # no row with gold calls
    assert m["error_codes"] == {"unexpected_call": 1} and m["generation_errors"] == 1


def test_irrelevance_under_the_strict_and_the_bfcl_rule():
    """Hand-made outputs on a no-call row, scored by the real ESM scorer: prose abstains under
    both rules, a decodable call is wrong under both, an undecodable call attempt is wrong under
    the strict rule (the headline) and a correct abstention under BFCL's (gorilla#443)."""
    tools = [{"name": "f", "description": "d", "parameters": {"type": "dict", "properties": {}, "required": []}}]
    outputs = {"prose": "I cannot help with that using these tools.",
               "call": '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>',
               "broken call": "<tool_call>\n{\"name\": \"f\", \"arguments\": {\n</tool_call>"}
    rows = []
    for text in outputs.values():
        r = esm_score(text, tools, possible_answer=[])
        rows.append({"category": "irrelevance", "valid": r.valid, "errors": r.errors, "esm_score": r.score,
                     "generation_error": None, "score_error": None, "predicted_names": em.call_names(text),
                     "gold_names": []})
    assert [em.correct(r) for r in rows] == [True, False, False]
    assert [em.correct_bfcl_rule(r) for r in rows] == [True, False, True]
    assert rows[2]["errors"] == ["decode_failed"]
    m = em.category_metrics(rows)
    assert (m["accuracy"], m["accuracy_bfcl_rule"]) == (0.3333, 0.6667)
    # Where calls are expected the two rules agree: an undecodable call is wrong under both.
    gold_row = rows[2] | {"gold_names": ["f"]}
    assert not em.correct(gold_row) and not em.correct_bfcl_rule(gold_row)
    # A failed generation is wrong under both, whatever the scorer wrote.
    failed = rows[0] | {"generation_error": "engine died"}
    assert not em.correct(failed) and not em.correct_bfcl_rule(failed)


def test_parameter_accuracy_uses_argument_codes_only():
    gold = GOLD + [{"name": "get_current_weather", "arguments": {"city": "Tokyo", "units": "imperial"}}]
    both = scored(call(city="Lisbon") + call(city="Tokyo", units="imperial"), gold)
    swapped = scored(call(city="Tokyo", units="imperial") + call(city="Lisbon"), gold)   # order-free
    one_wrong = scored(call(city="Lisbon") + call(city="Tokyo", units="kelvin"), gold)
    missing = scored(call(city="Lisbon"), gold)                   # wrong count: selection wrong
    m = em.category_metrics([both, swapped, one_wrong, missing])
    assert m["tool_selection_accuracy"] == 0.75
    assert m["parameter_accuracy"] == round(2 / 3, 4)
    assert m["error_codes"] == {"value_error": 1, "wrong_count": 1}


def test_group_metrics_and_table():
    rows = [scored(call(city="Lisbon"), GOLD, "simple"), scored("no", GOLD, "simple"),
            scored("fine", [], "irrelevance")]
    m = em.group_metrics(rows, ["simple", "multiple", "irrelevance"])
    assert list(m) == ["simple", "multiple", "irrelevance", "overall"]
    assert m["multiple"]["n"] == 0 and m["multiple"]["accuracy"] is None
    assert m["overall"]["n"] == 3 and m["overall"]["accuracy"] == round(2 / 3, 4)
    assert m["overall"]["macro_accuracy"] == 0.75                 # mean of 0.5 and 1.0
    table = em.format_table({"bfcl": m, "held_out": {"skipped": "no instances"},
                             "pass_rate": em.pass_rate_metrics([{"passed": True, "reason": None},
                                                                {"passed": False, "reason": "decode_failed: x"}])})
    assert "bfcl/simple" in table and "bfcl/overall" in table and "1/2" in table and "decode_failed" in table


# --------------------------------------------------------------------------- split and rows


KIND_COUNTS = {"single": 6, "multiple": 3, "parallel": 3, "parallel_multiple": 2, "irrelevance": 8}


def _kinds(counts: dict[str, int]) -> list[dict]:
    return [{"id": i, "kind": k} for i, k in enumerate(k for k, n in counts.items() for _ in range(n))]


def test_held_out_split_is_stratified_by_kind_deterministic_and_seeded():
    insts = _kinds(KIND_COUNTS)  # 22 instances, the demo's sort of mix
    held = held_out_ids(insts, 0.2, seed=0)
    kind = {r["id"]: r["kind"] for r in insts}
    per_kind = {k: sum(kind[i] == k for i in held) for k in KIND_COUNTS}
    # round(0.2 * 22) = 4; floors: single 1, irrelevance 1; the two largest remainders
    # (multiple .6, parallel .6, irrelevance .6: a seeded tie-break) take the other two.
    assert len(held) == 4 and per_kind["single"] == 1 and per_kind["parallel_multiple"] == 0
    assert 1 <= per_kind["irrelevance"] <= 2 and per_kind["multiple"] + per_kind["parallel"] + per_kind["irrelevance"] == 3
    assert held == held_out_ids(list(reversed(insts)), 0.2, seed=0)  # the order of the rows does not matter
    assert any(held_out_ids(insts, 0.2, seed=s) != held for s in range(1, 5))  # the seed changes the split
    big = _kinds({"single": 500, "irrelevance": 1500})
    split = held_out_ids(big, 0.3, seed=3)
    assert len(split) == 600 and sum(i < 500 for i in split) == 150  # exactly in proportion
    assert held_out_ids(insts, 0.0, 0) == frozenset() and held_out_ids(insts, 1.0, 0) == {r["id"] for r in insts}
    assert len(held_out_ids(insts, 0.99, 0)) == 21  # below 1, one instance is always left to train on
    assert len(held_out_ids([{"id": i} for i in range(10)], 0.5, 0)) == 5  # no kind column: one stratum
    with pytest.raises(ValueError, match=r"held_out_fraction must be in \[0, 1\]"):
        held_out_ids(insts, 1.5, 0)


def instance(i: int, tools: list[dict], calls: list[list[dict]], query: str = "Weather in Lisbon?") -> dict:
    """A constructed instance: one user turn; one assistant message per step of ``calls``."""
    msgs: list[dict] = [{"role": "user", "content": query}]
    for k, step in enumerate(calls):
        msgs.append({"role": "assistant", "content": "", "tool_calls": [
            {"id": f"c{k}{j}", "type": "function", "function": c} for j, c in enumerate(step)]})
        msgs += [{"role": "tool", "tool_call_id": f"c{k}{j}", "name": c["name"], "content": "{}"}
                 for j, c in enumerate(step)]
    msgs.append({"role": "assistant", "content": "Done."})
    return {"id": i, "status": "kept", "tools": json.dumps(tools), "messages": json.dumps(msgs)}


def test_held_out_and_episode_rows():
    w = {"name": "get_current_weather", "arguments": {"city": "Lisbon"}}
    insts = [instance(0, [WEATHER], [[w], [w | {"arguments": {"city": "Porto"}}]]),
             instance(1, [WEATHER, NO_IMPL], [[{"name": "book_spaceship", "arguments": {"planet": "Mars"}}]])]
    rows = em.held_out_rows(insts, 1.0, seed=0)
    assert [(r["instance_id"], r["turn_index"]) for r in rows] == [(0, 1), (0, 3), (1, 1)]
    assert json.loads(rows[1]["messages_json"])[-1]["role"] == "tool"          # history up to the turn
    assert json.loads(rows[1]["gold_json"]) == [{"name": "get_current_weather", "arguments": {"city": "Porto"}}]
    assert em.gold_names(rows[2]) == ["book_spaceship"] and rows[0]["category"] == "held_out"
    assert em.held_out_rows(insts, 0.0, seed=0) == []
    eps = em.episode_rows(insts, 1.0, 0, executable={"get_current_weather"})   # instance 1 has no sandbox impl
    assert len(eps) == 1 and eps[0]["instance_id"] == 0
    assert json.loads(eps[0]["gold_names_json"]) == ["get_current_weather"] * 2
    assert [m["role"] for m in json.loads(eps[0]["messages_json"])] == ["user"]


def test_bfcl_rows_prompt_tools_use_json_schema_types():
    from ttpa_ray.evaluate.bfcl import load_category

    entry = load_category("simple_python")[0]
    row = em.bfcl_row(entry, "simple")
    assert row["gold_json"] is None and em.gold_names(row) == ["calculate_triangle_area"]
    assert json.loads(row["tools_json"]) == entry["function"]                  # scored as given
    (tool,) = json.loads(row["prompt_tools_json"])
    assert tool["type"] == "function" and tool["function"]["parameters"]["type"] == "object"   # BFCL "dict"
    odd = [{"name": "f", "parameters": {"type": "dict", "properties": {
        "type": {"type": "float"}, "xs": {"type": "tuple", "items": {"type": "dict", "properties": {}}}}}}]
    props = em.prompt_tools(odd)[0]["function"]["parameters"]["properties"]
    assert props == {"type": {"type": "number"}, "xs": {"type": "array", "items": {"type": "object", "properties": {}}}}


def test_judge_episode_reasons():
    tools = [WEATHER]
    ok = [{"name": "get_current_weather", "arguments": {"city": "Lisbon"}}]
    assert em.judge_episode(ok, True, None, ["get_current_weather"], tools) == (True, None)
    assert em.judge_episode(ok, False, None, ["get_current_weather"], tools)[1] == "no final answer within max_steps"
    assert em.judge_episode(ok, True, "decode_failed: x", ["get_current_weather"], tools) == (False, "decode_failed: x")
    bad = [{"name": "get_current_weather", "arguments": {"city": "Lisbon", "units": "kelvin"}}]
    assert not em.judge_episode(bad, True, None, ["get_current_weather"], tools)[0]
    assert em.judge_episode(bad + ok, True, None, ["get_current_weather"], tools)[0]   # a later valid call counts
    assert em.judge_episode([], True, None, ["get_current_weather"], tools)[1].endswith("get_current_weather")


def test_read_instances_skips_with_a_reason(tmp_path: Path):
    from ttpa_ray.evaluate.stage import _read_instances

    assert _read_instances(None) == ([], "no instances given")
    rows, why = _read_instances(tmp_path / "instances.parquet")
    assert rows == [] and "run the construct stage" in why


def test_evaluate_config_defaults_and_validation():
    cfg = JobConfig(name="x").evaluate
    assert cfg.categories == ["simple", "multiple", "parallel", "parallel_multiple", "irrelevance"]
    assert (cfg.max_per_category, cfg.held_out_fraction, cfg.max_tokens, cfg.max_steps) == (50, 0.2, 256, 4)
    with pytest.raises(ValueError):
        EvaluateConfig(categories=["live_simple"])
    with pytest.raises(ValueError):
        EvaluateConfig(held_out_fraction=1.2)


# --------------------------------------------------------------------------- episode loop, scripted engine


class ScriptedEngine:
    """Plays by the first user message: "Lisbon" calls the weather tool then answers from its
    result, "Mars" calls a tool that is not offered then answers, "forever" never stops
    calling, anything else gets prose cut by max_tokens."""

    def apply_chat_template(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        return json.dumps(messages)

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]:
        out = []
        for p in prompts:
            msgs = json.loads(p)
            user, last = msgs[0]["content"], msgs[-1]
            if "forever" in user:
                text, finish = call(city="Lisbon"), "stop"
            elif last["role"] == "tool":
                text, finish = f"Here it is: {last['content'][:40]}", "stop"
            elif "Lisbon" in user:
                text, finish = call(city="Lisbon"), "stop"
            elif "Mars" in user:
                text, finish = call("launch_rocket", to="Mars"), "stop"
            else:
                text, finish = "bla " * 8, "length"
            out.append(Generation(prompt_token_ids=[1], completions=[Completion(text=text, token_ids=[1],
                                                                                finish_reason=finish)]))
        return out


def test_episode_loop_runs_tools_in_the_sandbox():
    import numpy as np

    from ttpa_ray.evaluate.stage import EvalBatch
    from ttpa_ray.tools.catalog import bundled_catalog

    loop = EvalBatch.__new__(EvalBatch)   # the Ray actor's loop, with a scripted engine
    loop.engine, loop.params, loop.sandbox = ScriptedEngine(), SamplingParams(max_tokens=16), None
    loop.impls = {t.name: t.impl for t in bundled_catalog() if t.impl}
    queries = ["Weather in Lisbon?", "Hello there", "Fly me to Mars", "Ask forever", "Lisbon, single turn"]
    batch = {"messages_json": np.array([json.dumps([{"role": "user", "content": q}]) for q in queries], dtype=object),
             "prompt_tools_json": np.array([json.dumps([WEATHER])] * 5, dtype=object),
             "max_steps": np.array([3, 3, 3, 3, 1])}
    try:
        out = loop(batch)
    finally:
        loop.sandbox.close()
    assert list(out["steps"]) == [2, 1, 2, 3, 1] and list(out["final"]) == [True, False, True, False, False]
    assert all(p == call(city="Lisbon") for p in out["prediction"][[0, 3, 4]])   # the first turn, for scoring
    assert out["generation_error"][1] is None and out["finish_reason"][1] == "length"
    assert len(json.loads(out["trace_json"][4])) == 1                          # a single turn runs no tool
    trace = json.loads(out["trace_json"][0])
    assert [m["role"] for m in trace] == ["assistant", "tool", "assistant"]
    assert json.loads(trace[1]["content"])["city"]                              # a real result from the sandbox
    assert out["failure"][1].startswith("truncated_answer")
    mars = json.loads(out["trace_json"][2])
    assert "unknown tool 'launch_rocket'" in mars[1]["content"]                 # fed back, not executed
    assert len(json.loads(out["calls_json"][3])) == 3
    verdicts = [em.judge_episode(json.loads(c), bool(f), e, ["get_current_weather"], [WEATHER])
                for c, f, e in zip(out["calls_json"], out["final"], out["failure"])]
    assert verdicts[0] == (True, None)
    assert verdicts[1][1].startswith("truncated_answer")
    assert verdicts[2] == (False, "gold tool not called with valid arguments: get_current_weather")
    assert verdicts[3] == (False, "no final answer within max_steps")


# --------------------------------------------------------------------------- slow: the stage on Ray


def _write_instances(path: Path) -> Path:
    from ttpa_ray.tools.catalog import bundled_catalog
    from ttpa_ray.tools.sandbox import Sandbox

    tool = next(t for t in bundled_catalog() if t.name == "get_current_weather")
    with Sandbox() as box:
        result = box.execute(tool.impl, {"city": "Lisbon"})
    assert result.ok, result.error
    w = {"name": "get_current_weather", "arguments": {"city": "Lisbon"}}
    rows = [instance(0, [tool.openai()], [[w]]),
            instance(1, [NO_IMPL], [[{"name": "book_spaceship", "arguments": {"planet": "Mars"}}]]),
            # A prompt longer than max_model_len: a generation error that must be counted, not dropped.
            instance(2, [tool.openai()], [[w]], query="weather " * 3000)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.slow
def test_run_evaluate_tiny_random_accounts_for_every_row(tiny_model, ray_local, tmp_path: Path):
    from ttpa_ray.evaluate.stage import run_evaluate

    engine = EngineConfig(backend="vllm", model="smollm2-135m-instruct", dtype="float32", max_model_len=2048,
                          pool={"min_actors": 1, "max_actors": 1, "num_cpus": 0.5, "batch_size": 2})
    score = ScoreConfig(pool={"min_actors": 1, "max_actors": 1, "num_cpus": 0.5, "batch_size": 64})
    cfg = EvaluateConfig(max_per_category=2, max_tokens=16, max_steps=2, held_out_fraction=1.0)
    t0 = time.time()
    counts = run_evaluate(cfg, engine, score, "tiny-random", _write_instances(tmp_path / "instances.parquet"),
                          tmp_path / "out", seed=0)
    seconds = time.time() - t0
    out = tmp_path / "out"
    bfcl = pq.read_table(out / "bfcl.parquet").to_pylist()
    held = pq.read_table(out / "held_out.parquet").to_pylist()
    episodes = pq.read_table(out / "episodes.parquet").to_pylist()
    metrics = json.loads((out / "metrics.json").read_text())

    assert len(bfcl) == counts["bfcl_rows"] == 10                  # 5 categories x 2: rows out = rows in
    assert sorted({r["category"] for r in bfcl}) == sorted(cfg.categories)
    assert len(held) == counts["held_out_rows"] == 3 and len(episodes) == counts["episodes"] == 2
    long_row = next(r for r in held if r["instance_id"] == 2)
    assert "max_model_len" in long_row["generation_error"] and long_row["esm_score"] is None
    for r in bfcl + held:                                          # each row: generated and scored, or an error
        assert r["generation_error"] or r["score_error"] or r["esm_score"] is not None, r["id"]
    assert counts["generation_errors"] == sum(bool(r["generation_error"]) for r in bfcl + held) >= 1
    for cat in cfg.categories:
        m = metrics["bfcl"][cat]
        assert m["n"] == 2 and set(m) == {"n", "accuracy", "accuracy_ci", "accuracy_bfcl_rule", "mean_esm",
                                          "tool_selection_accuracy", "parameter_accuracy", "error_codes",
                                          "generation_errors", "score_errors"}
    assert metrics["bfcl"]["overall"]["n"] == 10 and metrics["held_out"]["overall"]["n"] == 3
    assert metrics["held_out"]["overall"]["generation_errors"] >= 1
    # The random model fails its episodes; each is counted with a reason, none dropped.
    assert {e["instance_id"] for e in episodes} == {0, 2}
    assert all(not e["passed"] and e["reason"] for e in episodes)
    assert metrics["pass_rate"]["episodes"] == 2 and metrics["pass_rate"]["passed"] == 0
    assert sum(metrics["pass_rate"]["fail_reasons"].values()) == 2
    print(f"run_evaluate on tiny-random: {seconds:.1f} s, {counts}")


def test_docstring_examples():
    import doctest

    result = doctest.testmod(em)
    assert result.attempted > 0 and result.failed == 0
