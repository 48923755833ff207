"""Shared-prefix pair forward against the naive full-sequence reference, on tiny float64 models."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from ttpa_ray.train.pair_forward import PairBatch, collate_pairs, naive_pair_logps, pair_logps

EOS = 2
TOL = 1e-5


def _rand(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(3, vocab) for _ in range(n)]


def _pair(rng: random.Random, vocab: int, prompt_len: int, d: int, len_c: int, len_r: int) -> dict:
    """A pair whose completions first differ at ``d`` (a suffix is empty when its length is ``d``)."""
    shared = _rand(rng, d, vocab)
    c, r = _rand(rng, len_c - d, vocab), _rand(rng, len_r - d, vocab)
    if c and r and c[0] == r[0]:
        r[0] = 3 + (r[0] - 2) % (vocab - 3)
    chosen, rejected = shared + c, shared + r
    # Most completions end with EOS, unless that would break the divergence.
    if chosen[-1:] != [EOS] and rejected[-1:] != [EOS] and len(c) > 1 and len(r) > 1:
        chosen[-1], rejected[-1] = EOS, EOS
    return {"prompt_token_ids": _rand(rng, prompt_len, vocab), "chosen_token_ids": chosen,
            "rejected_token_ids": rejected, "divergence_index": d}


def _rows(vocab: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    shapes = [  # (prompt_len, d, len_chosen, len_rejected)
        (23, 0, 7, 4),     # divergence at the first completion token
        (5, 6, 6, 11),     # chosen is a prefix of rejected: empty chosen suffix
        (40, 3, 9, 3),     # rejected is a prefix of chosen
        (12, 4, 5, 5),     # suffixes of one token each
        (31, 10, 14, 22),  # long shared completion, different suffix lengths
        (1, 2, 3, 8),      # one-token prompt
    ]
    return [_pair(rng, vocab, *s) for s in shapes]


def _llama(attn: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, pad_token_id=0, eos_token_id=EOS, attn_implementation=attn)
    return LlamaForCausalLM(cfg).to(torch.float64).eval()


@pytest.fixture(scope="module", params=["qwen2-sdpa", "llama-sdpa", "llama-eager"])
def model(request, tiny_model):
    if request.param == "qwen2-sdpa":
        return AutoModelForCausalLM.from_pretrained(tiny_model, torch_dtype=torch.float64).eval()
    return _llama(request.param.split("-")[1])


def _batch(model, seed: int = 0) -> tuple[list[dict], PairBatch]:
    rows = _rows(model.config.vocab_size, seed)
    return rows, collate_pairs(rows, pad_token_id=0)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> bool:
    return torch.allclose(a, b, atol=tol, rtol=0)


@pytest.mark.parametrize("prefix_weight", [1.0, 0.0, 0.5])
def test_shared_prefix_equals_naive(model, prefix_weight):
    rows, batch = _batch(model)
    with torch.no_grad():
        fast, ref = pair_logps(model, batch, prefix_weight), naive_pair_logps(model, batch, prefix_weight)
    for name in ("chosen", "rejected", "chosen_tokens", "rejected_tokens"):
        assert _close(getattr(fast, name), getattr(ref, name)), name
    n_c = torch.tensor([len(r["chosen_token_ids"]) for r in rows], dtype=torch.float64)
    d = torch.tensor([r["divergence_index"] for r in rows], dtype=torch.float64)
    assert torch.equal(fast.chosen_tokens, n_c - (1 - prefix_weight) * d)
    assert all(_close(x, y) for x, y in zip(fast.mean(), ref.mean()))
    # Log-probs of random tokens are far from 0, so the comparison has teeth.
    assert fast.chosen[fast.chosen_tokens > 0].abs().min() > 1.0


@pytest.mark.parametrize("objective", ["margin", "chosen"])
def test_gradients_equal_naive(model, objective):
    _, batch = _batch(model, seed=1)
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(fn):
        out = fn(model, batch, prefix_weight=1.0)
        loss = (out.chosen - out.rejected).sum() if objective == "margin" else out.chosen.sum()
        return torch.autograd.grad(loss, params)

    fast, ref = grads(pair_logps), grads(naive_pair_logps)
    for (name, _), g, r in zip(model.named_parameters(), fast, ref):
        assert _close(g, r), f"{name}: max diff {(g - r).abs().max():.2e}"
    assert max(g.abs().max() for g in fast) > 1e-3


def test_batched_equals_one_pair_at_a_time(model):
    """Padding must not leak. Not to 1e-9: HF eager attention takes its softmax in fp32, whose
    rounding depends on the (padded) key length; a leak would be of order 1."""
    rows, batch = _batch(model, seed=2)
    with torch.no_grad():
        full = pair_logps(model, batch, prefix_weight=0.5)
        single = [pair_logps(model, collate_pairs([r], pad_token_id=0), prefix_weight=0.5) for r in rows]
    assert _close(full.chosen, torch.cat([s.chosen for s in single]))
    assert _close(full.rejected, torch.cat([s.rejected for s in single]))


def test_padding_id_does_not_matter(model):
    rows, _ = _batch(model, seed=3)
    with torch.no_grad():
        a = pair_logps(model, collate_pairs(rows, pad_token_id=0))
        b = pair_logps(model, collate_pairs(rows, pad_token_id=model.config.vocab_size - 1))
    assert _close(a.chosen, b.chosen) and _close(a.rejected, b.rejected)


def test_lm_head_sees_only_completion_predicting_positions(model):
    rows, batch = _batch(model)
    seen: list[int] = []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda mod, args, out: seen.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))
    try:
        with torch.no_grad():
            pair_logps(model, batch)
            naive_pair_logps(model, batch)
    finally:
        hook.remove()
    # d shared tokens + 1 position predicting chosen[d] and rejected[d] + the rest of both suffixes.
    expected = sum(r["divergence_index"] + 1
                   + max(len(r["chosen_token_ids"]) - r["divergence_index"] - 1, 0)
                   + max(len(r["rejected_token_ids"]) - r["divergence_index"] - 1, 0) for r in rows)
    completion = sum(len(r["chosen_token_ids"]) + len(r["rejected_token_ids"]) for r in rows)
    assert seen[0] == expected < completion
    longest = max(len(r["prompt_token_ids"]) + len(r[k]) for r in rows
                  for k in ("chosen_token_ids", "rejected_token_ids"))
    assert seen[1] == 2 * len(rows) * longest  # naive: every position of both full sequences


def test_one_decoder_call_even_with_one_token_suffixes(model):
    """Prefix and both continuations go through the decoder in one call (each weight used once
    per forward, so ZeRO-3 can free its gradient as soon as the backward leaves its layer)."""
    rng = random.Random(4)
    rows = [_pair(rng, model.config.vocab_size, 9, 3, 4, 3), _pair(rng, model.config.vocab_size, 4, 0, 1, 1)]
    batch = collate_pairs(rows, pad_token_id=0)
    calls: list[int] = []
    hook = model.get_decoder().register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            fast = pair_logps(model, batch, prefix_weight=0.5)
    finally:
        hook.remove()
    assert len(calls) == 1 and batch.suffix_ids.shape[1] == 2
    with torch.no_grad():
        ref = naive_pair_logps(model, batch, prefix_weight=0.5)
    assert _close(fast.chosen, ref.chosen) and _close(fast.rejected, ref.rejected)


def test_each_layer_gradient_is_complete_before_the_next_layer_down_runs_backward():
    """The gradient hook ZeRO-3 reduce-scatters (and frees) from fires for all of a layer's
    weights before the layer below starts its backward: no gradient waits for a second use of
    the weight further down the graph (as it did with prefix and continuations in two calls)."""
    model = _llama("sdpa")
    model.train()
    events: list[tuple[str, int]] = []
    layers = model.model.layers
    hooks = [layer.register_full_backward_hook(lambda m, gi, go, i=i: events.append(("backward", i)))
             for i, layer in enumerate(layers)]
    hooks += [p.register_post_accumulate_grad_hook(lambda p, i=i: events.append(("complete", i)))
              for i, layer in enumerate(layers) for p in layer.parameters()]
    out = pair_logps(model, collate_pairs(_rows(300), pad_token_id=0))
    (out.chosen - out.rejected).sum().backward()
    for h in hooks:
        h.remove()
    assert events.count(("backward", 0)) == 1
    last_complete_1 = max(k for k, e in enumerate(events) if e == ("complete", 1))
    assert last_complete_1 < events.index(("backward", 0)), events


def test_gradient_checkpointing_gives_the_same_logps_and_gradients():
    model = _llama("sdpa")
    batch = collate_pairs(_rows(300), pad_token_id=0)
    params = [p for p in model.parameters() if p.requires_grad]

    def run():
        out = pair_logps(model, batch, prefix_weight=0.5)
        return out.chosen.detach(), torch.autograd.grad((out.chosen - out.rejected).sum(), params)

    model.train()
    plain, plain_grads = run()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ckpt, ckpt_grads = run()
    assert model.model.gradient_checkpointing and _close(plain, ckpt)
    assert all(_close(g, r) for g, r in zip(ckpt_grads, plain_grads))


def test_attention_without_4d_masks_is_refused():
    model = _llama("sdpa")
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(NotImplementedError, match="attn_implementation='sdpa'"):
        pair_logps(model, collate_pairs(_rows(300), pad_token_id=0))


def test_batch_to_and_len():
    batch = collate_pairs(_rows(50), pad_token_id=0)
    assert len(batch) == 6 and batch.suffix_ids.shape[0] == 12
    moved = batch.to("cpu")
    assert isinstance(moved, PairBatch) and torch.equal(moved.prefix_ids, batch.prefix_ids)
    assert batch.prefix_mask.sum() == sum(len(r["prompt_token_ids"]) + r["divergence_index"] for r in _rows(50))


def _bad(**kw) -> dict:
    row = {"prompt_token_ids": [5, 6, 7], "chosen_token_ids": [8, 9, EOS], "rejected_token_ids": [8, 10, EOS],
           "divergence_index": 1}
    return {**row, **kw}


@pytest.mark.parametrize("row, match", [
    (_bad(prompt_token_ids=[]), "row 1: prompt_token_ids is empty"),
    (_bad(divergence_index=2), r"row 1: divergence_index=2 .* first differ at completion token 1"),
    (_bad(divergence_index=0), r"row 1: divergence_index=0 .* first differ at completion token 1"),
    (_bad(chosen_token_ids=[8], divergence_index=2), r"row 1: divergence_index=2 .* token 1"),
    (_bad(rejected_token_ids=[8, 9, EOS]), "row 1: chosen and rejected token ids are identical"),
    ({"prompt_token_ids": [5], "chosen_token_ids": [8]}, r"row 1: missing column\(s\) \['rejected_token_ids'"),
])
def test_bad_rows_are_named(row, match):
    with pytest.raises(ValueError, match=match):
        collate_pairs([_bad(), row], pad_token_id=0)


def test_every_bad_row_is_listed_and_empty_input_refused():
    with pytest.raises(ValueError, match=r"(?s)row 0: prompt.*row 2: divergence"):
        collate_pairs([_bad(prompt_token_ids=[]), _bad(), _bad(divergence_index=2)], pad_token_id=0)
    with pytest.raises(ValueError, match="no rows"):
        collate_pairs([], pad_token_id=0)
    with pytest.raises(ValueError, match="pad_token_id"):
        collate_pairs([_bad()], pad_token_id=-1)
