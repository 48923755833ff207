"""The training loop, importable without Ray: rows in, optimizer steps out.

:func:`run_steps` runs from ``state["step"]`` to ``total`` optimizer steps on any
:class:`~ttpa_ray.train.policy.Policy` and an initialised process group (Ray Train's in the
``sft`` and ``train`` stages, a one-process gloo group in tests and ``bench/train.py``). Each
rank takes its share of every global batch (:mod:`ttpa_ray.train.plan`) and calls the
objective on each micro-batch: :class:`DpoObjective` (the shared-prefix forward of
:mod:`ttpa_ray.train.pair_forward` and the DPO-family loss of :mod:`ttpa_ray.train.losses`)
or :class:`~ttpa_ray.sft.objective.SftObjective`.

After each step the loop calls its hooks in order, each with the new state (``step``,
``history`` of metric rows, and whatever a hook adds). The hooks here: TensorBoard scalars,
a progress line, the live-tensor memory profile of one step, and a fault drill; the train
stage adds its checkpoint report.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from ttpa_ray.config import TrainConfig
from ttpa_ray.train import plan
from ttpa_ray.train.losses import (balanced_decision_weights, decision_anchor_loss, decision_loss, dpo_loss,
                                   sft_loss)
from ttpa_ray.train.memory_profile import TensorMemoryProfile
from ttpa_ray.train.group_forward import group_pairs, turn_logps
from ttpa_ray.train.pair_forward import call_sides, collate_pairs, pair_logps, tail_weights

log = logging.getLogger(__name__)

COLUMNS = ["id", "prompt_token_ids", "chosen_token_ids", "rejected_token_ids", "divergence_index",
           "ref_chosen_logps", "ref_rejected_logps", "weight"]

Hook = Callable[[dict[str, Any]], None]


def prepare_pairs(pairs: Path, cfg: TrainConfig) -> tuple[pa.Table, dict[str, int]]:
    """The reference stage's pairs as training reads them: pairs with a reference error left
    out (counted), and with ``train.reject_answers: false`` those whose rejected side is a text
    answer against a chosen call (counted), a ``weight`` per pair (``train.pair_weights``),
    :data:`COLUMNS` only (and ``branch_kind`` with ``train.decision_only``)."""
    table = pq.read_table(pairs)
    if table.num_rows == 0:
        raise ValueError(f"{pairs} has no pairs: nothing to train on (see the sample stage's manifest)")
    missing = [c for c in COLUMNS[:-1] if c not in table.column_names]
    if missing:
        raise ValueError(f"{pairs} lacks columns {missing}: it must come from the reference stage (ttpa run ... "
                         "--from reference)")
    if cfg.decision_only and "branch_kind" not in table.column_names:
        raise ValueError(f"train.decision_only {cfg.decision_only} needs the pairs' branch_kind column, which {pairs} "
                         "lacks (the sample stage writes it); set train.decision_only: [] for these pairs")
    if cfg.binary_decision and "call_side" not in table.column_names:
        raise ValueError(f"train.binary_decision needs the pairs' call_side column, which {pairs} lacks (an older "
                         "sample stage): redo it with --from sample, or set train.binary_decision: false")
    if cfg.decision_anchor and "ref_call_first" not in table.column_names:
        raise ValueError(f"train.decision_anchor needs the reference's P(call) per turn (ref_call_first), which {pairs} "
                         "lacks (a reference stage before it was added, or packing: pair): redo it with --from reference")
    if not cfg.reject_answers and "call_side" not in table.column_names:
        raise ValueError(f"train.reject_answers: false needs the pairs' call_side column, which {pairs} lacks (an older "
                         "sample stage): redo it with --from sample, or set train.reject_answers: true")
    errors = table.column("ref_error").to_pylist() if "ref_error" in table.column_names else [None] * table.num_rows
    table = table.filter(pa.array([e is None for e in errors]))
    with_ref = table.num_rows
    if not cfg.reject_answers:
        table = table.filter(pa.array([s != 1 for s in table.column("call_side").to_pylist()]))
    if cfg.pair_weights == "score_margin":
        margin = [max(c - r, 0.0) for c, r in zip(table.column("chosen_score").to_pylist(),
                                                   table.column("rejected_score").to_pylist())]
        mean = sum(margin) / max(1, len(margin)) or 1.0
        weights = [m / mean for m in margin]
    else:
        weights = [1.0] * table.num_rows
    table = table.append_column("weight", pa.array(weights, pa.float64()))
    keep = (COLUMNS + (["branch_kind"] if cfg.decision_only else []) + (["call_side"] if cfg.binary_decision else [])
            + (["decision_weight"] if cfg.decision_loss else [])
            + (["ref_call_first", "call_token_id"] if cfg.decision_anchor else []))
    if cfg.decision_loss:
        table = table.append_column("decision_weight", pa.array(turn_decision_weights(table, cfg.decision_balance),
                                                                 pa.float64()))
    counts = {"pairs": table.num_rows, "pairs_with_ref_error": len(errors) - with_ref}
    if not cfg.reject_answers:
        counts["pairs_answer_rejected_dropped"] = with_ref - table.num_rows
    if table.num_rows == 0:
        raise ValueError(f"{pairs}: no pairs left to train on ({counts}); see the sample and reference manifests")
    return table.select(keep), counts


def turn_decision_weights(table: pa.Table, balance: bool) -> list[float]:
    """Per pair, its turn's weight in ``train.decision_loss``: balanced over the turns' first
    chosen tokens (:func:`~ttpa_ray.train.losses.balanced_decision_weights`), or 1."""
    if not balance:
        return [1.0] * table.num_rows
    turns = group_pairs(table.select(["prompt_token_ids", "chosen_token_ids"]).to_pylist(), validate=False)
    chosen = table.column("chosen_token_ids").to_pylist()
    per_turn = balanced_decision_weights([chosen[idx[0]][0] for idx in turns])
    weights = [1.0] * table.num_rows
    for idx, w in zip(turns, per_turn):
        for i in idx:
            weights[i] = w
    return weights


class StepMetrics:
    """Per-step sums of an objective's metrics over this rank's micro-batches, all-reduced
    into the step's row (the objective turns sums into means), with peak memory."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.peak = torch.zeros(2, dtype=torch.float64)  # this rank's RSS now and at its peak (MB)

    def add(self, sums: dict[str, float]) -> None:
        for k, v in sums.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)

    def reduce(self, objective: Objective) -> dict[str, float]:
        import resource

        import psutil

        keys = sorted(self.sums)  # every rank adds the same keys
        s = torch.tensor([self.sums[k] for k in keys], dtype=torch.float64)
        self.peak[0] = psutil.Process().memory_info().rss / 2**20
        self.peak[1] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KB on Linux
        if dist.is_initialized():
            dist.all_reduce(s)
            dist.all_reduce(self.peak, op=dist.ReduceOp.MAX)
        return {**objective.metrics(dict(zip(keys, s.tolist()))),
                "rss_mb_max_rank": round(self.peak[0].item(), 1), "peak_rss_mb_max_rank": round(self.peak[1].item(), 1)}


