"""Shared-prefix forward for preference pairs: log p(chosen), log p(rejected) of a causal LM.

A TTPA pair shares the prompt (often 500+ tokens) and the first ``divergence_index`` (``d``)
completion tokens; it differs from completion token ``d`` on. Instead of two full sequences
(:func:`naive_pair_logps`, the reference) :func:`pair_logps` packs each pair into one row
``[prompt + chosen[:d] | chosen[d:-1] | rejected[d:-1]]`` with a shared-prefix attention mask
(each continuation sees the whole prefix and itself, never the other) and position ids that
restart both continuations where the prefix ends, and runs the decoder once. So the prefix is
computed once, and every weight is used once per forward: its gradient is complete as soon as
the backward leaves its layer, and ZeRO-3 can reduce-scatter and free it there (with the
prefix and the continuations in two decoder calls, autograd held every layer's gradient until
the backward reached the prefix call: a whole model's worth per rank). The LM head sees only
hidden states that predict completion tokens, never prompt positions: the shared completion
tokens are scored once and added to both sides, and the last prefix position predicts both
``chosen[d]`` and ``rejected[d]``. The last suffix token predicts nothing, so it is never fed.

Modules are only called through their forward (decoder, then ``get_output_embeddings()``), so
DeepSpeed ZeRO-3 gathers their parameters as usual, and HF gradient checkpointing applies.
Needs ``sdpa`` or ``eager`` attention (a dense 4-D mask) or ``flex_attention`` (a block mask
that skips the masked blocks; the GPU path); the mask comes from
:mod:`ttpa_ray.train.packed_attention`. Not supported: sliding-window attention layers (the
packed mask replaces theirs) and models that post-process logits after the LM head (e.g.
Gemma-2 soft-capping); use :func:`naive_pair_logps` for those.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ttpa_ray.train.losses import binary_decision, divergence_weights, sequence_logps
from ttpa_ray.train.packed_attention import check_packed_model, packed_mask

COLUMNS = ("prompt_token_ids", "chosen_token_ids", "rejected_token_ids", "divergence_index")


@dataclass
class PairBatch:
    """``B`` pairs split at their divergence token; right-padded with ``pad_token_id``.

    Suffix rows are interleaved: row ``2b`` is ``chosen[b][d:]``, row ``2b+1`` ``rejected[b][d:]``.
    """

    prefix_ids: Tensor        # (B, P) prompt + chosen[:d]
    prefix_mask: Tensor       # (B, P) 1 on real tokens
    prompt_lens: Tensor       # (B,)
    divergence_index: Tensor  # (B,) d, counted in completion tokens
    suffix_ids: Tensor        # (2B, S) chosen[d:] / rejected[d:], interleaved
    suffix_mask: Tensor       # (2B, S)

    def __len__(self) -> int:
        return self.prefix_ids.shape[0]

    def to(self, device: torch.device | str) -> PairBatch:
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device)
                                            for f in dataclasses.fields(self)})


@dataclass
class PairLogps:
    """All ``(B,)``: summed (weighted) completion log-probs and the summed weights."""

    chosen: Tensor
    rejected: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor
    chosen_first: Tensor | None = None   # log p(chosen[0]), the turn's call-or-answer decision (turn packing)
    call_first: Tensor | None = None     # log p(the call tag's first token) at that position (turn packing)

    def mean(self) -> tuple[Tensor, Tensor]:
        """Per-token averages ``(chosen, rejected)`` (IPO is length-normalised)."""
        return self.chosen / self.chosen_tokens.clamp(min=1.0), self.rejected / self.rejected_tokens.clamp(min=1.0)


def _problems(i: int, row: Mapping[str, Any]) -> list[str]:
    if missing := [c for c in COLUMNS if c not in row]:
        return [f"row {i}: missing column(s) {missing}; pairs.parquet rows need {list(COLUMNS)}"]
    p, c, r = (list(row[k]) for k in COLUMNS[:3])
    d = int(row["divergence_index"])
    if not p:
        return [f"row {i}: prompt_token_ids is empty; the first completion token is predicted from the prompt"]
    if c == r:
        return [f"row {i}: chosen and rejected token ids are identical; drop the pair (no preference)"]
    first = next((k for k, (x, y) in enumerate(zip(c, r)) if x != y), min(len(c), len(r)))
    if d != first:
        return [f"row {i}: divergence_index={d} but chosen and rejected first differ at completion token "
                f"{first}; recompute it with ttpa_ray.sample.tps.first_difference(chosen, rejected)"]
    return []


def pad_sequences(seqs: Sequence[Sequence[int]], pad: int, min_width: int = 0) -> tuple[Tensor, Tensor]:
    """Right-pad to ``(N, max(max len, min_width))`` ids and mask."""
    width = max(min_width, *(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def collate_pairs(rows: Sequence[Mapping[str, Any]], pad_token_id: int) -> PairBatch:
    """Rows of pairs.parquet -> :class:`PairBatch`. Raises ValueError listing every bad row."""
    if not rows:
        raise ValueError("collate_pairs got no rows; pass at least one pair")
    if pad_token_id < 0:
        raise ValueError(f"pad_token_id must be >= 0 (any valid token id), got {pad_token_id}")
    problems = [msg for i, row in enumerate(rows) for msg in _problems(i, row)]
    if problems:
        more = f"\n... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ValueError("bad preference pairs:\n" + "\n".join(problems[:10]) + more)
    prompts = [[int(t) for t in row["prompt_token_ids"]] for row in rows]
    chosen = [[int(t) for t in row["chosen_token_ids"]] for row in rows]
    rejected = [[int(t) for t in row["rejected_token_ids"]] for row in rows]
    ds = [int(row["divergence_index"]) for row in rows]
    prefix_ids, prefix_mask = pad_sequences([p + c[:d] for p, c, d in zip(prompts, chosen, ds)], pad_token_id)
    suffixes = [s[d:] for c, r, d in zip(chosen, rejected, ds) for s in (c, r)]
    # Width >= 2: every packed row keeps at least one (padding) column per continuation.
    suffix_ids, suffix_mask = pad_sequences(suffixes, pad_token_id, min_width=2)
    return PairBatch(prefix_ids, prefix_mask, torch.tensor([len(p) for p in prompts]), torch.tensor(ds),
                     suffix_ids, suffix_mask)


def _token_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """``(N, V)`` logits, ``(N, K)`` labels -> ``(N, K)`` log p, softmax in at least fp32."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return logits.gather(-1, labels) - logits.logsumexp(-1, keepdim=True)


