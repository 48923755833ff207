"""Path policy of a job: every local path it names (output dir, model folders, catalogs,
checkpoint storage) must resolve, after ``..`` and symlinks, inside an allowed root: the
working directory, the TTPA cache dir, the system temp dir, or a folder of ``allowed_paths``.
``config.validate_job`` reports each violation with the field and the fix.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ttpa_ray.config import JobConfig


def allowed_roots(job: JobConfig) -> list[Path]:
    """Folders a job's local paths must resolve into: cwd, the TTPA cache dir, the temp dir, allowed_paths."""
    from ttpa_ray.runtime import cache_dir

    roots = [Path.cwd(), cache_dir(), Path(tempfile.gettempdir()), *map(Path, job.allowed_paths)]
    return list(dict.fromkeys(r.expanduser().resolve() for r in roots))


def _is_model_path(name: str) -> bool:
    """As ``models.resolve`` decides: a bundled name is not a path; an existing file or a name with '/' is."""
    from ttpa_ray.models.registry import BUNDLED

    return name not in BUNDLED and ("/" in name or Path(name).expanduser().exists())


def _local_paths(job: JobConfig) -> Iterator[tuple[str, str]]:
    """(dotted field, value) of every field of the job that names a local file or folder."""
    yield "output_dir", job.output_dir
    for prefix, eng in (("target", job.target), ("construct.generator", job.construct.generator)):
        if eng.backend != "openai" and _is_model_path(eng.model):  # for openai, model is the server's name
            yield f"{prefix}.model", eng.model
        if eng.tokenizer and _is_model_path(eng.tokenizer):
            yield f"{prefix}.tokenizer", eng.tokenizer
    if job.train.model and _is_model_path(job.train.model):
        yield "train.model", job.train.model
    for dotted, catalog in (("construct.catalog", job.construct.catalog), ("score.catalog", job.score.catalog)):
        if catalog != "bundled":
            yield dotted, catalog
    storage = job.train.storage_path
    if storage is not None and (storage.startswith("file://") or "://" not in storage):  # s3://, gs://: remote
        yield "train.storage_path", storage.removeprefix("file://")


def path_problems(job: JobConfig) -> list[str]:
    """One problem per local path of the job that resolves outside every allowed root."""
    roots = allowed_roots(job)
    problems = []
    for dotted, value in _local_paths(job):
        real = Path(value).expanduser().resolve()
        if not any(real.is_relative_to(root) for root in roots):
            folder = real.parent if real.is_file() else real
            problems.append(
                f"{dotted}: {value!r} resolves to {real}, outside the allowed paths "
                f"({', '.join(map(str, roots))}); move it under one of them or add its folder to the job, "
                f"e.g. allowed_paths: [{folder}]")
    return problems
