"""Memory requests derived from the model (ttpa_ray/resources.py) and their overrides, without
Ray. That the requests reach Ray's actor table: test_engines.py (engine pool),
test_cluster.py (scoring pool), test_train.py (Ray Train workers)."""

from __future__ import annotations

import pytest

from ttpa_ray import resources as rs
from ttpa_ray.config import EngineConfig, PoolConfig, TrainConfig


def test_parameter_count_reads_the_safetensors_headers(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    stored = {id(p) for p in model.parameters()}  # tied embeddings are stored once
    assert rs.parameter_count(tiny_model) == sum(p.numel() for p in model.parameters() if id(p) in stored)


def test_engine_request_grows_with_weights_dtype_and_kv_cache():
    n = 10**9
    fp32 = rs.engine_memory_bytes("vllm", n, "float32", kv_cache_gib=1.0, use_gpu=False)
    assert fp32 - rs.engine_memory_bytes("vllm", n, "bfloat16", 1.0, False) == 2 * n * rs.WEIGHT_FACTOR  # 2 B/param
    assert rs.engine_memory_bytes("vllm", n, "float32", 3.0, False) - fp32 == 2 * rs.GIB  # KV cache, CPU
    assert rs.engine_memory_bytes("vllm", n, "float32", 3.0, True) < fp32  # on a GPU the KV cache is GPU memory
    assert rs.engine_memory_bytes("transformers", n, "float32", 1.0, False) < fp32


def test_train_request_follows_zero_stage_and_lora():
    n = 10**8
    z0 = rs.train_worker_memory_bytes(n, "float32", 0, 2, False, False)
    z2 = rs.train_worker_memory_bytes(n, "float32", 2, 2, False, False)
    z3 = rs.train_worker_memory_bytes(n, "float32", 3, 2, False, False)
    lora = rs.train_worker_memory_bytes(n, "float32", 0, 2, False, False, trainable_fraction=0.05)
    assert z0 > z2 > z3 and z0 > lora
    # fp32 ZeRO-0 model states: 4 (weights) + 4 (grads) + 8 (AdamW) bytes per parameter
    assert z0 - rs.TRAIN_RUNTIME_GIB * rs.GIB == pytest.approx(16 * n * (1 + rs.ACTIVATION_FACTOR / 2), rel=1e-6)


def test_pool_and_train_overrides_win(tiny_model):
    from ttpa_ray.engines.actors import engine_memory, pool_kwargs
    from ttpa_ray.train.stage import worker_resources

    cfg = EngineConfig(model="tiny-random", dtype="float32", pool={"memory_gb": 1.5})
    assert pool_kwargs(cfg.pool, engine_memory(cfg))["memory"] == int(1.5 * rs.GIB)
    assert pool_kwargs(PoolConfig(), 12345)["memory"] == 12345
    train = TrainConfig(memory_gb_per_worker=3)
    assert worker_resources(train, tiny_model)["memory"] == 3 * rs.GIB
    derived = worker_resources(TrainConfig(), tiny_model)["memory"]
    assert derived == rs.train_worker_memory_bytes(rs.parameter_count(tiny_model), "float32", 2, 1, False, False)
