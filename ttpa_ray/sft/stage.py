"""The ``sft`` stage (``ttpa sft JOB``): supervised fine-tuning on the constructed
conversations, between construct and sample.

Input ``construct/instances.parquet``; the instances of the held-out split
(``evaluate.held_out_fraction``, the same split sample and evaluate use) are left out. Each
conversation becomes one row of token ids with its assistant mask (:mod:`ttpa_ray.sft.data`),
written to ``conversations.parquet`` (error rows included, with ``error``); the loss is the
mean NLL of the assistant tokens (:mod:`ttpa_ray.sft.objective`). Training is the same Ray
Train + DeepSpeed ZeRO run as the ``train`` stage (:func:`ttpa_ray.train.stage.fit`): LoRA,
checkpoints every ``checkpoint_every`` steps and resume, ``metrics.jsonl`` and TensorBoard,
and ``model/``, an HF folder that loads in vLLM and transformers. With ``sft.enabled`` that
model is what sample branches on, the DPO reference and train's start (on-policy TTPA).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ttpa_ray.config import SftConfig
from ttpa_ray.sft.data import sft_rows

log = logging.getLogger(__name__)


def run_sft(cfg: SftConfig, model: str, instances: Path, out: Path, seed: int = 0, held_out_fraction: float = 0.0,
            resume: bool = False) -> dict[str, Any]:
    """Fine-tune ``model`` on ``instances``; returns counts for the manifest."""
    from transformers import AutoTokenizer

    from ttpa_ray.models.registry import resolve
    from ttpa_ray.train.stage import fit

    table = pq.read_table(instances, columns=["id", "messages", "tools"])
    tokenizer = AutoTokenizer.from_pretrained(resolve(model))
    rows, counts = sft_rows(table.to_pylist(), tokenizer, cfg.max_length, held_out_fraction, seed)
    out.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("id", pa.int64()), ("input_ids", pa.list_(pa.int32())),
                        ("assistant_mask", pa.list_(pa.int8())), ("truncated", pa.bool_()), ("error", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), out / "conversations.parquet")
    for r in rows:
        if r["error"]:
            log.warning("sft: instance %s left out: %s", r["id"], r["error"])
    good = pa.Table.from_pylist([r for r in rows if not r["error"]], schema=schema).select(
        ["id", "input_ids", "assistant_mask"])
    if good.num_rows == 0:
        raise ValueError(f"no conversation of {instances} to fine-tune on ({json.dumps(counts)}): construct more "
                         "instances, or lower evaluate.held_out_fraction")
    return counts | fit("sft", cfg, model, good, out, seed=seed, resume=resume)
