"""Runs a job's stages in order. Each stage writes ``<run_dir>/<stage>/`` (Parquet + a
``manifest.json``); a rerun skips a stage whose manifest is complete for the same config
section, and ``--from STAGE`` forces a redo from there.

Stages: ``probe`` (the target engine pool on tool-use prompts), ``construct`` (reversed
construction), ``sft`` (supervised fine-tuning on the constructed conversations; off unless
``sft.enabled``), ``sample`` (TPS + ESM scoring -> pairs, on the SFT model when there is one),
``reference`` (reference log-probs of the pairs, once), ``train`` (DPO family on Ray Train +
DeepSpeed), ``evaluate`` (BFCL + held-out + pass rate, for the base, SFT and trained models),
``report`` (HTML + Markdown with tables and plots of all of them). A stage whose inputs changed
is redone, and so is every stage after it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ttpa_ray.config import JobConfig
from ttpa_ray.job import variant_job
from ttpa_ray.manifest import MANIFEST, STAGE_NAMES, fingerprint, read_manifest
from ttpa_ray.console import summary
from ttpa_ray.instances import SPLIT_VERSION

log = logging.getLogger(__name__)

def _probe(job: JobConfig, out: Path, resume: bool) -> dict[str, Any]:
    from ttpa_ray.probe.stage import run_probe

    return run_probe(job.probe, job.target, out, seed=job.seed)


def _construct(job: JobConfig, out: Path, resume: bool) -> dict[str, Any]:
    from ttpa_ray.construct.stage import run_construct

    return run_construct(job.construct, out, seed=job.seed)


def _sft(job: JobConfig, out: Path, resume: bool) -> dict[str, Any]:
    from ttpa_ray.sft.stage import run_sft

    return run_sft(job.sft, job.sft.model or job.target.model, _upstream_file(job, "construct", "instances.parquet"),
                   out, seed=job.seed, held_out_fraction=_held_out(job), resume=resume)


def sft_model(job: JobConfig) -> str | None:
    """The SFT stage's model folder when the job runs sft, else None."""
    if not job.sft.enabled:
        return None
    model = job.run_dir / "sft" / "model"
    if not (model / "config.json").is_file():
        raise ValueError(f"{model} is missing: run the sft stage first (ttpa sft ... or ttpa run ...), or set "
                         "sft.enabled=false")
    return str(model.resolve())


def _sample(job: JobConfig, out: Path, resume: bool) -> dict[str, Any]:
    from ttpa_ray.sample.stage import run_sample

    instances = job.run_dir / "construct" / "instances.parquet"
    if not instances.is_file():
        raise ValueError(f"sample reads {instances}: run the construct stage first (ttpa construct ...)")
    target = job.target
    if job.sample.from_sft and (model := sft_model(job)):
        target = target.model_copy(update={"model": model, "tokenizer": None})
    return run_sample(job.sample, target, job.score, instances, out, seed=job.seed,
                      held_out_fraction=_held_out(job))


def _held_out(job: JobConfig) -> float:
    """Instances kept out of sampling (and training) for evaluation."""
    return job.evaluate.held_out_fraction if job.evaluate.enabled else 0.0


def _upstream_file(job: JobConfig, stage: str, name: str) -> Path:
    path = job.run_dir / stage / name
    if not path.is_file():
        raise ValueError(f"{path} is missing: run the {stage} stage first (ttpa {stage} ... or ttpa run ...)")
    return path


def _start_model(job: JobConfig) -> str:
    """Where train starts, and so the DPO reference: the SFT model (on-policy), else
    ``train.model`` or the target."""
    if job.train.from_sft and (model := sft_model(job)):
        return model
    return job.train.model or job.target.model


def _reference(job: JobConfig, out: Path, resume: bool) -> dict[str, Any]:
    from ttpa_ray.train.stage import run_reference
    from ttpa_ray.models.registry import resolve_dtype

    dtype = resolve_dtype(job.train.dtype, job.train.use_gpu)
    return run_reference(job.reference, _start_model(job), dtype, job.train.prefix_weight,
                         _upstream_file(job, "sample", "pairs.parquet"), out, packing=job.train.packing,
                         decision_only=job.train.decision_only, binary_decision=job.train.binary_decision,
                         attention=job.train.attention)


def _train(job: JobConfig, out: Path, resume: bool) -> dict[str, Any]:
    from ttpa_ray.train.stage import run_train

    return run_train(job.train, _start_model(job), _upstream_file(job, "reference", "pairs.parquet"), out,
                     seed=job.seed, resume=resume)


