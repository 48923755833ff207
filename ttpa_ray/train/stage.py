"""Preference optimisation on Ray Train + DeepSpeed ZeRO (``ttpa train JOB``).

Input: ``reference/pairs.parquet`` (pairs with reference log-probs, computed once by the
reference stage: no reference model is held here). Each worker reads the pairs through
``ray.train.get_dataset_shard`` (every worker sees all pairs and takes its share of each global
batch, see :mod:`ttpa_ray.train.plan`), runs the shared-prefix forward
(:mod:`ttpa_ray.train.pair_forward`) and the DPO-family loss (:mod:`ttpa_ray.train.losses`), and steps
DeepSpeed (:mod:`ttpa_ray.train.policy`).

Checkpoints go through ``ray.train.report`` to ``train.storage_path`` every
``checkpoint_every`` steps (each rank's ZeRO shards + ``state.json`` with the step and the
metrics so far); a restarted worker group (``max_failures``) or a rerun of an interrupted
stage restores weights, optimizer, scheduler and data position. The last report holds the
trained model as an HF folder, copied to ``<run_dir>/train/model``.

Outputs in the stage folder: ``model/``, ``metrics.jsonl`` (one line per optimizer step: loss,
rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies, grad_norm, lr,
tokens_per_s), ``tensorboard/`` (written live by rank 0: on a multi-node cluster it lands on
rank 0's node unless the run dir is on shared storage).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from ttpa_ray.train import plan
from ttpa_ray.config import TrainConfig
from ttpa_ray.train.losses import dpo_loss, sft_loss
from ttpa_ray.train.memory_profile import TensorMemoryProfile

log = logging.getLogger(__name__)

STATE = "state.json"
MODEL = "hf_model"
# Fault injection (tests, drills): SIGKILL the last rank right after this optimizer step, on
# the first attempt only (before any checkpoint exists).
FAULT_ENV = "TTPA_FAULT_KILL_TRAIN_WORKER_AT_STEP"
# Diagnostics: peak memory of live tensors on each rank during this optimizer step (it uses
# the parameters, their gradients and the optimizer states, so all of them are counted;
# ttpa_ray/train/memory_profile.py), returned as ``peak_tensor_mb_per_rank``. Slows that step.
PROFILE_ENV = "TTPA_PROFILE_MEMORY_STEP"
COLUMNS = ["id", "prompt_token_ids", "chosen_token_ids", "rejected_token_ids", "divergence_index",
           "ref_chosen_logps", "ref_rejected_logps", "weight"]


# --------------------------------------------------------------------------- worker side


def _load_pairs() -> pa.Table:
    shard = ray.train.get_dataset_shard("train")
    table = pa.concat_tables(list(shard.iter_batches(batch_format="pyarrow", batch_size=1024)))
    return table.sort_by("id")  # a stable order to permute, whatever order the blocks arrive in


def _rows(table: pa.Table, idx: list[int]) -> list[dict[str, Any]]:
    return table.take(idx).to_pylist()


class _Metrics:
    """Per-step sums over this rank's pairs, all-reduced into global means."""

    def __init__(self) -> None:
        self.sums = torch.zeros(6, dtype=torch.float64)  # loss, r_c, r_r, acc, pairs, tokens
        self.peak = torch.zeros(2, dtype=torch.float64)  # this rank's RSS now and at its peak (MB)

    def add(self, losses: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, tokens: int) -> None:
        self.sums += torch.tensor([losses.detach().sum().item(), rc.sum().item(), rr.sum().item(),
                                   (rc > rr).float().sum().item(), len(losses), tokens], dtype=torch.float64)

    def reduce(self) -> dict[str, float]:
        import resource

        import psutil

        s = self.sums.clone()
        self.peak[0] = psutil.Process().memory_info().rss / 2**20
        self.peak[1] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KB on Linux
        if dist.is_initialized():
            dist.all_reduce(s)
            dist.all_reduce(self.peak, op=dist.ReduceOp.MAX)
        n = max(s[4].item(), 1.0)
        return {"loss": s[0].item() / n, "rewards/chosen": s[1].item() / n, "rewards/rejected": s[2].item() / n,
                "rewards/margins": (s[1] - s[2]).item() / n, "rewards/accuracies": s[3].item() / n,
                "pairs": int(s[4].item()), "tokens": int(s[5].item()),
                "rss_mb_max_rank": round(self.peak[0].item(), 1), "peak_rss_mb_max_rank": round(self.peak[1].item(), 1)}


