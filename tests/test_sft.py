"""The sft stage: assistant-only token masks, the loss against TRL's SFTTrainer, and the Ray
Train run (checkpoints, a killed worker restored, an exported model that learned)."""

from __future__ import annotations

import json
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ttpa_ray.config import SftConfig
from ttpa_ray.instances import turn_rows
from ttpa_ray.sft.data import conversation_tokens, sft_rows
from ttpa_ray.sft.objective import SftObjective, assistant_nll, collate_sequences
from ttpa_ray.toolcall import ToolCall, render_with_template

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city.",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string"}}, "required": ["city"]}}}]


def _call(city: str) -> dict:
    return {"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}


def conversation(i: int = 0) -> list[dict]:
    """Two user turns: parallel calls with their results and an answer, then a no-call turn."""
    a, b = ["Paris", "Rome", "Oslo", "Lima"][i % 4], ["Berlin", "Cairo", "Quito", "Seoul"][i % 4]
    return [{"role": "user", "content": f"Weather in {a} and {b}?"},
            {"role": "assistant", "content": "", "tool_calls": [_call(a), _call(b)]},
            {"role": "tool", "content": json.dumps({"city": a, "temp_c": 20 + i})},
            {"role": "tool", "content": json.dumps({"city": b, "temp_c": 10 + i})},
            {"role": "assistant", "content": f"{a} is {20 + i} C and {b} is {10 + i} C."},
            {"role": "user", "content": "Book me a flight there."},
            {"role": "assistant", "content": "I cannot book flights with these tools."}]


def instance(i: int) -> dict:
    return {"id": i, "messages": json.dumps(conversation(i)), "tools": json.dumps(TOOLS)}


@pytest.fixture(scope="module")
def tok(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_mask_covers_exactly_the_assistant_turns(tok):
    msgs = conversation()
    ids, mask = conversation_tokens(tok, msgs, TOOLS)
    assert len(ids) == len(mask) and ids[0] != 0 and mask[0] == 0
    spans, cur = [], []
    for t, m in zip(ids, mask):
        if m:
            cur.append(t)
        elif cur:
            spans.append(cur)
            cur = []
    spans += [cur] if cur else []
    texts = [tok.decode(s) for s in spans]
    assert len(texts) == 3  # the calls, the answer after the results, the no-call answer
    assert texts[0].startswith("<tool_call>") and texts[0].count("<tool_call>") == 2 and "Berlin" in texts[0]
    assert texts[1] == "Paris is 20 C and Berlin is 10 C.<|im_end|>"
    assert texts[2] == "I cannot book flights with these tools.<|im_end|>"
    context = tok.decode([t for t, m in zip(ids, mask) if not m])
    for text in ("get_weather", "Weather in Paris and Berlin?", "temp_c", "Book me a flight there."):
        assert text in context  # schemas, user turns, tool results: never learned from


def test_tokens_are_the_ones_sample_branches_from(tok):
    """Every gold turn sample renders (prompt ids, then gold ids) is a slice of the SFT row,
    the gold part masked in and the prompt part ending where it starts."""
    ids, mask = conversation_tokens(tok, conversation(), TOOLS)
    rows = turn_rows([instance(0)])
    assert len(rows) == 2
    for row in rows:
        msgs, calls = json.loads(row["prompt_json"]), json.loads(row["gold_json"])
        prompt = tok(tok.apply_chat_template(msgs, tools=TOOLS, add_generation_prompt=True, tokenize=False),
                     add_special_tokens=False)["input_ids"]
        gold = render_with_template(tok, msgs, [ToolCall(c["name"], c["arguments"]) for c in calls], tools=TOOLS,
                                    content=row["gold_text"]).rstrip("\n")
        gold_ids = tok(gold, add_special_tokens=False)["input_ids"]
        n = len(prompt)
        assert ids[:n] == prompt and ids[n:n + len(gold_ids)] == gold_ids
        assert mask[n - 1] == 0 and all(mask[n:n + len(gold_ids)])


def test_rows_hold_out_truncate_and_count_bad_conversations(tok):
    bad = {"id": 99, "messages": json.dumps([{"role": "user", "content": "hi"}]), "tools": "[]"}
    insts = [instance(i) for i in range(6)] + [bad]
    rows, counts = sft_rows(insts, tok, max_length=4096, held_out_fraction=0.0, seed=0)
    assert counts["conversations"] == 6 and counts["render_errors"] == 1 and len(rows) == 7
    assert rows[-1]["error"].startswith("ValueError: the conversation has no assistant message")
    assert counts["assistant_tokens"] == sum(sum(r["assistant_mask"][1:]) for r in rows)
    rows, counts = sft_rows(insts[:6], tok, max_length=4096, held_out_fraction=1.0, seed=0)
    assert rows == [] and counts["held_out_instances"] == 6
    full = len(conversation_tokens(tok, conversation(), TOOLS)[0])
    rows, counts = sft_rows(insts[:1], tok, max_length=full - 5, held_out_fraction=0.0, seed=0)
    assert counts["truncated"] == 1 and len(rows[0]["input_ids"]) == full - 5 and rows[0]["error"] is None
    rows, counts = sft_rows(insts[:1], tok, max_length=16, held_out_fraction=0.0, seed=0)
    assert counts["render_errors"] == 1 and "raise it" in rows[0]["error"]


def test_collate_names_bad_rows():
    with pytest.raises(ValueError, match="row 1: no assistant token"):
        collate_sequences([{"input_ids": [1, 2], "assistant_mask": [0, 1]},
                           {"input_ids": [1, 2], "assistant_mask": [1, 0]}], pad_token_id=0)
    with pytest.raises(ValueError, match="row 0: 2 input_ids but 1"):
        collate_sequences([{"input_ids": [1, 2], "assistant_mask": [0]}], pad_token_id=0)


def with_generation_markers(template: str) -> str:
    """The project's chat template with ``{% generation %}`` around each assistant turn (its
    text and end-of-turn token), the form TRL's assistant_only_loss reads."""
    head = '{{- "<|im_start|>" + message.role + "\\n" -}}'
    tail = '{{- "<|im_end|>\\n" -}}'
    i = template.index(head) + len(head)
    j = template.index(tail, i)
    body = template[i:j]
    marked = ('{%- if message.role == "assistant" -%}{% generation %}' + body + '{{- "<|im_end|>" -}}'
              '{% endgeneration %}{{- "\\n" -}}{%- else -%}' + body + tail + '{%- endif -%}')
    return template[:i] + marked + template[j + len(tail):]


def test_decision_weight_weighs_each_assistant_messages_first_token(tiny_model, tok):
    """3 assistant messages (calls, answer, a no-call answer): their first tokens weigh w, the
    loss is the weighted mean of the per-token NLL computed here from the full logits."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float64)
    row = sft_rows([instance(0)], tok, 4096, 0.0, seed=0)[0][0]
    ids, mask = row["input_ids"], row["assistant_mask"]
    firsts = [t for t in range(1, len(ids)) if mask[t] and not mask[t - 1]]
    assert len(firsts) == 3 and tok.decode(ids[firsts[0]]).startswith("<")  # the <tool_call> decision
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        nll = {t: -logp[t - 1, ids[t]].item() for t in range(1, len(ids)) if mask[t]}
        policy = types.SimpleNamespace(module=model, device="cpu")
        for w in (1.0, 5.0):
            loss, sums = SftObjective()(policy, [row], types.SimpleNamespace(decision_weight=w), 0)
            want = sum(v * (w if t in firsts else 1.0) for t, v in nll.items()) / (len(nll) + (w - 1) * 3)
            assert loss.item() == pytest.approx(want, abs=1e-9)
            assert sums["decisions"] == 3 and sums["decision_nll"] == pytest.approx(sum(nll[t] for t in firsts))
            assert sums["nll"] == pytest.approx(sum(nll.values()))  # the reported loss stays unweighted
    assert abs(want - sum(nll.values()) / len(nll)) > 1e-3  # w = 5 changed the loss: a real check


@pytest.mark.slow
def test_loss_equals_trl_sfttrainer_assistant_only(tiny_model, tmp_path):
    """TRL's own SFTTrainer (its tokenization, its assistant masks from {% generation %}
    markers, its collator, forward and loss) on our conversations, against ours, in fp64."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = with_generation_markers(tok.chat_template)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float64)
    rows = sft_rows([instance(i) for i in range(3)], tok, 4096, 0.0, seed=0)[0]
    data = Dataset.from_list([{"messages": conversation(i), "tools": TOOLS} for i in range(3)])
    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, per_device_train_batch_size=3,
                     report_to=[], use_cpu=True, save_strategy="no", max_length=None, padding_free=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    examples = [trainer.train_dataset[i] for i in range(3)]
    for ex, row in zip(examples, rows):  # the same tokens, the same assistant tokens
        assert ex["input_ids"] == row["input_ids"]
        assert [int(x != -100) for x in ex["labels"]][1:] == row["assistant_mask"][1:], sorted(ex)
    batch = trainer.data_collator(examples)
    model.train()
    trl_loss = trainer.compute_loss(model, batch)
    ours = assistant_nll(model, collate_sequences(rows, pad_token_id=tok.pad_token_id or 0))
    assert int((batch["labels"][:, 1:] != -100).sum()) == ours.tokens
    assert ours.mean.item() == pytest.approx(trl_loss.item(), abs=1e-6)
    policy = types.SimpleNamespace(module=model, device="cpu")
    loss, sums = SftObjective()(policy, rows, None, tok.pad_token_id or 0)  # what training runs: unpadded rows
    assert loss.item() == pytest.approx(trl_loss.item(), abs=1e-6) and sums["assistant_tokens"] == ours.tokens
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    everything = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["input_ids"][:, 1:].flatten())
    assert abs(everything.item() - ours.mean.item()) > 1e-3  # the loss over all tokens differs: a real check


