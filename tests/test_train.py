"""Preference training: the plan (pure), the DPO loop on DeepSpeed in this process, and Ray
Train runs (1 worker vs 2 workers under ZeRO-2/ZeRO-3, a worker killed and restored)."""

from __future__ import annotations

import json
import math
import os
import platform
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import actor_nodes, actor_resources

from ttpa_ray.train import plan
from ttpa_ray.config import TrainConfig
from ttpa_ray.job import ConfigError, validate_job
from ttpa_ray.train.reference import REFERENCE_INPUTS
from ttpa_ray.synthetic import synthetic_pairs


# --------------------------------------------------------------------------- plan (pure)


@pytest.mark.parametrize("world,micro,accum", [(1, 8, 1), (1, 1, 8), (2, 2, 2), (2, 4, 1), (4, 1, 2)])
def test_global_batches_do_not_depend_on_the_number_of_workers(world, micro, accum):
    size = plan.global_batch_size(micro, accum, world)
    assert size == 8
    order = plan.epoch_order(40, seed=3, epoch=1)
    assert sorted(order) == list(range(40)) and order != plan.epoch_order(40, seed=3, epoch=0)
    seen = []
    for step in range(plan.steps_per_epoch(40, size)):
        batch = plan.global_batch(order, step, size)
        assert batch == order[step * 8:(step + 1) * 8]  # the same for every world size
        shares = [plan.rank_micro_batches(batch, r, world, micro) for r in range(world)]
        assert all(len(s) == accum and all(len(m) == micro for m in s) for s in shares)
        got = sorted(i for s in shares for m in s for i in m)
        assert got == sorted(batch)
        seen += got
    assert sorted(seen) == list(range(40))


def test_lr_schedule_and_step_counts():
    assert [plan.lr_factor(s, "constant", 2, 10) for s in (0, 1, 5)] == [0.5, 1.0, 1.0]
    cos = [plan.lr_factor(s, "cosine", 0, 4) for s in range(4)]
    assert cos[0] == 1.0 and cos == sorted(cos, reverse=True) and cos[-1] > 0
    assert plan.total_steps(10, 4, epochs=3, max_steps=None) == 6  # 2 full batches per epoch
    assert plan.total_steps(10, 4, epochs=3, max_steps=5) == 5
    with pytest.raises(ValueError, match="fewer than one global batch"):
        plan.steps_per_epoch(3, 4)
    with pytest.raises(ValueError, match="lr_scheduler"):
        plan.lr_factor(5, "step", 0, 10)


def test_deepspeed_config_per_stage():
    ds = plan.deepspeed_config(TrainConfig(zero_stage=3, offload_optimizer=True, offload_params=True,
                                           micro_batch_size=2, gradient_accumulation_steps=3), world=4, bf16=True)
    assert ds["train_batch_size"] == 24 and ds["bf16"]["enabled"]
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    assert "offload_param" not in plan.deepspeed_config(TrainConfig(zero_stage=2), 1, False)["zero_optimization"]


def test_deepspeed_buffers_scale_with_the_model():
    """Buckets and ZeRO-3's optimizer sub-groups follow hidden_size; without it DeepSpeed's defaults stay."""
    zero3 = plan.deepspeed_config(TrainConfig(zero_stage=3), 2, True, hidden_size=576)["zero_optimization"]
    assert zero3["reduce_bucket_size"] == 576**2 and zero3["sub_group_size"] == 12 * 576**2
    zero2 = plan.deepspeed_config(TrainConfig(zero_stage=2), 2, True, hidden_size=576)["zero_optimization"]
    assert zero2["reduce_bucket_size"] == 576**2 and "sub_group_size" not in zero2
    assert "sub_group_size" not in plan.deepspeed_config(TrainConfig(zero_stage=3), 2, True)["zero_optimization"]


def test_train_config_errors_name_the_field():
    with pytest.raises(ConfigError) as err:
        validate_job({"name": "x", "train": {"beta": 0, "loss_type": "hinge"}})
    assert "train.beta" in str(err.value) and "train.loss_type" in str(err.value)
    with pytest.raises(ConfigError, match="offload_params needs zero_stage 3"):
        validate_job({"name": "x", "train": {"zero_stage": 2, "offload_params": True}})
    with pytest.raises(ConfigError, match="LoRA with zero_stage 3"):
        validate_job({"name": "x", "train": {"zero_stage": 3, "lora": {"r": 8}}})


# --------------------------------------------------------------------------- DeepSpeed in this process


@pytest.fixture(scope="module")
def process_group():
    """A one-process gloo group, as Ray Train would set up for one worker."""
    import deepspeed
    import torch.distributed as dist

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    deepspeed.init_distributed(dist_backend="gloo")
    yield
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def pairs_with_ref(tiny_model, tmp_path_factory):
    """Synthetic pairs with reference log-probs from the starting model (computed in-process
    with the same forward the reference stage's actors use)."""
    from ttpa_ray.train.reference import ReferenceBatch

    rows = synthetic_pairs(16, 500)
    ref = ReferenceBatch(str(tiny_model), "float32", prefix_weight=1.0, batch_size=4)
    for r, (c, rj) in zip(rows, ref.logps(rows)):
        r["ref_chosen_logps"], r["ref_rejected_logps"] = c, rj
    path = tmp_path_factory.mktemp("ref") / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _run_local(tiny_model, pairs, steps, backward_allreduce=None, **overrides):
    from ttpa_ray.train.loop import prepare_pairs, run_steps
    from ttpa_ray.train.stage import create_policy

    cfg = TrainConfig(**{"learning_rate": 1e-3, "max_steps": steps} | overrides)
    table, _ = prepare_pairs(pairs, cfg)
    policy = create_policy(tiny_model, cfg, world=1, total_steps=steps, use_gpu=False)
    if backward_allreduce is not None:
        policy.engine.enable_backward_allreduce = backward_allreduce
    state = run_steps(policy, table, cfg, seed=0, rank=0, world=1, total=steps, pad_id=0,
                      state={"step": 0, "history": []})
    weights = {n: p.detach().clone() for n, p in policy.module.named_parameters()}
    return state["history"], weights, policy


@pytest.mark.slow
def test_first_step_is_ln2_and_accumulation_1x8_equals_8x1(tiny_model, pairs_with_ref, process_group):
    import torch

    a, wa, _ = _run_local(tiny_model, pairs_with_ref, 2, micro_batch_size=8, gradient_accumulation_steps=1,
                          zero_stage=0)
    b, wb, _ = _run_local(tiny_model, pairs_with_ref, 2, micro_batch_size=1, gradient_accumulation_steps=8,
                          zero_stage=2)
    assert a[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference at step 1
    assert abs(a[0]["rewards/chosen"]) < 1e-5 and abs(a[0]["rewards/margins"]) < 1e-6
    for x, y in zip(a, b):
        assert x["pairs"] == y["pairs"] == 8
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)
        assert x["rewards/margins"] == pytest.approx(y["rewards/margins"], abs=1e-5)
    for name, w in wa.items():
        assert torch.allclose(w, wb[name], atol=1e-5), name


