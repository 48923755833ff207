"""The stage runner without Ray: skipping complete stages, redoing on config or upstream
changes, --from, and resuming a stage an interrupted run left 'running'."""

from __future__ import annotations

import json

import pytest

from ttpa_ray import pipeline
from ttpa_ray.config import validate_job


@pytest.fixture
def fake_stages(monkeypatch):
    calls: list[tuple[str, bool]] = []

    def runner(name):
        def run(job, out, resume):
            calls.append((name, resume))
            return {"rows": 1}
        return run

    stages = {"probe": (runner("probe"), ("probe",), ()),
              "construct": (runner("construct"), ("construct", "seed"), ()),
              "sample": (runner("sample"), ("sample", "evaluate.held_out_fraction"), ("construct",)),
              "train": (runner("train"), ("train",), ("sample",))}
    monkeypatch.setattr(pipeline, "STAGES", stages)
    monkeypatch.setattr("ttpa_ray.runtime.init_ray", lambda *a, **k: None)
    return calls


def _job(tmp_path, **sections):
    return validate_job({"name": "t", "output_dir": str(tmp_path), **sections})


def test_skip_redo_on_change_and_from(tmp_path, fake_stages):
    pipeline.run_pipeline(_job(tmp_path))
    assert [c[0] for c in fake_stages] == ["probe", "construct", "sample", "train"]
    fake_stages.clear()
    pipeline.run_pipeline(_job(tmp_path))
    assert fake_stages == []  # all complete, same config
    pipeline.run_pipeline(_job(tmp_path, sample={"top_k": 3}))
    assert [c[0] for c in fake_stages] == ["sample", "train"]  # changed stage + the one reading it
    fake_stages.clear()
    pipeline.run_pipeline(_job(tmp_path, sample={"top_k": 3}, evaluate={"held_out_fraction": 0.5}))
    assert [c[0] for c in fake_stages] == ["sample", "train"]  # a single field of another section
    fake_stages.clear()
    pipeline.run_pipeline(_job(tmp_path, sample={"top_k": 3}, evaluate={"held_out_fraction": 0.5}),
                          from_stage="construct")
    assert [c[0] for c in fake_stages] == ["construct", "sample", "train"]
    with pytest.raises(ValueError, match="unknown stage"):
        pipeline.run_pipeline(_job(tmp_path), from_stage="nope")


def test_interrupted_stage_resumes_and_forced_stage_does_not(tmp_path, fake_stages):
    job = _job(tmp_path)
    pipeline.run_pipeline(job)
    manifest = tmp_path / "t" / "train" / "manifest.json"
    # A run killed inside train leaves its manifest 'running' with the same fingerprint.
    manifest.write_text(json.dumps({"stage": "train", "status": "running",
                                    "fingerprint": pipeline.fingerprint(job, ("train",))}))
    fake_stages.clear()
    pipeline.run_pipeline(job)
    assert fake_stages == [("train", True)]
    assert json.loads(manifest.read_text())["status"] == "complete"
    manifest.write_text(json.dumps({"stage": "train", "status": "running", "fingerprint": "other"}))
    fake_stages.clear()
    pipeline.run_pipeline(job)
    assert fake_stages == [("train", False)]  # the config changed: start over
    fake_stages.clear()
    pipeline.run_pipeline(job, only="train")
    assert fake_stages == [("train", False)]  # asked for: redone from scratch
