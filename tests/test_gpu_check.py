"""bench/gpu_check: its data and model shapes, and its CPU mode end to end through
bench/gpu_check.sh (ours vs TRL's DPOTrainer on the same ids, tiny config, fp32)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402

from ttpa_ray.train.group_forward import collate_groups, group_pairs  # noqa: E402
from ttpa_ray.train.pair_forward import collate_pairs  # noqa: E402


def test_demo_turns_are_valid_pairs_branching_at_different_tokens():
    m = gpu_check.MODES["gpu"]
    rows = gpu_check.demo_turns(m["turns"], m["k"], m["model"]["vocab_size"], m["prompt"], m["call"])
    collate_pairs(rows, pad_token_id=gpu_check.PAD)   # raises on a wrong divergence_index
    groups = group_pairs(rows)
    assert [len(g) for g in groups] == [m["k"]] * m["turns"]
    for g in groups:
        assert len(rows[g[0]]["prompt_token_ids"]) >= 500
        assert len({rows[i]["divergence_index"] for i in g}) == m["k"]
        assert all(rows[i]["chosen_token_ids"][-1] == rows[i]["rejected_token_ids"][-1] == gpu_check.EOS for i in g)
    assert collate_groups(rows, pad_token_id=0).num_groups == m["turns"]
    assert gpu_check.demo_turns(2, 3, 100, (40, 50), (12, 16)) == gpu_check.demo_turns(2, 3, 100, (40, 50), (12, 16))


def test_the_gpu_model_is_qwen2_5_0_5b_sized():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**gpu_check.QWEN25_05B))
    assert sum(p.numel() for p in model.parameters()) == 494_032_768   # Qwen2.5-0.5B's count (tied embeddings)
    assert model.config.rope_parameters["rope_theta"] == 1e6 and not model.config.use_sliding_window


def test_without_deepspeed_trl_or_wheels_it_names_the_fix(tmp_path):
    fake = tmp_path / "python"   # a Python without site-packages: no deepspeed, no trl
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    fake.chmod(0o755)
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--cpu"], capture_output=True, text=True,
                          env=os.environ | {"PYTHON": str(fake), "TTPA_GPU_WHEELS": str(tmp_path)})
    assert proc.returncode == 2 and "make gpu-bundle" in proc.stderr


@pytest.mark.slow
def test_cpu_mode_runs_both_trainers_on_the_same_tokens(tmp_path):
    """~30 s here: two fresh processes (DeepSpeed ZeRO-0, TRL), tiny Qwen2, 2 turns x 3 rejected."""
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "cpu" and report["pairs_per_step"] == 6 and set(report["summary"]) == {"ours", "trl"}
    ours, trl = report["sides"]["ours"], report["sides"]["trl"]
    assert trl["same_token_ids"] and ours["pairs_per_step"] == trl["pairs_per_step"] == 6
    assert ours["attn_implementation"] == "sdpa"                      # train.attention auto on CPUs: dense
    assert ours["flops"] == trl["flops"]                               # the same useful-work count on both sides
    # The same model and tokens: step 1's summed log-probs (about -100) agree to fp32 rounding.
    assert max(report["step1_logps_abs_diff"].values()) < 1e-3
    for s in report["summary"].values():
        assert s["tokens_per_s"] > 0 and 0 < s["share_of_measured_peak"] < 1
    assert "tokens/s" in proc.stdout and "ours is" in proc.stdout