class Objective(Protocol):
    """What :func:`run_steps` optimises: :class:`DpoObjective` (train) or
    :class:`~ttpa_ray.sft.objective.SftObjective` (sft)."""

    columns: tuple[str, ...]  # the row columns it reads
    unit: str                 # what a row is, for messages

    def __call__(self, policy: Any, rows: list[dict[str, Any]], cfg: Any, pad_id: int
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        """One micro-batch: the loss to backpropagate and the sums behind the step's metrics."""

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """The step's metric row from the sums over all ranks."""

    def progress(self, row: dict[str, Any]) -> str:
        """The objective's part of the progress line."""

    def units(self, rows: pa.Table, cfg: Any) -> list[list[int]]:
        """The rows that travel together (the plan shuffles and batches these units)."""


def pair_loss(policy: Any, rows: list[dict[str, Any]], cfg: TrainConfig, pad_id: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, dict[str, float]]:
    """(per-pair losses (B,), chosen rewards (B,), rejected rewards (B,), the objective to
    backpropagate, tokens, extra metric sums) of one micro-batch of pairs."""
    if cfg.packing == "turn":
        lp = turn_logps(policy.module, rows, pad_id, prefix_weight=cfg.prefix_weight, decision_only=cfg.decision_only,
                        binary=cfg.binary_decision,
                        call_token_id=int(rows[0]["call_token_id"]) if cfg.decision_anchor else None)
    else:
        lp = pair_logps(policy.module, collate_pairs(rows, pad_token_id=pad_id).to(policy.device),
                        prefix_weight=cfg.prefix_weight, tail_weight=tail_weights(rows, cfg.decision_only),
                        call_side=call_sides(rows, cfg.binary_decision))
    ref_c = torch.tensor([r["ref_chosen_logps"] for r in rows], dtype=lp.chosen.dtype, device=policy.device)
    ref_r = torch.tensor([r["ref_rejected_logps"] for r in rows], dtype=lp.chosen.dtype, device=policy.device)
    pc, pr = lp.chosen, lp.rejected
    if cfg.loss_type == "ipo":  # IPO on per-token means (as TRL)
        pc, pr = lp.mean()
        ref_c, ref_r = ref_c / lp.chosen_tokens.clamp(min=1), ref_r / lp.rejected_tokens.clamp(min=1)
    weights = torch.tensor([r["weight"] for r in rows], dtype=pc.dtype, device=policy.device)
    losses, rc, rr = dpo_loss(pc, pr, ref_c, ref_r, beta=cfg.beta, loss_type=cfg.loss_type,
                              label_smoothing=cfg.label_smoothing, weights=weights)
    tokens = sum(len(r["prompt_token_ids"]) + len(r["chosen_token_ids"]) + len(r["rejected_token_ids"])
                 for r in rows)
    objective = losses.mean()
    if cfg.sft_weight:
        objective = objective + cfg.sft_weight * sft_loss(lp.chosen, lp.chosen_tokens)
    extra: dict[str, float] = {}
    if cfg.decision_loss or cfg.decision_anchor:
        turns = group_pairs(rows, validate=False)
        turn = torch.empty(len(rows), dtype=torch.long)
        for t, idx in enumerate(turns):
            turn[idx] = t
        extra["turns"] = len(turns)
    if cfg.decision_anchor:
        ref = torch.tensor([r["ref_call_first"] for r in rows], dtype=lp.call_first.dtype, device=policy.device)
        anchor = decision_anchor_loss(lp.call_first, ref, turn.to(policy.device))
        objective = objective + cfg.decision_anchor * anchor
        extra["kl"] = anchor.detach().item() * len(turns)
    if cfg.decision_loss:
        weight = torch.tensor([r["decision_weight"] for r in rows], device=policy.device)
        objective = objective + cfg.decision_loss * decision_loss(lp.chosen_first, turn.to(policy.device), weight)
        first = lp.chosen_first.detach()
        extra["dec"] = -sum(first[idx[0]].item() for idx in turns)
    return losses, rc, rr, objective, tokens, extra


class DpoObjective:
    """DPO-family loss (+ ``sft_weight`` NLL) on pairs with their reference log-probs. A pair
    is accurate when its chosen reward is strictly above its rejected one: a tie is not."""

    columns = tuple(COLUMNS)
    unit = "pairs"

    @staticmethod
    def units(rows: pa.Table, cfg: Any) -> list[list[int]]:
        """``packing: turn``: the pairs of each turn (same prompt and chosen side); else each pair."""
        if cfg.packing != "turn":
            return [[i] for i in range(rows.num_rows)]
        return group_pairs(rows.select(["prompt_token_ids", "chosen_token_ids"]).to_pylist(), validate=False)

    def __call__(self, policy: Any, rows: list[dict[str, Any]], cfg: Any, pad_id: int
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        losses, rc, rr, objective, tokens, extra = pair_loss(policy, rows, cfg, pad_id)
        return objective, {"loss": losses.detach().sum().item(), "r_c": rc.sum().item(), "r_r": rr.sum().item(),
                           "acc": (rc > rr).float().sum().item(), "rows": len(losses), "tokens": tokens, **extra}

    @staticmethod
    def metrics(s: dict[str, float]) -> dict[str, float]:
        n = max(s["rows"], 1.0)
        return {"loss": s["loss"] / n, "rewards/chosen": s["r_c"] / n, "rewards/rejected": s["r_r"] / n,
                "rewards/margins": (s["r_c"] - s["r_r"]) / n, "rewards/accuracies": s["acc"] / n,
                "pairs": int(s["rows"]), "tokens": int(s["tokens"])} | (
                    {"decision_nll": s["dec"] / max(s["turns"], 1.0)} if "dec" in s else {}) | (
                    {"decision_kl": s["kl"] / max(s["turns"], 1.0)} if "kl" in s else {})

    @staticmethod
    def progress(row: dict[str, Any]) -> str:
        return f"loss {row['loss']:.4f} margin {row['rewards/margins']:+.4f} acc {row['rewards/accuracies']:.2f}"


def run_steps(policy: Any, rows: pa.Table, cfg: Any, *, seed: int, rank: int, world: int, total: int,
              pad_id: int, state: dict[str, Any], hooks: Sequence[Hook] = (),
              objective: Objective | None = None) -> dict[str, Any]:
    """The loop from ``state["step"]`` to ``total`` optimizer steps of ``objective`` (default
    DPO on pairs); ``hooks`` run after every step, in order. Needs only an initialised process
    group."""
    objective = objective or DpoObjective()
    units = objective.units(rows, cfg)
    size = plan.global_batch_size(cfg.micro_batch_size, cfg.gradient_accumulation_steps, world)
    per_epoch = plan.steps_per_epoch(len(units), size)
    policy.train()
    while state["step"] < total:
        step = state["step"]
        epoch, in_epoch = divmod(step, per_epoch)
        batch = plan.global_batch(plan.epoch_order(len(units), seed, epoch), in_epoch, size)
        metrics, t0, lr = StepMetrics(), time.perf_counter(), policy.lr
        for micro in plan.rank_micro_batches(batch, rank, world, cfg.micro_batch_size):
            rows_micro = [i for u in micro for i in units[u]]
            loss, sums = objective(policy, rows.take(rows_micro).to_pylist(), cfg, pad_id)
            policy.backward(loss)
            policy.step()
            metrics.add(sums)
        row = {"step": step + 1, "epoch": epoch, **metrics.reduce(objective), "grad_norm": policy.grad_norm,
               "lr": lr}
        row["tokens_per_s"] = round(row["tokens"] / (time.perf_counter() - t0), 1)
        state = state | {"step": step + 1, "history": state["history"] + [row]}
        for hook in hooks:
            hook(state)
    return state


# --------------------------------------------------------------------------- hooks


class TensorBoardHook:
    """Every numeric metric of a step as a TensorBoard scalar (rank 0)."""

    def __init__(self, log_dir: str):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=log_dir)

    def __call__(self, state: dict[str, Any]) -> None:
        for k, v in state["history"][-1].items():
            if isinstance(v, (int, float)) and k != "step":
                self.writer.add_scalar(k, v, state["step"])

    def close(self) -> None:
        self.writer.close()


class ProgressHook:
    """One line per step (at most every ``every_s`` seconds) on rank 0: readable in the
    driver's terminal and in ``ray job logs`` alike."""

    def __init__(self, total: int, done: int, every_s: float = 5.0, stage: str = "train",
                 objective: Objective | None = None):
        self.total, self.done, self.every_s = total, done, every_s
        self.stage, self.objective = stage, objective or DpoObjective()
        self.t0 = self.last = time.perf_counter()
        self.start = done

    def __call__(self, state: dict[str, Any]) -> None:
        row = state["history"][-1]
        self.done = row["step"]
        now = time.perf_counter()
        if now - self.last < self.every_s and self.done not in (self.start + 1, self.total):
            return
        self.last = now
        rate = (now - self.t0) / max(1, self.done - self.start)
        print(f"{self.stage}: step {self.done}/{self.total} ({100 * self.done // self.total}%) "
              f"{self.objective.progress(row)} lr {row['lr']:.2e} "
              f"| {rate:.2f} s/step, eta {rate * (self.total - self.done):.0f} s", flush=True)


class MemoryStepProfile:
    """Peak bytes of live tensors during optimizer step ``step`` on every rank
    (:mod:`ttpa_ray.train.memory_profile`), added to the state as ``peak_tensor_mb_per_rank``
    and ``step_start_tensor_mb_per_rank``. ``stop`` goes first among the hooks and ``start``
    last, so no other hook's work is counted."""

    def __init__(self, step: int, device: str, world: int):
        self.step, self.world = step, world
        self.memory = TensorMemoryProfile(device)
        if step == 1:
            self.memory.start()

    def stop(self, state: dict[str, Any]) -> None:
        if state["step"] != self.step:
            return
        peaks: list[Any] = [None] * self.world
        peak = round(self.memory.stop(), 1)
        start = None if self.memory.start_mb is None else round(self.memory.start_mb, 1)
        dist.all_gather_object(peaks, (peak, start))
        state["peak_tensor_mb_per_rank"] = [p for p, _ in peaks]
        state["step_start_tensor_mb_per_rank"] = [s for _, s in peaks]

    def start(self, state: dict[str, Any]) -> None:
        if state["step"] == self.step - 1:  # the next step only
            self.memory.start()


def kill_after_step(step: int) -> Hook:
    """Fault drill: SIGKILL this process right after optimizer step ``step``."""
    def hook(state: dict[str, Any]) -> None:
        if state["step"] == step:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook
