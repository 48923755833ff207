"""DPO-family losses as pure tensor functions (no trainer, no distributed code).

Shapes: ``(B,)`` per pair unless noted. Log-probs are summed over completion tokens (for
IPO pass per-token averages, as TRL does: its IPO loss is length-normalised).

- ``sigmoid`` (DPO, Rafailov et al.): ``-logσ(βΔ)``; with ``label_smoothing`` ε it is
  conservative DPO (cDPO): ``-(1-ε)·logσ(βΔ) - ε·logσ(-βΔ)``;
- ``ipo`` (Azar et al., eq. 17): ``(Δ - 1/(2β))²``;

where Δ = (π_c - π_r) - (ref_c - ref_r). Rewards are ``β·(π - ref)``, detached. ``weights``
scale each pair's loss (e.g. by the ESM score margin of the pair). :func:`sft_loss` is the
mean NLL of the chosen tokens, added with a weight (TRL's ``loss_type=["sigmoid", "sft"]``,
RPO): it also teaches the chosen text itself, e.g. the tool-call format, which a pair's
shared prefix does not. :func:`decision_loss` teaches each turn's first token, the decision to
call or to answer, with its own weight.

>>> import torch
>>> z = torch.zeros(2)
>>> losses, rc, rr = dpo_loss(z, z, z, z, beta=0.1)
>>> [round(x, 4) for x in losses.tolist()]   # policy = reference: ln 2
[0.6931, 0.6931]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
import torch.nn.functional as F


def _sigmoid(delta: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    return -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)


def _ipo(delta: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    return (delta - 1 / (2 * beta)) ** 2


LOSSES: dict[str, Callable[[torch.Tensor, float, float], torch.Tensor]] = {
    "sigmoid": _sigmoid,
    "ipo": _ipo,
}


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0, weights: torch.Tensor | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses, chosen rewards, rejected rewards (all ``(B,)``)."""
    fn = LOSSES.get(loss_type)
    if fn is None:
        raise ValueError(f"loss_type {loss_type!r} is not one of {sorted(LOSSES)}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    losses = fn(chosen_logratios - rejected_logratios, beta, label_smoothing)
    if weights is not None:
        losses = losses * weights
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def sft_loss(chosen_logps: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood per chosen token over the batch (a scalar): summed chosen
    log-probs ``(B,)`` over their token counts ``(B,)``.

    >>> round(sft_loss(torch.tensor([-2.0, -6.0]), torch.tensor([1.0, 3.0])).item(), 4)
    2.0
    """
    return -chosen_logps.sum() / chosen_tokens.sum().clamp(min=1.0)


def decision_loss(chosen_first: torch.Tensor, turn: torch.Tensor, weight: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Mean over turns of -log p(the chosen side's first completion token): the turn's
    call-or-answer decision (``<tool_call``'s first token, or a text answer's first word),
    taught directly on every turn, call turns and no-call turns alike. ``chosen_first`` ``(B,)``
    per pair; ``turn`` ``(B,)`` the turn of each pair (pairs of a turn share their chosen side,
    so each turn counts once, however many pairs it has); ``weight`` ``(B,)`` each pair's turn
    weight (:func:`balanced_decision_weights`), multiplying its turn's term.

    >>> round(decision_loss(torch.log(torch.tensor([0.5, 0.5, 0.25])), torch.tensor([0, 0, 1])).item(), 4)
    1.0397
    """
    counts = torch.bincount(turn).to(chosen_first.dtype)
    w = 1.0 if weight is None else weight.to(chosen_first.dtype)
    return -(w * chosen_first / counts[turn]).sum() / (counts > 0).sum()


def decision_anchor_loss(call_first: torch.Tensor, ref_call_first: torch.Tensor, turn: torch.Tensor
                         ) -> torch.Tensor:
    """Mean over turns of KL(Bernoulli(q) || Bernoulli(p)): q the reference's P(call) on the
    turn, p the policy's, both as log-probs of the call tag's first token where the completion
    starts (``(B,)`` per pair; pairs of a turn share it, so each turn counts once). Zero while
    the policy decides as the reference did; it holds the level of P(call) on the training
    turns, which a preference step otherwise moves with its pairs' balance of sides.

    >>> lq = torch.log(torch.tensor([0.5, 0.5, 0.2], dtype=torch.float64))
    >>> round(decision_anchor_loss(lq, lq, torch.tensor([0, 0, 1])).item(), 6)
    0.0
    >>> lp = torch.log(torch.tensor([0.25, 0.25, 0.2], dtype=torch.float64))   # turn 0 moved: 0.5 -> 0.25
    >>> round(decision_anchor_loss(lp, lq, torch.tensor([0, 0, 1])).item(), 4)   # (0.5 ln 2 + 0.5 ln(2/3)) / 2
    0.0719
    """
    q = ref_call_first.to(call_first.dtype).exp()
    kl = (q * (ref_call_first.to(call_first.dtype) - call_first)
          + (1 - q) * (log1mexp(ref_call_first.to(call_first.dtype)) - log1mexp(call_first)))
    counts = torch.bincount(turn).to(call_first.dtype)
    return (kl / counts[turn]).sum() / (counts > 0).sum()


def balanced_decision_weights(first_tokens: list[int]) -> list[float]:
    """Per turn, given each turn's first chosen token (its decision: the call tag's first token,
    or a text answer's first word): weights under which every distinct decision weighs the same
    in total, mean 1 over turns. With 11 call turns and 6 no-call turns an unweighted decision
    loss pulls every prompt towards calling (the majority), which a small model, unable to tell
    the prompts apart well, does on irrelevant prompts too.

    >>> [round(w, 4) for w in balanced_decision_weights([7, 7, 7, 9])]
    [0.6667, 0.6667, 0.6667, 2.0]
    """
    counts = Counter(first_tokens)
    return [len(first_tokens) / (len(counts) * counts[t]) for t in first_tokens]


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                   token_weights: torch.Tensor | None = None, average: bool = False) -> torch.Tensor:
    """Sum (or mean) of log p(label) over masked positions.

    logits ``(B, T, V)`` predict ``labels`` ``(B, T)`` at the same index (already shifted);
    ``mask`` ``(B, T)`` marks completion tokens; ``token_weights`` ``(B, T)`` optionally
    reweights tokens (e.g. 0 before the divergence token of a TPS pair, 1 from it on).
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # log-softmax in at least fp32
    logps = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    w = mask.to(logps.dtype)
    if token_weights is not None:
        w = w * token_weights.to(logps.dtype)
    total = (logps * w).sum(-1)
    return total / w.sum(-1).clamp(min=1.0) if average else total


def divergence_weights(mask: torch.Tensor, divergence_index: torch.Tensor, prefix_weight: float = 0.0
                       ) -> torch.Tensor:
    """``(B, T)`` weights: ``prefix_weight`` on completion tokens before each row's divergence
    token, 1 from it on. ``divergence_index`` ``(B,)`` counts completion tokens (0 = first)."""
    pos = mask.long().cumsum(-1) - 1  # index of each token within its completion
    w = torch.where(pos >= divergence_index.unsqueeze(-1), 1.0, prefix_weight)
    return w * mask


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for log-probs ``x < 0``, accurate at both ends (Mächler 2012).

    >>> [round(v, 4) for v in log1mexp(torch.tensor([-1e-3, -0.5, -20.0], dtype=torch.float64)).tolist()]
    [-6.9083, -0.9328, -0.0]
    """
    x = x.clamp(max=-1e-12)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def binary_decision(first: torch.Tensor, call_side: torch.Tensor | None) -> torch.Tensor:
    """``first`` ``(B, 2)``: log p of each pair's (chosen, rejected) divergence token, both
    predicted from the same position. Where ``call_side`` is 1 (2), the chosen (rejected) token
    opens a call and the other side's entry becomes log(1 - p(that call token)): the first token
    scored as the binary decision call vs answer, not as one particular first word (a rejected
    "Here" in a call turn would otherwise push "Here" down wherever it is the right answer).

    >>> import math
    >>> lp = torch.log(torch.tensor([[0.6, 0.1], [0.2, 0.3], [0.5, 0.4]], dtype=torch.float64))
    >>> out = binary_decision(lp, torch.tensor([1, 2, 0])).exp()
    >>> [[round(v, 4) for v in row] for row in out.tolist()]
    [[0.6, 0.4], [0.7, 0.3], [0.5, 0.4]]
    """
    if call_side is None:
        return first
    side = call_side.to(first.device)[:, None]
    return torch.where(side == 1, torch.stack([first[:, 0], log1mexp(first[:, 0])], 1),
                       torch.where(side == 2, torch.stack([log1mexp(first[:, 1]), first[:, 1]], 1), first))

