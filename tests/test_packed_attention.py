"""The fused (FlexAttention block mask) path of the packed rows against the dense path, on
tiny Qwen2 and Llama models, turn and pair packing; and how ``train.attention`` picks one.

torch has no FlexAttention backward on CPUs, and transformers always compiles flex_attention
(~20 s on this machine, forward only; torch 2.13's compiled CPU kernel also gave wrong values
for rows of 8 and 24 tokens in a check here, so it is no reference). The tests therefore run
FlexAttention's eager implementation (the math reference torch checks its fused kernels
against) with torch's CPU-backward guard lifted (:func:`eager_flex`); the block mask, the mask
rule and transformers' flex path are the ones a GPU runs, its Triton kernels are not.
"""

from __future__ import annotations

import pytest
import torch
from test_group_forward import _llama, _qwen2, _rows
from torch.nn.attention.flex_attention import BlockMask, create_mask

from ttpa_ray.config import TrainConfig
from ttpa_ray.train.group_forward import collate_groups, group_logps, turn_logps
from ttpa_ray.train.losses import dpo_loss
from ttpa_ray.train.packed_attention import FLEX, attention_implementation, check_packed_model, mask_mod, packed_mask
from ttpa_ray.train.pair_forward import collate_pairs, pair_layout, pair_logps

TOL = 1e-5


@pytest.fixture
def eager_flex(monkeypatch):
    """transformers' flex path on FlexAttention's eager implementation, with its CPU backward."""
    import torch.nn.attention.flex_attention as flex
    import transformers.integrations.flex_attention as hf_flex

    monkeypatch.setattr(flex, "_validate_device", lambda *_: None)
    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention",
                        lambda q, k, v, training=False, **kw: flex.flex_attention(q, k, v, **kw))