def _pair_loss(policy: Any, rows: list[dict[str, Any]], cfg: TrainConfig, pad_id: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    from ttpa_ray.train.pair_forward import collate_pairs, pair_logps

    batch = collate_pairs(rows, pad_token_id=pad_id).to(policy.device)
    lp = pair_logps(policy.module, batch, prefix_weight=cfg.prefix_weight)
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
    return losses, rc, rr, objective, tokens


def _report(policy: Any, state: dict[str, Any], rank: int, final: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="ttpa-ckpt-") as tmp:
        folder = Path(tmp)
        if final:
            policy.export(folder / MODEL, rank)
        else:
            policy.save_state(folder)
        if rank == 0:
            (folder / STATE).write_text(json.dumps(state | {"final": final}))
        has_files = any(folder.iterdir())
        metrics = state["history"][-1] if state["history"] else {"step": 0}
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp) if has_files else None)
        if not final:
            # Block until the controller has registered it: a crash right after this line
            # must restore from this checkpoint, not the one before.
            ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)


def train_loop(config: dict[str, Any]) -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if config["use_gpu"] else "cpu")  # before deepspeed loads
    from transformers import AutoTokenizer

    from ttpa_ray.train.policy import Policy

    cfg = TrainConfig.model_validate(config["train"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if config["use_gpu"] else "gloo")
    pairs = _load_pairs()
    size = plan.global_batch_size(cfg.micro_batch_size, cfg.gradient_accumulation_steps, world)
    total = plan.total_steps(len(pairs), size, cfg.epochs, cfg.max_steps)
    model_dir = Path(config["model_dir"])
    pad_id = AutoTokenizer.from_pretrained(model_dir).pad_token_id or 0
    state: dict[str, Any] = {"step": 0, "history": []}
    restored = ray.train.get_checkpoint()
    if restored:
        with restored.as_directory() as d:
            state = json.loads((Path(d) / STATE).read_text())
            if state.get("final"):  # finished before the driver stopped: hand the result over again
                with tempfile.TemporaryDirectory(prefix="ttpa-ckpt-") as tmp:
                    if rank == 0:
                        shutil.copytree(d, tmp, dirs_exist_ok=True)
                    ray.train.report(state["history"][-1] if state["history"] else {"step": 0},
                                     checkpoint=Checkpoint.from_directory(tmp) if rank == 0 else None)
                return
    policy = Policy.create(model_dir, cfg, world, total, config["use_gpu"])
    profile_step = 0 if restored else config.get("profile_memory_step", 0)
    memory = TensorMemoryProfile(f"cuda:{ctx.get_local_rank()}" if config["use_gpu"] else "cpu")
    if profile_step == 1:
        memory.start()
    if restored:
        with restored.as_directory() as d:
            policy.load_state(Path(d))
        state["restores"] = state.get("restores", []) + [state["step"]]
        if rank == 0:
            print(f"train: restored from the checkpoint of step {state['step']}", flush=True)
    fault_step = config.get("fault_step", 0)
    writer = _tensorboard(config["log_dir"]) if rank == 0 else None
    bar = _Progress(total, state["step"]) if rank == 0 else None

    def on_step(state: dict[str, Any]) -> None:
        row, step = state["history"][-1], state["step"]
        if writer:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    writer.add_scalar(k, v, step)
        if bar:
            bar.update(row)
        if profile_step and step == profile_step:
            peaks: list[Any] = [None] * world
            peak = round(memory.stop(), 1)
            dist.all_gather_object(peaks, (peak, None if memory.start_mb is None else round(memory.start_mb, 1)))
            state["peak_tensor_mb_per_rank"] = [p for p, _ in peaks]
            state["step_start_tensor_mb_per_rank"] = [s for _, s in peaks]
        if fault_step and step == fault_step and restored is None and rank == world - 1:
            os.kill(os.getpid(), signal.SIGKILL)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
            _report(policy, state, rank, final=False)
        if profile_step and step == profile_step - 1:  # the next step only
            memory.start()

    state = run_steps(policy, pairs, cfg, seed=config["seed"], rank=rank, world=world, total=total,
                      pad_id=pad_id, state=state, on_step=on_step)
    _report(policy, state, rank, final=True)
    if writer:
        writer.close()


def run_steps(policy: Any, pairs: pa.Table, cfg: TrainConfig, *, seed: int, rank: int, world: int, total: int,
              pad_id: int, state: dict[str, Any], on_step: Callable[[dict[str, Any]], None] | None = None
              ) -> dict[str, Any]:
    """The DPO loop from ``state["step"]`` to ``total`` optimizer steps. Needs only an
    initialised process group (Ray Train's, or a single local process in tests)."""
    size = plan.global_batch_size(cfg.micro_batch_size, cfg.gradient_accumulation_steps, world)
    per_epoch = plan.steps_per_epoch(len(pairs), size)
    policy.train()
    while state["step"] < total:
        step = state["step"]
        epoch, in_epoch = divmod(step, per_epoch)
        batch = plan.global_batch(plan.epoch_order(len(pairs), seed, epoch), in_epoch, size)
        metrics, t0, lr = _Metrics(), time.perf_counter(), policy.lr
        for micro in plan.rank_micro_batches(batch, rank, world, cfg.micro_batch_size):
            losses, rc, rr, loss, tokens = _pair_loss(policy, _rows(pairs, micro), cfg, pad_id)
            policy.backward(loss)
            policy.step()
            metrics.add(losses, rc, rr, tokens)
        row = {"step": step + 1, "epoch": epoch, **metrics.reduce(), "grad_norm": policy.grad_norm,
               "lr": lr}
        row["tokens_per_s"] = round(row["tokens"] / (time.perf_counter() - t0), 1)
        state = state | {"step": step + 1, "history": state["history"] + [row]}
        if on_step:
            on_step(state)
    return state


def _tensorboard(log_dir: str) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=log_dir)
    except Exception as exc:  # noqa: BLE001 - metrics.jsonl is still written
        log.warning("TensorBoard logging off (%s): metrics.jsonl is still written", exc)
        return None