def pair_layout(batch: PairBatch) -> tuple[Tensor, Tensor, Tensor]:
    """Position ids, ``segment`` and ``visible`` ``(B, L)`` of the packed rows
    ``[prefix | chosen[d:-1] | rejected[d:-1]]``, ``L = P + 2(S-1)``, as
    :func:`~ttpa_ray.train.packed_attention.packed_mask` reads them: prefix tokens are the main
    segment (0, causal within the prefix), the two suffixes continuations 1 and 2, each seeing
    the whole real prefix and causally itself, never the other suffix. Padding is segment -1:
    never a key; a padding query sees only itself (its output is unused)."""
    B, P = batch.prefix_ids.shape
    S1 = batch.suffix_ids.shape[1] - 1
    device = batch.prefix_ids.device
    prefix_lens = batch.prefix_mask.sum(-1)
    block = torch.cat([torch.zeros(P, dtype=torch.long, device=device),
                       torch.full((S1,), 1, device=device), torch.full((S1,), 2, device=device)])   # (L,)
    real = torch.cat([batch.prefix_mask, batch.suffix_mask[0::2, :-1], batch.suffix_mask[1::2, :-1]], 1).bool()
    suffix_pos = prefix_lens[:, None] + torch.arange(S1, device=device)
    pos = torch.cat([torch.arange(P, device=device).expand(B, P), suffix_pos, suffix_pos], 1)   # (B, L)
    segment = block.expand(B, -1).masked_fill(~real, -1)
    visible = torch.cat([torch.arange(1, P + 1, device=device).expand(B, P),
                         prefix_lens[:, None].expand(B, 2 * S1)], 1).masked_fill(~real, 0)
    return pos, segment, visible


