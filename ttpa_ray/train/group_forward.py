"""Grouped shared-prefix forward: all preference pairs of one turn in one packed row.

The TTPA sampler gives one turn (one prompt) a chosen completion and ``K`` rejected ones,
stored as ``K`` pairs that repeat the prompt and the chosen side. :func:`pair_logps` runs the
prompt and the chosen completion once per pair, ``K`` times. :func:`group_logps` runs them
once per turn: the pairs with the same prompt and the same chosen completion form a *group*
(:func:`group_pairs`), packed as one row

    [ prompt + chosen[:M-1] | rejected_1[d_1:-1] | ... | rejected_K[d_K:-1] ]

where ``d_k`` is pair ``k``'s divergence index (``rejected_k[:d_k] == chosen[:d_k]``) and ``M``
is the number of completion tokens the main segment predicts: ``len(chosen)``, or one more
when some rejected continues past the whole chosen (``d_k == len(chosen)``). Under the packed
attention mask the main segment is causal; continuation ``k`` attends to
``prompt + chosen[:d_k]`` (the prefix it branched from) and causally to itself, never to
``chosen[d_k:]`` nor to another continuation. Its position ids restart at
``len(prompt) + d_k``. So each continuation sees exactly the context its own full sequence
``prompt + rejected_k`` would, and every log-prob equals the one of the naive forward. The mask
is built in :mod:`ttpa_ray.train.packed_attention` from ``GroupBatch.segment`` and ``.visible``:
a dense additive mask for sdpa/eager attention (CPUs), a FlexAttention block mask for
``flex_attention`` (GPUs: fused kernels that skip the masked blocks).

The LM head sees only hidden states that predict completion tokens: main positions from the
last prompt token on (position ``len(prompt) + j - 1`` predicts ``chosen[j]``, and
``rejected_k[d_k]`` where ``j == d_k``) and every continuation position (the last token of a
rejected predicts nothing, so it is never fed). Log-softmax is taken once per position, in at
least fp32. The per-token chosen log-probs are computed once per group and then summed per
pair, because a pair's chosen log-prob depends on its ``d_k`` through ``prefix_weight``
(completion tokens before ``d_k`` get ``prefix_weight``, from ``d_k`` on weight 1, on both
sides, as in :func:`pair_logps`). The result is a :class:`PairLogps` per expanded pair, in
the order of the input rows, equal to ``pair_logps(model, collate_pairs(rows))``: the loss is
still the sum over the ``K`` pairs, only the forward is shared (prompt and chosen computed
once for ``K`` rejected, and again one decoder call, so every weight is used once per
forward and ZeRO-3 can free its gradient as soon as the backward leaves its layer).

A batch of several groups is right-padded. Padding is never a key; a padding query attends
to itself only (its output is unused, and no softmax row is empty). The same limits as
:func:`pair_logps` apply: ``sdpa``, ``eager`` or ``flex_attention`` attention, no sliding-window
layers, no logit post-processing after the LM head.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ttpa_ray.train.losses import binary_decision
from ttpa_ray.train.packed_attention import check_packed_model, packed_mask
from ttpa_ray.train.pair_forward import PairLogps, call_sides, collate_pairs, pad_sequences, tail_weights

__all__ = ["GroupBatch", "collate_groups", "group_logps", "group_pairs", "turn_logps"]


@dataclass
class GroupBatch:
    """``G`` groups (packed rows, right-padded to ``L``) holding ``B`` pairs (input row order).

    Head positions are the ``N`` positions whose hidden state goes through the LM head;
    ``*_head`` index into them. Padded entries of ``*_head`` / ``*_ids`` are 0, masked out.
    """

    input_ids: Tensor        # (G, L) the packed rows, padded with pad_token_id
    position_ids: Tensor     # (G, L) restart at len(prompt) + d_k in continuation k
    segment: Tensor          # (G, L) 0 main, k >= 1 continuation k, -1 padding
    visible: Tensor          # (G, L) how many leading main tokens a query sees (0 for padding)
    head_pos: Tensor         # (N,) flat indices into (G * L)
    chosen_head: Tensor      # (G, C) head position predicting chosen[j]
    chosen_ids: Tensor       # (G, C) chosen[j]
    chosen_mask: Tensor      # (G, C) 1 for j < len(chosen)
    pair_group: Tensor       # (B,) the group (row) of each pair
    divergence_index: Tensor  # (B,) d, counted in completion tokens
    chosen_lens: Tensor      # (B,) len(chosen)
    rejected_lens: Tensor    # (B,) len(rejected)
    rejected_head: Tensor    # (B, R) head position predicting rejected[d + t]
    rejected_ids: Tensor     # (B, R) rejected[d + t]
    rejected_mask: Tensor    # (B, R) 1 for t < len(rejected) - d

    def __len__(self) -> int:
        return self.pair_group.shape[0]

    @property
    def num_groups(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> GroupBatch:
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device)
                                            for f in dataclasses.fields(self)})


def _validate(rows: Sequence[Mapping[str, Any]], who: str) -> None:
    """The checks of :func:`collate_pairs`, with its messages (it raises them)."""
    if not rows:
        raise ValueError(f"{who} got no rows; pass at least one pair")
    collate_pairs(rows, pad_token_id=0)


def _groups(rows: Sequence[Mapping[str, Any]]) -> list[list[int]]:
    groups: dict[tuple[tuple[int, ...], tuple[int, ...]], list[int]] = {}
    for i, row in enumerate(rows):
        key = (tuple(int(t) for t in row["prompt_token_ids"]), tuple(int(t) for t in row["chosen_token_ids"]))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def group_pairs(rows: Sequence[Mapping[str, Any]], validate: bool = True) -> list[list[int]]:
    """Indices of the rows of each group (same ``prompt_token_ids`` and ``chosen_token_ids``):
    groups in order of their first row, rows in input order. Raises ValueError like
    :func:`collate_pairs` for bad rows (``validate=False``: the training plan groups a whole
    table; each micro-batch is validated when it is collated)."""
    if validate:
        _validate(rows, "group_pairs")
    return _groups(rows)


def collate_groups(rows: Sequence[Mapping[str, Any]], pad_token_id: int) -> GroupBatch:
    """Rows of pairs.parquet -> :class:`GroupBatch`, one packed row per group. Raises
    ValueError listing every bad row (as :func:`collate_pairs` does)."""
    if not rows:
        raise ValueError("collate_groups got no rows; pass at least one pair")
    if pad_token_id < 0:
        raise ValueError(f"pad_token_id must be >= 0 (any valid token id), got {pad_token_id}")
    _validate(rows, "collate_groups")
    groups = _groups(rows)
    B = len(rows)
    seqs: list[list[int]] = []
    positions: list[list[int]] = []
    segments: list[list[int]] = []
    visibles: list[list[int]] = []
    head_pos_rows: list[list[int]] = []   # in-row indices, per group
    chosen_head: list[list[int]] = []
    chosen_ids: list[list[int]] = []
    pair_group = [0] * B
    rejected_head: list[list[int]] = [[] for _ in range(B)]
    rejected_ids: list[list[int]] = [[] for _ in range(B)]
    n_head = 0
    for g, members in enumerate(groups):
        prompt = [int(t) for t in rows[members[0]]["prompt_token_ids"]]
        chosen = [int(t) for t in rows[members[0]]["chosen_token_ids"]]
        rejected = {i: [int(t) for t in rows[i]["rejected_token_ids"]] for i in members}
        ds = {i: int(rows[i]["divergence_index"]) for i in members}
        lp, n_c = len(prompt), len(chosen)
        # Main positions lp-1 .. lp+M-2 predict completion tokens 0 .. M-1.
        m = max([n_c] + [ds[i] + 1 for i in members if len(rejected[i]) > ds[i]])
        main = prompt + chosen[:m - 1]
        seq, pos, seg, vis = list(main), list(range(len(main))), [0] * len(main), list(range(1, len(main) + 1))
        heads = list(range(lp - 1, len(main)))                       # m of them
        for k, i in enumerate(members, start=1):
            d, r = ds[i], rejected[i]
            pair_group[i] = g
            cont = r[d:-1]
            start = len(seq)
            seq += cont
            pos += range(lp + d, lp + d + len(cont))
            seg += [k] * len(cont)
            vis += [lp + d] * len(cont)
            # rejected[d] from the main position lp+d-1 (head offset d), the rest from the continuation.
            cont_head = n_head + len(heads)
            heads += range(start, start + len(cont))
            if len(r) > d:
                rejected_head[i] = [n_head + d] + list(range(cont_head, cont_head + len(cont)))
                rejected_ids[i] = r[d:]
        seqs.append(seq)
        positions.append(pos)
        segments.append(seg)
        visibles.append(vis)
        head_pos_rows.append(heads)
        chosen_head.append(list(range(n_head, n_head + n_c)))
        chosen_ids.append(chosen)
        n_head += len(heads)

    input_ids, row_mask = pad_sequences(seqs, pad_token_id)
    L = input_ids.shape[1]
    position_ids, _ = pad_sequences(positions, 0)
    segment, _ = pad_sequences(segments, 0)
    segment = segment.masked_fill(row_mask == 0, -1)
    visible, _ = pad_sequences(visibles, 0)
    head_pos = torch.tensor([g * L + i for g, heads in enumerate(head_pos_rows) for i in heads], dtype=torch.long)
    ch_head, ch_mask = pad_sequences(chosen_head, 0, min_width=1)
    ch_ids, _ = pad_sequences(chosen_ids, 0, min_width=1)
    rj_head, rj_mask = pad_sequences(rejected_head, 0, min_width=1)
    rj_ids, _ = pad_sequences(rejected_ids, 0, min_width=1)
    return GroupBatch(
        input_ids=input_ids, position_ids=position_ids, segment=segment, visible=visible, head_pos=head_pos,
        chosen_head=ch_head, chosen_ids=ch_ids, chosen_mask=ch_mask,
        pair_group=torch.tensor(pair_group, dtype=torch.long),
        divergence_index=torch.tensor([int(r["divergence_index"]) for r in rows], dtype=torch.long),
        chosen_lens=torch.tensor([len(r["chosen_token_ids"]) for r in rows], dtype=torch.long),
        rejected_lens=torch.tensor([len(r["rejected_token_ids"]) for r in rows], dtype=torch.long),
        rejected_head=rj_head, rejected_ids=rj_ids, rejected_mask=rj_mask)


def group_logps(model: torch.nn.Module, batch: GroupBatch, prefix_weight: float = 1.0,
                tail_weight: Tensor | None = None, call_side: Tensor | None = None,
                call_token_id: int | None = None) -> PairLogps:
    """Grouped shared-prefix forward of a HF causal LM: one :class:`PairLogps` entry per pair,
    in input row order, equal to :func:`pair_logps` on the same rows. ``prefix_weight`` weights
    the completion tokens before each pair's divergence token (0: only tokens from it on);
    ``tail_weight`` (B,), from :func:`~ttpa_ray.train.pair_forward.tail_weights`, those after it;
    ``call_side`` (B,), from :func:`~ttpa_ray.train.pair_forward.call_sides`: the binary decision;
    ``call_token_id``: also ``call_first``, log p(that token) where the completion starts (the
    call tag's first token: P(call) for ``train.decision_anchor``)."""
    impl = check_packed_model(model, "group_logps")
    decoder, lm_head = model.get_decoder(), model.get_output_embeddings()
    mask = packed_mask(batch.segment, batch.visible, impl, model.get_input_embeddings().weight.dtype)
    h = decoder(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids,
                use_cache=False).last_hidden_state                                # (G, L, H)
    logits = lm_head(h.flatten(0, 1)[batch.head_pos])                             # (N, V)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    lse = logits.logsumexp(-1)                                                    # (N,)

    def logp(head: Tensor, ids: Tensor, m: Tensor) -> Tensor:
        return (logits[head, ids] - lse[head]) * m.to(logits.dtype)

    lp_chosen = logp(batch.chosen_head, batch.chosen_ids, batch.chosen_mask)[batch.pair_group]   # (B, C)
    dtype = lp_chosen.dtype
    d = batch.divergence_index
    before = torch.arange(lp_chosen.shape[1], device=d.device)[None, :] < d[:, None]   # (B, C)
    at = torch.arange(lp_chosen.shape[1], device=d.device)[None, :] == d[:, None]     # the divergence token
    tail = torch.ones(len(d), dtype=dtype, device=d.device) if tail_weight is None else tail_weight.to(d.device, dtype)
    lp_rejected = logp(batch.rejected_head, batch.rejected_ids, batch.rejected_mask)   # (B, R): rejected[d:]
    shared = (lp_chosen * before).sum(-1)                     # chosen[:d], the same tokens as rejected[:d]
    first = binary_decision(torch.stack([(lp_chosen * at).sum(-1), lp_rejected[:, 0]], 1), call_side)   # (B, 2)
    chosen = prefix_weight * shared + first[:, 0] + tail * (lp_chosen * ~(before | at)).sum(-1)
    rejected = prefix_weight * shared + first[:, 1] + tail * lp_rejected[:, 1:].sum(-1)
    df = d.to(dtype)

    def tokens(lens: Tensor) -> Tensor:  # prefix_weight * d, the divergence token (if any), tail * the rest
        n = (lens - d).to(dtype)
        return prefix_weight * df + n.clamp(max=1) + tail * (n - 1).clamp(min=0)

    call_first = None
    if call_token_id is not None:
        head = batch.chosen_head[:, 0]   # each group's position that predicts its completion's first token
        call_first = (logits[head, call_token_id] - lse[head])[batch.pair_group]
    return PairLogps(chosen, rejected, tokens(batch.chosen_lens), tokens(batch.rejected_lens), lp_chosen[:, 0],
                     call_first)


def turn_logps(model: torch.nn.Module, rows: Sequence[Mapping[str, Any]], pad_token_id: int,
               prefix_weight: float = 1.0, decision_only: Sequence[str] = (), binary: bool = False,
               call_token_id: int | None = None) -> PairLogps:
    """:func:`group_logps` one group at a time (each group its own unpadded row), results in
    input row order. The train and reference stages both call this on the same groups, so a
    policy equal to its reference gives bit-identical log-probs (a margin of exactly 0)."""
    parts, order = [], []
    for idx in group_pairs(rows):
        group = [rows[i] for i in idx]
        parts.append(group_logps(model, collate_groups(group, pad_token_id).to(
            model.get_input_embeddings().weight.device), prefix_weight, tail_weights(group, decision_only),
            call_sides(group, binary), call_token_id))
        order += idx
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))

    def gather(name: str) -> Tensor:
        return torch.cat([getattr(p, name) for p in parts])[inverse.to(parts[0].chosen.device)]

    return PairLogps(gather("chosen"), gather("rejected"), gather("chosen_tokens"), gather("rejected_tokens"),
                     gather("chosen_first"), gather("call_first") if call_token_id is not None else None)
