"""DPO step time, ours vs TRL 1.16 ``DPOTrainer`` on the same token ids, side by side in one
run; and ZeRO-0 vs ZeRO-3 memory per rank through the Ray Train driver.

    TTPA_CACHE_DIR=.cache .venv/bin/python bench/train.py [--quick] [--cases short,long,memory] [--out FILE]

Every side runs in a fresh process (same torch threads, no state shared), 1 worker, fp32,
sigmoid DPO (beta 0.1), torch AdamW (same lr, constant schedule, no weight decay, grad
clipping 1.0), dropout off, no gradient checkpointing. Each step sees the same pairs on every
side: the data set *is* one batch, so every optimizer step trains on exactly the same token ids
everywhere (and the per-step losses of the two trainers can be compared).

- **ours**: :func:`ttpa_ray.train.loop.run_steps` with :class:`ttpa_ray.train.policy.Policy`
  (DeepSpeed ZeRO-0, a 1-process gloo group, as Ray Train would give one worker). Reference
  log-probs are precomputed (our design: the reference stage, before training); that pass
  (:class:`ttpa_ray.train.reference.ReferenceBatch`) is timed on its own, per pair.
- **trl**: ``DPOTrainer`` fed the same ids: a data set with the columns its collator reads
  (``prompt_ids``, ``chosen_ids``, ``rejected_ids``); its ``_prepare_dataset`` (which only
  tokenizes text) is skipped, checked by comparing the ids it trains on. TRL default (the
  reference model runs every step) and ``precompute_ref_log_probs=True`` (its precompute pass
  timed per pair, like ours).

Seconds per step: median over the steps after the warm-up, each the time between consecutive
step ends (a TrainerCallback for TRL, a ``run_steps`` hook for ours), model load excluded.

Cases: ``short`` (tiny-random, synthetic pairs, 30-60-token prompts, batch 8), ``long``
(SmolLM2-135M, TPS-like tool-call pairs: prompt = bundled tool schemas + a query through the
chat template, >= 500 tokens; chosen = gold ``<tool_call>`` + eos; rejected = the same call with
one argument value changed, so it shares the prefix up to ``divergence_index``; batch 2),
``turns`` (SmolLM2, 2 such prompts with 3 rejected each, 6 pairs per step: seconds per pair of
``train.packing: turn`` vs ``pair`` vs TRL, and the reference log-probs of both packings),
``memory`` (SmolLM2, 2 Ray Train workers, ZeRO-0 vs ZeRO-3 through ``run_train``, fp32 and
bf16: the peak bytes of live tensors per rank during the last step (parameters, gradients,
optimizer states and activations it touches), the CPU
counterpart of torch.cuda.max_memory_allocated (ttpa_ray/train/memory_profile.py), the live tensors
between steps (the model states ZeRO partitions), and RSS per rank from metrics.jsonl) on the
``long`` pairs; ``memory_short`` the same on those pairs cut to their last 64 prompt tokens
(activations small next to the model states, as with a large model); ``memory_ckpt`` the
``memory`` case with gradient checkpointing on (``train.gradient_checkpointing``). Writes
bench/results/train.json (``--cases X`` replaces case X only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flops import matmul_gflops as _matmul_gflops  # bench/flops.py (this folder is on sys.path)
from flops import step_flops, step_timer

from ttpa_ray.synthetic import synthetic_pairs

BETA = 0.1
LR = 5e-5  # large enough that the per-step losses of both trainers move (and can be compared)
CASES = {
    "short": {"model": "tiny-random", "batch": 8, "warmup": 2, "steps": 20, "quick_steps": 4},
    "long": {"model": "smollm2-135m-instruct", "batch": 2, "warmup": 1, "steps": 3, "quick_steps": 2},
    # Demo-shaped turns: 2 turns x 3 rejected = 6 pairs per step on every side.
    "turns": {"model": "smollm2-135m-instruct", "turns": 2, "k": 3, "warmup": 1, "steps": 3, "quick_steps": 2},
    # The demo's optimizer step: 4 turns (gradient accumulation over 4 with turn packing) x 3 rejected.
    "step": {"model": "smollm2-135m-instruct", "turns": 4, "k": 3, "warmup": 1, "steps": 2, "quick_steps": 1},
}
GOALS = {"short": 1.0, "long": 1.8, "turns": 2.0, "memory": 0.6, "step_rss_mb": 3072, "step_flop_share": 0.45}


# --------------------------------------------------------------------------- pairs


def short_pairs(n: int, vocab: int, seed: int = 0) -> list[dict[str, Any]]:
    """Random token pairs: prompt 30-60 tokens, shared completion prefix 0-6 tokens, then
    chosen and rejected differ at ``divergence_index`` (6-20 more tokens each)."""
    return synthetic_pairs(n, vocab, seed, prompt=(30, 60), shared=(0, 6), tail=(6, 20), rejected_score=0.5)


def _perturb(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 3 + 7
    if isinstance(value, str):
        return {"Lisbon": "Lima"}.get(value, "Springfield" if value != "Springfield" else "Shelbyville")
    if isinstance(value, list) and value:
        return value[:-1] + [_perturb(value[-1])]
    return "unknown"


def long_pairs(model_dir: Path, n: int, prompt_tokens: tuple[int, int] = (500, 700)) -> list[dict[str, Any]]:
    """TPS-like pairs on real prompts: the gold tool plus another of the bundled catalog,
    rendered with the model's chat template; the first ``n`` whose prompt length falls in
    ``prompt_tokens``. chosen = the gold call + eos; rejected = the same call with its first
    argument value changed (a branch inside the call, then a different continuation)."""
    from transformers import AutoTokenizer

    from ttpa_ray.tools.catalog import bundled_catalog
    from ttpa_ray.sample.tps import first_difference

    tok = AutoTokenizer.from_pretrained(model_dir)
    tools = [t for t in bundled_catalog() if t.examples and len(t.examples[0]) >= 2]
    rows: list[dict[str, Any]] = []
    for i in range(4 * len(tools)):
        if len(rows) == n:
            break
        gold = tools[(i * 7) % len(tools)]
        offered = [gold, tools[(i * 7 + 11) % len(tools)]]
        args = dict(gold.examples[0])
        query = f"Could you take care of this for me? Details: {json.dumps(args)}"
        text = tok.apply_chat_template([{"role": "user", "content": query}], tools=[t.openai() for t in offered],
                                       add_generation_prompt=True, tokenize=False)
        prompt = tok(text, add_special_tokens=False)["input_ids"]
        if not prompt_tokens[0] <= len(prompt) <= prompt_tokens[1]:
            continue
        first = next(iter(args))
        bad = {**args, first: _perturb(args[first])}

        def call(a: dict[str, Any]) -> list[int]:
            body = json.dumps({"name": gold.name, "arguments": a})
            return tok(f"<tool_call>\n{body}\n</tool_call>", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

        chosen, rejected = call(args), call(bad)
        rows.append({"id": len(rows), "prompt_token_ids": prompt, "chosen_token_ids": chosen,
                     "rejected_token_ids": rejected,
                     "divergence_index": first_difference(chosen, rejected), "chosen_score": 1.0,
                     "rejected_score": 0.6})
    if len(rows) < n:
        raise ValueError(f"only {len(rows)} prompts of {prompt_tokens} tokens in the bundled catalog; widen the range")
    return rows


def turn_pairs(model_dir: Path, turns: int, k: int) -> list[dict[str, Any]]:
    """TPS-shaped turns: each of ``turns`` :func:`long_pairs` prompts keeps its chosen call and
    gets ``k`` rejected ones, each with a different argument value changed in turn (the first,
    the second, ...), so they branch from the chosen side at different tokens. Pairs of a turn
    have consecutive ids, as the sample stage writes them."""
    from transformers import AutoTokenizer

    from ttpa_ray.sample.tps import first_difference

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows: list[dict[str, Any]] = []
    for base in long_pairs(model_dir, turns):
        call = json.loads(tok.decode(base["chosen_token_ids"][:-1]).split("<tool_call>\n")[1].split("\n</tool_call>")[0])
        keys = list(call["arguments"])
        for j in range(k):
            args = dict(call["arguments"])
            key = keys[j % len(keys)]
            args[key] = _perturb(args[key]) if j < len(keys) else _perturb(_perturb(args[key]))
            body = json.dumps({"name": call["name"], "arguments": args})
            rejected = tok(f"<tool_call>\n{body}\n</tool_call>", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            rows.append(base | {"id": len(rows), "rejected_token_ids": rejected,
                                "divergence_index": first_difference(base["chosen_token_ids"], rejected)})
    return rows


def pair_tokens(rows: list[dict[str, Any]]) -> int:
    """Distinct tokens of a batch (prompt + chosen + rejected), the same data on every side."""
    return sum(len(r["prompt_token_ids"]) + len(r["chosen_token_ids"]) + len(r["rejected_token_ids"]) for r in rows)


def shape_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Positions each forward runs (padded tensors) for one batch of these pairs."""
    B = len(rows)
    pre = max(len(r["prompt_token_ids"]) + r["divergence_index"] for r in rows)
    suf = max(2, *(len(r[k]) - r["divergence_index"] for r in rows for k in ("chosen_token_ids", "rejected_token_ids")))
    full = max(len(r["prompt_token_ids"]) + len(r[k]) for r in rows for k in ("chosen_token_ids", "rejected_token_ids"))
    return {"pairs": B,
            "prompt_tokens": [len(r["prompt_token_ids"]) for r in rows],
            "chosen_tokens": [len(r["chosen_token_ids"]) for r in rows],
            "rejected_tokens": [len(r["rejected_token_ids"]) for r in rows],
            "divergence_index": [r["divergence_index"] for r in rows],
            "ours_decoder_positions": B * pre + 2 * B * (suf - 1),  # prefix once, both suffixes on its cache
            "trl_decoder_positions_per_forward": 2 * B * full}      # chosen and rejected rows, prompt twice