def tail_weights(rows: Sequence[Mapping[str, Any]], decision_only: Sequence[str] = ()) -> Tensor | None:
    """(B,) weight of each pair's completion tokens after its divergence token: 0 for a pair
    whose ``branch_kind`` is in ``decision_only`` (scored on the divergence token alone), else 1;
    None when ``decision_only`` is empty (every token counts).

    >>> tail_weights([{"branch_kind": "call-or-not"}, {"branch_kind": "value"}, {}], ["call-or-not"]).tolist()
    [0.0, 1.0, 1.0]
    """
    if not decision_only:
        return None
    return torch.tensor([0.0 if r.get("branch_kind") in decision_only else 1.0 for r in rows], dtype=torch.float64)


def call_sides(rows: Sequence[Mapping[str, Any]], binary: bool) -> Tensor | None:
    """(B,) ``call_side`` of each pair (the sample stage's column: 1/2 the chosen/rejected side
    alone opens a call at the first token) for ``train.binary_decision``; None when it is off.

    >>> call_sides([{"call_side": 1}, {"call_side": 0}], True).tolist(), call_sides([{}], False)
    ([1, 0], None)
    """
    if not binary:
        return None
    missing = [i for i, r in enumerate(rows) if "call_side" not in r]
    if missing:
        raise ValueError(f"train.binary_decision needs the pairs' call_side column, which rows {missing[:5]} lack "
                         "(an older sample stage did not write it): redo the run with --from sample")
    return torch.tensor([int(r["call_side"]) for r in rows], dtype=torch.long)


def pair_logps(model: torch.nn.Module, batch: PairBatch, prefix_weight: float = 1.0,
               tail_weight: Tensor | None = None, call_side: Tensor | None = None) -> PairLogps:
    """Shared-prefix forward of a HF causal LM. ``prefix_weight`` weights the completion tokens
    before the divergence token (0: only tokens from the divergence on count); ``tail_weight``
    (B,), from :func:`tail_weights`, those after it (default 1); ``call_side`` (B,), from
    :func:`call_sides`, scores the first token of a call-or-answer pair as that binary decision
    (:func:`~ttpa_ray.train.losses.binary_decision`)."""
    decoder, lm_head = model.get_decoder(), model.get_output_embeddings()
    B, P = batch.prefix_ids.shape
    device = batch.prefix_ids.device
    prefix_lens = batch.prefix_mask.sum(-1)                                       # (B,)
    impl = check_packed_model(model, "pair_logps")
    rest_mask = batch.suffix_mask[:, 1:].bool()                                   # (2B, S-1)
    S1 = rest_mask.shape[1]
    if S1 < 1:
        raise ValueError("batch.suffix_ids must be at least 2 wide; build batches with collate_pairs")
    ids = torch.cat([batch.prefix_ids, batch.suffix_ids[0::2, :-1], batch.suffix_ids[1::2, :-1]], 1)   # (B, L)
    position_ids, segment, visible = pair_layout(batch)
    mask = packed_mask(segment, visible, impl, model.get_input_embeddings().weight.dtype)
    h = decoder(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                use_cache=False).last_hidden_state                               # (B, L, H)

    # Hidden states that predict completion tokens: shared chosen[:d] (d per row), the last prefix
    # position (predicts chosen[d] and rejected[d]), and suffix positions but the last.
    pos = position_ids[:, :P]
    shared = (pos >= batch.prompt_lens[:, None] - 1) & (pos < prefix_lens[:, None] - 1)    # (B, P)
    parts = [h[:, :P][shared], h[torch.arange(B, device=device), prefix_lens - 1]]
    next_ids = batch.prefix_ids.roll(-1, dims=1)                                          # (B, P)
    hs = h[:, P:].reshape(B, 2, S1, -1).flatten(0, 1)                                     # (2B, S-1, H) interleaved
    parts.append(hs[rest_mask])
    logits = lm_head(torch.cat(parts))                                            # (N, V)
    n_shared = parts[0].shape[0]
    lp_shared = _token_logps(logits[:n_shared], next_ids[shared][:, None])[:, 0]
    first_mask = batch.suffix_mask[:, 0].view(B, 2)
    lp_first = binary_decision(_token_logps(logits[n_shared:n_shared + B], batch.suffix_ids[:, 0].view(B, 2)),
                               call_side) * first_mask
    rows = torch.arange(2 * B, device=device)[:, None].expand_as(rest_mask)[rest_mask]
    lp_rest = _token_logps(logits[n_shared + B:], batch.suffix_ids[:, 1:][rest_mask][:, None])[:, 0]

    dtype = lp_first.dtype
    shared_sum = torch.zeros(B, dtype=dtype, device=device).index_add(
        0, torch.arange(B, device=device)[:, None].expand(B, P)[shared], lp_shared)
    rest_sum = torch.zeros(2 * B, dtype=dtype, device=device).index_add(0, rows, lp_rest).view(B, 2)
    tail = torch.ones(B, dtype=dtype, device=device) if tail_weight is None else tail_weight.to(device, dtype)
    total = prefix_weight * shared_sum[:, None] + lp_first + tail[:, None] * rest_sum     # (B, 2)
    tokens = (prefix_weight * batch.divergence_index[:, None].to(dtype) + first_mask.to(dtype)
              + tail[:, None] * batch.suffix_mask[:, 1:].sum(-1).view(B, 2).to(dtype))
    return PairLogps(total[:, 0], total[:, 1], tokens[:, 0], tokens[:, 1])


