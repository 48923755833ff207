"""The stage runner without Ray: skipping complete stages, redoing on config or upstream
changes, --from, and resuming a stage an interrupted run left 'running'."""

from __future__ import annotations

import hashlib
import json

import pytest

from ttpa_ray import pipeline
from ttpa_ray.manifest import fingerprint
from ttpa_ray.job import validate_job


@pytest.fixture
def fake_stages(monkeypatch):
    calls: list[tuple[str, bool]] = []

    def runner(name):
        def run(job, out, resume):
            calls.append((name, resume))
            RUNS.append((job.name, name))
            return {"rows": 1}
        return run

    stages = {"probe": (runner("probe"), ("probe",), ()),
              "construct": (runner("construct"), ("construct", "seed"), ()),
              "sft": (runner("sft"), ("sft",), ("construct",)),
              "sample": (runner("sample"), ("sample", "evaluate.held_out_fraction"), ("construct", "sft")),
              "train": (runner("train"), ("train",), ("sample", "sft")),
              "evaluate": (runner("evaluate"), ("evaluate",), ("construct", "train")),
              "report": (runner("report"), (), ("evaluate",))}
    RUNS.clear()
    monkeypatch.setattr(pipeline, "STAGES", stages)
    monkeypatch.setattr("ttpa_ray.runtime.init_ray", lambda *a, **k: None)
    return calls


RUNS: list[tuple[str, str]] = []  # (job name, stage) of every stage run


def _job(tmp_path, **sections):
    sections.setdefault("evaluate", {})
    sections["evaluate"] = {"enabled": False} | sections["evaluate"]
    return validate_job({"name": "t", "output_dir": str(tmp_path), "report": {"enabled": False}, **sections})


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


def test_a_knob_added_later_leaves_runs_made_before_it_current(tmp_path, fake_stages):
    # construct.irrelevance_twins came after runs existed; at its default (0, no twins) a
    # construct made before it hashes the same: the fingerprint of the config without the field.
    job = _job(tmp_path)
    before = {k: v for k, v in job.construct.model_dump(mode="json").items() if k != "irrelevance_twins"}
    data = json.dumps({"config": {"construct": before}, "upstream": {}}, sort_keys=True)
    assert fingerprint(job, ("construct",)) == hashlib.sha256(data.encode()).hexdigest()[:16]
    pipeline.run_pipeline(job)
    fake_stages.clear()
    pipeline.run_pipeline(_job(tmp_path, construct={"irrelevance_twins": 0.5}))  # set: part of the hash
    assert [c[0] for c in fake_stages] == ["construct", "sample", "train"]


def test_interrupted_stage_resumes_and_forced_stage_does_not(tmp_path, fake_stages):
    job = _job(tmp_path)
    pipeline.run_pipeline(job)
    manifest = tmp_path / "t" / "train" / "manifest.json"
    # A run killed inside train leaves its manifest 'running' with the same fingerprint.
    fp = fingerprint(job, ("train",), pipeline.upstream_tokens(job, "train", ("sample",)))
    manifest.write_text(json.dumps({"stage": "train", "status": "running", "fingerprint": fp}))
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


def test_upstream_redone_by_another_command_redoes_what_reads_it(tmp_path, fake_stages):
    pipeline.run_pipeline(_job(tmp_path))
    fake_stages.clear()
    pipeline.run_pipeline(_job(tmp_path), only="construct")  # e.g. `ttpa construct JOB`
    pipeline.run_pipeline(_job(tmp_path))
    assert [c[0] for c in fake_stages] == ["construct", "sample", "train"]


def test_sft_runs_once_before_sample_and_its_output_redoes_what_follows(tmp_path, fake_stages):
    variants = {"tps": {"sample.top_k": 3}, "nsample": {"sample.mode": "nsample"}}
    job = _job(tmp_path, sft={"enabled": True}, variants=variants)
    pipeline.run_pipeline(job)
    assert RUNS[:3] == [("t", "probe"), ("t", "construct"), ("t", "sft")] and ("tps", "sample") in RUNS
    assert [r for r in RUNS if r[1] == "sft"] == [("t", "sft")]
    sub = tmp_path / "t" / "variants" / "tps"
    assert (sub / "sft").resolve() == (tmp_path / "t" / "sft").resolve()
    RUNS.clear()
    pipeline.run_pipeline(job, only="sft")
    pipeline.run_pipeline(job)  # a new SFT model: every variant's sample and train are redone, construct is not
    assert ("t", "construct") not in RUNS and ("tps", "sample") in RUNS and ("nsample", "train") in RUNS
    RUNS.clear()
    pipeline.run_pipeline(_job(tmp_path, sft={"enabled": False}, variants=variants))
    assert ("t", "sft") not in RUNS and ("tps", "sample") in RUNS  # off: not run, and what read it is redone


def test_on_policy_models(tmp_path):
    """With sft: sample, reference and train use the SFT model, evaluation shows all three."""
    job = _job(tmp_path, sft={"enabled": True}, evaluate={"enabled": True})
    with pytest.raises(ValueError, match="run the sft stage first"):
        pipeline.sft_model(job)
    model = tmp_path / "t" / "sft" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    assert pipeline.sft_model(job) == str(model.resolve()) == pipeline._start_model(job)
    assert list(pipeline.evaluate_models(job)) == ["base", "sft"]
    assert pipeline.evaluate_models(job)["base"] == job.target.model
    off = _job(tmp_path, sft={"enabled": True}, train={"from_sft": False, "model": "tiny-random"})
    assert pipeline._start_model(off) == "tiny-random"
    assert pipeline._start_model(_job(tmp_path)) == job.target.model  # no sft


def test_variants_share_construct_and_base_evaluation(tmp_path, fake_stages):
    variants = {"tps": {"sample.top_k": 3}, "nsample": {"sample.mode": "nsample", "train.epochs": 2}}
    job = _job(tmp_path, variants=variants, evaluate={"enabled": True}, report={"enabled": True})
    pipeline.run_pipeline(job)
    assert RUNS == [("t", "probe"), ("t", "construct"),
                    ("tps", "sample"), ("tps", "train"), ("tps", "evaluate"),
                    ("nsample", "sample"), ("nsample", "train"), ("nsample", "evaluate"),
                    ("t", "evaluate"), ("t", "report")]
    sub = tmp_path / "t" / "variants" / "nsample"
    assert (sub / "construct").resolve() == (tmp_path / "t" / "construct").resolve()
    assert json.loads((sub / "job.json").read_text())["sample"]["mode"] == "nsample"
    assert json.loads((sub / "job.json").read_text())["evaluate"]["base"] is False
    assert pipeline.evaluate_models(validate_job(json.loads((tmp_path / "t" / "job.json").read_text())))
    RUNS.clear()
    pipeline.run_pipeline(job)
    assert RUNS == []  # everything complete
    pipeline.run_pipeline(job, only="construct")
    RUNS.clear()
    pipeline.run_pipeline(job)  # new instances: every variant and the report are redone, probe is not
    assert [r for r in RUNS if r[1] == "probe"] == [] and ("nsample", "sample") in RUNS and RUNS[-1] == ("t", "report")
    bad = {"tps": {"construct.num_instances": 3}}
    with pytest.raises(ValueError, match="cannot vary"):
        _job(tmp_path, variants={"tps": {"sft.epochs": 3}})  # sft runs once, in the parent
    with pytest.raises(ValueError, match="cannot vary"):
        _job(tmp_path, variants=bad)
    with pytest.raises(ValueError, match=r"variants\.x: sample\.top_k"):
        _job(tmp_path, variants={"x": {"sample.top_k": -1}})


def test_a_new_held_out_split_redoes_the_stages_that_apply_it(tmp_path, fake_stages, monkeypatch):
    job = _job(tmp_path, sft={"enabled": True})
    pipeline.run_pipeline(job)
    fake_stages.clear()
    monkeypatch.setattr(pipeline, "SPLIT_VERSION", pipeline.SPLIT_VERSION + 1)  # held_out_ids picks others
    pipeline.run_pipeline(job)
    assert [c[0] for c in fake_stages] == ["sft", "sample", "train"]  # construct kept; train reads sample


def test_a_resumed_evaluation_keeps_the_models_it_finished(tmp_path):
    from ttpa_ray.config import EngineConfig, EvaluateConfig, ScoreConfig
    from ttpa_ray.evaluate.stage import run_evaluate
    from ttpa_ray.models.registry import ModelError

    out = tmp_path / "evaluate" / "base"
    out.mkdir(parents=True)
    (out / "counts.json").write_text(json.dumps({"model": "no-such-model", "bfcl_rows": 7}))
    args = EvaluateConfig(categories=["simple"]), EngineConfig(model="x"), ScoreConfig()
    assert run_evaluate(*args, "no-such-model", None, out, resume=True) == {"bfcl_rows": 7}
    # Not a resume, or another model than the finished one: evaluated (and this one does not exist).
    for model, resume in (("no-such-model", False), ("no-such-model-2", True)):
        with pytest.raises(ModelError, match=f"unknown model '{model}'"):
            run_evaluate(*args, model, None, out, resume=resume)


def test_a_stage_run_alone_refuses_an_upstream_made_with_another_config(tmp_path, fake_stages):
    """`ttpa train JOB train.x=...` reads sample's output as it is: when sample was made with
    another config (or from another construct run), the single-stage command is refused with
    the fix, not run on stale input; `ttpa run` redoes the stale stage instead."""
    pipeline.run_pipeline(_job(tmp_path))
    fake_stages.clear()
    pipeline.run_pipeline(_job(tmp_path, train={"learning_rate": 1e-4}), only="train")  # train's own change: fine
    assert fake_stages == [("train", False)]
    fake_stages.clear()
    with pytest.raises(ValueError, match=r"stage train: its input .*sample.*ttpa run JOB --from sample"):
        pipeline.run_pipeline(_job(tmp_path, sample={"top_k": 3}), only="train")
    assert fake_stages == []
    pipeline.run_pipeline(_job(tmp_path), only="construct")   # new instances: sample is stale too
    with pytest.raises(ValueError, match="stage train: its input"):
        pipeline.run_pipeline(_job(tmp_path), only="train")
    pipeline.run_pipeline(_job(tmp_path))                     # `ttpa run` redoes sample, then train
    assert [c[0] for c in fake_stages][-2:] == ["sample", "train"]
    pipeline.run_pipeline(_job(tmp_path), only="train")