def turn_pairs(turns: int, k: int, seed: int = 0) -> list[dict]:
    """TPS-shaped pairs: ``turns`` prompts, each with one chosen and ``k`` rejected branching at
    different tokens (consecutive ids per turn, as the sample stage writes them)."""
    import random

    rng = random.Random(seed)
    rows = []
    for base in synthetic_pairs(turns, 500, seed=seed, shared=(4, 8), tail=(6, 10)):
        chosen = base["chosen_token_ids"]
        for j in range(k):
            d = rng.randrange(0, len(chosen))
            rejected = chosen[:d] + [rng.randrange(3, 500) for _ in range(rng.randint(1, 8))]
            while rejected[d] == chosen[d]:
                rejected[d] = rng.randrange(3, 500)
            rows.append(base | {"id": len(rows), "rejected_token_ids": rejected, "divergence_index": d})
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("decision_only", [[], ["call-or-not"]])
def test_turn_packing_policy_equal_to_reference_ties_exactly(tiny_model, process_group, tmp_path, decision_only):
    """Reference and train pack each turn the same way: at step 1 (policy = reference) every
    log-ratio is exactly 0, the loss exactly ln 2, and ties count as not accurate. Batches
    count turns: one turn of 3 pairs per micro-batch. With ``decision_only`` both stages score
    the listed pairs on their divergence token alone."""
    from ttpa_ray.train.reference import ReferenceBatch

    rows = [r | {"branch_kind": "call-or-not" if r["id"] % 3 == 0 else "value"} for r in turn_pairs(4, 3)]
    cols = REFERENCE_INPUTS + ["branch_kind"]
    ref = ReferenceBatch(str(tiny_model), "float32", prefix_weight=1.0, batch_size=4, packing="turn",
                         decision_only=decision_only)
    out = ref({k: [r[k] for r in rows] for k in cols})  # the whole batch, as Ray Data hands it
    full = ReferenceBatch(str(tiny_model), "float32", prefix_weight=1.0, batch_size=4, packing="turn")(
        {k: [r[k] for r in rows] for k in cols})
    for r, c, j, fc, fj in zip(rows, out["ref_chosen_logps"], out["ref_rejected_logps"], full["ref_chosen_logps"],
                               full["ref_rejected_logps"]):
        r["ref_chosen_logps"], r["ref_rejected_logps"] = float(c), float(j)
        listed = r["branch_kind"] in decision_only and len(r["chosen_token_ids"]) > r["divergence_index"] + 1
        assert (c > fc) == listed  # dropping the tail's (negative) log-probs raises the sum
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    history, _, _ = _run_local(tiny_model, tmp_path / "pairs.parquet", 2, micro_batch_size=1,
                               gradient_accumulation_steps=2, zero_stage=0, packing="turn",
                               decision_only=decision_only)
    first = history[0]
    assert first["pairs"] == 6 and first["rewards/chosen"] == 0.0 and first["rewards/margins"] == 0.0
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-7) and first["rewards/accuracies"] == 0.0  # ties: not accurate
    assert history[1]["rewards/margins"] > 0  # and then it learns


@pytest.mark.slow
def test_one_rank_zero0_skips_the_gradient_all_reduce_and_trains_the_same_weights(tiny_model, pairs_with_ref,
                                                                                   process_group):
    """One rank, ZeRO-0: create_policy turns DeepSpeed's gradient all-reduce off (it flattens every
    gradient into a whole-model bucket to average over one rank: only memory). Same weights as
    with it on, bit for bit, over accumulated micro-batches."""
    import torch

    a, wa, policy = _run_local(tiny_model, pairs_with_ref, 2, micro_batch_size=2, gradient_accumulation_steps=2,
                               zero_stage=0)
    assert policy.engine.enable_backward_allreduce is False
    b, wb, _ = _run_local(tiny_model, pairs_with_ref, 2, backward_allreduce=True, micro_batch_size=2,
                          gradient_accumulation_steps=2, zero_stage=0)
    assert [x["loss"] for x in a] == [y["loss"] for y in b] and a[1]["loss"] != a[0]["loss"]
    assert all(torch.equal(w, wb[name]) for name, w in wa.items())
    _, _, two_stage = _run_local(tiny_model, pairs_with_ref, 1, micro_batch_size=2, zero_stage=2)
    assert two_stage.engine.enable_backward_allreduce  # ZeRO-2 reduces into its partitions through it