def naive_pair_logps(model: torch.nn.Module, batch: PairBatch, prefix_weight: float = 1.0,
                     call_side: Tensor | None = None) -> PairLogps:
    """Reference: ``2B`` full sequences (chosen rows, then rejected rows), full logits."""
    B = len(batch)
    prefix_lens, suffix_lens = batch.prefix_mask.sum(-1).tolist(), batch.suffix_mask.sum(-1).tolist()
    seqs, starts = [], []
    for side in (0, 1):
        for b in range(B):
            j = 2 * b + side
            seqs.append(batch.prefix_ids[b, :prefix_lens[b]].tolist() + batch.suffix_ids[j, :suffix_lens[j]].tolist())
            starts.append(int(batch.prompt_lens[b]))
    ids, mask = pad_sequences(seqs, pad=0)  # padding is masked out: any valid id will do
    device = batch.prefix_ids.device
    ids, mask, starts_t = ids.to(device), mask.to(device), torch.tensor(starts, device=device)
    completion = mask * (torch.arange(ids.shape[1], device=device) >= starts_t[:, None])  # (2B, T)
    logits = model(input_ids=ids, attention_mask=mask).logits                    # (2B, T, V)
    weights = divergence_weights(completion, batch.divergence_index.repeat(2), prefix_weight)
    logps = sequence_logps(logits[:, :-1], ids[:, 1:], completion[:, 1:], weights[:, 1:])
    tokens = weights.sum(-1).to(logps.dtype)
    if call_side is not None:  # swap each side's divergence-token log p for the binary decision's
        at = starts_t + batch.divergence_index.to(device).repeat(2)                      # (2B,) token index
        lp = torch.log_softmax(logits[torch.arange(2 * B, device=device), at - 1].double(), -1)
        first = lp.gather(-1, ids[torch.arange(2 * B, device=device), at][:, None])[:, 0].view(2, B).T  # (B, 2)
        logps = logps + (binary_decision(first, call_side) - first).T.flatten().to(logps.dtype)
    return PairLogps(logps[:B], logps[B:], tokens[:B], tokens[B:])