# --------------------------------------------------------------------------- workers (fresh processes)


def _rss_peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _step_seconds(begin: float, ends: list[float], warmup: int) -> dict[str, Any]:
    """``begin`` and ``ends``: wall-clock times (time.time(), comparable with the driver's load samples)."""
    times = [b - a for a, b in zip([begin] + ends[:-1], ends)]
    measured = times[warmup:]
    med = statistics.median(measured)
    return {"step_seconds_all": [round(t, 4) for t in times], "warmup_steps": warmup, "measured_steps": len(measured),
            "seconds_per_step": med, "steps_per_s": 1.0 / med,
            "measured_window": [([begin] + ends)[warmup], ends[-1]]}


def worker_ours(spec: dict[str, Any]) -> dict[str, Any]:
    import deepspeed
    import pyarrow as pa
    import torch
    import torch.distributed as dist
    from transformers import AutoTokenizer

    from ttpa_ray.config import TrainConfig
    from ttpa_ray.models.registry import resolve
    from ttpa_ray.train.reference import ReferenceBatch
    from ttpa_ray.train.loop import COLUMNS, run_steps
    from ttpa_ray.train.stage import create_policy

    model_dir = resolve(spec["model"])
    rows, B, warmup, steps = spec["pairs"], spec["batch"], spec["warmup"], spec["steps"]
    packing = spec.get("packing", "pair")  # B counts turns with turn packing, else pairs
    gas = spec.get("gas", 1)
    # The matmul rate to set the step against: best of two measurements of 10 products each, one
    # before and one after the steps (one cold measurement on a shared machine reads low).
    peak_gflops = _matmul_gflops(repeats=10) if spec.get("count_flops") else None

    if spec.get("zero_ref"):  # the step case: no reference model in this process (the pipeline's is a
        logps = [(0.0, 0.0)] * len(rows)  # stage of its own); time and memory do not depend on the values
        ref_times, ref_window = [float("nan")], None
    else:
        # Reference pass (our reference stage's forward), timed per pair: warm-up on one pair, median of 2.
        ref = ReferenceBatch(str(model_dir), "float32", prefix_weight=1.0, batch_size=B, packing=packing)
        ref.logps(rows[:1])
        ref_times, ref_start = [], time.time()
        for _ in range(2):
            t0 = time.perf_counter()
            if packing == "turn":  # the whole data set: one forward per turn
                logps = ref.logps(rows)
            else:
                logps = [lp for s in range(0, len(rows), B) for lp in ref.logps(rows[s:s + B])]
            ref_times.append(time.perf_counter() - t0)
        ref_window = [ref_start, time.time()]
        del ref
    for r, (c, rj) in zip(rows, logps):
        r["ref_chosen_logps"], r["ref_rejected_logps"], r["weight"] = c, rj, 1.0

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    deepspeed.init_distributed(dist_backend="gloo")
    cfg = TrainConfig(zero_stage=0, micro_batch_size=B, gradient_accumulation_steps=gas, learning_rate=LR,
                      lr_scheduler="constant", warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=1.0, beta=BETA,
                      loss_type="sigmoid", dtype="float32", prefix_weight=1.0, max_steps=steps, epochs=steps * gas,
                      packing=packing, gradient_checkpointing=bool(spec.get("gradient_checkpointing")),
                      heap_mmap_threshold_kb=spec.get("heap_mmap_threshold_kb", 0))
    table = pa.Table.from_pylist(rows).select(COLUMNS)
    pad_id = AutoTokenizer.from_pretrained(model_dir).pad_token_id or 0
    policy = create_policy(model_dir, cfg, world=1, total_steps=steps, use_gpu=False)
    if spec.get("backward_allreduce"):  # as before create_policy skipped ZeRO-0's all-reduce at one rank
        policy.engine.enable_backward_allreduce = True
    import psutil

    rss_before_steps = psutil.Process().memory_info().rss / 2**20
    ends: list[float] = []
    t_begin = time.time()
    state = run_steps(policy, table, cfg, seed=0, rank=0, world=1, total=steps, pad_id=pad_id,
                      state={"step": 0, "history": []}, hooks=[lambda st: ends.append(time.time())])
    dist.destroy_process_group()
    if peak_gflops is not None:
        peak_gflops = max(peak_gflops, _matmul_gflops(repeats=10))
    hist = state["history"]
    return {**_step_seconds(t_begin, ends, warmup),
            "reference_pass_seconds_per_pair": statistics.median(ref_times) / len(rows), "reference_window": ref_window,
            "ref_logps": [[c, r] for c, r in logps],
            "step1_logps_chosen_mean": statistics.fmean(c for c, _ in logps),  # policy = reference at step 1
            "step1_logps_rejected_mean": statistics.fmean(r for _, r in logps),
            "losses": [h["loss"] for h in hist], "margins": [h["rewards/margins"] for h in hist],
            "grad_norms": [h["grad_norm"] for h in hist], "pairs_per_step": hist[-1]["pairs"],
            "torch_threads": torch.get_num_threads(), "peak_rss_mb": round(_rss_peak_mb(), 1),
            "rss_mb_before_steps": round(rss_before_steps, 1), "matmul_gflops": peak_gflops,
            **({"flops_per_step": step_flops(policy.module, rows, packing, B * gas, pad_id)}
               if spec.get("count_flops") else {})}