def test_heap_mmap_threshold_is_set_on_glibc_and_left_alone_at_0():
    from ttpa_ray.runtime import set_heap_mmap_threshold

    assert set_heap_mmap_threshold(0) is False
    glibc = platform.libc_ver()[0] == "glibc"
    assert set_heap_mmap_threshold(128) is glibc
    if glibc:  # back to where glibc's dynamic thresholds settle (mmap 32 MiB, trim 64 MiB) for the other tests
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        assert libc.mallopt(-3, 32 * 2**20) == 1 and libc.mallopt(-1, 64 * 2**20) == 1


@pytest.mark.slow
def test_gradient_checkpointing_trains_the_same_weights(tiny_model, pairs_with_ref, process_group):
    import torch

    a, wa, _ = _run_local(tiny_model, pairs_with_ref, 2, micro_batch_size=4, zero_stage=2)
    b, wb, policy = _run_local(tiny_model, pairs_with_ref, 2, micro_batch_size=4, zero_stage=2,
                               gradient_checkpointing=True)
    assert policy.module.model.gradient_checkpointing and policy.module.training
    assert [x["loss"] for x in a] == pytest.approx([y["loss"] for y in b], abs=1e-6)
    for name, w in wa.items():
        assert torch.allclose(w, wb[name], atol=1e-6), name
    assert abs(a[1]["loss"] - a[0]["loss"]) > 1e-4  # the first step moved the weights