def evaluate_models(job: JobConfig) -> dict[str, str]:
    """What the evaluate stage compares: the model before any training (``base``), the SFT
    model if sft ran, and the trained one if trained."""
    models = {"base": job.train.model or job.target.model} if job.evaluate.base else {}
    if job.evaluate.base and job.sft.enabled:
        models = {"base": job.sft.model or job.target.model, "sft": sft_model(job) or ""}
    trained = job.run_dir / "train" / "model"
    if job.train.enabled and (trained / "config.json").is_file():
        models["trained"] = str(trained.resolve())
    return models


def _evaluate(job: JobConfig, out: Path, resume: bool) -> dict[str, Any]:
    from ttpa_ray.evaluate.stage import run_evaluate

    instances = job.run_dir / "construct" / "instances.parquet"
    results = {}
    for label, model in evaluate_models(job).items():
        results[label] = run_evaluate(job.evaluate, job.target, job.score, model,
                                      instances if instances.is_file() else None, out / label, seed=job.seed,
                                      catalog=job.construct.catalog, resume=resume)
    write_comparisons(job)
    return results


def write_comparisons(job: JobConfig) -> list[dict[str, Any]]:
    """Paired comparisons of every model the run evaluated (variants' trained models included)
    on the same entries: ``evaluate/comparisons.json``, printed as a table."""
    from ttpa_ray.evaluate.compare import compare_models, format_comparisons, model_dirs

    records = compare_models(model_dirs(job.run_dir, list(job.variants)))
    if records:
        (job.run_dir / "evaluate" / "comparisons.json").write_text(json.dumps(records, indent=2))
        print(format_comparisons(records), flush=True)
    return records


def _report(job: JobConfig, out: Path, resume: bool) -> dict[str, Any]:
    from ttpa_ray.report.build import write_report

    return write_report(job.run_dir, out=out)


# name -> (runner, config sections it reads (its fingerprint), stages whose output it reads)
STAGES: dict[str, tuple[Callable[[JobConfig, Path, bool], dict[str, Any]], tuple[str, ...], tuple[str, ...]]] = {
    "probe": (_probe, ("probe", "target"), ()),
    "construct": (_construct, ("construct", "seed"), ()),
    "sft": (_sft, ("sft", "target.model", "seed", "evaluate.enabled", "evaluate.held_out_fraction"), ("construct",)),
    "sample": (_sample, ("sample", "target", "score", "seed", "evaluate.enabled", "evaluate.held_out_fraction",
                         "sft.enabled"), ("construct", "sft")),
    "reference": (_reference, ("reference", "target.model", "train.model", "train.from_sft", "train.dtype",
                               "train.use_gpu", "train.prefix_weight", "train.packing", "train.decision_only",
                               "train.binary_decision", "train.attention",
                               "sft.enabled"), ("sample", "sft")),
    "train": (_train, ("train", "target", "seed", "sft.enabled"), ("reference", "sft")),
    "evaluate": (_evaluate, ("evaluate", "target", "score", "seed", "train.enabled", "sft.enabled", "construct.catalog"),
                 ("construct", "sft", "train")),
    # Shows every stage's manifest: redone when any of them was.
    "report": (_report, ("report",), ("probe", "construct", "sft", "sample", "reference", "train", "evaluate")),
}
assert tuple(STAGES) == STAGE_NAMES, "manifest.STAGE_NAMES lists the stages in pipeline order"


def run_pipeline(job: JobConfig, from_stage: str | None = None,
                 only: str | None = None) -> dict[str, dict[str, Any]]:
    """Run the job's enabled stages (or ``only`` that one, redone), skipping complete ones.
    A job with ``variants`` runs probe and construct once, every variant's sample -> evaluate
    under ``<run_dir>/variants/<name>/``, then the base evaluation and what follows."""
    from ttpa_ray.runtime import init_ray

    for flag, value in (("--from", from_stage), ("stage", only)):
        if value is not None and value not in STAGES:
            raise ValueError(f"{flag} {value}: unknown stage; stages are {', '.join(STAGES)}")
    job.run_dir.mkdir(parents=True, exist_ok=True)
    (job.run_dir / "job.json").write_text(job.model_dump_json(indent=2))
    init_ray(job.ray.address, job.ray.num_cpus, job.ray.include_dashboard)
    names = list(STAGES)
    if not job.variants or only is not None:
        return _run_stages(job, names, from_stage, only)
    shared, per_variant = names[:names.index("sft") + 1], names[names.index("sft") + 1:]
    results = _run_stages(job, shared, from_stage, None)
    for name in job.variants:
        sub = variant_job(job, name)
        sub.run_dir.mkdir(parents=True, exist_ok=True)
        for stage in ("construct", "sft") if job.sft.enabled else ("construct",):  # run once, in the parent
            link = sub.run_dir / stage
            if not link.is_symlink():
                link.symlink_to(Path("..", "..", stage), target_is_directory=True)
        (sub.run_dir / "job.json").write_text(sub.model_dump_json(indent=2))
        log.info("variant %s: %s", name, sub.run_dir)
        sub_from = from_stage if from_stage in per_variant else None
        results[f"variants/{name}"] = {"status": "complete", "stages": _run_stages(sub, names, sub_from, None)}
    parent = job.model_copy(update={"sample": job.sample.model_copy(update={"enabled": False}),
                                    "reference": job.reference.model_copy(update={"enabled": False}),
                                    "train": job.train.model_copy(update={"enabled": False})})
    results |= _run_stages(parent, per_variant, from_stage, None)
    return results