def worker_trl(spec: dict[str, Any], precompute: bool) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from ttpa_ray.models.registry import resolve

    model_dir = resolve(spec["model"])
    rows, B, warmup, steps = spec["pairs"], spec["batch"], spec["warmup"], spec["steps"]

    class PretokenizedDPOTrainer(DPOTrainer):
        """DPOTrainer on token ids as given: TRL's ``_prepare_dataset`` only turns text into
        ``prompt_ids``/``chosen_ids``/``rejected_ids`` (the collator's input); ours has them."""

        precompute_seconds = 0.0
        precompute_window: list[float] | None = None

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # noqa: ANN001, ANN202
            return dataset

        def _precompute_ref_logps(self, dataset, name, batch_size):  # noqa: ANN001, ANN202
            t0 = time.time()
            out = super()._precompute_ref_logps(dataset, name, batch_size)
            type(self).precompute_seconds += time.time() - t0
            type(self).precompute_window = [t0, time.time()]
            return out

    data = Dataset.from_list([{"prompt_ids": r["prompt_token_ids"], "chosen_ids": r["chosen_token_ids"],
                               "rejected_ids": r["rejected_token_ids"]} for r in rows])
    timer = step_timer(time.time)  # wall clock, comparable with the driver's load samples
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as out:
        args = DPOConfig(output_dir=out, per_device_train_batch_size=B, gradient_accumulation_steps=1,
                         max_steps=steps, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
                         weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", beta=BETA, loss_type=["sigmoid"],
                         max_length=None, gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True,
                         report_to="none", logging_steps=1, save_strategy="no", disable_tqdm=True, seed=0,
                         disable_dropout=True, dataloader_num_workers=0, precompute_ref_log_probs=precompute,
                         precompute_ref_batch_size=B, model_init_kwargs={"dtype": "float32"})
        tok = AutoTokenizer.from_pretrained(model_dir)
        trainer = PretokenizedDPOTrainer(model=str(model_dir), args=args, train_dataset=data, processing_class=tok,
                                         callbacks=[timer])
        ds = trainer.train_dataset
        same_ids = all(ds[i]["prompt_ids"] == r["prompt_token_ids"] and ds[i]["chosen_ids"] == r["chosen_token_ids"]
                       and ds[i]["rejected_ids"] == r["rejected_token_ids"] for i, r in enumerate(rows))
        batch = trainer.data_collator([ds[i] for i in range(len(rows))])
        collated_tokens = int(batch["attention_mask"].sum())
        want = sum(2 * len(r["prompt_token_ids"]) + len(r["chosen_token_ids"]) + len(r["rejected_token_ids"])
                   for r in rows)
        ref_pre = ([[c, r] for c, r in zip(list(ds["ref_chosen_logps"]), list(ds["ref_rejected_logps"]))]
                   if precompute else None)
        trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h and "step" in h]
    return {**_step_seconds(timer.begin, timer.ends, warmup),
            "same_token_ids": same_ids, "collated_tokens": collated_tokens, "expected_collated_tokens": want,
            "precompute_seconds_per_pair": PretokenizedDPOTrainer.precompute_seconds / len(rows) if precompute else None,
            "reference_window": PretokenizedDPOTrainer.precompute_window,
            "ref_logps": ref_pre,
            "step1_logps_chosen_mean": logs[0]["logps/chosen"], "step1_logps_rejected_mean": logs[0]["logps/rejected"],
            "losses": [h["loss"] for h in logs], "margins": [h["rewards/margins"] for h in logs],
            "grad_norms": [h.get("grad_norm") for h in logs], "optim": str(args.optim),
            "torch_threads": torch.get_num_threads(), "peak_rss_mb": round(_rss_peak_mb(), 1)}


