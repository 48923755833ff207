"""Reference log-probs of pairs, the forward of the ``reference`` stage (its Ray Data pass is
:func:`ttpa_ray.train.stage.run_reference`).

:class:`ReferenceBatch` holds the starting model (the DPO reference) in transformers; the
forward train uses (``train.packing``: one packed row per turn, :mod:`ttpa_ray.train.group_forward`,
or per pair, :mod:`ttpa_ray.train.pair_forward`) gives ``ref_chosen_logps`` and
``ref_rejected_logps`` (sums over completion tokens, with ``train.prefix_weight``; the packed
rows' attention from ``train.attention``, as train loads it). With turn packing also
``ref_call_first``, log p(the call tag's first token, ``call_token_id``) where the completion
starts: the reference's P(call) on the turn, which ``train.decision_anchor`` holds. A pair that
cannot be scored (too long for memory, bad token ids) gets ``ref_error`` and NaN log-probs:
counted, kept, and left out of training.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ttpa_ray.columns import object_column

REFERENCE_INPUTS = ["id", "prompt_token_ids", "chosen_token_ids", "rejected_token_ids", "divergence_index"]


class ReferenceBatch:
    """Ray Data callable class: pair columns in, ``ref_chosen_logps``, ``ref_rejected_logps``,
    ``ref_error`` out."""

    def __init__(self, model_dir: str, dtype: str, prefix_weight: float, batch_size: int, packing: str = "turn",
                 decision_only: list[str] | None = None, binary_decision: bool = False, attention: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ttpa_ray.train.packed_attention import attention_implementation

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        attn = attention_implementation(attention, use_gpu=self.device == "cuda")   # train.attention, as train loads it
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype),
                                                          attn_implementation=attn).to(self.device).eval()
        from ttpa_ray.toolcall import call_token_id

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.pad_id = tokenizer.pad_token_id or 0
        self.call_id = call_token_id(tokenizer) if packing == "turn" else None
        self.prefix_weight = prefix_weight
        self.batch_size = batch_size
        self.packing = packing
        self.decision_only = list(decision_only or [])
        self.binary_decision = binary_decision

    def logps(self, rows: list[dict[str, Any]]) -> list[tuple[float, float]]:
        """(ref_chosen_logps, ref_rejected_logps) of each row."""
        return [(c, r) for c, r, _ in self.scores(rows)]

    def scores(self, rows: list[dict[str, Any]]) -> list[tuple[float, float, float]]:
        """(ref_chosen_logps, ref_rejected_logps, ref_call_first) of each row; the last is NaN
        without turn packing."""
        import torch

        from ttpa_ray.train.group_forward import turn_logps
        from ttpa_ray.train.pair_forward import call_sides, collate_pairs, pair_logps, tail_weights

        with torch.no_grad():
            if self.packing == "turn":
                lp = turn_logps(self.model, rows, self.pad_id, self.prefix_weight, self.decision_only,
                                self.binary_decision, self.call_id)
            else:
                lp = pair_logps(self.model, collate_pairs(rows, self.pad_id).to(self.device), self.prefix_weight,
                                tail_weights(rows, self.decision_only), call_sides(rows, self.binary_decision))
        call = lp.call_first.double().tolist() if lp.call_first is not None else [math.nan] * len(rows)
        return list(zip(lp.chosen.double().tolist(), lp.rejected.double().tolist(), call))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["id"])
        keys = REFERENCE_INPUTS + [k for k in ("branch_kind", "call_side") if k in batch]
        rows = [{k: (batch[k][i].tolist() if hasattr(batch[k][i], "tolist") else batch[k][i]) for k in keys}
                for i in range(n)]
        chosen, rejected, call, errors = [math.nan] * n, [math.nan] * n, [math.nan] * n, [None] * n
        if self.packing == "turn":  # one forward per turn's group, as train runs it
            from ttpa_ray.train.group_forward import group_pairs

            parts = group_pairs(rows, validate=False)
        else:
            parts = [list(range(s, min(n, s + self.batch_size))) for s in range(0, n, self.batch_size)]
        for part in parts:
            try:
                results = self.scores([rows[i] for i in part])
            except Exception:  # noqa: BLE001 - retry one by one: a bad pair must not take its batch down
                results = []
                for i in part:
                    try:
                        results.extend(self.scores([rows[i]]))
                    except Exception as exc:  # noqa: BLE001
                        results.append((math.nan, math.nan, math.nan))
                        errors[i] = f"{type(exc).__name__}: {exc}"[:500]
            for i, (c, r, f) in zip(part, results):
                chosen[i], rejected[i], call[i] = c, r, f
        out = dict(batch)
        out["ref_chosen_logps"] = np.array(chosen, dtype=np.float64)
        out["ref_rejected_logps"] = np.array(rejected, dtype=np.float64)
        out["ref_error"] = object_column(errors)
        if self.call_id is not None:
            out["ref_call_first"] = np.array(call, dtype=np.float64)
            out["call_token_id"] = np.full(n, self.call_id, dtype=np.int64)
        return out
