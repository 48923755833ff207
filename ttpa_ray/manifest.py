"""Stage manifests: the names of the stages, their ``manifest.json`` and the fingerprint that
decides whether a complete stage can be skipped.

Each stage writes ``<run_dir>/<stage>/manifest.json``: ``status`` (``running`` or
``complete``), the ``fingerprint`` of the config it read and of its upstream runs, a run
``token`` (new on every run, so the stages after it see new output), ``seconds`` and the stage's
own counts (rows kept, rows with errors ...).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ttpa_ray.config import ADDED_LATER, JobConfig

MANIFEST = "manifest.json"

# In pipeline order (``pipeline.STAGES`` holds their runners).
STAGE_NAMES = ("probe", "construct", "sft", "sample", "reference", "train", "evaluate", "report")


def fingerprint(job: JobConfig, sections: tuple[str, ...], upstream: dict[str, str | None] | None = None) -> str:
    """Hash of the config a stage reads and of the runs of the stages it reads from (their
    manifests' ``token``), so new upstream output redoes it even across separate commands."""
    def dump(v: Any) -> Any:
        return _hashed(v) if isinstance(v, BaseModel) else v

    def get(dotted: str) -> Any:  # "train.prefix_weight": one field of a section
        value: Any = job
        for part in dotted.split("."):
            value = getattr(value, part)
        return value

    data = json.dumps({"config": {s: dump(get(s)) for s in sections}, "upstream": upstream or {}}, sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def _hashed(model: BaseModel) -> dict[str, Any]:
    """``model`` as JSON for the fingerprint, without the fields marked ``ADDED_LATER`` that hold
    their default: a knob added later, whose default keeps what stages did before it existed,
    leaves earlier runs current (a 20-minute construct is not redone on upgrade)."""
    data = model.model_dump(mode="json")
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if field.json_schema_extra == ADDED_LATER and value == field.default:
            del data[name]
        elif isinstance(value, BaseModel):
            data[name] = _hashed(value)
    return data


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    path = stage_dir / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None