class _Progress:
    """One line per step (at most every ``every_s`` seconds) on rank 0: readable in the
    driver's terminal and in ``ray job logs`` alike."""

    def __init__(self, total: int, done: int, every_s: float = 5.0):
        self.total, self.done, self.every_s = total, done, every_s
        self.t0 = self.last = time.perf_counter()
        self.start = done

    def update(self, row: dict[str, Any]) -> None:
        self.done = row["step"]
        now = time.perf_counter()
        if now - self.last < self.every_s and self.done not in (self.start + 1, self.total):
            return
        self.last = now
        rate = (now - self.t0) / max(1, self.done - self.start)
        print(f"train: step {self.done}/{self.total} ({100 * self.done // self.total}%) loss {row['loss']:.4f} "
              f"margin {row['rewards/margins']:+.4f} acc {row['rewards/accuracies']:.2f} lr {row['lr']:.2e} "
              f"| {rate:.2f} s/step, eta {rate * (self.total - self.done):.0f} s", flush=True)


# --------------------------------------------------------------------------- driver side


def _prepare_pairs(pairs: Path, cfg: TrainConfig) -> tuple[pa.Table, dict[str, int]]:
    table = pq.read_table(pairs)
    if table.num_rows == 0:
        raise ValueError(f"{pairs} has no pairs: nothing to train on (see the sample stage's manifest)")
    missing = [c for c in COLUMNS[:-1] if c not in table.column_names]
    if missing:
        raise ValueError(f"{pairs} lacks columns {missing}: it must come from the reference stage (ttpa run ... "
                         "--from reference)")
    errors = table.column("ref_error").to_pylist() if "ref_error" in table.column_names else [None] * table.num_rows
    keep = pa.array([e is None for e in errors])
    table = table.filter(keep)
    if cfg.pair_weights == "score_margin":
        margin = [max(c - r, 0.0) for c, r in zip(table.column("chosen_score").to_pylist(),
                                                   table.column("rejected_score").to_pylist())]
        mean = sum(margin) / max(1, len(margin)) or 1.0
        weights = [m / mean for m in margin]
    else:
        weights = [1.0] * table.num_rows
    table = table.append_column("weight", pa.array(weights, pa.float64()))
    return table.select(COLUMNS), {"pairs": table.num_rows, "pairs_with_ref_error": len(errors) - table.num_rows}


