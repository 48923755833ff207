"""Reference log-probs, computed once before training (the ``reference`` stage).

A Ray Data pass over ``sample/pairs.parquet`` on an actor pool, each actor holding the
starting model (the DPO reference) in transformers; the shared-prefix forward
(:mod:`ttpa_ray.train.pair_forward`) gives ``ref_chosen_logps`` and ``ref_rejected_logps`` (sums over
completion tokens, with ``train.prefix_weight``). Written to ``reference/pairs.parquet`` with
every sample column kept. A pair that cannot be scored (too long for memory, bad token ids)
gets ``ref_error`` and NaN log-probs: counted, kept, and left out of training.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from ttpa_ray.config import ReferenceConfig

log = logging.getLogger(__name__)

_IN = ["id", "prompt_token_ids", "chosen_token_ids", "rejected_token_ids", "divergence_index"]


class ReferenceBatch:
    """Ray Data callable class: pair columns in, ``ref_chosen_logps``, ``ref_rejected_logps``,
    ``ref_error`` out."""

    def __init__(self, model_dir: str, dtype: str, prefix_weight: float, batch_size: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype).to(self.device).eval()
        self.pad_id = AutoTokenizer.from_pretrained(model_dir).pad_token_id or 0
        self.prefix_weight = prefix_weight
        self.batch_size = batch_size

    def logps(self, rows: list[dict[str, Any]]) -> list[tuple[float, float]]:
        import torch

        from ttpa_ray.train.pair_forward import collate_pairs, pair_logps

        with torch.no_grad():
            lp = pair_logps(self.model, collate_pairs(rows, self.pad_id).to(self.device), self.prefix_weight)
        return list(zip(lp.chosen.double().tolist(), lp.rejected.double().tolist()))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["id"])
        rows = [{k: (batch[k][i].tolist() if hasattr(batch[k][i], "tolist") else batch[k][i]) for k in _IN}
                for i in range(n)]
        chosen, rejected, errors = [math.nan] * n, [math.nan] * n, [None] * n
        for start in range(0, n, self.batch_size):
            part = list(range(start, min(n, start + self.batch_size)))
            try:
                results = self.logps([rows[i] for i in part])
            except Exception:  # noqa: BLE001 - retry one by one: a bad pair must not take its batch down
                results = []
                for i in part:
                    try:
                        results.extend(self.logps([rows[i]]))
                    except Exception as exc:  # noqa: BLE001
                        results.append((math.nan, math.nan))
                        errors[i] = f"{type(exc).__name__}: {exc}"[:500]
            for i, (c, r) in zip(part, results):
                chosen[i], rejected[i] = c, r
        out = dict(batch)
        out["ref_chosen_logps"] = np.array(chosen, dtype=np.float64)
        out["ref_rejected_logps"] = np.array(rejected, dtype=np.float64)
        err = np.empty(n, dtype=object)
        err[:] = errors
        out["ref_error"] = err
        return out


def run_reference(cfg: ReferenceConfig, model: str, dtype: str, prefix_weight: float, pairs: Path, out: Path
                  ) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from ttpa_ray.engines.actors import pool_kwargs
    from ttpa_ray.models.registry import resolve

    model_dir = resolve(model)
    table = pq.read_table(pairs)
    out.mkdir(parents=True, exist_ok=True)
    if table.num_rows == 0:
        log.warning("%s has no pairs: nothing to score (see the sample manifest)", pairs)
        pq.write_table(table, out / "pairs.parquet")
        return {"pairs": 0, "ref_errors": 0}
    missing = [c for c in _IN if c not in table.column_names]
    if missing:
        raise ValueError(f"{pairs} lacks columns {missing}: it must come from the sample stage")
    ds = ray.data.from_arrow(table).repartition(max(1, table.num_rows // cfg.pool.batch_size))
    ds = ds.map_batches(ReferenceBatch, fn_constructor_kwargs={"model_dir": str(model_dir), "dtype": dtype,
                                                               "prefix_weight": prefix_weight,
                                                               "batch_size": cfg.batch_size},
                        **pool_kwargs(cfg.pool))
    rows = sorted(ds.take_all(), key=lambda r: r["id"])
    for r in rows:
        err = r["ref_error"]
        r["ref_error"] = None if err is None or (isinstance(err, float) and math.isnan(err)) else str(err)
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
