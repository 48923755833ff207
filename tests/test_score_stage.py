"""The scoring stage: the score-calls CLI contract, and the Ray Data actor pool."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ttpa_ray.config import ScoreConfig

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"]}}}]
GOLD = [{"name": "get_weather", "arguments": {"city": "Paris"}}]


def test_score_calls_cli_contract(tmp_path: Path):
    lines = [
        {"tools": TOOLS, "prediction": '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
         "gold": GOLD},
        {"tools": TOOLS, "prediction": [{"name": "get_weather", "arguments": {"city": "Lyon"}}], "gold": GOLD},
        "this line is not json",
        {"tools": TOOLS, "prediction": "no call needed", "gold": []},
        {"tools": TOOLS, "prediction": "x"},                                            # no gold
        {"tools": TOOLS, "prediction": "get_weather(city='paris')",
         "possible_answer": [{"get_weather": {"city": ["Paris"], "days": ["", 1]}}]},
        {"tools": [{"name": "bad", "parameters": {"type": "array"}}], "prediction": "x", "gold": []},
        {"tools": TOOLS, "prediction": "<tool_call>{oops</tool_call>", "gold": GOLD},
    ]
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "out.jsonl"
    proc = subprocess.run([sys.executable, "-m", "ttpa_ray.cli", "score-calls", "--input", str(inp), "--output",
                           str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == len(lines)                                   # one output line per input line
    assert rows[0]["valid"] and rows[0]["esm_score"] == 1.0 and rows[0]["gold"] == GOLD   # input kept
    assert not rows[1]["valid"] and rows[1]["errors"] == ["value_error"] and 0 < rows[1]["esm_score"] < 1
    assert rows[2]["error"].startswith("line 3: not valid JSON") and rows[2]["valid"] is False
    assert rows[3]["valid"] and rows[3]["esm_score"] == 1.0
    assert rows[4]["error"].startswith("line 5:") and "exactly one of `gold`" in rows[4]["error"]
    assert rows[5]["valid"]
    assert rows[6]["error"].startswith("line 7:") and "parameters.type must be 'object'" in rows[6]["error"]
    assert rows[7]["errors"] == ["decode_failed"] and rows[7]["esm_score"] == 0.0
    assert "scored 5 of 8 lines" in proc.stderr and "3 bad line(s)" in proc.stderr


def test_execution_check_compares_results_in_the_sandbox():
    from ttpa_ray.score.stage import ScoreBatch
    from ttpa_ray.tools.catalog import bundled_catalog

    tool = next(t for t in bundled_catalog() if t.name == "convert_temperature")
    args = dict(tool.examples[0])
    row = {"tools_json": json.dumps([tool.openai()]), "gold_json": json.dumps([{"name": tool.name, "arguments": args}]),
           "possible_answer_json": None}
    scorer = ScoreBatch(execution_check=True)
    same = scorer.score_row(row | {"prediction_json": json.dumps([{"name": tool.name, "arguments": args}]),
                                   "prediction": None}, with_execution=True)
    assert same[2] and same[4] is True
    other = dict(args, value=float(args["value"]) + 10)
    diff = scorer.score_row(row | {"prediction_json": json.dumps([{"name": tool.name, "arguments": other}]),
                                   "prediction": None}, with_execution=True)
    assert not diff[2] and diff[4] is False
    assert ScoreBatch().score_row(row | {"prediction": "x"}, with_execution=True)[4] is None   # off: unchecked


def test_scoring_after_a_generation_takes_its_batches_as_they_come():
    # Scored rows stream out per generated block: a scoring call waits for a full batch, and one
    # of score.pool.batch_size 512 held back every row of a 643-row evaluation until the 512th.
    from ttpa_ray.score.stage import score_pool_kwargs

    cfg = ScoreConfig()
    assert cfg.pool.batch_size == 512
    assert score_pool_kwargs(cfg, upstream_batch=64)["batch_size"] == 64
    assert score_pool_kwargs(cfg)["batch_size"] == 512  # scoring alone: its own batch
    assert score_pool_kwargs(ScoreConfig(pool={"batch_size": 16}), upstream_batch=64)["batch_size"] == 16