def _run_stages(job: JobConfig, names: list[str], from_stage: str | None,
                only: str | None) -> dict[str, dict[str, Any]]:
    run_dir = job.run_dir
    after_from = False
    results = {}
    for name in names:
        runner, sections, upstream = STAGES[name]
        if only is not None and name != only:
            continue
        if only is None and not getattr(job, name).enabled:
            log.info("stage %s: disabled in the job", name)
            continue
        after_from = after_from or name == from_stage
        forced = after_from or name == only
        if name == only:
            check_upstream_current(job, name)
        stage_dir = run_dir / name
        fp = fingerprint(job, sections, upstream_tokens(job, name, upstream))
        manifest = read_manifest(stage_dir)
        if not forced and manifest and manifest.get("status") == "complete" and manifest.get("fingerprint") == fp:
            log.info("stage %s: complete, skipped (%s)", name, stage_dir)
            results[name] = manifest
            continue
        # An interrupted run of the same config continues (stages that can, e.g. train from its
        # last checkpoint); a forced or changed stage starts over.
        resume = (not forced and manifest is not None and manifest.get("status") == "running"
                  and manifest.get("fingerprint") == fp)
        stage_dir.mkdir(parents=True, exist_ok=True)
        (stage_dir / MANIFEST).write_text(json.dumps({"stage": name, "status": "running", "fingerprint": fp}))
        log.info("stage %s: %s -> %s", name, "resuming" if resume else "running", stage_dir)
        t0 = time.time()
        counts = runner(job, stage_dir, resume)
        manifest = {"stage": name, "status": "complete", "fingerprint": fp, "token": uuid.uuid4().hex,
                    "seconds": round(time.time() - t0, 2), **counts}
        (stage_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
        results[name] = manifest
        log.info("stage %s: done in %.1f s: %s", name, manifest["seconds"], summary(counts))
    return results


def check_upstream_current(job: JobConfig, name: str) -> None:
    """A stage run alone (``ttpa train JOB``) reads its upstream stages' output as it is: refuse
    when a complete upstream stage was made with another config or from other inputs than this
    job's (e.g. reference log-probs computed with another ``train.prefix_weight``), which would
    otherwise give wrong results silently. ``ttpa run`` redoes such a stage instead."""
    for u in STAGES[name][2]:
        manifest = read_manifest(job.run_dir / u)
        if not getattr(job, u).enabled or not manifest or manifest.get("status") != "complete":
            continue
        _, sections, upstream = STAGES[u]
        if manifest.get("fingerprint") != fingerprint(job, sections, upstream_tokens(job, u, upstream)):
            raise ValueError(f"stage {name}: its input {job.run_dir / u} was made with another config or from other "
                             f"inputs than this job's ({', '.join(sections)}); run `ttpa run JOB --from {u}` with the "
                             f"same overrides, or give `ttpa {name}` the overrides {u} was made with")


SPLIT_READERS = ("sft", "sample", "evaluate")  # the stages that apply instances.held_out_ids


def upstream_tokens(job: JobConfig, name: str, upstream: tuple[str, ...]) -> dict[str, str | None]:
    """The run tokens of the stages ``name`` reads (and, for a job with variants, of each
    variant's evaluation, which the stages after evaluate read too)."""
    tokens = {u: (read_manifest(job.run_dir / u) or {}).get("token") for u in upstream
              if u != "sft" or job.sft.enabled}  # a disabled sft's old folder is not read
    if name in SPLIT_READERS:
        tokens["held_out_split"] = f"v{SPLIT_VERSION}"
    names = list(STAGES)
    if job.variants and "evaluate" in names and name in names[names.index("evaluate") + 1:]:
        for v in job.variants:
            tokens[f"variants/{v}"] = (read_manifest(job.run_dir / "variants" / v / "evaluate") or {}).get("token")
    return tokens
