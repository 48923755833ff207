"""What the training benches count: useful FLOPs of an optimizer step and the machine's matmul
rate to set them against (bench/train.py's ``step`` case, bench/gpu_check.py).

Imported by scripts run as ``python bench/NAME.py`` (their folder is first on ``sys.path``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# NVIDIA's datasheet figure for dense bf16 tensor-core math (no sparsity), H100 SXM and H200.
DATASHEET_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}


def timed(fn: Callable[[], Any]) -> float:
    """Seconds ``fn()`` takes (wall clock)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def matmul_gflops(n: int = 2048, repeats: int = 5, device: str = "cpu", dtype: Any = None) -> float:
    """This process's matmul rate in GFLOP/s: the best of ``repeats`` n x n x n products (fp32 on
    the CPU by default, torch's threads; on CUDA each product is synchronised, after a warm-up)."""
    import torch

    dtype = dtype or torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def product() -> None:
        torch.mm(a, b)
        sync()

    for _ in range(3 if device.startswith("cuda") else 1):
        product()
    best = min(timed(product) for _ in range(repeats))
    return round(2 * n ** 3 / best / 1e9, 1)


def step_flops(model: Any, rows: list[dict[str, Any]], packing: str, per_step: int, pad_id: int) -> dict[str, Any]:
    """Useful FLOPs of one optimizer step on ``rows`` (the data set is one step), counted as:
    6 x non-embedding parameters x positions fed (forward 2, backward 4 per parameter and
    token; padding not counted), + 6 x hidden x vocab x positions through the LM head, + attention
    12 x layers x hidden x (keys each query may see, summed: causal, and with turn packing a
    continuation sees its shared prefix and itself). Embedding lookups, norms and the optimizer
    are not counted (small here)."""
    import torch

    from ttpa_ray.train.group_forward import collate_groups

    cfg = model.config
    embed = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight
    tied = head.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    non_embed = sum(p.numel() for p in model.parameters()) - embed - (0 if tied else head.numel())
    if packing == "turn":
        b = collate_groups(rows, pad_id)
        fed = b.segment >= 0
        positions = int(fed.sum())
        head_positions = int(b.head_pos.numel())
        # a query sees the main tokens before it (visible) and, in a continuation, its own earlier tokens
        own = torch.zeros_like(b.segment)
        for g in range(b.segment.shape[0]):
            seg = b.segment[g]
            for k in seg.unique().tolist():
                if k > 0:
                    idx = (seg == k).nonzero().flatten()
                    own[g, idx] = torch.arange(1, len(idx) + 1)
        keys = int((b.visible + own)[fed].sum())
    else:
        lens = [len(r["prompt_token_ids"]) + len(r["chosen_token_ids"]) + len(r["rejected_token_ids"])
                - int(r["divergence_index"]) for r in rows]  # prompt + shared + both suffixes, as packed
        positions = sum(lens)
        head_positions = sum(len(r["chosen_token_ids"]) + len(r["rejected_token_ids"]) for r in rows)
        keys = sum(x * (x + 1) // 2 for x in lens)  # causal upper bound (the two suffixes do not see each other)
    hidden, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, head.shape[0]
    flops = 6 * non_embed * positions + 6 * hidden * vocab * head_positions + 12 * layers * hidden * keys
    return {"positions": positions, "head_positions": head_positions, "attention_keys": keys,
            "non_embedding_params": non_embed, "flops": float(flops)}


def step_timer(clock: Callable[[], float] = time.perf_counter, sync: Callable[[], None] = lambda: None) -> Any:
    """A transformers ``TrainerCallback`` that records ``clock()`` when training begins
    (``.begin``) and after every optimizer step (``.ends``), after ``sync()`` (a CUDA
    synchronisation on GPUs): how the benches time TRL's trainer step by step."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.begin, self.ends = 0.0, []

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001, ANN201
            self.begin = clock()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN201
            sync()
            self.ends.append(clock())

    return StepTimer()
