"""The ``reference`` and ``train`` stages: Ray Data and Ray Train + DeepSpeed ZeRO around the
pure parts of this folder (``ttpa reference JOB``, ``ttpa train JOB``). :func:`fit`, the Ray
Train run, also runs the ``sft`` stage (:mod:`ttpa_ray.sft.stage`) with its own objective.

reference: :func:`run_reference` computes the reference log-probs of every pair once, on a
pool of :class:`~ttpa_ray.train.reference.ReferenceBatch` actors; training holds no reference
model.

train: input ``reference/pairs.parquet``. Each Ray Train worker reads the pairs through
``ray.train.get_dataset_shard`` (every worker sees all pairs and takes its share of each global
batch, see :mod:`ttpa_ray.train.plan`), builds DeepSpeed (:func:`create_policy`, the facade is
:mod:`ttpa_ray.train.policy`) and runs :func:`ttpa_ray.train.loop.run_steps`.

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
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.train
import torch
from ray.train import (Checkpoint, CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig,
                       ScalingConfig)
from ray.train.torch import TorchConfig, TorchTrainer

from ttpa_ray.columns import none_if_nan
from ttpa_ray.config import ReferenceConfig, SftConfig, TrainConfig, TrainerConfig
from ttpa_ray.console import collect, quiet_train_worker, verbose
from ttpa_ray.runtime import set_heap_mmap_threshold
from ttpa_ray.train import plan
from ttpa_ray.train.group_forward import group_pairs
from ttpa_ray.sft.objective import SftObjective
from ttpa_ray.train.loop import (DpoObjective, Hook, MemoryStepProfile, Objective, ProgressHook, TensorBoardHook,
                                 kill_after_step, prepare_pairs, run_steps)
from ttpa_ray.train.policy import Policy, policy_parts

log = logging.getLogger(__name__)

# What each Ray Train stage optimises, and its config section.
OBJECTIVES: dict[str, tuple[type[TrainerConfig], type[Objective]]] = {
    "train": (TrainConfig, DpoObjective), "sft": (SftConfig, SftObjective)}
STATE = "state.json"
MODEL = "hf_model"
# Fault injection (tests, drills): SIGKILL the last rank right after this optimizer step, on
# the first attempt only (before any checkpoint exists).
FAULT_ENV = "TTPA_FAULT_KILL_TRAIN_WORKER_AT_STEP"
# Diagnostics: peak memory of live tensors on each rank during this optimizer step (it uses
# the parameters, their gradients and the optimizer states, so all of them are counted;
# ttpa_ray/train/memory_profile.py), returned as ``peak_tensor_mb_per_rank``. Slows that step.
PROFILE_ENV = "TTPA_PROFILE_MEMORY_STEP"


# --------------------------------------------------------------------------- worker side


def create_policy(model_dir: Path, cfg: TrainerConfig, world: int, total_steps: int, use_gpu: bool) -> Policy:
    """The model, AdamW and the LR schedule (:func:`~ttpa_ray.train.policy.policy_parts`) handed
    to ``deepspeed.initialize``. Needs an initialised process group."""
    import deepspeed

    set_heap_mmap_threshold(cfg.heap_mmap_threshold_kb)  # before the model's tensors are allocated
    parts = policy_parts(model_dir, cfg, world, total_steps, use_gpu)
    engine, _, _, _ = deepspeed.initialize(model=parts.model, optimizer=parts.optimizer,
                                           lr_scheduler=parts.scheduler, config=parts.ds_config)
    return Policy(engine, cfg, Path(model_dir), parts.hf_ds_config)


def _load_rows() -> pa.Table:
    shard = ray.train.get_dataset_shard("train")
    table = pa.concat_tables(list(shard.iter_batches(batch_format="pyarrow", batch_size=1024)))
    return table.sort_by("id")  # a stable order to permute, whatever order the blocks arrive in


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


def _checkpoint_hook(policy: Policy, cfg: TrainerConfig, rank: int, total: int) -> Hook:
    def hook(state: dict[str, Any]) -> None:
        if cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0 and state["step"] < total:
            _report(policy, state, rank, final=False)

    return hook


def _tensorboard(log_dir: str) -> TensorBoardHook | None:
    try:
        return TensorBoardHook(log_dir)
    except Exception as exc:  # noqa: BLE001 - metrics.jsonl is still written
        log.warning("TensorBoard logging off (%s): metrics.jsonl is still written", exc)
        return None


def train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker (a data-parallel rank) of the ``sft`` or ``train`` stage
    (``config["stage"]``): restore, run :func:`run_steps` with its hooks, report the final model."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if config["use_gpu"] else "cpu")  # before deepspeed loads
    from transformers import AutoTokenizer

    stage = config["stage"]
    config_class, objective_class = OBJECTIVES[stage]
    cfg = config_class.model_validate(config["cfg"])
    objective = objective_class()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if config["use_gpu"] else "gloo")
    quiet_train_worker()
    rows = _load_rows()
    size = plan.global_batch_size(cfg.micro_batch_size, cfg.gradient_accumulation_steps, world)
    total = plan.total_steps(len(objective.units(rows, cfg)), size, cfg.epochs, cfg.max_steps)
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
    policy = create_policy(model_dir, cfg, world, total, config["use_gpu"])
    profile_step = 0 if restored else config.get("profile_memory_step", 0)
    memory = (MemoryStepProfile(profile_step, f"cuda:{ctx.get_local_rank()}" if config["use_gpu"] else "cpu", world)
              if profile_step else None)
    if restored:
        with restored.as_directory() as d:
            policy.load_state(Path(d))
        state["restores"] = state.get("restores", []) + [state["step"]]
        if rank == 0:
            print(f"{stage}: restored from the checkpoint of step {state['step']}", flush=True)
    fault_step = config.get("fault_step", 0)
    writer = _tensorboard(config["log_dir"]) if rank == 0 else None
    hooks: list[Hook] = [memory.stop] if memory else []
    hooks += [writer] if writer else []
    hooks += [ProgressHook(total, state["step"], stage=stage, objective=objective)] if rank == 0 else []
    if fault_step and restored is None and rank == world - 1:
        hooks.append(kill_after_step(fault_step))
    hooks.append(_checkpoint_hook(policy, cfg, rank, total))
    hooks += [memory.start] if memory else []
    state = run_steps(policy, rows, cfg, seed=config["seed"], rank=rank, world=world, total=total,
                      pad_id=pad_id, state=state, hooks=hooks, objective=objective)
    _report(policy, state, rank, final=True)
    if writer:
        writer.close()


# --------------------------------------------------------------------------- driver side


def worker_resources(cfg: TrainerConfig, model_dir: Path) -> dict[str, float]:
    """Ray resources of one training worker (a data-parallel rank): CPUs, GPUs, and the memory
    of its model states (``train.memory_gb_per_worker``, else :mod:`ttpa_ray.resources`)."""
    from ttpa_ray.models.registry import resolve_dtype
    from ttpa_ray.resources import GIB, parameter_count, train_worker_memory_bytes

    if cfg.memory_gb_per_worker is not None:
        memory = cfg.memory_gb_per_worker * GIB
    else:
        memory = train_worker_memory_bytes(parameter_count(model_dir), resolve_dtype(cfg.dtype, cfg.use_gpu),
                                           cfg.zero_stage, cfg.num_workers,
                                           cfg.offload_optimizer or cfg.offload_params, cfg.use_gpu,
                                           trainable_fraction=0.05 if cfg.lora.r else 1.0)
    return ({"CPU": cfg.cpus_per_worker, "memory": float(int(memory))}
            | ({"GPU": cfg.gpus_per_worker} if cfg.use_gpu else {}))


def run_train(cfg: TrainConfig, model: str, pairs: Path, out: Path, seed: int = 0, resume: bool = False
              ) -> dict[str, Any]:
    """The ``train`` stage: DPO on the reference stage's pairs; returns counts for the manifest.
    ``resume``: continue the run an interrupted stage left (same Ray Train run name)."""
    table, counts = prepare_pairs(pairs, cfg)
    return counts | fit("train", cfg, model, table, out, seed=seed, resume=resume)


def fit(stage: str, cfg: TrainerConfig, model: str, table: pa.Table, out: Path, seed: int = 0,
        resume: bool = False) -> dict[str, Any]:
    """One Ray Train run of ``stage``'s objective (:data:`OBJECTIVES`) on ``table``'s rows, from
    ``model``; writes ``out/model`` (an HF folder) and ``out/metrics.jsonl`` and returns counts.
    ``resume``: continue the run an interrupted stage left (same Ray Train run name), else start
    a new one."""
    from ttpa_ray.models.registry import resolve

    model_dir = resolve(model)
    out.mkdir(parents=True, exist_ok=True)
    storage = cfg.storage_path or str((out / "ray").resolve())
    name_file = out / "run_name.txt"
    if not (resume and name_file.is_file()):
        name_file.write_text(f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")
    name = name_file.read_text().strip()
    log_dir = out / "tensorboard"
    ray.data.DataContext.get_current().enable_progress_bars = False  # a tiny read per worker: no bars
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"stage": stage, "cfg": cfg.model_dump(mode="json"), "model_dir": str(model_dir),
                           "seed": seed, "use_gpu": cfg.use_gpu, "threads": cfg.threads,
                           "log_dir": str(log_dir.resolve()),
                           "fault_step": int(os.environ.get(FAULT_ENV, "0") or 0),
                           "profile_memory_step": int(os.environ.get(PROFILE_ENV, "0") or 0)},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=worker_resources(cfg, model_dir),
                                     placement_strategy=cfg.placement_strategy),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        run_config=RunConfig(name=name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                             logging_config=LoggingConfig(log_level="DEBUG" if verbose() else "WARNING")),
        datasets={"train": ray.data.from_arrow(table)},
        dataset_config=DataConfig(datasets_to_split=[]),  # every rank sees all rows (train_plan)
    )
    t0 = time.time()
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{stage} ended without a checkpoint (Ray Train run {storage}/{name})")
    with result.checkpoint.as_directory() as d:
        state = json.loads((Path(d) / STATE).read_text())
        if not state.get("final"):
            raise RuntimeError(f"the last checkpoint of {storage}/{name} is not final: {stage} did not finish")
        shutil.rmtree(out / "model", ignore_errors=True)
        shutil.copytree(Path(d) / MODEL, out / "model")
    with open(out / "metrics.jsonl", "w", encoding="utf-8") as f:
        for row in state["history"]:
            f.write(json.dumps(row) + "\n")
    last = state["history"][-1] if state["history"] else {}
    accuracy = "rewards/accuracies" if stage == "train" else "mean_token_accuracy"
    return {"steps": state["step"], "restores": state.get("restores", []), "final_loss": last.get("loss"),
            f"final_{'reward_accuracy' if stage == 'train' else 'token_accuracy'}": last.get(accuracy),
            "model": str(out / "model"), "train_seconds": round(time.time() - t0, 1), "run": f"{storage}/{name}",
            **{k: state[k] for k in ("peak_tensor_mb_per_rank", "step_start_tensor_mb_per_rank") if k in state}}


# --------------------------------------------------------------------------- the reference stage


def turn_blocks(table: pa.Table, size: int) -> list[pa.Table]:
    """``table``'s pairs cut into blocks of about ``size`` pairs that never split a turn's group."""
    groups = group_pairs(table.select(["prompt_token_ids", "chosen_token_ids"]).to_pylist(), validate=False)
    blocks, current = [], []
    for g in groups:
        current += g
        if len(current) >= size:
            blocks.append(table.take(current))
            current = []
    return blocks + ([table.take(current)] if current else [])


def run_reference(cfg: ReferenceConfig, model: str, dtype: str, prefix_weight: float, pairs: Path, out: Path,
                  packing: str = "turn", decision_only: list[str] | None = None,
                  binary_decision: bool = False, attention: str = "auto") -> dict[str, Any]:
    """The ``reference`` stage: ``pairs`` (``sample/pairs.parquet``) on a pool of
    :class:`~ttpa_ray.train.reference.ReferenceBatch` actors, written to ``out/pairs.parquet``
    with every sample column kept and ``ref_chosen_logps``, ``ref_rejected_logps``, ``ref_error``
    added."""
    import pyarrow.parquet as pq

    from ttpa_ray.engines.actors import pool_kwargs
    from ttpa_ray.models.registry import resolve
    from ttpa_ray.resources import parameter_count, reference_memory_bytes
    from ttpa_ray.train.reference import REFERENCE_INPUTS, ReferenceBatch

    model_dir = resolve(model)
    table = pq.read_table(pairs)
    out.mkdir(parents=True, exist_ok=True)
    if table.num_rows == 0:
        log.warning("%s has no pairs: nothing to score (see the sample manifest)", pairs)
        pq.write_table(table, out / "pairs.parquet")
        return {"pairs": 0, "ref_errors": 0}
    missing = [c for c in REFERENCE_INPUTS if c not in table.column_names]
    if missing:
        raise ValueError(f"{pairs} lacks columns {missing}: it must come from the sample stage")
    if binary_decision and "call_side" not in table.column_names:
        raise ValueError(f"train.binary_decision needs the call_side column, which {pairs} lacks (an older sample "
                         "stage): redo it with --from sample, or set train.binary_decision: false")
    kwargs = pool_kwargs(cfg.pool, reference_memory_bytes(parameter_count(model_dir), dtype,
                                                          use_gpu=cfg.pool.num_gpus > 0))
    if packing == "turn":  # whole turns per block and per call: the groups train will form
        ds = ray.data.from_arrow(turn_blocks(table, cfg.pool.batch_size))
        kwargs["batch_size"] = None
    else:
        ds = ray.data.from_arrow(table).repartition(max(1, table.num_rows // cfg.pool.batch_size))
    ds = ds.map_batches(ReferenceBatch, fn_constructor_kwargs={"model_dir": str(model_dir), "dtype": dtype,
                                                               "prefix_weight": prefix_weight,
                                                               "batch_size": cfg.batch_size, "packing": packing,
                                                               "decision_only": list(decision_only or []),
                                                               "binary_decision": binary_decision,
                                                               "attention": attention},
                        **kwargs)
    rows = sorted(collect(ds.iter_rows(), "reference", table.num_rows), key=lambda r: r["id"])
    for r in rows:
        err = r["ref_error"]
        r["ref_error"] = None if none_if_nan(err) is None else str(err)
        for k in ("prompt_token_ids", "chosen_token_ids", "rejected_token_ids"):
            r[k] = [int(x) for x in r[k]]
        for k, v in list(r.items()):
            if isinstance(v, np.ndarray):
                r[k] = v.tolist()
    result = pa.Table.from_pylist(rows)
    pq.write_table(result, out / "pairs.parquet")
    errors = sum(r["ref_error"] is not None for r in rows)
    if len(rows) != table.num_rows:
        raise RuntimeError(f"reference pass returned {len(rows)} rows for {table.num_rows} pairs")
    return {"pairs": len(rows), "ref_errors": errors}
