"""Memory requests against measured use: each kind of actor the pipeline starts, as Ray starts
it, with the request :mod:`ttpa_ray.resources` derives beside the actor's unique memory (USS,
what Ray Data's memory issue detector compares with the request) after one batch of work.

    .venv/bin/python bench/resources.py [--out bench/results/resources.json]

Rows: vLLM engine actors (tiny-random, SmolLM2-135M fp32 with a 1 GiB KV cache), a
transformers engine (SmolLM2), an ESM scoring actor, a reference actor (SmolLM2). A request
below the measured USS is an under-request (the detector's warning, and a node the scheduler
can overfill); far above it wastes a node's capacity.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np


def _uss_mb() -> float:
    import psutil

    return psutil.Process().memory_full_info().uss / 2**20


class Probe:
    """Builds one of the pipeline's Ray Data callables and runs one batch through it."""

    def __init__(self, kind: str, spec: dict[str, Any]):
        self.kind, self.spec = kind, spec

    def run(self) -> dict[str, float]:
        t0 = time.time()
        if self.kind == "engine":
            from ttpa_ray.engines.actors import GenerateBatch

            udf = GenerateBatch(self.spec["engine"], {"max_tokens": 32, "temperature": 0.0})
            udf({"prompt": np.array(["What is the weather in Paris?"] * 8, dtype=object)})
        elif self.kind == "scorer":
            from ttpa_ray.score.stage import ScoreBatch

            tools = json.dumps([{"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}},
                                                              "required": ["x"]}}])
            udf = ScoreBatch()
            udf({"prediction": np.array(['{"name": "f", "arguments": {"x": 1}}'] * 64, dtype=object),
                 "tools_json": np.array([tools] * 64, dtype=object),
                 "gold_json": np.array(['[{"name": "f", "arguments": {"x": 1}}]'] * 64, dtype=object)})
        else:
            from ttpa_ray.train.reference import ReferenceBatch

            udf = ReferenceBatch(self.spec["model_dir"], "float32", 1.0, batch_size=4)
            ids = list(range(10, 400))
            udf.logps([{"id": i, "prompt_token_ids": ids, "chosen_token_ids": ids[:40],
                        "rejected_token_ids": ids[5:45], "divergence_index": 0} for i in range(4)])
        return {"uss_mb": round(_uss_mb(), 1), "seconds": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/resources.json")
    args = ap.parse_args()

    import ray

    from ttpa_ray import resources as rs
    from ttpa_ray.config import EngineConfig
    from ttpa_ray.engines.actors import engine_memory
    from ttpa_ray.models.registry import resolve
    from ttpa_ray.runtime import init_ray

    init_ray(num_cpus=2)
    smol, tiny = resolve("smollm2-135m-instruct"), resolve("tiny-random")
    cases: list[tuple[str, str, dict[str, Any], int]] = []
    for name, model, backend in (("vllm tiny-random", "tiny-random", "vllm"),
                                 ("vllm smollm2 fp32 kv 1 GiB", "smollm2-135m-instruct", "vllm"),
                                 ("transformers smollm2 fp32", "smollm2-135m-instruct", "transformers")):
        eng = EngineConfig(backend=backend, model=model, dtype="float32", kv_cache_gib=1, max_model_len=1024)
        cases.append((name, "engine", {"engine": eng.model_dump()}, engine_memory(eng)))
    cases.append(("ESM scorer", "scorer", {}, rs.scorer_memory_bytes()))
    cases.append(("reference smollm2 fp32", "reference", {"model_dir": str(smol)},
                  rs.reference_memory_bytes(rs.parameter_count(smol), "float32", use_gpu=False)))
    rows = []
    for name, kind, spec, request in cases:
        actor = ray.remote(num_cpus=1)(Probe).remote(kind, spec)
        measured = ray.get(actor.run.remote())
        ray.kill(actor)
        row = {"actor": name, "request_mb": round(request / 2**20), **measured,
               "request_over_uss": round(request / 2**20 / measured["uss_mb"], 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {"machine": platform.processor() or platform.machine(), "tiny_params": rs.parameter_count(tiny),
           "smollm2_params": rs.parameter_count(smol), "rows": rows, "when": time.strftime("%Y-%m-%d %H:%M")}
    path = Path(args.out)
    runs = json.loads(path.read_text())["runs"] if path.is_file() else []
    path.write_text(json.dumps({"runs": runs + [out]}, indent=2) + "\n")
    print(f"{'actor':32s} {'request MB':>11s} {'USS MB':>8s} {'ratio':>6s}")
    for r in rows:
        print(f"{r['actor']:32s} {r['request_mb']:11d} {r['uss_mb']:8.0f} {r['request_over_uss']:6.2f}")


if __name__ == "__main__":
    main()
