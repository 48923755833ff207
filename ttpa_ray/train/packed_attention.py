"""Attention of packed rows: the one home of the mask that turn packing
(:mod:`ttpa_ray.train.group_forward`) and pair packing (:mod:`ttpa_ray.train.pair_forward`)
give the decoder, in the form the model's attention implementation takes.

A batch of packed rows is described by two ``(G, L)`` tensors: ``segment`` (0 main, ``k >= 1``
continuation ``k``, -1 padding) and ``visible`` (how many leading main tokens a query sees; 0
for padding). Query ``q`` attends to key ``j`` when ``j`` is one of its first ``visible[q]``
main tokens, or an earlier-or-same token of its own continuation; padding is never a key, and
every query sees itself (no softmax row is empty; a padding query's output is never used).
:func:`mask_mod` is that rule, written once and used two ways:

- **dense** (``sdpa`` or ``eager`` attention): evaluated on broadcast index tensors into an
  additive ``(G, 1, L, L)`` float mask. The CPU path. On CUDA, sdpa with an arbitrary dense mask
  cannot use its flash kernel (which takes no mask) and reads the whole ``L x L`` mask.
- **flex** (``flex_attention``): a FlexAttention ``BlockMask`` built from the same rule, which
  transformers hands to ``torch.nn.attention.flex_attention`` (compiled): fused kernels forward
  and backward that skip the blocks where no key is visible (a continuation against
  ``chosen[d:]`` and against the other continuations). The GPU path.

Which one runs is the model's ``config._attn_implementation``, set when the train and
reference stages load it from ``train.attention`` (:func:`attention_implementation`: ``auto``
is flex on GPUs and the dense default on CPUs). Nothing falls back silently: an implementation
that cannot take a packed mask, FlexAttention on a torch without it, and ``flex`` on CPUs
(torch has no FlexAttention backward there) are errors that name the fix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache

__all__ = ["FLEX", "attention_implementation", "check_packed_model", "mask_mod", "packed_mask", "require_flex"]

FLEX = "flex_attention"
DENSE = ("sdpa", "eager")
MODES = ("auto", "dense", "flex")
# FlexAttention with rows of any length (not only multiples of its 128-token blocks).
FLEX_MIN_TORCH = "2.6"

MaskMod = Callable[[Tensor, Tensor | None, Tensor, Tensor], Tensor]


def require_flex() -> None:
    """Raise RuntimeError, naming the fix, if this torch lacks the FlexAttention the flex path needs."""
    if torch.__version__ < FLEX_MIN_TORCH:
        raise RuntimeError(f"the flex attention path for packed rows needs torch >= {FLEX_MIN_TORCH} (FlexAttention "
                           f"with rows of any length); this is torch {torch.__version__}: upgrade torch, or set "
                           "train.attention: dense (sdpa with a dense 4-D mask)")


def attention_implementation(mode: str, use_gpu: bool) -> str | None:
    """``train.attention`` -> the ``attn_implementation`` to load the policy and the reference
    with: ``"flex_attention"`` for ``flex``, and for ``auto`` on GPUs; None (transformers'
    default: sdpa where the model has it, else eager, both dense) for ``dense``, and for ``auto``
    on CPUs.

    >>> attention_implementation("auto", use_gpu=False), attention_implementation("dense", use_gpu=True)
    (None, None)
    """
    if mode not in MODES:
        raise ValueError(f"train.attention must be one of {list(MODES)}; got {mode!r}")
    if mode == "dense" or (mode == "auto" and not use_gpu):
        return None
    if not use_gpu:
        raise ValueError("train.attention: flex needs GPUs (torch's FlexAttention has no backward on CPUs); set "
                         "train.attention: auto (dense on CPUs) or dense")
    require_flex()
    return FLEX


def check_packed_model(model: torch.nn.Module, who: str) -> str:
    """The model's attention implementation, if a packed mask can replace its own (else
    NotImplementedError naming the fix): sdpa or eager (dense mask) or flex_attention (block
    mask), and no sliding-window layers (the packed mask would replace their window)."""
    if any(DynamicCache(config=model.config).is_sliding):
        raise NotImplementedError(f"{who} does not support sliding-window attention layers (its packed mask "
                                  "replaces theirs); use naive_pair_logps for this model")
    impl = model.config._attn_implementation
    if impl not in (*DENSE, FLEX):
        raise NotImplementedError(f"{who} needs attention that takes a packed mask: sdpa or eager (a dense 4-D mask) "
                                  f"or flex_attention (a block mask), not {impl!r}; load the model with "
                                  "attn_implementation='sdpa' (train.attention: dense) or 'flex_attention' "
                                  "(train.attention: flex, GPUs)")
    return impl


def mask_mod(segment: Tensor, visible: Tensor) -> MaskMod:
    """The packed rule as a FlexAttention ``mask_mod(b, h, q, kv) -> bool``; ``b``, ``q``, ``kv``
    may be scalars (as FlexAttention calls it) or broadcast index tensors (the dense mask)."""

    def mod(b: Tensor, h: Tensor | None, q: Tensor, kv: Tensor) -> Tensor:
        seg_q, seg_kv = segment[b, q], segment[b, kv]
        main_key = (seg_kv == 0) & (kv < visible[b, q])        # one of the main tokens it sees
        own = (seg_q >= 1) & (seg_q == seg_kv) & (kv <= q)      # its own continuation, causally
        return main_key | own | (q == kv)

    return mod


def packed_mask(segment: Tensor, visible: Tensor, implementation: str, dtype: torch.dtype) -> Any:
    """The attention mask of packed rows for ``implementation`` (from :func:`check_packed_model`):
    a FlexAttention ``BlockMask`` for ``flex_attention``, else the additive ``(G, 1, L, L)``
    mask in ``dtype`` (0 where a key is visible, the dtype's minimum elsewhere)."""
    G, L = segment.shape
    rule = mask_mod(segment, visible)
    if implementation == FLEX:
        require_flex()
        from torch.nn.attention.flex_attention import create_block_mask

        return create_block_mask(rule, B=G, H=None, Q_LEN=L, KV_LEN=L, device=segment.device)
    idx = torch.arange(L, device=segment.device)
    b = torch.arange(G, device=segment.device)[:, None, None]
    allowed = rule(b, None, idx[None, :, None], idx[None, None, :])              # (G, L, L) [query, key]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment.device).masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]
