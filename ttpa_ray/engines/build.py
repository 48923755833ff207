"""Generation engines behind one interface (:class:`~ttpa_ray.engines.base.Engine`).

``build_engine(cfg)`` turns an ``engine`` config section into a backend; heavy imports
(vLLM, torch) happen only when that backend is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ttpa_ray.engines.base import Completion, Engine, Generation, SamplingParams

if TYPE_CHECKING:
    from ttpa_ray.config import EngineConfig

__all__ = ["Completion", "Engine", "Generation", "SamplingParams", "build_engine"]


def build_engine(cfg: EngineConfig) -> Engine:
    from ttpa_ray.runtime import setup_env

    setup_env()
    if cfg.backend == "openai":
        from ttpa_ray.engines.openai_http import OpenAIEngine

        tok = None
        if cfg.tokenizer:
            from ttpa_ray.models.registry import resolve

            tok = str(resolve(cfg.tokenizer))
        return OpenAIEngine(cfg.api_base or "", cfg.model, api_key_env=cfg.api_key_env,
                            timeout_s=cfg.request_timeout_s, max_concurrency=cfg.max_concurrency, tokenizer_path=tok)

    from ttpa_ray.models.registry import resolve

    path = str(resolve(cfg.model))
    import torch

    from ttpa_ray.models.registry import resolve_dtype

    dtype = resolve_dtype(cfg.dtype, use_gpu=torch.cuda.is_available())
    if cfg.backend == "vllm":
        from ttpa_ray.engines.vllm_engine import VLLMEngine

        return VLLMEngine(path, dtype=dtype, max_model_len=cfg.max_model_len, seed=cfg.seed,
                          tensor_parallel_size=cfg.tensor_parallel_size,
                          gpu_memory_utilization=cfg.gpu_memory_utilization,
                          enable_prefix_caching=cfg.enable_prefix_caching, enforce_eager=cfg.enforce_eager,
                          kv_cache_gib=cfg.kv_cache_gib, block_size=cfg.block_size)
    from ttpa_ray.engines.hf import HFEngine

    return HFEngine(path, dtype=dtype, max_model_len=cfg.max_model_len, seed=cfg.seed)
