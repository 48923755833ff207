"""Constructed conversations as SFT rows: token ids and the assistant mask, no Ray.

:func:`conversation_tokens` renders an instance's messages with the model's own chat template
and marks the tokens each assistant message writes (its calls or its text, and the end-of-turn
token). Everything else, the system text with the tool schemas, user turns and tool results,
is context only. The pieces are cut exactly where the sample stage cuts a gold turn (the
rendering of the history with the generation prompt, then the turn minus its trailing newline,
:func:`ttpa_ray.toolcall.render_with_template`), and each piece is tokenized on its own as the
sample stage tokenizes prompt and gold: the SFT model is trained on the very tokens that TPS
later branches from.

>>> class Tok:  # a stand-in: one token per character, a ChatML-like template
...     def apply_chat_template(self, msgs, tools=None, add_generation_prompt=False, tokenize=False):
...         text = "".join(f"<{m['role'][0]}>{m.get('content') or ''}|\\n" for m in msgs)
...         return text + ("<a>" if add_generation_prompt else "")
...     def __call__(self, text, add_special_tokens=False):
...         return {"input_ids": [ord(c) for c in text]}
>>> ids, mask = conversation_tokens(Tok(), [{"role": "user", "content": "hi"},
...                                         {"role": "assistant", "content": "yo"}], [])
>>> "".join(chr(i) for i, m in zip(ids, mask) if m)
'yo|'
"""

from __future__ import annotations

import json
from typing import Any

from ttpa_ray.instances import held_out_ids

COLUMNS = ("id", "input_ids", "assistant_mask")


def conversation_tokens(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
                        ) -> tuple[list[int], list[int]]:
    """``(input_ids, assistant_mask)`` of one conversation; mask 1 on assistant-written tokens.
    Raises ValueError when the template renders the history differently once a turn follows
    (the assistant text cannot be isolated) or there is no assistant message."""
    def render(msgs: list[dict[str, Any]], gen: bool) -> str:
        return tokenizer.apply_chat_template(msgs, tools=tools or None, add_generation_prompt=gen, tokenize=False)

    def tokens(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    ids: list[int] = []
    mask: list[int] = []
    done = ""
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        prefix = render(messages[:i], True)
        full = render(messages[:i + 1], False)
        if not prefix.startswith(done) or not full.startswith(prefix):
            raise ValueError(f"message {i}: the chat template renders the earlier messages differently once an "
                             "assistant turn follows; cannot isolate the assistant tokens")
        turn = full[len(prefix):].rstrip("\n")
        context, answer = tokens(prefix[len(done):]), tokens(turn)
        ids += context + answer
        mask += [0] * len(context) + [1] * len(answer)
        done = prefix + turn
    if not any(mask):
        raise ValueError("the conversation has no assistant message to learn from")
    rest = render(messages, False)
    if rest.startswith(done):  # what follows the last turn (a newline): context, as a whole rendering has it
        tail = tokens(rest[len(done):])
        ids, mask = ids + tail, mask + [0] * len(tail)
    return ids, mask


def sft_rows(instances: list[dict[str, Any]], tokenizer: Any, max_length: int, held_out_fraction: float,
             seed: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One row per instance that is not held out: ``id``, ``input_ids``, ``assistant_mask``,
    ``truncated``, ``error`` (a conversation that cannot be rendered keeps its row, with empty ids,
    and is counted). Conversations longer than ``max_length`` are cut there."""
    rows, counts = [], {"instances": len(instances), "held_out_instances": 0, "conversations": 0,
                        "truncated": 0, "render_errors": 0, "assistant_tokens": 0, "tokens": 0}
    held = held_out_ids(instances, held_out_fraction, seed)
    for inst in instances:
        if int(inst["id"]) in held:
            counts["held_out_instances"] += 1
            continue
        row: dict[str, Any] = {"id": int(inst["id"]), "input_ids": [], "assistant_mask": [], "truncated": False,
                               "error": None}
        try:
            ids, mask = conversation_tokens(tokenizer, json.loads(inst["messages"]), json.loads(inst["tools"]))
            if len(ids) > max_length:
                ids, mask = ids[:max_length], mask[:max_length]
                row["truncated"] = True
                if not any(mask[1:]):
                    raise ValueError(f"no assistant token within sft.max_length={max_length} tokens; raise it")
            row["input_ids"], row["assistant_mask"] = ids, mask
        except Exception as exc:  # noqa: BLE001 - a bad conversation is a counted error row
            row["error"] = f"{type(exc).__name__}: {exc}"[:500]
            row["input_ids"], row["assistant_mask"] = [], []
            counts["render_errors"] += 1
        else:
            counts["conversations"] += 1
            counts["truncated"] += row["truncated"]
            counts["assistant_tokens"] += sum(mask[1:])  # the first token is never predicted
            counts["tokens"] += len(ids)
        rows.append(row)
    return rows, counts
