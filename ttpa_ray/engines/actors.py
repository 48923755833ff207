"""Engines inside Ray: an actor for direct calls, and a Ray Data UDF for actor pools.

    ds.map_batches(GenerateBatch, fn_constructor_kwargs={"engine": cfg.model_dump(), "params": {...}},
                   **engine_pool_kwargs(cfg))

Results cross process boundaries as plain Python data (lists, dicts): no tensors.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import numpy as np

from ttpa_ray.columns import object_column
from ttpa_ray.config import EngineConfig, PoolConfig
from ttpa_ray.engines.build import build_engine
from ttpa_ray.engines.base import Generation, SamplingParams
from ttpa_ray.models.registry import resolve, resolve_dtype
from ttpa_ray.resources import GIB, engine_memory_bytes, parameter_count


def pool_kwargs(pool: PoolConfig, memory_bytes: int) -> dict[str, Any]:
    """map_batches arguments for an autoscaling actor pool described by the config. Each actor
    requests ``pool.memory_gb`` if set, else ``memory_bytes`` (derived by :mod:`ttpa_ray.resources`)."""
    import ray

    from ttpa_ray.runtime import worker_env

    kwargs: dict[str, Any] = {
        "compute": ray.data.ActorPoolStrategy(min_size=pool.min_actors, max_size=pool.max_actors),
        "num_cpus": pool.num_cpus,
        "num_gpus": pool.num_gpus or None,
        "memory": int(pool.memory_gb * GIB) if pool.memory_gb is not None else int(memory_bytes),
        "batch_size": pool.batch_size,
    }
    if pool.threads:
        kwargs["runtime_env"] = {"env_vars": worker_env() | {"OMP_NUM_THREADS": str(pool.threads)}}
    return kwargs


def engine_memory(cfg: EngineConfig) -> int:
    """Bytes one actor of this engine needs (:func:`ttpa_ray.resources.engine_memory_bytes`);
    the model is resolved (prepared once) on the driver."""
    if cfg.backend == "openai":
        return engine_memory_bytes("openai", 0, "float32", cfg.kv_cache_gib, False)
    use_gpu = cfg.pool.num_gpus > 0
    params = parameter_count(resolve(cfg.model))
    return engine_memory_bytes(cfg.backend, params, resolve_dtype(cfg.dtype, use_gpu), cfg.kv_cache_gib, use_gpu)


def engine_pool_kwargs(cfg: EngineConfig) -> dict[str, Any]:
    """map_batches arguments for a pool of this engine's actors."""
    return pool_kwargs(cfg.pool, engine_memory(cfg))


def _params(params: dict[str, Any] | SamplingParams) -> SamplingParams:
    if isinstance(params, SamplingParams):
        return params
    return SamplingParams(**{k: tuple(v) if k == "stop" else v for k, v in params.items()})


class EngineActor:
    """Wrap with ``ray.remote(num_cpus=..., num_gpus=...)(EngineActor)``."""

    def __init__(self, engine: dict[str, Any]):
        self.cfg = EngineConfig.model_validate(engine)
        self.engine = build_engine(self.cfg)

    def generate(self, prompts: list[str | list[int]], params: dict[str, Any]) -> list[dict[str, Any]]:
        return [asdict(g) for g in self.engine.generate(prompts, _params(params))]

    def chat(self, conversations: list[list[dict[str, Any]]], params: dict[str, Any],
             tools: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        return [asdict(g) for g in self.engine.chat(conversations, _params(params), tools=tools)]

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        return self.engine.apply_chat_template(messages, tools=tools)


class GenerateBatch:
    """Ray Data callable class: column ``prompt`` (text) or ``prompt_token_ids`` in; per row
    ``completions`` (list of {text, token_ids, finish_reason}), ``prompt_token_ids``,
    ``logprobs_json`` (when asked for) and ``error`` (None when the row succeeded) out."""

    def __init__(self, engine: dict[str, Any], params: dict[str, Any]):
        self.cfg = EngineConfig.model_validate(engine)
        self.params = _params(params)
        self.engine = build_engine(self.cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "prompt_token_ids" in batch:
            prompts: list[Any] = [list(map(int, x)) for x in batch["prompt_token_ids"]]
        else:
            prompts = [str(x) for x in batch["prompt"]]
        try:
            gens = self.engine.generate(prompts, self.params)
        except Exception as exc:  # noqa: BLE001 - a failed batch becomes error rows, never a dead stage
            gens = [Generation(prompt_token_ids=[], error=f"{type(exc).__name__}: {exc}") for _ in prompts]
        out = dict(batch)
        out["prompt_token_ids"] = object_column([g.prompt_token_ids for g in gens])
        out["completions"] = object_column([
            [{"text": c.text, "token_ids": c.token_ids, "finish_reason": c.finish_reason or ""} for c in g.completions]
            for g in gens])
        out["error"] = object_column([g.error for g in gens])
        if self.params.logprobs is not None or self.params.prompt_logprobs is not None:
            out["logprobs_json"] = np.array([json.dumps({
                "prompt": g.prompt_logprobs, "completions": [c.logprobs for c in g.completions]}) for g in gens])
        return out

