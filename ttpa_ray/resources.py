"""Memory each actor and training worker asks Ray for, derived from the model it holds.

Ray places actors (and the autoscaler adds nodes) by what they *request*, not by what they
use: an engine pool that requests no memory can be packed onto a node that then runs out.
So every pool requests, per actor:

- engine actors (vLLM, transformers): a process runtime (torch, the engine library) plus the
  weights at the engine's dtype, plus on vLLM-CPU its KV cache (``kv_cache_gib``, host memory
  there). On a GPU the weights and the KV cache live in GPU memory: the host keeps the runtime
  and one staging copy of the weights while loading.
- scoring actors: a fixed allowance (pure Python, the ESM cache, the sandbox workers).
- reference actors: the runtime, the weights and the forward's activations.
- training workers: the runtime plus the model states of one rank: weights, gradients and
  AdamW's two moments (plus DeepSpeed's fp32 master copy when training in bf16), divided over
  the ranks by ZeRO-3 and moved off the rank by CPU offload only on GPUs.

The runtime figures are measured on the CPU build (``bench/resources.py`` prints each
request beside the actor's measured unique memory); ``pool.memory_gb`` and
``train.memory_gb_per_worker`` override the derivation.

>>> round(engine_memory_bytes("vllm", 134_515_008, "float32", kv_cache_gib=1.0, use_gpu=False) / GIB, 2)
3.5
>>> engine_memory_bytes("openai", 0, "float32", 1.0, False) == OPENAI_RUNTIME_GIB * GIB
True
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "F32": 4, "BF16": 2, "F16": 2, "F64": 8, "I64": 8,
               "I32": 4, "I8": 1, "U8": 1, "BOOL": 1}

# Calibrated on the CPU build (bench/resources.py, bench/results/resources.json): unique
# memory (USS) after one batch was 1.5 GB for a vLLM actor of a 1 MB model with a 1 GiB KV
# cache, 2.4 GB for SmolLM2-135M fp32 (0.5 GB of weights; 2.6 GB in the construct stage,
# with longer generations), 0.85 GB for the same model in transformers, 0.06 GB for a scorer,
# 0.9 GB for a reference actor. Ray Data's memory check asks for 25% above the peak USS; the
# figures below give that or more.
VLLM_RUNTIME_GIB = 1.5
TRANSFORMERS_RUNTIME_GIB = 0.5
OPENAI_RUNTIME_GIB = 0.5
SCORER_GIB = 0.25
TRAIN_RUNTIME_GIB = 2.0
# Weights are held once at the engine's dtype, plus the loading copy at the stored dtype and
# the engine's own buffers: 2x the weights covers both engines.
WEIGHT_FACTOR = 2.0
# Activations of one forward/backward at the pool's batch, relative to the weights.
ACTIVATION_FACTOR = 1.0


def parameter_count(model_dir: str | Path) -> int:
    """Parameters stored in a model folder's safetensors files (read from their headers: no
    weights are loaded). A folder of ``*.bin`` files is estimated from their size at 4 bytes
    per parameter."""
    folder = Path(model_dir)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return sum(f.stat().st_size for f in folder.glob("*.bin")) // 4
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return total


def engine_memory_bytes(backend: str, params: int, dtype: str, kv_cache_gib: float, use_gpu: bool) -> int:
    """Host memory of one engine actor holding a model of ``params`` parameters."""
    if backend == "openai":  # the model lives on the server
        return int(OPENAI_RUNTIME_GIB * GIB)
    weights = params * DTYPE_BYTES[dtype] * WEIGHT_FACTOR
    if backend == "vllm":
        runtime, kv = VLLM_RUNTIME_GIB * GIB, (0.0 if use_gpu else kv_cache_gib * GIB)
    else:
        runtime, kv = TRANSFORMERS_RUNTIME_GIB * GIB, 0.0
    return int(runtime + weights + kv)


def scorer_memory_bytes() -> int:
    """One ESM scoring actor."""
    return int(SCORER_GIB * GIB)


def reference_memory_bytes(params: int, dtype: str, use_gpu: bool) -> int:
    """One reference actor: transformers, the weights and the forward's activations."""
    weights = params * DTYPE_BYTES[dtype]
    return int(TRANSFORMERS_RUNTIME_GIB * GIB + (weights if use_gpu else weights * (1 + ACTIVATION_FACTOR)))


def train_worker_memory_bytes(params: int, dtype: str, zero_stage: int, world: int, offload: bool,
                              use_gpu: bool, trainable_fraction: float = 1.0) -> int:
    """Host memory of one training rank.

    Model states per parameter: weights (dtype), and for trainable parameters gradients
    (dtype), AdamW's two fp32 moments and, for bf16, DeepSpeed's fp32 master copy. ZeRO-3 (and
    ZeRO-1/2 for the gradient and optimizer states) split them over ``world`` ranks. On a GPU
    they are GPU memory unless offloaded, and the host keeps the runtime plus one staging
    copy of the weights.

    >>> one = train_worker_memory_bytes(10**8, "float32", 0, 1, False, False)
    >>> three = train_worker_memory_bytes(10**8, "float32", 3, 2, False, False)
    >>> one > three > TRAIN_RUNTIME_GIB * GIB
    True
    """
    b = DTYPE_BYTES[dtype]
    weights = params * b
    optimizer = params * trainable_fraction * (8 + (4 if b == 2 else 0))
    grads = params * trainable_fraction * b
    if zero_stage >= 1:
        optimizer /= world
    if zero_stage >= 2:
        grads /= world
    if zero_stage >= 3:
        weights /= world
    runtime = TRAIN_RUNTIME_GIB * GIB
    if use_gpu:
        host = params * b + (optimizer if offload else 0.0)
        return int(runtime + host)
    return int(runtime + (weights + grads + optimizer) * (1 + ACTIVATION_FACTOR / 2))
