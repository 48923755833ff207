"""The train step on one GPU: ours (turn packing, the packed rows' fused attention) against
TRL 1.16's ``DPOTrainer`` on the same token ids, in tokens/s and as a share of the GPU's bf16
peak. Launched by ``bash bench/gpu_check.sh`` (which installs the wheels a GPU machine lacks);
``--cpu`` (or no CUDA) runs a tiny config on the CPU in fp32 in seconds, as the tests do.

    bash bench/gpu_check.sh [--cpu] [--steps N] [--sides ours,ours_dense,trl] [--out FILE]

The model is randomly initialised from a Qwen2.5-0.5B-sized config written here (no weights are
needed; the step's cost does not depend on them), saved once and loaded by every side. The
data are demo-shaped turns of random token ids: each prompt (500-700 tokens) has a chosen call
and K = 3 rejected ones that branch from it at different tokens; the data set is one optimizer
step, so every step on every side trains on exactly the same ids. Each side runs in a fresh
process:

- ``ours``: :func:`ttpa_ray.train.loop.run_steps` on :class:`ttpa_ray.train.policy.Policy`
  (DeepSpeed ZeRO-0, bf16 on GPUs), ``train.packing: turn``, ``train.attention: auto`` (the
  FlexAttention block mask on GPUs, the dense mask on CPUs), all turns in one micro-batch.
  Reference log-probs are 0 (ours precomputes them in a stage of its own; the step's cost does
  not depend on their values), so step 1's rewards / beta are its policy log-probs.
- ``ours_dense``: the same with ``train.attention: dense`` (sdpa with a dense mask): what the
  fused path changes. GPUs only (on CPUs it is ``ours``).
- ``trl``: ``DPOTrainer`` fed the same ids (its ``_prepare_dataset``, which only tokenizes
  text, is skipped, as in bench/train.py), all pairs in one batch, ``precompute_ref_log_probs``
  (its reference pass is not in the step time either), bf16 mixed precision on GPUs (fp32
  weights, as TRL's ``bf16=True`` runs them), sdpa attention, torch AdamW on both sides.

Printed and written to ``--out`` (on a GPU bench/results/gpu_check.json): seconds per step (the
median over the steps after the warm-up, which holds the kernels' compilation), pair tokens
per second (prompt + chosen + rejected of every pair, the same count on both sides), useful
FLOPs per second (bench/flops.py's count, each prompt once: the same numerator on both sides)
and their share of this GPU's measured bf16 matmul rate (8192^3) and of the datasheet's dense
bf16 peak (989 TFLOP/s on an H100 SXM or H200), peak GPU memory, and how far step 1's
log-probs of the two trainers are apart.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flops import DATASHEET_BF16_TFLOPS, matmul_gflops, step_flops, step_timer

BETA, LR, PAD, EOS = 0.1, 1e-6, 0, 1
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# Qwen2.5-0.5B's shape (its config.json): 494 M parameters, 358 M of them outside the embedding.
QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                  rope_parameters={"rope_type": "default", "rope_theta": 1e6}, rms_norm_eps=1e-6,
                  tie_word_embeddings=True, use_sliding_window=False)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, rope_parameters={"rope_type": "default",
            "rope_theta": 1e4}, rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False)
MODES = {  # model, data shape, steps, the peak's matmul
    "gpu": {"model": QWEN25_05B, "turns": 4, "k": 3, "prompt": (500, 700), "call": (30, 48), "warmup": 3,
            "steps": 10, "matmul": 8192, "dtype": "bfloat16"},
    "cpu": {"model": TINY, "turns": 2, "k": 3, "prompt": (40, 60), "call": (12, 20), "warmup": 1, "steps": 2,
            "matmul": 1024, "dtype": "float32"},
}


def demo_turns(turns: int, k: int, vocab: int, prompt: tuple[int, int], call: tuple[int, int], seed: int = 0
               ) -> list[dict[str, Any]]:
    """Demo-shaped pairs of random ids: per turn a prompt, a chosen call ending in EOS and ``k``
    rejected calls that share its first ``d`` tokens (``d`` different for each) and then go
    their own way, as TPS branches inside a call do. Pairs of a turn have consecutive ids."""
    rng = random.Random(seed)

    def ids(n: int) -> list[int]:
        return [rng.randrange(3, vocab) for _ in range(n)]

    rows: list[dict[str, Any]] = []
    for _ in range(turns):
        p, n_c = ids(rng.randint(*prompt)), rng.randint(*call)
        chosen = ids(n_c - 1) + [EOS]
        for d in sorted(rng.sample(range(2, n_c - 2), k)):
            tail = ids(max(2, n_c - d + rng.randint(-3, 3)) - 1) + [EOS]
            if tail[0] == chosen[d]:
                tail[0] = 3 + (tail[0] - 2) % (vocab - 3)
            rows.append({"id": len(rows), "prompt_token_ids": p, "chosen_token_ids": chosen,
                         "rejected_token_ids": chosen[:d] + tail, "divergence_index": d})
    return rows


def save_model(folder: Path, config: dict[str, Any], dtype: str) -> None:
    """A randomly initialised Qwen2 causal LM of ``config`` and a three-token tokenizer (pad,
    eos, unk: the trainers only read their ids) saved as an HF folder."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(**config, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=None)
    Qwen2ForCausalLM(cfg).to(getattr(torch, dtype)).save_pretrained(folder)
    vocab = {"<pad>": PAD, "<eos>": EOS, "<unk>": 2}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")), pad_token="<pad>",
                            eos_token="<eos>", unk_token="<unk>").save_pretrained(folder)


