"""Job configs: every shipped job validates; bad ones list every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from ttpa_ray.config import EngineConfig
from ttpa_ray.job import ConfigError, load_job

JOBS = sorted((Path(__file__).resolve().parents[1] / "jobs").glob("*.yaml"))


def test_jobs_exist():
    assert any(p.name == "demo-cpu.yaml" for p in JOBS)


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_every_job_validates_and_starts_with_its_launch_command(path: Path):
    job = load_job(path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ttpa ") and path.name in first, first
    assert job.name


def test_bad_config_lists_every_problem(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\n"
        "target:\n  backend: tensorrt\n  max_model_len: 3\n  pool: {min_actors: 3, max_actors: 1}\n  colour: blue\n"
        "probe: {num_prompts: 0}\n"
        "trainn: {}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_job(bad)
    problems = info.value.problems
    text = str(info.value)
    assert len(problems) == 6, problems
    assert "target.backend" in text and "'vllm'" in text
    assert "target.max_model_len" in text
    assert "target.pool" in text and "min_actors (3) must be <= max_actors (1)" in text
    assert "target.colour: unknown key; allowed here:" in text and "max_model_len" in text
    assert "probe.num_prompts" in text
    assert "trainn: unknown key" in text


def test_missing_name_and_bad_yaml(tmp_path: Path):
    f = tmp_path / "a.yaml"
    f.write_text("target: {backend: vllm}\n")
    with pytest.raises(ConfigError, match="name: required"):
        load_job(f)
    f.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_job(f)
    with pytest.raises(ConfigError, match="no such job file"):
        load_job(tmp_path / "missing.yaml")


def test_overrides_apply_and_are_validated(tmp_path: Path):
    job = load_job(JOBS[0], ["target.backend=transformers", "target.pool.batch_size=3", "seed=7"])
    assert job.target.backend == "transformers" and job.target.pool.batch_size == 3 and job.seed == 7
    with pytest.raises(ConfigError) as info:
        load_job(JOBS[0], ["target.nope=1", "probe.max_tokens=-1"])
    assert len(info.value.problems) == 2
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_job(JOBS[0], ["target.backend"])


def test_openai_backend_needs_api_base_and_env_name():
    with pytest.raises(ValueError, match="needs api_base"):
        EngineConfig(backend="openai", model="m")
    with pytest.raises(ValueError, match="NAME of an environment variable"):
        EngineConfig(backend="openai", model="m", api_base="http://127.0.0.1:1/v1", api_key_env="sk-abc123!")


def test_extends_merges_section_by_section_and_refuses_cycles(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("name: base\nseed: 3\ntrain: {beta: 0.2, epochs: 4}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nname: child\ntrain: {epochs: 1}\n")
    job = load_job(tmp_path / "child.yaml", ["train.learning_rate=0.5"])
    assert (job.name, job.seed, job.train.beta, job.train.epochs, job.train.learning_rate) == ("child", 3, 0.2, 1, 0.5)
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_job(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\nname: c\n")
    with pytest.raises(ConfigError, match="no such job file"):
        load_job(tmp_path / "c.yaml")


def test_decision_loss_needs_turn_packing():
    """train.decision_loss reads the chosen side once per packed turn: with pair packing it is
    refused at load time, with the two ways out."""
    job = load_job(JOBS[0], ["train.decision_loss=2"])
    assert job.train.decision_loss == 2.0 and job.train.packing == "turn"
    with pytest.raises(ConfigError, match="decision_loss needs packing: turn.*train.decision_loss: 0"):
        load_job(JOBS[0], ["train.decision_loss=2", "train.packing=pair"])
