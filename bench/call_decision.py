"""Does a model *decide* to call? P(the completion starts with ``<tool_call>``) on each BFCL
prompt of an evaluated run, per category, and how well it separates the entries that need a call
from the irrelevance ones (ROC AUC, threshold-free). Greedy accuracy hides this: a model whose
P(call) is 0.45 on irrelevance and 0.60 elsewhere calls on both.

    .venv/bin/python bench/call_decision.py runs/demo-cpu \\
        base=.cache/models/smollm2-135m-instruct sft=runs/demo-cpu/sft/model trained=runs/demo-cpu/train/model

Reads ``<run>/evaluate/base/bfcl.parquet`` (the rendered prompts; the same template for every
model), teacher-forces the tokens of ``<tool_call>`` after each prompt with transformers in fp32
and writes ``<run>/call_decision.json`` (``--out`` to change it).

``--pairs <run>/sample/pairs.parquet`` asks the same of the training data instead: each turn the
pairs came from (its prompt tokens exactly as trained), labelled ``call`` or ``no-call`` by its
chosen side. A preference step that cannot separate its own training turns cannot separate BFCL's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

CALL_TAG = "<tool_call>"


def auc(positive: list[float], negative: list[float]) -> float:
    """P(a random positive scores above a random negative), ties count half.

    >>> auc([0.9, 0.8], [0.1, 0.8])
    0.875
    """
    pairs = [(p > n) + 0.5 * (p == n) for p in positive for n in negative]
    return sum(pairs) / len(pairs) if pairs else float("nan")


@torch.no_grad()
def p_call(model_dir: str, prompts: list[str] | list[list[int]]) -> list[tuple[float, bool]]:
    """(P(the tag's tokens), whether the tag's first token is the argmax: greedy decoding calls)
    per prompt. Greedy calls at P(call) well under 0.5 when the answer's mass is spread over many
    first words."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tag = tok(CALL_TAG, add_special_tokens=False).input_ids
    out = []
    for prompt in prompts:
        ids = list(prompt) if not isinstance(prompt, str) else tok(prompt, add_special_tokens=False).input_ids
        logp = torch.log_softmax(model(torch.tensor([ids + tag])).logits[0, len(ids) - 1:-1].float(), -1)
        out.append((float(logp[torch.arange(len(tag)), torch.tensor(tag)].sum().exp()),
                    int(logp[0].argmax()) == tag[0]))
    return out


def pair_turns(path: Path) -> list[dict]:
    """One row per (instance, turn) of a pairs file: its prompt token ids and ``call`` or
    ``no-call`` (whether the chosen side calls)."""
    turns: dict[tuple[int, int], dict] = {}
    cols = ["instance_id", "turn_index", "prompt_token_ids", "chosen"]
    for r in pq.read_table(path, columns=cols).to_pylist():
        key = (r["instance_id"], r["turn_index"])
        calls = CALL_TAG in r["chosen"]
        turns.setdefault(key, {"prompt": r["prompt_token_ids"], "category": "call" if calls else "no-call"})
    return list(turns.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("models", nargs="+", help="LABEL=MODEL_DIR")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=Path, help="a sample/pairs.parquet: its turns instead of BFCL's prompts")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = (pair_turns(args.pairs) if args.pairs else
            pq.read_table(args.run / "evaluate/base/bfcl.parquet", columns=["category", "prompt"]).to_pylist())
    negative = "no-call" if args.pairs else "irrelevance"
    result = {}
    for spec in args.models:
        label, path = spec.split("=", 1)
        scored = p_call(path, [r["prompt"] for r in rows])
        probs, greedy = [p for p, _ in scored], [g for _, g in scored]
        by_cat: dict[str, list[float]] = {}
        for r, p in zip(rows, probs):
            by_cat.setdefault(r["category"], []).append(p)
        relevant = [p for r, p in zip(rows, probs) if r["category"] != negative]
        result[label] = {"model": path,
                         "mean_p_call": {c: round(sum(v) / len(v), 4) for c, v in by_cat.items()},
                         "share_p_call_above_half": {c: sum(p > 0.5 for p in v) / len(v) for c, v in by_cat.items()},
                         "share_greedy_calls": {c: round(sum(g for r2, g in zip(rows, greedy) if r2["category"] == c)
                                                         / len(v), 4) for c, v in by_cat.items()},
                         ("auc_call_vs_no_call" if args.pairs else "auc_relevant_vs_irrelevance"): round(auc(relevant, by_cat.get(negative, [])), 4)}
        print(label, json.dumps(result[label]), flush=True)
    out = args.out or args.run / "call_decision.json"
    out.write_text(json.dumps({"run": str(args.run), "prompts": str(args.pairs or "evaluate/base/bfcl.parquet"),
                               "entries": len(rows), "models": result}, indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
