"""A job: loading, overrides, variants and the path policy (the section schemas are in
:mod:`ttpa_ray.config`).

One YAML file per job in ``jobs/``; its first line is the exact launch command. ``extends:``
starts from another job. ``key.sub=value`` overrides from the command line are applied before
validation, and validation reports every problem at once, each with its dotted path and how to
fix it.

Path policy: every local path a job names (output dir, model folders, catalogs, checkpoint
storage) must resolve, after ``..`` and symlinks, inside an allowed root: the working directory,
the TTPA cache dir, the system temp dir, or a folder of ``allowed_paths``.

    job = load_job("jobs/demo-cpu.yaml", ["target.backend=transformers"])
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ttpa_ray.config import SECRET_ERROR, JobConfig

_SECRET_KEY_RE = re.compile(r"(^|_)(api_?key|key|token|secret|password|credentials?|authorization)$", re.I)


class ConfigError(ValueError):
    """A job file or override that does not validate; ``problems`` lists every one."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the job config:\n{lines}")


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError("overrides", [f"{dotted}: `{key}` is a value, not a section"])
        node = child
    node[keys[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a nested dict, in place."""
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(f"override `{item}`: expected dotted.key=value, e.g. engine.backend=transformers")
            continue
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw != "" else "")
    if problems:
        raise ConfigError("overrides", problems)
    return tree


def _describe(err: dict[str, Any], model: type[BaseModel]) -> str:
    path = ".".join(str(p) for p in err["loc"]) or "<root>"
    kind = err["type"]
    if kind == SECRET_ERROR:
        return f"{path}: {err['msg']}"
    if kind == "extra_forbidden":
        section: Any = model
        for part in err["loc"][:-1]:
            field = section.model_fields.get(str(part)) if isinstance(section, type) else None
            section = field.annotation if field is not None else None
        allowed = sorted(section.model_fields) if isinstance(section, type) and issubclass(section, BaseModel) else []
        hint = ""
        if _SECRET_KEY_RE.search(str(err["loc"][-1])):
            hint = ("; secrets never go in a job file: export the key as an environment variable and set "
                    "api_key_env to its name")
        return f"{path}: unknown key{hint}; allowed here: {', '.join(allowed)}"
    if kind == "missing":
        return f"{path}: required; add `{err['loc'][-1]}: ...` to the job file"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{path}: {msg} (got {err.get('input')!r})"


def validate_job(tree: dict[str, Any], source: str = "<job>") -> JobConfig:
    """Validate a job tree: fields first, then (on a valid job) the path policy below."""
    try:
        job = JobConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(e, JobConfig) for e in exc.errors()]) from None
    problems = path_problems(job)
    for name in job.variants:
        try:
            variant_job(job, name)
        except ConfigError as exc:
            problems += [f"variants.{name}: {p}" for p in exc.problems]
    if problems:
        raise ConfigError(source, problems)
    return job


def variant_job(job: JobConfig, name: str) -> JobConfig:
    """One variant of ``job.variants``: its overrides applied, run under
    ``<run_dir>/variants/<name>/``; probe, the base model's evaluation and the report are left
    to the parent run, construct is shared with it (see ``pipeline``)."""
    tree = job.model_dump(mode="json")
    for key, value in job.variants[name].items():
        _set_dotted(tree, key, value)
    tree.update(name=name, output_dir=str(job.run_dir / "variants"), variants={})
    tree["probe"]["enabled"] = False
    tree["evaluate"]["base"] = False
    tree["report"]["enabled"] = False  # the parent's report shows every variant
    return validate_job(tree, f"variants.{name}")


def load_job(path: str | Path, overrides: list[str] | None = None) -> JobConfig:
    """Read a job YAML, apply overrides, validate; raises ConfigError listing every problem."""
    tree = _read_tree(Path(path), ())
    apply_overrides(tree, overrides or [])
    return validate_job(tree, str(path))


def _read_tree(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """A job file's tree; ``extends: other.yaml`` (relative to the file) starts from that job,
    this file's keys merged over it section by section."""
    if not path.is_file():
        raise ConfigError(str(path), [f"no such job file; the jobs shipped are in jobs/: {_list_jobs()}"])
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    if not isinstance(tree, dict):
        raise ConfigError(str(path), ["top level must be a mapping of sections"])
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    base = (path.parent / str(parent)).resolve()
    if base in seen or base == path.resolve():
        raise ConfigError(str(path), [f"extends: {parent} makes a cycle ({' -> '.join(map(str, seen))})"])
    return _merge(_read_tree(base, (*seen, path.resolve())), tree)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _list_jobs() -> str:
    jobs = sorted(p.name for p in Path("jobs").glob("*.yaml"))
    return ", ".join(jobs) if jobs else "(none found in ./jobs)"


# --------------------------------------------------------------------------- path policy


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
    for stage in ("sft", "train"):
        model = getattr(job, stage).model
        if model and _is_model_path(model):
            yield f"{stage}.model", model
    for dotted, catalog in (("construct.catalog", job.construct.catalog), ("score.catalog", job.score.catalog)):
        if catalog != "bundled":
            yield dotted, catalog
    for stage in ("sft", "train"):
        storage = getattr(job, stage).storage_path
        if storage is not None and (storage.startswith("file://") or "://" not in storage):  # s3://, gs://: remote
            yield f"{stage}.storage_path", storage.removeprefix("file://")


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
