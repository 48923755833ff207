"""The SFT objective as the training loop calls it (:func:`ttpa_ray.train.loop.run_steps`),
pure torch: conversations in, the mean negative log-likelihood of their assistant tokens out.

The loss of a micro-batch is the sum of ``-log p`` over every assistant token (a token whose
``assistant_mask`` is 1, predicted from the one before) divided by their number: TRL's
``SFTTrainer`` with ``assistant_only_loss=True`` on the same tokens (tests/test_sft.py runs
TRL itself). The LM head runs only on hidden states that predict an assistant token.

``sft.decision_weight`` w (default 1, the loss above) weighs the first token of each assistant
message, the turn's decision (``<tool_call`` or the first word of a text answer), w times the
others: the loss is then the weighted mean, sum(w_t nll_t) / sum(w_t). One token among ~50 of a
turn, the decision is otherwise fitted last: the demo's SFT model, after 2 epochs at 0.93 token
accuracy, still gave P(call) 0.48 on its own call turns and 0.36 on its no-call turns.

>>> rows = [{"input_ids": [5, 6, 7], "assistant_mask": [0, 1, 1]}, {"input_ids": [5, 8], "assistant_mask": [0, 1]}]
>>> b = collate_sequences(rows, pad_token_id=0)
>>> b.input_ids.tolist(), b.targets.tolist()
([[5, 6, 7], [5, 8, 0]], [[False, True, True], [False, True, False]])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

COLUMNS = ("id", "input_ids", "assistant_mask")


@dataclass
class SequenceBatch:
    """``B`` conversations right-padded to ``T``."""

    input_ids: Tensor       # (B, T)
    attention_mask: Tensor  # (B, T) 1 on real tokens
    targets: Tensor         # (B, T) bool: assistant tokens (never position 0, never padding)

    def to(self, device: torch.device | str) -> SequenceBatch:
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device)
                                            for f in dataclasses.fields(self)})


def collate_sequences(rows: Sequence[Mapping[str, Any]], pad_token_id: int) -> SequenceBatch:
    """Rows of ``sft/conversations.parquet`` -> :class:`SequenceBatch`. Raises ValueError
    naming every bad row."""
    if not rows:
        raise ValueError("collate_sequences got no rows; pass at least one conversation")
    problems = []
    for i, r in enumerate(rows):
        ids, mask = list(r.get("input_ids") or []), list(r.get("assistant_mask") or [])
        if len(ids) != len(mask):
            problems.append(f"row {i}: {len(ids)} input_ids but {len(mask)} assistant_mask entries")
        elif not any(mask[1:]):
            problems.append(f"row {i}: no assistant token after the first position: nothing to learn")
    if problems:
        raise ValueError("bad SFT rows:\n" + "\n".join(problems[:10]))
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor([int(t) for t in r["input_ids"]])
        attn[i, :n] = 1
        targets[i, 1:n] = torch.tensor([bool(m) for m in r["assistant_mask"][1:]], dtype=torch.bool)
    return SequenceBatch(ids, attn, targets)


def decision_targets(targets: Tensor) -> Tensor:
    """The first token of each run of assistant tokens: each assistant message's decision.

    >>> decision_targets(torch.tensor([[False, True, True, False, True]])).tolist()
    [[False, True, False, False, True]]
    """
    before = torch.nn.functional.pad(targets[:, :-1], (1, 0), value=False)
    return targets & ~before


@dataclass
class AssistantNll:
    nll: Tensor               # () summed -log p over the assistant tokens
    correct: Tensor           # () assistant tokens that are the argmax
    tokens: int               # assistant tokens
    weighted: Tensor          # () sum of w_t -log p (= nll at decision_weight 1)
    weight: float             # sum of w_t
    decision_nll: float       # summed -log p of the decision tokens alone
    decision_correct: int     # decision tokens that are the argmax
    decisions: int            # decision tokens

    @property
    def mean(self) -> Tensor:
        return self.nll / max(self.tokens, 1)


def assistant_nll(model: torch.nn.Module, batch: SequenceBatch, padded: bool = True,
                  decision_weight: float = 1.0) -> AssistantNll:
    """Summed NLL of the assistant tokens of a HF causal LM (logits only where they count), and
    the same with each message's decision token weighted ``decision_weight``.
    ``padded=False``: the rows have no padding (one conversation), so no padding mask is passed."""
    h = model.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask if padded else None,
                            use_cache=False).last_hidden_state                   # (B, T, H)
    predicts = batch.targets[:, 1:]                                              # position t predicts t+1
    logits = model.get_output_embeddings()(h[:, :-1][predicts])                 # (N, V)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    labels = batch.input_ids[:, 1:][predicts]
    per_token = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    first = decision_targets(batch.targets)[:, 1:][predicts]                     # (N,) bool
    hit = logits.detach().argmax(-1) == labels
    weights = 1.0 + (decision_weight - 1.0) * first.to(per_token.dtype)
    return AssistantNll(per_token.sum(), hit.sum(), int(labels.numel()), (weights * per_token).sum(),
                        float(weights.sum()), float(per_token.detach()[first].sum()), int(hit[first].sum()),
                        int(first.sum()))


class SftObjective:
    """One micro-batch of conversations: the loss to backpropagate and the step's metric sums."""

    columns = COLUMNS
    unit = "conversations"

    @staticmethod
    def units(rows: Any, cfg: Any) -> list[list[int]]:
        return [[i] for i in range(rows.num_rows)]

    def __call__(self, policy: Any, rows: list[dict[str, Any]], cfg: Any, pad_id: int
                 ) -> tuple[Tensor, dict[str, float]]:
        """One forward per conversation, unpadded (a causal mask and no padding mask: sdpa's
        fused kernel; 30-40% less time than one padded batch of a 1,500- and a 550-token
        conversation, the same loss), summed over the micro-batch."""
        weight = getattr(cfg, "decision_weight", 1.0)
        loss, sums = None, dict.fromkeys(("nll", "correct", "assistant_tokens", "weight", "decision_nll",
                                          "decision_correct", "decisions", "tokens"), 0.0)
        for r in rows:
            batch = collate_sequences([r], pad_id).to(policy.device)
            out = assistant_nll(policy.module, batch, padded=False, decision_weight=weight)
            loss = out.weighted if loss is None else loss + out.weighted
            for key, value in (("nll", out.nll.item()), ("correct", int(out.correct)),
                               ("assistant_tokens", out.tokens), ("weight", out.weight),
                               ("decision_nll", out.decision_nll), ("decision_correct", out.decision_correct),
                               ("decisions", out.decisions), ("tokens", int(batch.input_ids.numel()))):
                sums[key] += value
        assert loss is not None, "an SFT micro-batch has at least one conversation"
        return loss / max(sums["weight"], 1.0), sums | {"rows": len(rows)}

    @staticmethod
    def metrics(s: dict[str, float]) -> dict[str, float]:
        n, d = max(s["assistant_tokens"], 1.0), max(s["decisions"], 1.0)
        return {"loss": s["nll"] / n, "mean_token_accuracy": s["correct"] / n,
                "decision_loss": s["decision_nll"] / d, "decision_accuracy": s["decision_correct"] / d,
                "conversations": int(s["rows"]), "assistant_tokens": int(s["assistant_tokens"]),
                "tokens": int(s["tokens"])}

    @staticmethod
    def progress(row: dict[str, Any]) -> str:
        return (f"loss {row['loss']:.4f} token acc {row['mean_token_accuracy']:.2f} "
                f"decision acc {row['decision_accuracy']:.2f}")
