"""The training plan as pure functions: data order, batches per rank, LR schedule, DeepSpeed
config. No Ray, no DeepSpeed imports: all of it is testable in a unit test.

Data order does not depend on the number of workers: every epoch is a seeded permutation of
the pairs, cut into global batches of ``micro_batch_size * gradient_accumulation_steps *
num_workers`` pairs; rank ``r`` of ``W`` takes every W-th pair of a global batch. So 1 worker
and N workers see the same global batches (same loss curve), and a resumed run knows exactly
where it stopped from the optimizer step alone.

>>> order = epoch_order(6, seed=0, epoch=0)
>>> sorted(order) == list(range(6))
True
>>> rank_micro_batches([10, 11, 12, 13], rank=1, world=2, micro=1)
[[11], [13]]
>>> [round(lr_factor(s, "linear", warmup=2, total=6), 2) for s in range(6)]
[0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def global_batch_size(micro: int, accumulation: int, world: int) -> int:
    return micro * accumulation * world


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """Seeded permutation of ``range(n)`` for one epoch (the same on every rank)."""
    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


def steps_per_epoch(n_pairs: int, global_batch: int) -> int:
    """Full global batches per epoch; the remainder (< one batch) is left out of that epoch."""
    if n_pairs < global_batch:
        raise ValueError(f"{n_pairs} pairs is fewer than one global batch of {global_batch} "
                         "(micro_batch_size x gradient_accumulation_steps x num_workers): lower those or make "
                         "more pairs")
    return n_pairs // global_batch


def total_steps(n_pairs: int, global_batch: int, epochs: int, max_steps: int | None) -> int:
    steps = steps_per_epoch(n_pairs, global_batch) * epochs
    return min(steps, max_steps) if max_steps else steps


def global_batch(order: list[int], step_in_epoch: int, size: int) -> list[int]:
    return order[step_in_epoch * size:(step_in_epoch + 1) * size]


def rank_micro_batches(batch: list[int], rank: int, world: int, micro: int) -> list[list[int]]:
    """This rank's share of a global batch, cut into micro-batches (one per accumulation step)."""
    mine = batch[rank::world]
    return [mine[i:i + micro] for i in range(0, len(mine), micro)]


def lr_factor(step: int, kind: str, warmup: int, total: int) -> float:
    """Multiplier of the peak LR for optimizer step ``step`` (0-based): linear warmup over
    ``warmup`` steps, then ``constant``, ``linear`` decay to 0, or ``cosine`` decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(1.0, progress)
    if kind == "linear":
        return 1.0 - progress
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"lr_scheduler {kind!r}: use constant, linear or cosine")


def deepspeed_config(cfg: Any, world: int, bf16: bool, hidden_size: int | None = None) -> dict[str, Any]:
    """DeepSpeed config for a ``TrainConfig``. The optimizer and scheduler are torch objects
    passed to ``deepspeed.initialize`` (no JIT-compiled DeepSpeed optimizer needed).

    Communication buckets scale with the model (``hidden_size``², as HF's "auto" values do):
    DeepSpeed's defaults (5e8 elements = 2 GB in fp32 per bucket) dwarf a small model and
    would cost more memory per rank than ZeRO saves.

    ZeRO-3 steps the optimizer one sub-group of its partition at a time; each sub-group brings
    a fp32 copy of its gradients and AdamW's temporaries (3 tensors its size). DeepSpeed's
    default (1e12 elements: the whole partition at once) made those the peak of a ZeRO-3 step
    on SmolLM2-135M (770 MiB per rank in bf16); ``12 * hidden_size``² (about one decoder layer)
    keeps them to a few of the largest parameters' size (bench/train.py, ``memory*`` cases)."""
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if hidden_size and cfg.zero_stage >= 1:
        h2 = hidden_size * hidden_size
        zero |= {"reduce_bucket_size": h2, "allgather_bucket_size": h2}
        if cfg.zero_stage == 3:
            zero |= {"stage3_prefetch_bucket_size": int(0.9 * h2), "stage3_param_persistence_threshold": 10 * hidden_size,
                     "sub_group_size": 12 * h2}
    if cfg.zero_stage >= 1 and cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if cfg.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        if cfg.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "train_batch_size": global_batch_size(cfg.micro_batch_size, cfg.gradient_accumulation_steps, world),
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