def worker_memory(spec: dict[str, Any], zero: int, dtype: str = "float32") -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from ttpa_ray.config import TrainConfig
    from ttpa_ray.models.registry import resolve
    from ttpa_ray.train.reference import ReferenceBatch
    from ttpa_ray.runtime import init_ray
    from ttpa_ray.train.stage import PROFILE_ENV, run_train

    rows, steps = spec["pairs"], spec["steps"]
    model_dir = resolve(spec["model"])
    ref = ReferenceBatch(str(model_dir), "float32", prefix_weight=1.0, batch_size=2)
    n_params = sum(p.numel() for p in ref.model.parameters())
    for r, (c, rj) in zip(rows, ref.logps(rows)):
        r["ref_chosen_logps"], r["ref_rejected_logps"] = c, rj
    del ref
    init_ray(None, 2)

    @ray.remote(num_cpus=0.5)
    class Idle:
        """A Ray worker that imported what a train worker imports, and nothing else."""

        def rss_mb(self) -> float:
            import deepspeed  # noqa: F401
            import psutil
            import torch  # noqa: F401
            import transformers.models.llama.modeling_llama  # noqa: F401

            import ttpa_ray.train.stage  # noqa: F401
            import ttpa_ray.train.policy  # noqa: F401

            return psutil.Process().memory_info().rss / 2**20

    idle = Idle.remote()
    idle_rss = ray.get(idle.rss_mb.remote())
    ray.kill(idle)
    with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
        pairs = Path(tmp) / "pairs.parquet"
        pq.write_table(pa.Table.from_pylist(rows), pairs)
        cfg = TrainConfig(num_workers=2, zero_stage=zero, cpus_per_worker=0.5, threads=1, max_steps=steps,
                          epochs=steps, checkpoint_every=0, micro_batch_size=1, learning_rate=LR,
                          lr_scheduler="constant", warmup_ratio=0.0, beta=BETA, dtype=dtype,
                          gradient_checkpointing=spec.get("gradient_checkpointing", False))
        os.environ[PROFILE_ENV] = str(steps)  # peak tensor bytes per rank during the last step
        t0 = time.perf_counter()
        counts = run_train(cfg, spec["model"], pairs, Path(tmp) / "out")
        seconds = time.perf_counter() - t0
        history = [json.loads(x) for x in (Path(tmp) / "out" / "metrics.jsonl").read_text().splitlines()]
    ray.shutdown()
    return {"zero_stage": zero, "dtype": dtype, "idle_worker_rss_mb": round(idle_rss, 1), "params": n_params,
            "peak_tensor_mb_per_rank": counts["peak_tensor_mb_per_rank"],
            "step_start_tensor_mb_per_rank": counts.get("step_start_tensor_mb_per_rank"),
            "rss_mb_max_rank": [h["rss_mb_max_rank"] for h in history],
            "peak_rss_mb_max_rank": [h["peak_rss_mb_max_rank"] for h in history],
            "losses": [h["loss"] for h in history], "steps": counts["steps"], "run_seconds": round(seconds, 1)}


# --------------------------------------------------------------------------- driver


class OtherLoad:
    """CPU used by processes outside this bench's process tree (cores, sampled every second):
    the machine is shared, and a 2-thread step slows down a lot when another process takes a
    core. ``wait_quiet`` holds a measurement back until the others are idle; the load seen
    during a measurement is reported next to it."""

    def __init__(self) -> None:
        import psutil

        self.psutil = psutil
        self.me = psutil.Process()
        self.mine: set[int] = set()  # every pid ever seen in our tree (orphaned Ray workers stay ours)
        self.prev = self._cpu()
        self.prev_t = time.time()
        self.samples: list[tuple[float, float]] = []  # (time.time(), cores)
        self._stop = False
        self._thread: Any = None

    def _cpu(self) -> dict[int, tuple[float, float]]:
        """pid -> (CPU seconds so far, start time) of every process outside our tree."""
        self.mine |= {self.me.pid} | {c.pid for c in self.me.children(recursive=True)}
        out = {}
        for p in self.psutil.process_iter(["pid", "cpu_times", "create_time"]):
            t = p.info["cpu_times"]
            if p.info["pid"] not in self.mine and t is not None:
                out[p.info["pid"]] = (t.user + t.system, p.info["create_time"] or 0.0)
        return out

    def sample(self) -> float:
        now, t = self._cpu(), time.time()
        busy = 0.0
        for pid, (cpu, started) in now.items():
            if pid in self.prev:
                busy += max(0.0, cpu - self.prev[pid][0])
            elif started >= self.prev_t:  # started since the last sample: all its CPU time is new
                busy += cpu
        cores = busy / max(t - self.prev_t, 1e-3)
        self.prev, self.prev_t = now, t
        return cores

    def wait_quiet(self, below: float, seconds: int, max_wait: float) -> float:
        self.sample()
        t0, quiet = time.monotonic(), 0
        while quiet < seconds and time.monotonic() - t0 < max_wait:
            time.sleep(1.0)
            quiet = quiet + 1 if self.sample() < below else 0
        return round(time.monotonic() - t0, 1)

    def start(self) -> None:
        import threading

        self.samples, self._stop = [], False
        self.sample()

        def loop() -> None:
            while not self._stop:
                time.sleep(1.0)
                self.samples.append((time.time(), self.sample()))

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop = True
        self._thread.join()
        s = [c for _, c in self.samples] or [0.0]
        return {"other_processes_cpu_cores_mean": round(statistics.fmean(s), 2),
                "other_processes_cpu_cores_max": round(max(s), 2)}

    def during(self, window: list[float] | None) -> float | None:
        """Mean cores used by others over a wall-clock window (samples cover the second before them)."""
        if not window:
            return None
        s = [c for t, c in self.samples if window[0] < t <= window[1] + 1.0]
        return round(statistics.fmean(s), 2) if s else None