def pair_tokens(rows: list[dict[str, Any]]) -> int:
    """prompt + chosen + rejected tokens of every pair: the work a trainer of pairs is given."""
    return sum(len(r["prompt_token_ids"]) + len(r["chosen_token_ids"]) + len(r["rejected_token_ids"]) for r in rows)


# --------------------------------------------------------------------------- workers (fresh processes)


def _device_facts(spec: dict[str, Any]) -> dict[str, Any]:
    """This process's device, its matmul rate (the peak to set the step against) and a sync."""
    import torch

    gpu = spec["device"] == "cuda"
    dtype = getattr(torch, spec["dtype"])
    return {"device": torch.cuda.get_device_name(0) if gpu else platform.processor() or platform.machine(),
            "matmul_gflops": matmul_gflops(spec["matmul"], repeats=10 if gpu else 5, device=spec["device"],
                                           dtype=dtype)}


def _sync(gpu: bool) -> None:
    if gpu:
        import torch

        torch.cuda.synchronize()


def _timing(ends: list[float], begin: float, warmup: int, gpu: bool) -> dict[str, Any]:
    import resource

    import torch

    times = [b - a for a, b in zip([begin] + ends[:-1], ends)]
    return {"step_seconds_all": [round(t, 4) for t in times], "seconds_per_step": statistics.median(times[warmup:]),
            "peak_memory_gb": round((torch.cuda.max_memory_allocated() if gpu else
                                     resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30, 2)}


def worker_ours(spec: dict[str, Any]) -> dict[str, Any]:
    gpu = spec["device"] == "cuda"
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if gpu else "cpu")  # before deepspeed loads
    import deepspeed
    import pyarrow as pa
    import torch.distributed as dist

    from ttpa_ray.config import TrainConfig
    from ttpa_ray.train.loop import COLUMNS, run_steps
    from ttpa_ray.train.policy import Policy, policy_parts

    facts = _device_facts(spec)
    rows = [r | {"ref_chosen_logps": 0.0, "ref_rejected_logps": 0.0, "weight": 1.0} for r in spec["rows"]]
    steps, turns = spec["warmup"] + spec["steps"], spec["turns"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    deepspeed.init_distributed(dist_backend="nccl" if gpu else "gloo")
    cfg = TrainConfig(zero_stage=0, micro_batch_size=turns, gradient_accumulation_steps=1, learning_rate=LR,
                      lr_scheduler="constant", warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=1.0, beta=BETA,
                      loss_type="sigmoid", dtype=spec["dtype"], max_steps=steps, epochs=steps, packing="turn",
                      use_gpu=gpu, attention=spec["attention"])
    model_dir = Path(spec["model_dir"])
    parts = policy_parts(model_dir, cfg, world=1, total_steps=steps, use_gpu=gpu)
    engine, _, _, _ = deepspeed.initialize(model=parts.model, optimizer=parts.optimizer, lr_scheduler=parts.scheduler,
                                           config=parts.ds_config)
    policy = Policy(engine, cfg, model_dir, parts.hf_ds_config)
    ends: list[float] = []

    def step_end(_: dict[str, Any]) -> None:
        _sync(gpu)
        ends.append(time.perf_counter())

    begin = time.perf_counter()
    state = run_steps(policy, pa.Table.from_pylist(rows).select(COLUMNS), cfg, seed=0, rank=0, world=1, total=steps,
                      pad_id=PAD, state={"step": 0, "history": []}, hooks=[step_end])
    hist = state["history"]
    out = {**facts, **_timing(ends, begin, spec["warmup"], gpu),
           "attn_implementation": policy.module.config._attn_implementation or "default",
           "optimizer": type(parts.optimizer).__name__, "pairs_per_step": hist[0]["pairs"],
           "step1_logps_chosen_mean": hist[0]["rewards/chosen"] / BETA,   # reference log-probs are 0
           "step1_logps_rejected_mean": hist[0]["rewards/rejected"] / BETA,
           "losses": [h["loss"] for h in hist],
           "flops": step_flops(policy.module, spec["rows"], "turn", len(rows), PAD)}
    dist.destroy_process_group()
    return out


def worker_trl(spec: dict[str, Any]) -> dict[str, Any]:
    gpu = spec["device"] == "cuda"
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    facts = _device_facts(spec)
    rows = spec["rows"]

    class PretokenizedDPOTrainer(DPOTrainer):
        """DPOTrainer on the token ids as given (``_prepare_dataset`` only tokenizes text)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # noqa: ANN001, ANN202
            return dataset

    data = Dataset.from_list([{"prompt_ids": r["prompt_token_ids"], "chosen_ids": r["chosen_token_ids"],
                               "rejected_ids": r["rejected_token_ids"]} for r in rows])
    timer = step_timer(time.perf_counter, lambda: _sync(gpu))
    with tempfile.TemporaryDirectory(prefix="gpu-check-trl-") as out:
        args = DPOConfig(output_dir=out, per_device_train_batch_size=len(rows), gradient_accumulation_steps=1,
                         max_steps=spec["warmup"] + spec["steps"], learning_rate=LR, lr_scheduler_type="constant",
                         warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", beta=BETA,
                         loss_type=["sigmoid"], max_length=None, gradient_checkpointing=False, bf16=gpu, fp16=False,
                         use_cpu=not gpu, report_to="none", logging_steps=1, save_strategy="no", disable_tqdm=True,
                         seed=0, disable_dropout=True, dataloader_num_workers=0, precompute_ref_log_probs=True,
                         precompute_ref_batch_size=len(rows), model_init_kwargs={"dtype": "float32"})
        trainer = PretokenizedDPOTrainer(model=spec["model_dir"], args=args, train_dataset=data, callbacks=[timer],
                                         processing_class=AutoTokenizer.from_pretrained(spec["model_dir"]))
        ds = trainer.train_dataset
        same_ids = all(ds[i]["prompt_ids"] == r["prompt_token_ids"] and ds[i]["chosen_ids"] == r["chosen_token_ids"]
                       and ds[i]["rejected_ids"] == r["rejected_token_ids"] for i, r in enumerate(rows))
        trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h and "step" in h]
    return {**facts, **_timing(timer.ends, timer.begin, spec["warmup"], gpu), "same_token_ids": same_ids,
            "attn_implementation": trainer.model.config._attn_implementation, "optimizer": str(args.optim),
            "pairs_per_step": len(rows), "step1_logps_chosen_mean": logs[0]["logps/chosen"],
            "step1_logps_rejected_mean": logs[0]["logps/rejected"], "losses": [h["loss"] for h in logs],
            "flops": step_flops(trainer.model, rows, "turn", len(rows), PAD)}


# --------------------------------------------------------------------------- driver


def _run_side(kind: str, spec: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """One side in a fresh process: its RESULT line, or its error (the other sides still run)."""
    spec_file = tmp / f"{kind}.json"
    spec_file.write_text(json.dumps(spec))
    t0 = time.perf_counter()
    # Each side is a one-process job of its own: a process group left in the environment (a
    # launcher's RANK / MASTER_PORT ...) would make TRL's accelerate join it.
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--spec", str(spec_file)],
                          capture_output=True, text=True, env=env)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        print(f"  {kind}: FAILED (exit {proc.returncode}); its last output:\n{proc.stderr[-3000:]}", flush=True)
        return {"error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
    print(f"  {kind}: {time.perf_counter() - t0:.0f} s in all (start, load, compile, steps)", flush=True)
    return json.loads(line[-1].removeprefix("RESULT ")) | {"process_seconds": round(time.perf_counter() - t0, 1)}


def _summary(r: dict[str, Any], tokens: int, datasheet: float | None) -> dict[str, Any]:
    """Rates of one side: pair tokens/s, useful TFLOP/s and their share of the peaks."""
    s, flops = r["seconds_per_step"], r["flops"]["flops"]
    out = {"seconds_per_step": round(s, 4), "tokens_per_s": round(tokens / s, 1),
           "useful_tflops_per_s": round(flops / s / 1e12, 3), "matmul_tflops_measured": r["matmul_gflops"] / 1e3,
           "share_of_measured_peak": round(flops / s / (r["matmul_gflops"] * 1e9), 4),
           "peak_memory_gb": r["peak_memory_gb"], "attn_implementation": r["attn_implementation"]}
    if datasheet:
        out["share_of_datasheet_peak"] = round(flops / s / (datasheet * 1e12), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="store_true", help="tiny config, fp32, on the CPU (automatic without CUDA)")
    ap.add_argument("--sides", default=None, help="comma-separated subset of ours,ours_dense,trl (default: all; "
                    "ours_dense on GPUs only)")
    ap.add_argument("--steps", type=int, default=None, help="measured steps after the warm-up")
    ap.add_argument("--warmup", type=int, default=None, help="steps left out of the median (compilation)")
    ap.add_argument("--out", default=None, help="default: bench/results/gpu_check.json on a GPU; the CPU mode's "
                    "(a smoke run, not a measurement) $TTPA_CACHE_DIR/gpu_check_cpu.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from ttpa_ray.runtime import setup_env

    setup_env()
    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        result = worker_ours(spec) if args.worker.startswith("ours") else worker_trl(spec)
        print("RESULT " + json.dumps(result), flush=True)
        return

    import torch

    from ttpa_ray.runtime import cache_dir

    gpu = torch.cuda.is_available() and not args.cpu
    out_path = Path(args.out or (Path(__file__).parent / "results" / "gpu_check.json" if gpu
                                 else cache_dir() / "gpu_check_cpu.json"))
    mode = MODES["gpu" if gpu else "cpu"]
    sides = (args.sides or ("ours,ours_dense,trl" if gpu else "ours,trl")).split(",")
    if unknown := [s for s in sides if s not in ("ours", "ours_dense", "trl")]:
        raise SystemExit(f"--sides: unknown {unknown}; choose from ours, ours_dense, trl")
    rows = demo_turns(mode["turns"], mode["k"], mode["model"]["vocab_size"], mode["prompt"], mode["call"])
    tokens = pair_tokens(rows)
    device_name = torch.cuda.get_device_name(0) if gpu else platform.processor() or platform.machine()
    datasheet = next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in device_name), None) if gpu else None
    print(f"gpu_check on {device_name} ({'GPU, bf16' if gpu else 'CPU, fp32, tiny config'}): {len(rows)} pairs in "
          f"{mode['turns']} turns, prompts {[len(r['prompt_token_ids']) for r in rows[::mode['k']]]} tokens, "
          f"{tokens} pair tokens per step; sides {sides}", flush=True)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        model_dir = Path(tmp) / "model"
        save_model(model_dir, mode["model"], mode["dtype"])
        common = {"model_dir": str(model_dir), "rows": rows, "turns": mode["turns"], "dtype": mode["dtype"],
                  "device": "cuda" if gpu else "cpu", "matmul": mode["matmul"],
                  "warmup": args.warmup if args.warmup is not None else mode["warmup"],
                  "steps": args.steps or mode["steps"]}
        for side in sides:
            spec = common | {"attention": "dense" if side == "ours_dense" else "auto"}
            results[side] = _run_side(side, spec, Path(tmp))
    ok = {k: v for k, v in results.items() if "error" not in v}
    report: dict[str, Any] = {
        "bench": "gpu_check", "mode": "gpu" if gpu else "cpu", "device": device_name,
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "versions": _versions(),
        "model": mode["model"], "dtype": mode["dtype"], "turns": mode["turns"], "rejected_per_turn": mode["k"],
        "pairs_per_step": len(rows), "pair_tokens_per_step": tokens, "warmup_steps": common["warmup"],
        "measured_steps": common["steps"], "datasheet_bf16_tflops": datasheet,
        "summary": {k: _summary(v, tokens, datasheet) for k, v in ok.items()}, "sides": results}
    if "ours" in ok and "trl" in ok:
        report["ours_over_trl"] = round(ok["trl"]["seconds_per_step"] / ok["ours"]["seconds_per_step"], 3)
        report["step1_logps_abs_diff"] = {
            s: abs(ok["ours"][f"step1_logps_{s}_mean"] - ok["trl"][f"step1_logps_{s}_mean"])
            for s in ("chosen", "rejected")}
    if "ours" in ok and "ours_dense" in ok:
        report["fused_over_dense"] = round(ok["ours_dense"]["seconds_per_step"] / ok["ours"]["seconds_per_step"], 3)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2))
    print(_table(report))
    print(f"written to {out_path}")
    if len(ok) < len(results):
        raise SystemExit(f"sides failed: {sorted(set(results) - set(ok))} (their errors are in {out_path})")


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {k: v(k) for k in ("torch", "transformers", "trl", "deepspeed", "datasets", "accelerate")} | {
        "python": platform.python_version()}


def _table(report: dict[str, Any]) -> str:
    lines = [f"{'side':<11} {'attention':<15} {'s/step':>8} {'tokens/s':>10} {'TFLOP/s':>8} {'of measured':>11} "
             f"{'of datasheet':>12} {'peak GB':>8}"]
    for side, s in report["summary"].items():
        sheet = f"{s['share_of_datasheet_peak']:.1%}" if "share_of_datasheet_peak" in s else "-"
        lines.append(f"{side:<11} {s['attn_implementation']:<15} {s['seconds_per_step']:>8.3f} "
                     f"{s['tokens_per_s']:>10.0f} {s['useful_tflops_per_s']:>8.2f} "
                     f"{s['share_of_measured_peak']:>11.1%} {sheet:>12} {s['peak_memory_gb']:>8.2f}")
    measured = max((s["matmul_tflops_measured"] for s in report["summary"].values()), default=0.0)
    lines.append(f"peak: measured {report['dtype']} matmul {measured:.1f} TFLOP/s in each side's process (max shown); "
                 f"datasheet dense bf16 {report['datasheet_bf16_tflops'] or '-'} TFLOP/s")
    if "ours_over_trl" in report:
        d = report["step1_logps_abs_diff"]
        lines.append(f"ours is {report['ours_over_trl']:.2f}x TRL's speed; step-1 log-probs |ours - TRL|: chosen "
                     f"{d['chosen']:.2e}, rejected {d['rejected']:.2e}")
    if "fused_over_dense" in report:
        lines.append(f"fused attention over dense: {report['fused_over_dense']:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