@pytest.mark.slow
def test_sft_stage_trains_restores_a_killed_worker_and_exports(tiny_model, tok, ray_local, tmp_path, monkeypatch):
    """8 conversations, 4 steps of 2, checkpoints every 2 steps; the worker is SIGKILLed after
    step 3 and restored from step 2. The exported folder loads in transformers and has a lower
    assistant loss on the rows than the starting model."""
    import torch
    from transformers import AutoModelForCausalLM

    from ttpa_ray.sft.stage import run_sft
    from ttpa_ray.train.stage import FAULT_ENV

    instances = tmp_path / "instances.parquet"
    pq.write_table(pa.Table.from_pylist([instance(i) for i in range(8)]), instances)
    cfg = SftConfig(enabled=True, learning_rate=3e-3, max_steps=4, micro_batch_size=2, checkpoint_every=2,
                    max_failures=1, lr_scheduler="constant", warmup_ratio=0.0, zero_stage=0, cpus_per_worker=0.5)
    monkeypatch.setenv(FAULT_ENV, "3")
    counts = run_sft(cfg, str(tiny_model), instances, tmp_path / "sft", seed=0, held_out_fraction=0.0)
    assert counts["conversations"] == 8 and counts["steps"] == 4 and counts["restores"] == [2]
    history = [json.loads(x) for x in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3, 4] and history[0]["conversations"] == 2
    assert (tmp_path / "sft" / "conversations.parquet").is_file()
    rows = pq.read_table(tmp_path / "sft" / "conversations.parquet").to_pylist()
    batch = collate_sequences(rows, pad_token_id=tok.pad_token_id or 0)
    with torch.no_grad():
        before = assistant_nll(AutoModelForCausalLM.from_pretrained(tiny_model), batch).mean.item()
        after = assistant_nll(AutoModelForCausalLM.from_pretrained(tmp_path / "sft" / "model"), batch).mean.item()
    assert after < before - 0.5, (before, after)