def _models(arch: str, dtype: torch.dtype = torch.float64) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same weights (same seed) with dense (sdpa) and flex attention."""
    build = _qwen2 if arch == "qwen2" else _llama
    return build("sdpa", dtype), build(FLEX, dtype)


def _pair_layout(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    _, segment, visible = pair_layout(collate_pairs(rows, pad_token_id=0))
    return segment, visible


def test_one_rule_gives_the_dense_mask_and_the_block_mask():
    rows, _ = _rows()
    g = collate_groups(rows, pad_token_id=0)
    for segment, visible in ((g.segment, g.visible), _pair_layout(rows)):
        G, L = segment.shape
        dense = packed_mask(segment, visible, "sdpa", torch.float32)
        allowed = create_mask(mask_mod(segment, visible), G, None, L, L, device="cpu")   # FlexAttention's reading
        assert dense.shape == (G, 1, L, L) and torch.equal(dense == 0, allowed)
        assert dense.min() == torch.finfo(torch.float32).min and allowed.diagonal(dim1=-2, dim2=-1).all()
        block = packed_mask(segment, visible, FLEX, torch.float32)
        assert isinstance(block, BlockMask) and block.shape == (G, 1, L, L)
    # Turn packing: continuation 1 (positions 6-7 of the one-group layout) sees prompt + chosen[:0]
    # and itself; the main row never sees a continuation; padding is never a key.
    seg = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1, 2, -1]])
    vis = torch.tensor([[1, 2, 3, 4, 5, 6, 3, 3, 6, 0]])
    allowed = packed_mask(seg, vis, "sdpa", torch.float32)[0, 0] == 0
    assert allowed[7].nonzero().flatten().tolist() == [0, 1, 2, 6, 7]
    assert allowed[8].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5, 8]
    assert allowed[:, 9].nonzero().flatten().tolist() == [9] and allowed[9].nonzero().flatten().tolist() == [9]


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("packing", ["turn", "pair"])
def test_flex_equals_dense_values_and_gradients(eager_flex, arch, packing):
    dense, flex = _models(arch)
    rows, _ = _rows(seed=2)
    gen = torch.Generator().manual_seed(0)
    ref_c, ref_r = (-40 * torch.rand(len(rows), generator=gen, dtype=torch.float64) for _ in range(2))

    def run(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        out = (turn_logps(model, rows, pad_token_id=0, prefix_weight=0.5) if packing == "turn"
               else pair_logps(model, collate_pairs(rows, pad_token_id=0), prefix_weight=0.5))
        losses, _, _ = dpo_loss(out.chosen, out.rejected, ref_c, ref_r, beta=0.1)
        return out.chosen.detach(), out.rejected.detach(), torch.autograd.grad(losses.sum(), list(model.parameters()))

    (c_d, r_d, g_d), (c_f, r_f, g_f) = run(dense), run(flex)
    assert torch.allclose(c_f, c_d, atol=TOL, rtol=0) and torch.allclose(r_f, r_d, atol=TOL, rtol=0)
    assert r_d.abs().min() > 1.0                                   # log-probs far from 0: the check has teeth
    for (name, _), a, b in zip(dense.named_parameters(), g_f, g_d):
        assert torch.allclose(a, b, atol=TOL, rtol=0), f"{name}: max diff {(a - b).abs().max():.2e}"
    assert max(g.abs().max() for g in g_d) > 1e-3


def test_flex_equals_dense_on_padded_groups(eager_flex):
    """Several groups right-padded into one batch: padding rows of the block mask too."""
    dense, flex = _models("llama")
    rows, _ = _rows()
    batch = collate_groups(rows, pad_token_id=0)
    with torch.no_grad():
        a, b = group_logps(dense, batch), group_logps(flex, batch)
    assert batch.segment.eq(-1).any()
    assert torch.allclose(a.chosen, b.chosen, atol=TOL, rtol=0)
    assert torch.allclose(a.rejected, b.rejected, atol=TOL, rtol=0)


def test_train_attention_picks_the_implementation(monkeypatch):
    assert attention_implementation("auto", use_gpu=False) is None        # transformers' default: sdpa, dense
    assert attention_implementation("dense", use_gpu=True) is None
    assert attention_implementation("auto", use_gpu=True) == attention_implementation("flex", use_gpu=True) == FLEX
    with pytest.raises(ValueError, match="train.attention: flex needs GPUs.*set train.attention: auto"):
        attention_implementation("flex", use_gpu=False)
    with pytest.raises(ValueError, match="train.attention must be one of"):
        attention_implementation("fused", use_gpu=True)
    monkeypatch.setattr(torch, "__version__", torch.torch_version.TorchVersion("2.5.1"))
    with pytest.raises(RuntimeError, match=r"needs torch >= 2.6.*this is torch 2.5.1.*train.attention: dense"):
        attention_implementation("auto", use_gpu=True)
    assert TrainConfig().attention == "auto" and TrainConfig(attention="flex", use_gpu=True).attention == "flex"
    with pytest.raises(ValueError, match="attention: flex needs use_gpu: true"):   # at config time
        TrainConfig(attention="flex")
    with pytest.raises(ValueError, match="attention"):
        TrainConfig(attention="fused")


def test_attention_that_takes_no_packed_mask_is_refused():
    model = _llama("sdpa")
    assert check_packed_model(model, "x") == "sdpa"
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(NotImplementedError, match="not 'flash_attention_2'.*='sdpa'.*'flex_attention'"):
        check_packed_model(model, "group_logps")


def test_policy_and_reference_load_with_the_configured_attention(tiny_model):
    from ttpa_ray.train.policy import policy_parts
    from ttpa_ray.train.reference import ReferenceBatch

    parts = policy_parts(tiny_model, TrainConfig(zero_stage=0), world=1, total_steps=1, use_gpu=False)
    assert parts.model.config._attn_implementation == "sdpa"                # auto on CPUs: dense
    assert ReferenceBatch(str(tiny_model), "float32", 1.0, 2).model.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="flex needs GPUs"):
        policy_parts(tiny_model, TrainConfig(zero_stage=0, attention="flex", use_gpu=True), world=1, total_steps=1,
                     use_gpu=False)
    with pytest.raises(ValueError, match="flex needs GPUs"):
        ReferenceBatch(str(tiny_model), "float32", 1.0, 2, attention="flex")
