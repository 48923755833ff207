"""ESM scoring throughput: per core (pure function) and with 1 vs 2 scoring actors, one run.

Per core is reported for single-call turns (BFCL simple + multiple), parallel turns (2-4
calls) and their mix.

    .venv/bin/python bench/scoring.py [--repeat 20]

Workload: every entry of BFCL simple_python, multiple and parallel (1-4 calls per turn),
as raw model text in the Hermes format; two in three predictions are the gold answer, one
in three has a perturbed value (so both the fast exact path and the partial-credit path are
exercised). Calls/s counts gold calls scored. The actor runs score the same rows split in
equal shares over 1 or 2 Ray actors (1 CPU each) and time the whole fan-out, including Ray's
transfer of the batches. Writes bench/results/scoring.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

from ttpa_ray.evaluate.bfcl import load_category
from ttpa_ray.score.stage import ScoreBatch
from ttpa_ray.toolcall import render_calls


def workload(categories: tuple[str, ...] = ("simple_python", "multiple", "parallel")) -> tuple[list[dict], int]:
    rows, calls = [], 0
    for cat in categories:
        for i, e in enumerate(load_category(cat)):
            pred = [{"name": n, "arguments": {k: next(v for v in vs if v != "") for k, vs in p.items()
                                              if "" not in vs and any(v != "" for v in vs)}}
                    for d in e["possible_answer"] for n, p in d.items()]
            if i % 3 == 0 and pred and pred[0]["arguments"]:
                pred = copy.deepcopy(pred)
                k = next(iter(pred[0]["arguments"]))
                pred[0]["arguments"][k] = str(pred[0]["arguments"][k]) + " x"
            rows.append({"tools_json": json.dumps(e["function"]), "prediction": render_calls(pred),
                         "possible_answer_json": json.dumps(e["possible_answer"])})
            calls += len(e["possible_answer"])
    return rows, calls


class _Scorer(ScoreBatch):
    def run(self, rows: list[dict]) -> int:
        return sum(self.score_row(r)[0] is not None for r in rows)


def _actor_class():
    import ray

    return ray.remote(num_cpus=1)(_Scorer)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=40, help="copies of the workload per timed run")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "scoring.json"))
    args = ap.parse_args()
    base, base_calls = workload()
    rows, calls = base * args.repeat, base_calls * args.repeat

    # 1. The pure function on this core (schemas validated once per distinct tool list, as the
    #    stage does), per workload; median of 5 timed passes.
    pure = {}
    for label, cats in (("single_call_turns", ("simple_python", "multiple")), ("parallel_turns", ("parallel",)),
                        ("mix", ("simple_python", "multiple", "parallel"))):
        w_rows, w_calls = workload(cats)
        scorer = ScoreBatch()
        for r in w_rows:
            scorer.score_row(r)  # warm the schema cache
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            for r in w_rows * 5:
                scorer.score_row(r)
            times.append(time.perf_counter() - t0)
        sec = statistics.median(times)
        pure[label] = {"calls": 5 * w_calls, "turns": 5 * len(w_rows), "seconds_median": sec,
                       "calls_per_s": 5 * w_calls / sec}

    # 2. Ray actors: same rows, split over 1 or 2 actors of 1 CPU each; median of 3 fan-outs.
    import ray

    from ttpa_ray.runtime import init_ray

    init_ray(num_cpus=2)
    actor_s = {}
    for n_actors in (1, 2):
        actors = [_actor_class().remote() for _ in range(n_actors)]
        refs = [ray.put(rows[i::n_actors]) for i in range(n_actors)]
        ray.get([a.run.remote(base) for a in actors])  # warm up: imports, schema caches
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            done = ray.get([a.run.remote(ref) for a, ref in zip(actors, refs)])
            times.append(time.perf_counter() - t0)
            assert sum(done) == len(rows), "every row must be scored"
        actor_s[n_actors] = statistics.median(times)
        for a in actors:
            ray.kill(a)
    ray.shutdown()

    report = {
        "bench": "scoring", "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "turns": len(rows), "calls": calls,
        "pure_function_one_core": pure,
        "one_actor": {"seconds": actor_s[1], "calls_per_s": calls / actor_s[1]},
        "two_actors": {"seconds": actor_s[2], "calls_per_s": calls / actor_s[2]},
        "two_over_one_actor": actor_s[1] / actor_s[2],
        "goals": {"calls_per_s_per_core": 20000, "two_over_one_actor": 1.7},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