LOAD: OtherLoad | None = None
MAX_WAIT = 180.0


def _run(kind: str, spec: dict[str, Any], tmp: Path) -> dict[str, Any]:
    global LOAD
    if LOAD is None:
        LOAD = OtherLoad()
    spec_file = tmp / f"{kind}.json"
    spec_file.write_text(json.dumps(spec))
    waited = LOAD.wait_quiet(below=0.2, seconds=3, max_wait=MAX_WAIT)
    LOAD.start()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--spec", str(spec_file)],
                          capture_output=True, text=True)
    load = LOAD.stop()
    result_load = {"other_cpu_cores_measured_steps": None, "other_cpu_cores_reference_pass": None}
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if not line:
        raise SystemExit(f"{kind} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(line[-1].removeprefix("RESULT "))
    result_load["other_cpu_cores_measured_steps"] = LOAD.during(result.get("measured_window"))
    result_load["other_cpu_cores_reference_pass"] = LOAD.during(result.get("reference_window"))
    result.update(result_load)
    result["process_seconds"] = round(time.perf_counter() - t0, 1)
    result["waited_for_quiet_s"] = waited
    result.update(load)
    if proc.returncode != 0:  # results are in; note an abort at exit (seen with ZeRO-3, ENVIRONMENT.md)
        result["exit_code"] = proc.returncode
    print(f"  {kind}: {time.perf_counter() - t0:.0f} s (waited {waited:.0f} s for a quiet machine; other "
          f"processes used {load['other_processes_cpu_cores_mean']:.2f} cores on average, "
          f"{result_load['other_cpu_cores_measured_steps']} during the measured steps)", flush=True)
    return result


def _run_measured(kind: str, spec: dict[str, Any], tmp: Path, busy: float = 0.25, attempts: int = 3
                  ) -> dict[str, Any]:
    """A timed side, run again (up to ``attempts`` in all) while other processes took more than
    ``busy`` cores during its measured steps; the attempt with the quietest steps is kept."""
    runs = []
    for _ in range(attempts):
        runs.append(_run(kind, spec, tmp))
        if (runs[-1]["other_cpu_cores_measured_steps"] or 0.0) <= busy:
            break
        print(f"  {kind}: the machine was busy during the measured steps, measuring again", flush=True)
    best = min(runs, key=lambda r: r["other_cpu_cores_measured_steps"] or 0.0)
    best["attempts_other_cpu_cores_measured_steps"] = [r["other_cpu_cores_measured_steps"] for r in runs]
    return best


def _compare(ours: dict[str, Any], trl: dict[str, Any], trl_pre: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "step1_logps_chosen": {"ours": ours["step1_logps_chosen_mean"], "trl": trl["step1_logps_chosen_mean"],
                               "abs_diff": abs(ours["step1_logps_chosen_mean"] - trl["step1_logps_chosen_mean"])},
        "step1_logps_rejected": {"ours": ours["step1_logps_rejected_mean"], "trl": trl["step1_logps_rejected_mean"],
                                 "abs_diff": abs(ours["step1_logps_rejected_mean"] - trl["step1_logps_rejected_mean"])},
        "loss_max_abs_diff_per_step": max(abs(a - b) for a, b in zip(ours["losses"], trl["losses"])),
        "grad_norm_max_rel_diff_per_step": max(abs(a - b) / max(abs(b), 1e-12)
                                               for a, b in zip(ours["grad_norms"], trl["grad_norms"])),
        "note": "TRL logs the loss rounded to 4 decimals; grad norms are before clipping on both sides",
    }
    if trl_pre and trl_pre.get("ref_logps"):
        diffs = [abs(a - b) for x, y in zip(ours["ref_logps"], trl_pre["ref_logps"]) for a, b in zip(x, y)]
        out["per_pair_ref_logps_max_abs_diff"] = max(diffs)
    return out


def _turns_case(quick: bool, tmp: Path) -> dict[str, Any]:
    """Seconds per pair on demo-shaped turns: turn packing vs pair packing vs TRL (its
    precomputed-reference mode and its default), every side on the same 6 pairs per step."""
    from ttpa_ray.models.registry import resolve

    c = CASES["turns"]
    steps = c["warmup"] + (c["quick_steps"] if quick else c["steps"])
    rows = turn_pairs(resolve(c["model"]), c["turns"], c["k"])
    n = len(rows)
    specs = {"ours_turn": ("ours", {"packing": "turn", "batch": c["turns"]}),
             "ours_pair": ("ours", {"packing": "pair", "batch": n}),
             "trl_precompute": ("trl_precompute", {"batch": n}), "trl": ("trl", {"batch": n})}
    sides = {}
    for side, (kind, extra) in specs.items():
        spec = {"model": c["model"], "warmup": c["warmup"], "steps": steps, "pairs": rows} | extra
        sides[side] = _run_measured(kind, spec, tmp)
    per_pair = {k: v["seconds_per_step"] / n for k, v in sides.items()}
    speedup = {f"ours_turn_over_{k}": v / per_pair["ours_turn"] for k, v in per_pair.items() if k != "ours_turn"}
    diffs = [abs(a - b) for x, y in zip(sides["ours_turn"]["ref_logps"], sides["ours_pair"]["ref_logps"])
             for a, b in zip(x, y)]
    return {"model": c["model"], "turns": c["turns"], "rejected_per_turn": c["k"], "pairs_per_step": n,
            "prompt_tokens": [len(r["prompt_token_ids"]) for r in rows[::c["k"]]],
            "distinct_tokens_per_step": pair_tokens(rows),
            "seconds_per_pair": per_pair, "speedup": speedup, "goal_speedup_over_pair": GOALS["turns"],
            "goal_met": speedup["ours_turn_over_ours_pair"] >= GOALS["turns"],
            "reference_seconds_per_pair": {k: sides[k]["reference_pass_seconds_per_pair"]
                                           for k in ("ours_turn", "ours_pair")},
            "peak_rss_mb": {k: v["peak_rss_mb"] for k, v in sides.items()},
            "other_cpu_cores_measured_steps": {k: v["other_cpu_cores_measured_steps"] for k, v in sides.items()},
            "correctness": {"ref_logps_turn_vs_pair_max_abs_diff": max(diffs),
                            "loss_max_abs_diff_turn_vs_pair": max(abs(a - b) for a, b in zip(
                                sides["ours_turn"]["losses"], sides["ours_pair"]["losses"]))},
            "sides": {k: {kk: vv for kk, vv in v.items() if kk != "ref_logps"} for k, v in sides.items()}}


def _step_case(quick: bool, tmp: Path) -> dict[str, Any]:
    """The demo's optimizer step (4 turns of 3 rejected each, fp32, ZeRO-0, 1 worker): peak RSS
    and the share of the machine's matmul rate the step reaches (useful FLOPs / step seconds /
    the highest fp32 matmul GFLOP/s any side measured in its own process), in one run:

    - ``pair_before``: pair packing, 4 pairs per micro-batch (the demo until turn packing), and
      DeepSpeed's one-rank gradient all-reduce on (as before it was skipped);
    - ``turn_before``: turn packing, 1 turn per micro-batch accumulated over 4, all-reduce on
      (the demo's train section until this run);
    - ``turn``: the same, all-reduce skipped at one rank (now: the demo's train section);
    - ``turn_low_memory``: ``turn`` + ``gradient_checkpointing`` + ``heap_mmap_threshold_kb: 128``.

    No reference model in the process (the reference is a stage of its own)."""
    from ttpa_ray.models.registry import resolve

    c = CASES["step"]
    steps = c["warmup"] + (c["quick_steps"] if quick else c["steps"])
    rows = turn_pairs(resolve(c["model"]), c["turns"], c["k"])
    n = len(rows)
    common = {"model": c["model"], "warmup": c["warmup"], "steps": steps, "pairs": rows, "zero_ref": True,
              "count_flops": True}
    turn = {"packing": "turn", "batch": 1, "gas": c["turns"]}
    specs = {"pair_before": {"packing": "pair", "batch": 4, "gas": n // 4, "backward_allreduce": True},
             "turn_before": turn | {"backward_allreduce": True},
             "turn": turn,
             "turn_low_memory": turn | {"gradient_checkpointing": True, "heap_mmap_threshold_kb": 128}}
    sides = {side: _run_measured("ours", common | extra, tmp) for side, extra in specs.items()}
    peak = max(r["matmul_gflops"] for r in sides.values())
    out: dict[str, Any] = {"model": c["model"], "turns": c["turns"], "rejected_per_turn": c["k"], "pairs_per_step": n,
                           "goal_peak_rss_mb": GOALS["step_rss_mb"], "goal_flop_share": GOALS["step_flop_share"],
                           "matmul_gflops_max_over_sides": peak, "sides": {}}
    for side, r in sides.items():
        f = r["flops_per_step"]
        achieved = f["flops"] / r["seconds_per_step"] / 1e9
        out["sides"][side] = {"seconds_per_step": round(r["seconds_per_step"], 3),
                              "seconds_per_pair": round(r["seconds_per_step"] / n, 3),
                              "peak_rss_mb": r["peak_rss_mb"], "rss_mb_before_steps": r["rss_mb_before_steps"],
                              "gflops_per_step": round(f["flops"] / 1e9, 1), "achieved_gflops": round(achieved, 1),
                              "matmul_gflops": r["matmul_gflops"], "flop_share": round(achieved / peak, 3),
                              "flop_share_own_process": round(achieved / r["matmul_gflops"], 3),
                              "positions": f["positions"], "head_positions": f["head_positions"],
                              "other_cpu_cores_measured_steps": r["other_cpu_cores_measured_steps"],
                              "step_seconds_all": r["step_seconds_all"], "losses": r["losses"]}
    return out


def _speed_case(name: str, quick: bool, tmp: Path) -> dict[str, Any]:
    from ttpa_ray.models.registry import resolve

    c = CASES[name]
    steps = c["warmup"] + (c["quick_steps"] if quick else c["steps"])
    rows = short_pairs(c["batch"], vocab=1000) if name == "short" else long_pairs(resolve(c["model"]), c["batch"])
    spec = {"model": c["model"], "batch": c["batch"], "warmup": c["warmup"], "steps": steps, "pairs": rows}
    sides = {k: _run_measured(k, spec, tmp) for k in ("ours", "trl", "trl_precompute")}
    base = sides["ours"]["seconds_per_step"]
    summary = {k: {"steps_per_s": v["steps_per_s"], "seconds_per_step": v["seconds_per_step"],
                   "other_cpu_cores_measured_steps": v["other_cpu_cores_measured_steps"]} for k, v in sides.items()}
    speedup = {f"ours_over_{k}": v["seconds_per_step"] / base for k, v in sides.items() if k != "ours"}
    goal = GOALS[name]
    return {"model": c["model"], "batch_pairs": c["batch"], "tokens_per_step": pair_tokens(rows),
            "shapes": shape_summary(rows), "summary": summary, "speedup": speedup, "goal_speedup": goal,
            "goal_met": {k: v >= goal for k, v in speedup.items()},
            "reference_seconds_per_pair": {
                "ours_reference_pass": sides["ours"]["reference_pass_seconds_per_pair"],
                "trl_precompute_pass": sides["trl_precompute"]["precompute_seconds_per_pair"],
                "other_cpu_cores": {"ours": sides["ours"]["other_cpu_cores_reference_pass"],
                                    "trl_precompute": sides["trl_precompute"]["other_cpu_cores_reference_pass"]},
                "note": "ours: ReferenceBatch.logps in batches of the train batch size, median of 2 passes after a "
                        "warm-up; TRL: its one precompute pass (batch = precompute_ref_batch_size = train batch)"},
            "correctness": _compare(sides["ours"], sides["trl"], sides["trl_precompute"]),
            "sides": {k: {kk: vv for kk, vv in v.items() if kk != "ref_logps"} for k, v in sides.items()},
            "ref_logps": {"ours": sides["ours"]["ref_logps"], "trl_precompute": sides["trl_precompute"]["ref_logps"]}}


def _memory_case(quick: bool, tmp: Path, prompt_tokens: int | None = None,
                 gradient_checkpointing: bool = False) -> dict[str, Any]:
    """ZeRO-0 vs ZeRO-3 at 2 workers, in fp32 (the CPU default here) and bf16 (the GPU recipe's
    dtype): the peak bytes of live tensors per rank (ttpa_ray/train/memory_profile.py: the CPU
    counterpart of torch.cuda.max_memory_allocated, during the last step), the live tensors
    between steps (the model states ZeRO partitions) and RSS. ``prompt_tokens``: keep only the
    last N prompt tokens of each pair (activations small next to the model states)."""
    from ttpa_ray.models.registry import resolve

    rows = long_pairs(resolve("smollm2-135m-instruct"), 2)
    if prompt_tokens:
        for r in rows:
            r["prompt_token_ids"] = r["prompt_token_ids"][-prompt_tokens:]
    spec = {"model": "smollm2-135m-instruct", "pairs": rows, "steps": 2, "gradient_checkpointing": gradient_checkpointing}
    out: dict[str, Any] = {"model": "smollm2-135m-instruct", "workers": 2, "micro_batch_pairs": 1,
                           "gradient_checkpointing": gradient_checkpointing,
                           "prompt_tokens": [len(r["prompt_token_ids"]) for r in rows],
                           "steps": spec["steps"], "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           "goal_ratio": GOALS["memory"], "by_dtype": {}}
    for dtype in ("float32", "bfloat16"):
        runs = {z: _run(f"memory{z}-{dtype}", spec, tmp) for z in (0, 3)}
        tensor = {z: max(r["peak_tensor_mb_per_rank"]) for z, r in runs.items()}
        states = {z: max(r["step_start_tensor_mb_per_rank"] or [float("nan")]) for z, r in runs.items()}
        rss = {z: r["rss_mb_max_rank"][-1] for z, r in runs.items()}
        p = runs[0]["params"]
        out["by_dtype"][dtype] = {
            "runs": {f"zero{z}": r for z, r in runs.items()},
            "peak_tensor_mb_per_rank": {"zero0": tensor[0], "zero3": tensor[3]},
            "step_start_tensor_mb_per_rank": {"zero0": states[0], "zero3": states[3]},
            "rss_mb_per_rank_last_step": {"zero0": rss[0], "zero3": rss[3]},
            "ratio_zero3_over_zero0": {"peak_tensor": round(tensor[3] / tensor[0], 3),
                                       "step_start_tensor": round(states[3] / states[0], 3),
                                       "rss_last_step": round(rss[3] / rss[0], 3)},
            "goal_met_peak_tensor": tensor[3] / tensor[0] <= GOALS["memory"],
            "model_states_mb_expected": {"zero0": round(16 * p / 2**20, 1), "zero3_per_rank": round(8 * p / 2**20, 1),
                                         "note": "params + grads + AdamW m, v: 16 bytes/param, ZeRO-3 halves it "
                                                 "over 2 ranks (before DeepSpeed's own copies and activations)"},
        }
    return out


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {k: version(k) for k in ("torch", "transformers", "trl", "deepspeed", "ray", "accelerate", "datasets")}


def _machine() -> dict[str, Any]:
    import psutil

    cpu = next((x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                if x.startswith("model name")), platform.processor())
    return {"arch": platform.machine(), "cpus": os.cpu_count(), "cpu": cpu,
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version()}


def _table(report: dict[str, Any]) -> str:
    lines = [f"{'case':<7} {'side':<16} {'s/step':>8} {'steps/s':>8} {'speedup':>8} {'others':>7}  goal",
             "-" * 72]
    for name in ("short", "long"):
        case = report["cases"].get(name)
        if not case:
            continue
        for side, v in case["summary"].items():
            sp = case["speedup"].get(f"ours_over_{side}")
            goal = "" if sp is None else f">= {case['goal_speedup']}x: {'met' if sp >= case['goal_speedup'] else 'NOT met'}"
            lines.append(f"{name:<7} {side:<16} {v['seconds_per_step']:>8.3f} {v['steps_per_s']:>8.2f} "
                         f"{'' if sp is None else f'{sp:.2f}x':>8} {v.get('other_cpu_cores_measured_steps') or 0.0:>7.2f}  {goal}")
        cor = case["correctness"]
        lines.append(f"{'':<7} step-1 logps |ours-trl|: chosen {cor['step1_logps_chosen']['abs_diff']:.2e}, "
                     f"rejected {cor['step1_logps_rejected']['abs_diff']:.2e}; per-pair ref "
                     f"{cor.get('per_pair_ref_logps_max_abs_diff', float('nan')):.2e}; loss/step "
                     f"{cor['loss_max_abs_diff_per_step']:.2e}")
    turns = report["cases"].get("turns")
    if turns:
        for side, v in turns["seconds_per_pair"].items():
            sp = turns["speedup"].get(f"ours_turn_over_{side}")
            lines.append(f"{'turns':<7} {side:<16} {v:>8.3f} s/pair {'' if sp is None else f'{sp:.2f}x':>8} "
                         f"{turns['other_cpu_cores_measured_steps'][side] or 0.0:>7.2f}  peak RSS "
                         f"{turns['peak_rss_mb'][side]:.0f} MB")
        lines.append(f"{'':<7} turn vs pair: ref logps max |diff| "
                     f"{turns['correctness']['ref_logps_turn_vs_pair_max_abs_diff']:.2e}, loss/step "
                     f"{turns['correctness']['loss_max_abs_diff_turn_vs_pair']:.2e}; goal >= "
                     f"{turns['goal_speedup_over_pair']}x over pair packing: "
                     f"{'met' if turns['goal_met'] else 'NOT met'}")
    step = report["cases"].get("step")
    if step:
        for side, v in step["sides"].items():
            lines.append(f"{'step':<7} {side:<16} {v['seconds_per_step']:>8.3f} s/step, peak RSS {v['peak_rss_mb']:.0f} MB "
                         f"(goal <= {step['goal_peak_rss_mb']}), {v['achieved_gflops']:.1f} of "
                         f"{step['matmul_gflops_max_over_sides']:.0f} "
                         f"GFLOP/s = {v['flop_share']:.0%} (goal >= {step['goal_flop_share']:.0%})")
    for case in ("memory", "memory_short", "memory_ckpt"):
        mem = report["cases"].get(case) or {}
        for dtype, m in mem.get("by_dtype", {}).items():
            t, r = m["peak_tensor_mb_per_rank"], m["rss_mb_per_rank_last_step"]
            lines.append(f"{case} {dtype}: peak tensors/rank (MB) zero0 {t['zero0']:.0f}, zero3 {t['zero3']:.0f}: "
                         f"ratio {m['ratio_zero3_over_zero0']['peak_tensor']:.2f} (goal <= {mem['goal_ratio']}); "
                         f"RSS/rank zero0 {r['zero0']:.0f}, zero3 {r['zero3']:.0f}: "
                         f"ratio {m['ratio_zero3_over_zero0']['rss_last_step']:.2f}")
    lines.append("others: CPU cores used by other processes on this shared machine during the measured steps (mean)")
    return "\n".join(lines)


def main() -> None:
    global MAX_WAIT
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer measured steps (a smoke run of the bench)")
    ap.add_argument("--cases", default="short,long,turns,step,memory,memory_short,memory_ckpt",
                    help="comma-separated subset of short,long,turns,step,memory,memory_short,memory_ckpt")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train.json"))
    ap.add_argument("--max-wait", type=float, default=MAX_WAIT,
                    help="seconds to wait for other processes to go idle before each measurement")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from ttpa_ray.runtime import setup_env

    setup_env()
    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        if args.worker == "ours":
            result = worker_ours(spec)
        elif args.worker.startswith("trl"):
            result = worker_trl(spec, precompute=args.worker == "trl_precompute")
        else:
            zero, _, dtype = args.worker.removeprefix("memory").partition("-")
            result = worker_memory(spec, zero=int(zero), dtype=dtype or "float32")
        print("RESULT " + json.dumps(result), flush=True)
        return

    MAX_WAIT = args.max_wait
    t0 = time.perf_counter()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    report: dict[str, Any] = {"bench": "train", "quick": args.quick, "machine": _machine(), "versions": _versions(),
                              "config": {
        "common": f"1 worker, fp32, sigmoid DPO beta={BETA}, torch AdamW lr={LR} (constant, no weight decay), "
                  "grad clipping 1.0, dropout off, no gradient checkpointing, torch threads = all cores; the data set "
                  "is one batch, so every step trains on the same token ids on every side",
        "ours": "ttpa_ray.train.loop.run_steps + Policy (DeepSpeed ZeRO-0, 1-process gloo group), shared-prefix forward "
                "(ttpa_ray.train.pair_forward); reference log-probs PRECOMPUTED before training by design (the reference "
                "stage): not in the step time, its cost is reference_seconds_per_pair.ours_reference_pass",
        "trl": "trl DPOTrainer (1.16) with use_cpu=True, report_to=none, optim=adamw_torch (TRL's default is "
               "adamw_torch_fused), max_length=None, gradient_checkpointing=False, bf16=False, logging_steps=1, fed "
               "pre-tokenized ids (its _prepare_dataset skipped); 'trl' = reference model forward every step (TRL "
               "default), 'trl_precompute' = precompute_ref_log_probs=True (precompute pass timed separately)",
        "timing": "seconds/step = median over the steps after the warm-up of the time between consecutive step ends "
                  "(model load excluded); tokens_per_step = prompt + chosen + rejected tokens of the batch",
    }, "cases": {}}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for name in cases:
            print(f"case {name}", flush=True)
            if name == "memory":
                report["cases"][name] = _memory_case(args.quick, Path(tmp))
            elif name == "memory_short":
                report["cases"][name] = _memory_case(args.quick, Path(tmp), prompt_tokens=64)
            elif name == "memory_ckpt":
                report["cases"][name] = _memory_case(args.quick, Path(tmp), gradient_checkpointing=True)
            elif name == "turns":
                report["cases"][name] = _turns_case(args.quick, Path(tmp))
            elif name == "step":
                report["cases"][name] = _step_case(args.quick, Path(tmp))
            else:
                report["cases"][name] = _speed_case(name, args.quick, Path(tmp))
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    previous = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    if previous.get("quick") == args.quick:  # a subset of cases updates those, keeps the others
        report["cases"] = previous.get("cases", {}) | report["cases"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(_table(report))
    print(f"total {report['total_seconds']:.0f} s; written to {args.out}")


if __name__ == "__main__":
    main()