@pytest.mark.slow
def test_lora_trains_adapters_only_and_exports_merged(tiny_model, pairs_with_ref, process_group, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    hist, weights, policy = _run_local(tiny_model, pairs_with_ref, 2, micro_batch_size=4, zero_stage=2, lora=lora)
    trainable = [n for n, p in policy.module.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    policy.export(tmp_path / "model", rank=0)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    q = "model.layers.0.self_attn.q_proj.weight"
    k = "model.layers.0.self_attn.k_proj.weight"
    sd, sb = merged.state_dict(), base.state_dict()
    assert not torch.allclose(sd[q], sb[q]) and torch.equal(sd[k], sb[k])  # merged where LoRA sat, only there


# --------------------------------------------------------------------------- Ray Train


@pytest.fixture(scope="module")
def ray_runs(tiny_model, pairs_with_ref, process_group, ray_two_nodes, tmp_path_factory, monkeypatch_module):
    """Over the same 16 pairs, 2 epochs, global batch 4 (6 steps): the 1-worker curve (the
    worker's loop in this process), and two Ray Train runs with 2 workers spread over a
    two-node cluster: ZeRO-3, and ZeRO-2 whose last rank is SIGKILLed after step 3
    (checkpoints every 2 steps, max_failures 1)."""
    from ttpa_ray.train.stage import FAULT_ENV, PROFILE_ENV, run_train, worker_resources

    base = dict(learning_rate=1e-3, epochs=2, max_steps=6, checkpoint_every=2, cpus_per_worker=0.5,
                lr_scheduler="constant", warmup_ratio=0.0)
    one, _, _ = _run_local(tiny_model, pairs_with_ref, 6, **base | dict(micro_batch_size=4, zero_stage=0))
    runs = {"one": ({"steps": len(one), "restores": []}, one, None, {})}
    for name, kw in (("zero3", dict(num_workers=2, micro_batch_size=2, zero_stage=3)),
                     ("killed", dict(num_workers=2, micro_batch_size=1, gradient_accumulation_steps=2,
                                     zero_stage=2, max_failures=1))):
        out = tmp_path_factory.mktemp(name)
        if name == "killed":
            monkeypatch_module.setenv(FAULT_ENV, "3")
        if name == "zero3":
            monkeypatch_module.setenv(PROFILE_ENV, "2")  # peak tensor memory per rank through step 2
        before = set(actor_nodes("RayTrainWorker"))
        cfg = TrainConfig(**base, **kw, placement_strategy="SPREAD")
        counts = run_train(cfg, str(tiny_model), pairs_with_ref, out)
        monkeypatch_module.delenv(FAULT_ENV, raising=False)
        monkeypatch_module.delenv(PROFILE_ENV, raising=False)
        history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        workers = {k: v for k, v in actor_nodes("RayTrainWorker").items() if k not in before}
        requested = actor_resources("RayTrainWorker")  # as Ray's actor table holds them
        for k, w in workers.items():
            w |= {"requested": requested[k], "expected": worker_resources(cfg, tiny_model)}
        runs[name] = (counts, history, out, workers)
    return runs


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.mark.slow
def test_two_workers_zero2_zero3_match_one_worker_and_learn(ray_runs):
    """Data order and global batches do not depend on the number of workers, so the curves match."""
    counts, one, _, _ = ray_runs["one"]
    assert counts["steps"] == 6 and [r["step"] for r in one] == list(range(1, 7)) and counts["restores"] == []
    assert one[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert all(r["pairs"] == 4 for r in one)
    # Epoch 2 revisits the pairs of epoch 1: the policy now prefers the chosen side.
    epoch2 = [r for r in one if r["epoch"] == 1]
    assert sum(r["loss"] for r in epoch2) / len(epoch2) < math.log(2) - 0.01
    assert sum(r["rewards/margins"] for r in epoch2) > 0
    import ray

    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    for name in ("zero3", "killed"):
        other, workers = ray_runs[name][1], ray_runs[name][3]
        assert len(nodes) == 2 and {w["node"] for w in workers.values()} == nodes, workers  # spread
        # Each rank asked Ray for the memory of its model states (resources.py), not 0.
        assert all(w["requested"]["memory"] == w["expected"]["memory"] > 2**30 and w["requested"]["CPU"] == 0.5
                   for w in workers.values()), workers
        assert other[0]["grad_norm"] == pytest.approx(one[0]["grad_norm"], rel=1e-4)
        assert [r["step"] for r in other] == list(range(1, 7)), name
        for a, b in zip(one, other):
            assert b["loss"] == pytest.approx(a["loss"], abs=1e-4), (name, a["step"])
            assert b["rewards/margins"] == pytest.approx(a["rewards/margins"], abs=1e-4), (name, a["step"])


@pytest.mark.slow
def test_killed_worker_restores_from_last_checkpoint(ray_runs):
    counts, history, out, workers = ray_runs["killed"]
    assert counts["restores"] == [2]  # killed after step 3; the step-2 checkpoint was restored
    assert len(workers) == 4 and {w["state"] for w in workers.values()} == {"DEAD"}  # 2 ranks, twice
    assert counts["steps"] == 6 and len(history) == 6  # no duplicated or missing step
    assert (out / "model" / "config.json").is_file()


@pytest.mark.slow
def test_zero3_export_is_a_consolidated_hf_model(ray_runs, tiny_model):
    """The ZeRO-3 run's model: gathered from both ranks' shards into one HF folder that loads
    in transformers, with every weight trained-or-equal and the right shapes. (vLLM loading a
    trained model is covered end to end: the tiny job evaluates it on vLLM.)"""
    import torch
    from transformers import AutoModelForCausalLM

    counts, _, out, _ = ray_runs["zero3"]
    model = out / "model"
    # Memory diagnostics (ttpa_ray/train/memory_profile.py) from both ranks: each held at least its
    # half of the fp32 weights and AdamW's two moments (1.5x the weights' bytes).
    weights_mb = sum(p.numel() * 4 for p in AutoModelForCausalLM.from_pretrained(tiny_model).parameters()) / 2**20
    peaks = counts["peak_tensor_mb_per_rank"]
    assert len(peaks) == 2 and all(1.5 * weights_mb <= p < 100 * weights_mb for p in peaks), (peaks, weights_mb)
    starts = counts["step_start_tensor_mb_per_rank"]  # between steps: the model states
    assert all(1.5 * weights_mb <= s <= p for s, p in zip(starts, peaks, strict=True)), (starts, peaks)
    trained = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).state_dict()
    assert trained.keys() == base.keys()
    assert all(trained[k].shape == base[k].shape for k in base)
    changed = [k for k in base if not torch.equal(trained[k], base[k])]
    assert len(changed) > len(base) // 2  # full fine-tuning moved most tensors, none lost to partitioning
    assert all(torch.isfinite(t).all() for t in trained.values())


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "sigmoid+sft"])
def test_loss_equals_trl_dpotrainer_on_the_same_tokens(tiny_model, loss_type, tmp_path):
    """TRL's own DPOTrainer._compute_loss (its collator, its forward, its loss) on our pairs and
    our precomputed reference log-probs, against our shared-prefix forward + dpo_loss."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from ttpa_ray.train.losses import dpo_loss, sft_loss
    from ttpa_ray.train.pair_forward import collate_pairs, pair_logps

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float64)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    rows = synthetic_pairs(4, 500, seed=7)
    gen = torch.Generator().manual_seed(1)
    ref_c, ref_r = -60 - 30 * torch.rand(4, generator=gen, dtype=torch.float64), -60 - 30 * torch.rand(
        4, generator=gen, dtype=torch.float64)
    loss_type, _, sft = loss_type.partition("+")
    args = DPOConfig(output_dir=str(tmp_path), loss_type=[loss_type, *([sft] if sft else [])], beta=0.1,
                     loss_weights=[1.0, 0.5] if sft else None, report_to=[], use_cpu=True,
                     per_device_train_batch_size=4, save_strategy="no", max_length=None)
    text = Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}])
    trainer = DPOTrainer(model=model, args=args, train_dataset=text, processing_class=tok)
    trainer.precompute_ref_logps = True  # use the reference log-probs in the batch, as ours do
    examples = [{"prompt_ids": r["prompt_token_ids"], "chosen_ids": r["chosen_token_ids"],
                 "rejected_ids": r["rejected_token_ids"], "ref_chosen_logps": float(c), "ref_rejected_logps": float(j)}
                for r, c, j in zip(rows, ref_c, ref_r)]
    batch = DataCollatorForPreference(pad_token_id=tok.pad_token_id or 0)(examples)
    model.train()
    trl_loss = trainer._compute_loss(model, batch, return_outputs=False)

    lp = pair_logps(model, collate_pairs(rows, pad_token_id=tok.pad_token_id or 0))
    pc, pr, rc, rr = lp.chosen, lp.rejected, ref_c, ref_r
    if loss_type == "ipo":
        pc, pr = lp.mean()
        rc, rr = ref_c / lp.chosen_tokens, ref_r / lp.rejected_tokens
    ours, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type=loss_type)
    ours = ours.mean() + (0.5 * sft_loss(lp.chosen, lp.chosen_tokens) if sft else 0.0)
    assert ours.item() == pytest.approx(trl_loss.item(), abs=1e-6)
    assert abs(ours.item() - math.log(2)) > 1e-3  # a reference far from the policy: a real check


def test_decision_only_without_branch_kind_is_refused_with_the_fix(tmp_path):
    from ttpa_ray.train.loop import prepare_pairs

    rows = [r | {"ref_chosen_logps": -1.0, "ref_rejected_logps": -2.0} for r in synthetic_pairs(2, 50)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    with pytest.raises(ValueError, match=r"branch_kind column.*decision_only: \[\]"):
        prepare_pairs(tmp_path / "pairs.parquet", TrainConfig(decision_only=["call-or-not"]))
    pq.write_table(pa.Table.from_pylist([r | {"branch_kind": "value"} for r in rows]), tmp_path / "pairs.parquet")
    table, _ = prepare_pairs(tmp_path / "pairs.parquet", TrainConfig(decision_only=["call-or-not"]))
    assert table.column("branch_kind").to_pylist() == ["value", "value"]
    with pytest.raises(ValueError, match="decision_only"):
        TrainConfig(decision_only=["call_or_not"])  # a typo is named


def test_reject_answers_false_leaves_out_and_counts_the_pairs_rejecting_a_text_answer(tmp_path):
    """``train.reject_answers: false`` drops the pairs with call_side 1 (chosen calls, rejected
    answers in text), after the reference-error filter, and counts them; call_side 0 and 2 stay.
    Without the call_side column it is refused with the fix; nothing left is an error."""
    from ttpa_ray.train.loop import prepare_pairs

    base = [r | {"ref_chosen_logps": -1.0, "ref_rejected_logps": -2.0} for r in synthetic_pairs(5, 50)]
    pq.write_table(pa.Table.from_pylist(base), tmp_path / "pairs.parquet")
    with pytest.raises(ValueError, match=r"call_side column.*reject_answers: true"):
        prepare_pairs(tmp_path / "pairs.parquet", TrainConfig(reject_answers=False))
    sides, errors = [1, 0, 2, 1, 1], [None, None, None, "boom", None]
    rows = [r | {"call_side": s, "ref_error": e} for r, s, e in zip(base, sides, errors)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    table, counts = prepare_pairs(tmp_path / "pairs.parquet", TrainConfig(reject_answers=False))
    assert table.column("id").to_pylist() == [rows[1]["id"], rows[2]["id"]]
    assert counts == {"pairs": 2, "pairs_with_ref_error": 1, "pairs_answer_rejected_dropped": 2}
    _, kept = prepare_pairs(tmp_path / "pairs.parquet", TrainConfig())
    assert kept == {"pairs": 4, "pairs_with_ref_error": 1}
    pq.write_table(pa.Table.from_pylist([r | {"call_side": 1} for r in base]), tmp_path / "pairs.parquet")
    with pytest.raises(ValueError, match="no pairs left to train on"):
        prepare_pairs(tmp_path / "pairs.parquet", TrainConfig(reject_answers=False))


def test_decision_weights_balance_the_turns_first_tokens_and_reach_the_rows(tmp_path):
    """``train.decision_loss`` with ``decision_balance``: three turns open with token 7 (one of
    them with two pairs) and one with token 9: weights 2/3 and 2 per turn (each decision weighs
    the same, mean 1 over turns), copied to every pair of the turn; without balance, all 1."""
    from ttpa_ray.train.loop import prepare_pairs

    rows = []
    for t, (first, pairs) in enumerate([(7, 1), (7, 2), (9, 1), (7, 1)]):
        for k in range(pairs):
            rows.append({"id": len(rows), "prompt_token_ids": [3, 4, t + 10], "chosen_token_ids": [first, 5, 6],
                         "rejected_token_ids": [first, 8 + k], "divergence_index": 1,
                         "ref_chosen_logps": -1.0, "ref_rejected_logps": -2.0})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    table, _ = prepare_pairs(tmp_path / "pairs.parquet", TrainConfig(decision_loss=1.0))
    got = table.column("decision_weight").to_pylist()
    assert got == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2.0, 2 / 3])
    table, _ = prepare_pairs(tmp_path / "pairs.parquet", TrainConfig(decision_loss=1.0, decision_balance=False))
    assert table.column("decision_weight").to_pylist() == [1.0] * 5
    table, _ = prepare_pairs(tmp_path / "pairs.parquet", TrainConfig())
    assert "decision_weight" not in table.column_names


@pytest.mark.slow
def test_decision_loss_teaches_each_turns_first_chosen_token(tiny_model, process_group, tmp_path):
    """``train.decision_loss``: the same steps with the per-turn decision loss added raise
    log p(chosen[0]) (the call-or-answer decision) on the training turns above what DPO + NLL
    alone reach, and the step-1 DPO metrics are unchanged (the term adds to the objective only)."""
    import torch

    from ttpa_ray.train.group_forward import turn_logps

    rows = [r | {"ref_chosen_logps": 0.0, "ref_rejected_logps": 0.0} for r in turn_pairs(4, 2, seed=1)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")

    def first_logp(policy) -> float:
        with torch.no_grad():
            lp = turn_logps(policy.module, rows, 0)
        return lp.chosen_first.mean().item()

    common = dict(micro_batch_size=1, gradient_accumulation_steps=2, zero_stage=0, sft_weight=1.0)
    off, _, p_off = _run_local(tiny_model, tmp_path / "pairs.parquet", 4, **common)
    on, _, p_on = _run_local(tiny_model, tmp_path / "pairs.parquet", 4, decision_loss=5.0, **common)
    assert on[0]["loss"] == off[0]["loss"] and on[0]["rewards/margins"] == off[0]["rewards/margins"]
    assert first_logp(p_on) > first_logp(p_off) + 0.1
    # decision_nll: the turns' mean -log p(first chosen token), logged only with the term on.
    assert "decision_nll" not in off[0] and on[-1]["decision_nll"] < on[0]["decision_nll"]


@pytest.mark.slow
def test_decision_anchor_holds_p_call_at_the_reference(tiny_model, process_group, tmp_path):
    """``train.decision_anchor``: with the reference's P(call) per turn (``ref_call_first``, as
    the reference stage writes it for packing: turn), the same DPO steps move P(call) on the
    training turns less with the anchor than without it; step 1 is unchanged (KL 0 at the
    reference) and ``decision_kl`` is logged. Without the column it is refused, with the fix."""
    import torch

    from ttpa_ray.train.group_forward import turn_logps
    from ttpa_ray.train.loop import prepare_pairs

    call = 7   # every turn's chosen side opens with it, as calls open with the call tag: DPO + NLL raise it
    rows = []
    for r in turn_pairs(4, 2, seed=3):
        first = call if r["divergence_index"] else (r["rejected_token_ids"][0] if r["rejected_token_ids"][0] != call else 8)
        rows.append(r | {"ref_chosen_logps": 0.0, "ref_rejected_logps": 0.0,
                         "chosen_token_ids": [call] + r["chosen_token_ids"][1:],
                         "rejected_token_ids": [first] + r["rejected_token_ids"][1:]})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bare.parquet")
    with pytest.raises(ValueError, match="--from reference"):
        prepare_pairs(tmp_path / "bare.parquet", TrainConfig(decision_anchor=1.0))
    from ttpa_ray.train.stage import create_policy

    start = create_policy(tiny_model, TrainConfig(), world=1, total_steps=1, use_gpu=False)
    with torch.no_grad():
        ref = turn_logps(start.module, rows, 0, call_token_id=call).call_first.double()
    rows = [r | {"ref_call_first": float(f), "call_token_id": call} for r, f in zip(rows, ref)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")

    def shift(policy) -> float:
        with torch.no_grad():
            now = turn_logps(policy.module, rows, 0, call_token_id=call).call_first.double()
        return (now.exp() - ref.exp()).abs().mean().item()

    common = dict(micro_batch_size=1, gradient_accumulation_steps=2, zero_stage=0, sft_weight=1.0)
    off, _, p_off = _run_local(tiny_model, tmp_path / "pairs.parquet", 4, **common)
    # The tiny random model gives the token P ~ 1/vocab, where a KL is cheap: a large weight here;
    # at the P(call) of a real model (0.1-0.9) a weight of 1-10 holds it.
    on, _, p_on = _run_local(tiny_model, tmp_path / "pairs.parquet", 4, decision_anchor=2000.0, **common)
    assert on[0]["loss"] == off[0]["loss"] and on[0]["decision_kl"] == pytest.approx(0.0, abs=1e-9)
    assert "decision_kl" not in off[0]
    assert shift(p_on) < 0.5 * shift(p_off) and shift(p_off) > 1e-3
