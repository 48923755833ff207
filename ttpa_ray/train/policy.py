"""DeepSpeed behind a small facade, so the training loop reads like the algorithm:

    policy = create_policy(model_dir, cfg, world, total_steps, use_gpu)   # ttpa_ray.train.stage
    logps = pair_logps(policy.module, batch)     # forward
    policy.backward(loss)                         # scaled for accumulation by DeepSpeed
    stepped = policy.step()                       # True at an accumulation boundary
    policy.save_state(dir); policy.load_state(dir)  # ZeRO-sharded state, optimizer, scheduler
    policy.export(dir)                            # HF folder (ZeRO-3 consolidated; LoRA merged)

ZeRO stages 0-3 with optional CPU offload; bf16 on GPUs, fp32 (or bf16) on CPUs over gloo.
The optimizer is torch's AdamW and the schedule a torch LambdaLR, handed to DeepSpeed, which
steps, clips, checkpoints and restores them. This module builds them
(:func:`policy_parts`) and wraps the engine ``deepspeed.initialize`` returns; the one call into
DeepSpeed itself is in :func:`ttpa_ray.train.stage.create_policy`.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ttpa_ray.config import TrainConfig
from ttpa_ray.models.registry import torch_dtype
from ttpa_ray.train.packed_attention import attention_implementation
from ttpa_ray.train.plan import deepspeed_config, lr_factor

log = logging.getLogger(__name__)

_TAG = "ds"  # DeepSpeed checkpoint tag inside a checkpoint folder


def disable_dropout(model: torch.nn.Module) -> None:
    """DPO compares log-probs of two forwards: dropout would make them noisy (TRL does the same)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


@dataclass
class PolicyParts:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ds_config: dict[str, Any]
    hf_ds_config: Any  # HfDeepSpeedConfig under ZeRO-3 (keeps ZeRO-3 aware loading alive), else None


def policy_parts(model_dir: Path, cfg: TrainConfig, world: int, total_steps: int, use_gpu: bool) -> PolicyParts:
    """What ``deepspeed.initialize`` takes: the model (LoRA-wrapped if ``train.lora.r``), torch's
    AdamW over its trainable parameters, the LR schedule and the DeepSpeed config."""
    from transformers import AutoConfig

    dtype = torch_dtype(cfg.dtype, use_gpu)

    hidden = getattr(AutoConfig.from_pretrained(model_dir), "hidden_size", None)
    ds_config = deepspeed_config(cfg, world, bf16=dtype == torch.bfloat16, hidden_size=hidden)
    hf_ds = None
    if cfg.zero_stage == 3:
        # Loaded straight into ZeRO-3 partitions: no rank ever holds the whole model.
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds = HfDeepSpeedConfig(ds_config)
    # train.attention picks the packed rows' attention (FlexAttention on GPUs); sft loads the default.
    attn = attention_implementation(cfg.attention, use_gpu) if isinstance(cfg, TrainConfig) else None
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=attn)
    disable_dropout(model)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.r:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                                                 lora_dropout=cfg.lora.dropout,
                                                 target_modules=list(cfg.lora.target_modules),
                                                 task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_factor, kind=cfg.lr_scheduler, warmup=warmup, total=total_steps))
    return PolicyParts(model, optimizer, scheduler, ds_config, hf_ds)


class Policy:
    """A DeepSpeed engine as the training loop uses it."""

    def __init__(self, engine: Any, cfg: TrainConfig, source: Path, hf_ds_config: Any = None):
        self.engine = engine
        self.cfg = cfg
        self.source = source
        self._hf_ds_config = hf_ds_config  # keeps ZeRO-3 aware loading alive
        self._norm: float | None = None
        if cfg.zero_stage == 0 and engine.dp_world_size == 1:
            # ZeRO-0's gradient all-reduce flattens every gradient into one bucket (a whole
            # model's copy, 513 MiB for SmolLM2-135M in fp32) to average them over the ranks: with
            # one rank it only costs memory and time. (ZeRO >= 1 reduces into its partitions
            # through the same switch, so it stays on there.)
            engine.enable_backward_allreduce = False

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def train(self) -> None:
        self.engine.train()

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> bool:
        """Optimizer step at an accumulation boundary (else only counts the micro-step)."""
        boundary = self.engine.is_gradient_accumulation_boundary()
        if boundary and self.cfg.zero_stage == 0:  # DeepSpeed reports a norm for ZeRO >= 1 only
            grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
            self._norm = float(torch.nn.utils.get_total_norm(grads)) if grads else None
        self.engine.step()
        return boundary

    @property
    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    @property
    def grad_norm(self) -> float | None:
        norm = self._norm if self.cfg.zero_stage == 0 else self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def save_state(self, folder: Path) -> None:
        """Every rank writes its shard of weights, optimizer and scheduler state."""
        self.engine.save_checkpoint(str(folder), tag=_TAG)

    def load_state(self, folder: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(folder), tag=_TAG, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise RuntimeError(f"no DeepSpeed checkpoint under {folder}/{_TAG}: the checkpoint is incomplete")

    def export(self, folder: Path, rank: int) -> None:
        """The trained model as an HF folder (loads in transformers and vLLM), with the
        source's tokenizer and chat template. Collective under ZeRO-3: call on every rank."""
        state = None
        if self.cfg.zero_stage == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict()  # gathered on rank 0
        if rank != 0:
            return
        folder.mkdir(parents=True, exist_ok=True)
        model = self.module
        if self.cfg.lora.r:
            if self.cfg.lora.merge:
                model = model.merge_and_unload()
            else:
                model.save_pretrained(folder)  # the adapter only
                AutoTokenizer.from_pretrained(self.source).save_pretrained(folder)
                return
        model.save_pretrained(folder, state_dict=state)
        AutoTokenizer.from_pretrained(self.source).save_pretrained(folder)
        for extra in ("generation_config.json",):
            if (self.source / extra).is_file() and not (folder / extra).is_file():
                shutil.copy(self.source / extra, folder / extra)