def _worker_resources(cfg: TrainConfig) -> dict[str, float]:
    """Ray resources of one training worker (a data-parallel rank)."""
    return {"CPU": cfg.cpus_per_worker} | ({"GPU": cfg.gpus_per_worker} if cfg.use_gpu else {})


def run_train(cfg: TrainConfig, model: str, pairs: Path, out: Path, seed: int = 0, resume: bool = False
              ) -> dict[str, Any]:
    """Train; returns counts for the manifest. ``resume``: continue the run an interrupted
    stage left (same Ray Train run name), else start a new one."""
    from ttpa_ray.models.registry import resolve

    model_dir = resolve(model)
    table, counts = _prepare_pairs(pairs, cfg)
    out.mkdir(parents=True, exist_ok=True)
    storage = cfg.storage_path or str((out / "ray").resolve())
    name_file = out / "run_name.txt"
    if not (resume and name_file.is_file()):
        name_file.write_text(f"train-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")
    name = name_file.read_text().strip()
    log_dir = out / "tensorboard"
    ray.data.DataContext.get_current().enable_progress_bars = False  # a tiny read per worker: no bars
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"train": cfg.model_dump(mode="json"), "model_dir": str(model_dir), "seed": seed,
                           "use_gpu": cfg.use_gpu, "threads": cfg.threads, "log_dir": str(log_dir.resolve()),
                           "fault_step": int(os.environ.get(FAULT_ENV, "0") or 0),
                           "profile_memory_step": int(os.environ.get(PROFILE_ENV, "0") or 0)},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=_worker_resources(cfg),
                                     placement_strategy=cfg.placement_strategy),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        run_config=RunConfig(name=name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints)),
        datasets={"train": ray.data.from_arrow(table)},
        dataset_config=DataConfig(datasets_to_split=[]),  # every rank sees all pairs (train_plan)
    )
    t0 = time.time()
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training ended without a checkpoint (Ray Train run {storage}/{name})")
    with result.checkpoint.as_directory() as d:
        state = json.loads((Path(d) / STATE).read_text())
        if not state.get("final"):
            raise RuntimeError(f"the last checkpoint of {storage}/{name} is not final: training did not finish")
        shutil.rmtree(out / "model", ignore_errors=True)
        shutil.copytree(Path(d) / MODEL, out / "model")
    with open(out / "metrics.jsonl", "w", encoding="utf-8") as f:
        for row in state["history"]:
            f.write(json.dumps(row) + "\n")
    last = state["history"][-1] if state["history"] else {}
    return {**counts, "steps": state["step"], "restores": state.get("restores", []), "final_loss": last.get("loss"),
            "final_reward_accuracy": last.get("rewards/accuracies"), "model": str(out / "model"),
            "train_seconds": round(time.time() - t0, 1), "run": f"{storage}/{name}",
            **{k: state[k] for k in ("peak_tensor_mb_per_rank", "step_start_tensor_mb_per_rank") if k in state}}
