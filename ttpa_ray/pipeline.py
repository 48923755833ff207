"""Runs a job's stages in order. Each stage writes ``<run_dir>/<stage>/`` (Parquet + a
``manifest.json``); a rerun skips a stage whose manifest is complete for the same config
section, and ``--from STAGE`` forces a redo from there.

Stages that exist so far: ``probe`` (the engine pool answering tool-use prompts). Later
stages (construct, sample, score, train, evaluate) plug into :data:`STAGES` the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ttpa_ray.config import JobConfig

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def _probe(job: JobConfig, out: Path) -> dict[str, Any]:
    from ttpa_ray.probe import run_probe

    return run_probe(job.probe, job.engine, out, seed=job.seed)


# name -> (runner, the config sections the stage reads: its fingerprint)
STAGES: dict[str, tuple[Callable[[JobConfig, Path], dict[str, Any]], tuple[str, ...]]] = {
    "probe": (_probe, ("probe", "engine")),
}


def fingerprint(job: JobConfig, sections: tuple[str, ...]) -> str:
    data = json.dumps({s: getattr(job, s).model_dump(mode="json") for s in sections}, sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    path = stage_dir / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def run_pipeline(job: JobConfig, from_stage: str | None = None) -> dict[str, dict[str, Any]]:
    from ttpa_ray.runtime import init_ray

    if from_stage is not None and from_stage not in STAGES:
        raise ValueError(f"--from {from_stage}: unknown stage; stages are {', '.join(STAGES)}")
    run_dir = job.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "job.json").write_text(job.model_dump_json(indent=2))
    init_ray(job.ray.address, job.ray.num_cpus, job.ray.include_dashboard)
    forced = False
    results = {}
    for name, (runner, sections) in STAGES.items():
        if not getattr(job, name).enabled:
            log.info("stage %s: disabled in the job", name)
            continue
        forced = forced or name == from_stage
        stage_dir = run_dir / name
        fp = fingerprint(job, sections)
        manifest = read_manifest(stage_dir)
        if not forced and manifest and manifest.get("status") == "complete" and manifest.get("fingerprint") == fp:
            log.info("stage %s: complete, skipped (%s)", name, stage_dir)
            results[name] = manifest
            continue
        stage_dir.mkdir(parents=True, exist_ok=True)
        log.info("stage %s: running -> %s", name, stage_dir)
        t0 = time.time()
        counts = runner(job, stage_dir)
        manifest = {"stage": name, "status": "complete", "fingerprint": fp, "seconds": round(time.time() - t0, 2),
                    **counts}
        (stage_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
        results[name] = manifest
        log.info("stage %s: done in %.1f s: %s", name, manifest["seconds"], counts)
    return results
