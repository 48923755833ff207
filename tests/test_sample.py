"""The sample stage. Fast: gold turns of hand-made instances (parallel, multi-turn, no-call) and
pair building on rows scored by the real ESM. Slow: TPS on the embedded default (SmolLM2 on
vLLM-CPU, scoring actors): token-level pair structure, no-call turns, n-sample mode, and the
TRL export loaded by TRL's DPOTrainer for one step."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ttpa_ray.config import EngineConfig, SampleConfig, ScoreConfig
from ttpa_ray.instances import turn_rows
from ttpa_ray.sample.stage import build_pairs
from ttpa_ray.score.esm import esm_score

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
NO_TOOL_FITS = "I have no tool for jokes, but here is one: why did the cloud stay home? It was under the weather."


def _step(calls: list[dict], k: int = 0) -> list[dict]:
    """One call step: an assistant message with all ``calls``, then one tool message per call."""
    return [{"role": "assistant", "content": "", "tool_calls": [
        {"id": f"c{k}{j}", "type": "function", "function": c} for j, c in enumerate(calls)]}] + [
        {"role": "tool", "tool_call_id": f"c{k}{j}", "name": c["name"], "content": '{"temp_c": 20}'}
        for j, c in enumerate(calls)]


def test_turn_rows_parallel_multi_turn_and_no_call():
    paris, oslo = ({"name": "get_weather", "arguments": {"city": c}} for c in ("Paris", "Oslo"))
    msgs = ([{"role": "user", "content": "Weather in Paris and Oslo?"}] + _step([paris, oslo])
            + [{"role": "assistant", "content": "20 °C in both."},
               {"role": "user", "content": "And in Oslo again?"}] + _step([oslo], k=1)
            + [{"role": "assistant", "content": "Still 20 °C."},
               {"role": "user", "content": "Tell me a joke."}, {"role": "assistant", "content": NO_TOOL_FITS}])
    rows = turn_rows([{"id": 3, "tools": json.dumps([WEATHER]), "messages": json.dumps(msgs)}])
    assert [r["turn_index"] for r in rows] == [1, 6, 10]        # final answers after tool results are not gold
    parallel, later, no_call = rows
    assert json.loads(parallel["gold_json"]) == [paris, oslo] and parallel["gold_text"] == ""  # both calls, one turn
    assert json.loads(parallel["prompt_json"]) == msgs[:1]
    assert json.loads(later["prompt_json"]) == msgs[:6]          # the earlier turn's full gold history
    assert json.loads(later["prompt_json"])[4] == {"role": "assistant", "content": "20 °C in both."}
    assert json.loads(later["gold_json"]) == [oslo]
    assert (no_call["gold_json"], no_call["gold_text"]) == ("[]", NO_TOOL_FITS)
    assert json.loads(no_call["prompt_json"])[-1] == {"role": "user", "content": "Tell me a joke."}
    assert all(r["instance_id"] == 3 and r["tools_json"] == json.dumps([WEATHER]) for r in rows)


def _scored(turn_index: int, gold: list[dict], text: str, is_gold: bool, kind: str, ids: list[int]) -> dict:
    """A candidate row as the stage scores it, ESM by the real scorer."""
    r = esm_score(text, [WEATHER], gold=gold)
    return {"instance_id": 0, "turn_index": turn_index, "prompt_json": "[]", "tools_json": json.dumps([WEATHER]),
            "gold_json": json.dumps(gold), "prompt_token_ids": [1, 2], "is_gold": is_gold, "token_ids": ids,
            "text": text, "branch_kind": kind, "error": None, "esm_score": r.score, "errors": r.errors,
            "valid": r.valid}


def _call(city: str) -> str:
    return '<tool_call>\n{"name": "get_weather", "arguments": {"city": "%s"}}\n</tool_call>' % city


def test_build_pairs_no_call_turn_rejects_calls_and_keeps_gold_chosen():
    rows = [_scored(1, [], NO_TOOL_FITS, True, "", [7, 8, 9]),
            _scored(1, [], "Sure, a joke: ...", False, "sample", [7, 5]),          # another text: 1.0, a tie
            _scored(1, [], _call("Paris"), False, "call-or-not", [3, 4]),         # unexpected_call
            _scored(1, [], _call("Rome"), False, "sample", [3, 6])]
    pairs, reasons = build_pairs(rows, 0.8, "tps", chosen_must_be_valid=True)
    assert reasons["gold_not_valid"] == 0 and len(pairs) == 2
    assert all(p["chosen_is_gold"] and p["chosen"] == NO_TOOL_FITS for p in pairs)
    assert [(p["branch_kind"], p["rejected_errors"], p["rejected_score"]) for p in pairs] == [
        ("call-or-not", ["unexpected_call"], 0.0), ("sample", ["unexpected_call"], 0.0)]
    assert [p["call_side"] for p in pairs] == [2, 2]  # the rejected side alone opens a call (first token)


def test_build_pairs_chosen_must_be_valid():
    gold = [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    rows = [_scored(1, gold, _call("Paris"), True, "", [1, 2, 3]),
            _scored(1, gold, _call("Pari"), False, "value", [1, 2, 4]),            # 0.909 >= 0.8, value_error
            _scored(1, gold, "It is sunny in Paris.", False, "call-or-not", [5])]  # missing_call
    assert rows[1]["errors"] == ["value_error"] and rows[1]["esm_score"] >= 0.8
    pairs, _ = build_pairs(rows, 0.8, "tps", chosen_must_be_valid=True)
    assert [(p["chosen_is_gold"], p["branch_kind"]) for p in pairs] == [(True, "value"), (True, "call-or-not")]
    assert [p["call_side"] for p in pairs] == [0, 1]  # a value branch inside the call; the chosen calls
    pairs, _ = build_pairs(rows, 0.8, "tps", chosen_must_be_valid=False)         # the released rule
    assert [(p["chosen_is_gold"], p["chosen"], p["rejected_errors"]) for p in pairs] == [
        (False, _call("Pari"), ["missing_call"])]


def _instances(path: Path, n: int = 6, no_call: bool = False) -> Path:
    """Deterministic instances from catalog examples: query -> gold call -> result -> answer.
    ``no_call``: one more instance of two user turns, a call turn then a no-call turn."""
    from ttpa_ray.tools.catalog import bundled_catalog
    from ttpa_ray.tools.sandbox import Sandbox

    queries = {"get_current_weather": "What's the weather like in {city} right now?",
               "convert_currency": "How much is {amount} {from_currency} in {to_currency}?",
               "get_stock_quote": "Give me the latest quote for {symbol}.",
               "add_days_to_date": "What date is {days} days after {date}?",
               "convert_temperature": "Convert {value} degrees {from_scale} to the other scales.",
               "search_articles": "Find articles about {query}."}
    tools = {t.name: t for t in bundled_catalog()}
    rows = []
    with Sandbox() as box:
        for i, name in enumerate(list(queries)[:n]):
            tool = tools[name]
            args = tool.examples[0]
            result = box.execute(tool.impl, args)
            assert result.ok, (name, result.error)
            query = queries[name].format_map({k: v for k, v in args.items()} | {"days": args.get("days", 3)})
            msgs = [{"role": "user", "content": query},
                    {"role": "assistant", "content": "", "tool_calls": [
                        {"id": "c0", "type": "function", "function": {"name": name, "arguments": args}}]},
                    {"role": "tool", "tool_call_id": "c0", "name": name, "content": json.dumps(result.output)},
                    {"role": "assistant", "content": "Here you go."}]
            # Two tools offered: the gold one and a distractor from another domain.
            other = tools["get_city_info"] if name != "get_city_info" else tools["list_units"]
            rows.append({"id": i, "messages": json.dumps(msgs), "tools": json.dumps([tool.openai(), other.openai()])})
        if no_call:
            first = json.loads(rows[0]["messages"])
            first += [{"role": "user", "content": "Thanks! Now write me a two-line poem about the sea."},
                      {"role": "assistant", "content": "None of my tools writes poems, but here is one:\n"
                                                       "The sea rolls in, the sea rolls out,\nand sings of "
                                                       "what it is about."}]
            rows.append({"id": len(rows), "messages": json.dumps(first), "tools": rows[0]["tools"]})
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(scope="module")
def tps_run(smollm2, ray_local, tmp_path_factory):
    from ttpa_ray.sample.stage import run_sample

    root = tmp_path_factory.mktemp("tps")
    target = EngineConfig(backend="vllm", model="smollm2-135m-instruct", dtype="float32", max_model_len=4096,
                          pool={"min_actors": 1, "max_actors": 1, "num_cpus": 1, "batch_size": 8})
    cfg = SampleConfig(mode="tps", top_k=5, min_prob=0.05, max_branches_per_call=3, max_tokens=64)
    counts = run_sample(cfg, target, ScoreConfig(), _instances(root / "instances.parquet", no_call=True),
                        root / "out", seed=0)
    return counts, root / "out", target


@pytest.mark.slow
def test_tps_pairs_share_prefix_and_differ_at_divergence(tps_run):
    from transformers import AutoTokenizer

    from ttpa_ray.models.registry import resolve

    counts, out, _ = tps_run
    assert counts["turns"] == 8 and counts["candidates"] > 0 and counts["pairs"] > 0, counts
    assert counts["turn_errors"] == 0
    tok = AutoTokenizer.from_pretrained(resolve("smollm2-135m-instruct"))
    pairs = pq.read_table(out / "pairs.parquet").to_pylist()
    for p in pairs:
        c, r, d = p["chosen_token_ids"], p["rejected_token_ids"], p["divergence_index"]
        assert c[:d] == r[:d], p["id"]                         # same tokens before the divergence
        assert d < min(len(c), len(r)) and c[d] != r[d]        # and a different token at it
        assert p["chosen_score"] > p["rejected_score"]
        assert p["mode"] == "tps"
        # Text and ids agree (the end token is not part of the text).
        assert tok.decode([t for t in c if t != tok.eos_token_id]) == p["chosen"]
        assert tok.decode([t for t in r if t != tok.eos_token_id]) == p["rejected"]
        for text, ids in ((p["chosen"], c), (p["rejected"], r)):
            if "</tool_call>" in text:   # a call turn ends after its last call, with the end token
                assert text.rstrip().endswith("</tool_call>") and ids[-1] == tok.eos_token_id
    # Every candidate row was scored; the accounting adds up.
    cands = pq.read_table(out / "candidates.parquet").to_pylist()
    assert all(x["esm_score"] is not None for x in cands)
    assert sum(1 for x in cands if not x["is_gold"]) == counts["candidates"]


@pytest.mark.slow
def test_tps_no_call_turn_and_call_or_not_branches(tps_run):
    counts, out, _ = tps_run
    assert counts["no_call_turns"] == 1 and counts["turn_errors"] == 0, counts
    assert counts["branches_by_kind"]["call-or-not"] == counts["turns"]           # one per gold turn
    assert sum(counts["branches_by_kind"].values()) == counts["candidates"]
    assert sum(counts["pairs_by_kind"].values()) == counts["pairs"]
    cands = pq.read_table(out / "candidates.parquet").to_pylist()
    assert {x["branch_kind"] for x in cands if x["is_gold"]} == {""}
    assert {x["branch_kind"] for x in cands if not x["is_gold"]} <= {"name", "key", "value", "call-or-not", "sample"}
    no_call = [x for x in cands if x["gold_json"] == "[]"]
    assert {x["turn_index"] for x in no_call} == {5} and sum(x["is_gold"] for x in no_call) == 1
    assert {"sample", "call-or-not"} <= {x["branch_kind"] for x in no_call if not x["is_gold"]}
    assert all(x["esm_score"] == 1.0 or "unexpected_call" in x["errors"] or "decode_failed" in x["errors"]
               for x in no_call)
    pairs = pq.read_table(out / "pairs.parquet").to_pylist()
    assert {p["branch_kind"] for p in pairs} <= {"name", "key", "value", "call-or-not", "sample"}
    for p in pairs:
        if p["branch_kind"] == "call-or-not" and p["turn_index"] != 5:   # a call turn's branch answered in text
            assert p["chosen_is_gold"] and p["divergence_index"] == 0
    no_call_pairs = [p for p in pairs if p["turn_index"] == 5]
    assert all(p["chosen_is_gold"] and p["chosen_score"] == 1.0 for p in no_call_pairs)
    assert all({"unexpected_call", "decode_failed"} & set(p["rejected_errors"]) for p in no_call_pairs)


@pytest.mark.slow
def test_trl_export_runs_one_dpo_step(tps_run, tiny_model, tmp_path):
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    _, out, _ = tps_run
    data = load_dataset("json", data_files=str(out / "pairs_trl.jsonl"), split="train")
    assert set(data.column_names) >= {"prompt", "chosen", "rejected", "tools"}
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    args = DPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, report_to=[],
                     logging_steps=1, save_strategy="no", use_cpu=True, max_length=2048)
    trainer = DPOTrainer(model=model, args=args, train_dataset=data.select(range(min(4, len(data)))),
                         processing_class=tok)
    result = trainer.train()
    assert result.global_step == 1 and result.training_loss > 0


@pytest.mark.slow
def test_nsample_mode(tiny_model, ray_local, tmp_path):
    from ttpa_ray.sample.stage import run_sample

    # tiny-random samples fast and always differs from gold: the mode's mechanics, not its pairs' content.
    target = EngineConfig(backend="vllm", model="tiny-random", dtype="float32", max_model_len=2048,
                          pool={"min_actors": 1, "max_actors": 1, "num_cpus": 1, "batch_size": 8})
    cfg = SampleConfig(mode="nsample", n_samples=4, max_tokens=32)
    counts = run_sample(cfg, target, ScoreConfig(), _instances(tmp_path / "i.parquet", n=3, no_call=True),
                        tmp_path / "o", seed=0)
    assert counts["turns"] == 5 and counts["no_call_turns"] == 1 and counts["turn_errors"] == 0, counts
    assert set(counts["branches_by_kind"]) == {"sample"}
    cands = pq.read_table(tmp_path / "o/candidates.parquet").to_pylist()
    per_turn: dict = {}
    for x in cands:
        if not x["is_gold"]:
            per_turn.setdefault((x["instance_id"], x["turn_index"]), []).append(tuple(x["token_ids"]))
    assert len(per_turn) == 5 and (3, 5) in per_turn                         # the no-call turn was sampled too
    assert all(1 <= len(v) <= 4 and len(set(v)) == len(v) for v in per_turn.values())   # deduplicated
    for p in pq.read_table(tmp_path / "o/pairs.parquet").to_pylist():
        assert p["mode"] == "nsample" and p["chosen_score"] > p["rejected_score"] and p["branch_kind"] == "sample"
        assert p["chosen_is_gold"] or p["turn_index"] != 5
