"""Grouped (one row per turn) forward against the per-pair shared-prefix forward, on tiny models."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from ttpa_ray.train.group_forward import GroupBatch, collate_groups, group_logps, group_pairs, turn_logps
from ttpa_ray.train.losses import dpo_loss
from ttpa_ray.train.pair_forward import collate_pairs, naive_pair_logps, pair_logps, tail_weights

EOS = 2
VOCAB = 100
TOL = 1e-5


def _rand(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(3, VOCAB) for _ in range(n)]


def _group(rng: random.Random, prompt: list[int], len_c: int, rejected: list[tuple[int, int]],
           chosen: list[int] | None = None) -> list[dict]:
    """Pairs of one prompt and one chosen completion; rejected ``(d, len)`` branches at ``d``."""
    chosen = chosen if chosen is not None else _rand(rng, len_c - 1) + [EOS]
    rows = []
    for d, n in rejected:
        tail = _rand(rng, n - d)
        if tail and d < len(chosen) and tail[0] == chosen[d]:
            tail[0] = 3 + (tail[0] - 2) % (VOCAB - 3)
        rows.append({"prompt_token_ids": prompt, "chosen_token_ids": chosen,
                     "rejected_token_ids": chosen[:d] + tail, "divergence_index": d})
    return rows


def _rows(seed: int = 0) -> tuple[list[dict], list[list[int]]]:
    """Four groups, their rows interleaved; also the expected grouping."""
    rng = random.Random(seed)
    p0 = _rand(rng, 9)
    g0 = _group(rng, p0, 7, [(0, 4),    # divergence at the first token, rejected shorter
                             (3, 11),   # rejected longer
                             (7, 9)])   # chosen is a prefix of the rejected
    g1 = _group(rng, _rand(rng, 4), 5, [(2, 2),   # rejected is a prefix of the chosen
                                        (4, 5)])  # one-token suffixes
    g2 = _group(rng, _rand(rng, 15), 3, [(1, 6)])   # K = 1, longer prompt
    g3 = _group(rng, p0, 4, [(0, 1)])               # same prompt as g0, another chosen: its own group
    order = [g0[0], g1[0], g2[0], g0[1], g3[0], g1[1], g0[2]]
    return order, [[0, 3, 6], [1, 5], [2], [4]]


def _qwen2(attn: str, dtype: torch.dtype = torch.float64) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, pad_token_id=0, eos_token_id=EOS, attn_implementation=attn)
    return Qwen2ForCausalLM(cfg).to(dtype).eval()


def _llama(attn: str, dtype: torch.dtype = torch.float64) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False, pad_token_id=0, eos_token_id=EOS, attn_implementation=attn)
    return LlamaForCausalLM(cfg).to(dtype).eval()


@pytest.fixture(scope="module", params=["qwen2-sdpa", "qwen2-eager", "llama-sdpa", "llama-eager"])
def model(request):
    arch, attn = request.param.split("-")
    return (_qwen2 if arch == "qwen2" else _llama)(attn)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> bool:
    return torch.allclose(a, b, atol=tol, rtol=0)


def _assert_same(fast, ref, tol: float = TOL) -> None:
    for name in ("chosen", "rejected", "chosen_tokens", "rejected_tokens"):
        a, b = getattr(fast, name), getattr(ref, name)
        assert a.shape == b.shape and _close(a, b, tol), f"{name}: max diff {(a - b).abs().max():.2e}"


@pytest.mark.parametrize("prefix_weight", [1.0, 0.0])
def test_values_equal_pair_logps(model, prefix_weight):
    rows, _ = _rows()
    with torch.no_grad():
        fast = group_logps(model, collate_groups(rows, pad_token_id=0), prefix_weight)
        ref = pair_logps(model, collate_pairs(rows, pad_token_id=0), prefix_weight)
        one_turn = group_logps(model, collate_groups(rows[:1] + rows[3:4] + rows[6:], pad_token_id=0), prefix_weight)
    _assert_same(fast, ref)
    assert _close(one_turn.chosen, ref.chosen[[0, 3, 6]]) and _close(one_turn.rejected, ref.rejected[[0, 3, 6]])
    # Same chosen, different d: the chosen log-prob differs per pair unless prefix_weight is 1.
    gap = (fast.chosen[0] - fast.chosen[3]).abs()
    assert gap < TOL if prefix_weight == 1.0 else gap > 1e-3
    # Log-probs of random tokens are far from 0, so the comparison has teeth.
    assert fast.rejected[fast.rejected_tokens > 0].abs().min() > 1.0


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_values_equal_pair_and_naive_in_fp32(attn):
    """fp32: sums of ~10 log-probs of ~-4.6 differ from the other forwards by about one ulp
    (3.8e-6 at |x| in [32, 64)), so allow 1e-5 plus 1e-6 relative."""
    model = _llama(attn, torch.float32)
    rows, _ = _rows(seed=1)
    with torch.no_grad():
        fast = group_logps(model, collate_groups(rows, pad_token_id=0), 0.5)
        pairs = collate_pairs(rows, pad_token_id=0)
        refs = pair_logps(model, pairs, 0.5), naive_pair_logps(model, pairs, 0.5)
    assert fast.chosen.dtype == torch.float32
    for ref in refs:
        for name in ("chosen", "rejected", "chosen_tokens", "rejected_tokens"):
            assert torch.allclose(getattr(fast, name), getattr(ref, name), atol=TOL, rtol=1e-6), name


@pytest.mark.parametrize("prefix_weight", [1.0, 0.0])
def test_dpo_gradients_equal_pair_logps(model, prefix_weight):
    rows, _ = _rows(seed=2)
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(0)
    ref_c, ref_r = -40 * torch.rand(len(rows), generator=gen, dtype=torch.float64), -40 * torch.rand(
        len(rows), generator=gen, dtype=torch.float64)

    def grads(fn, batch):
        out = fn(model, batch, prefix_weight)
        losses, _, _ = dpo_loss(out.chosen, out.rejected, ref_c, ref_r, beta=0.1)
        return torch.autograd.grad(losses.sum(), params)

    fast = grads(group_logps, collate_groups(rows, pad_token_id=0))
    ref = grads(pair_logps, collate_pairs(rows, pad_token_id=0))
    for (name, _), g, r in zip(model.named_parameters(), fast, ref):
        assert _close(g, r), f"{name}: max diff {(g - r).abs().max():.2e}"
    assert max(g.abs().max() for g in fast) > 1e-3


def test_one_decoder_call_and_lm_head_sees_only_completion_predicting_positions():
    model = _llama("sdpa")
    rows, groups = _rows()
    batch = collate_groups(rows, pad_token_id=0)
    calls: list[int] = []
    heads: list[int] = []
    hooks = [model.get_decoder().register_forward_hook(lambda *_: calls.append(1)),
             model.get_output_embeddings().register_forward_hook(
                 lambda mod, args, out: heads.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))]
    try:
        with torch.no_grad():
            group_logps(model, batch)
    finally:
        for h in hooks:
            h.remove()
    expected = 0
    for members in groups:
        n_c = len(rows[members[0]]["chosen_token_ids"])
        ds = [(rows[i]["divergence_index"], len(rows[i]["rejected_token_ids"])) for i in members]
        expected += max([n_c] + [d + 1 for d, n in ds if n > d]) + sum(max(n - d - 1, 0) for d, n in ds)
    assert calls == [1] and heads == [expected] == [batch.head_pos.numel()]
    # One row per turn, shorter than the per-pair rows together.
    pairs = collate_pairs(rows, pad_token_id=0)
    assert batch.num_groups == 4 and len(batch) == 7
    assert batch.segment.ge(0).sum() < pairs.prefix_mask.sum() + pairs.suffix_mask.sum()


def test_layout_of_one_group():
    """``[prompt + chosen[:M-1] | rejected_k[d_k:-1] ...]``, positions restart at len(prompt) + d_k."""
    prompt, chosen = [10, 11, 12], [20, 21, 22]
    rows = [{"prompt_token_ids": prompt, "chosen_token_ids": chosen, "rejected_token_ids": r, "divergence_index": d}
            for r, d in (([30, 31, 32], 0), ([20, 21, 22, 40, 41], 3), ([20, 50], 1))]
    b = collate_groups(rows, pad_token_id=0)
    # M = 4 (rejected 1 continues past the whole chosen), so all of chosen is fed.
    assert b.input_ids.tolist() == [[10, 11, 12, 20, 21, 22, 30, 31, 40]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 3, 4, 6]]
    assert b.segment.tolist() == [[0, 0, 0, 0, 0, 0, 1, 1, 2]]
    assert b.visible.tolist() == [[1, 2, 3, 4, 5, 6, 3, 3, 6]]
    assert b.head_pos.tolist() == [2, 3, 4, 5, 6, 7, 8]


def test_padding_id_and_device_move_do_not_matter(model):
    rows, _ = _rows(seed=3)
    a_batch = collate_groups(rows, pad_token_id=0)
    moved = a_batch.to("cpu")
    assert isinstance(moved, GroupBatch) and torch.equal(moved.input_ids, a_batch.input_ids)
    with torch.no_grad():
        a = group_logps(model, moved)
        b = group_logps(model, collate_groups(rows, pad_token_id=VOCAB - 1))
    assert _close(a.chosen, b.chosen) and _close(a.rejected, b.rejected)


def test_group_pairs():
    rows, groups = _rows()
    assert group_pairs(rows) == groups
    # Same chosen under another prompt is another group; the same pair twice stays in one group.
    moved = [{**rows[0], "prompt_token_ids": [7, *rows[0]["prompt_token_ids"]]}]
    assert group_pairs(rows + moved + rows[:1]) == [[0, 3, 6, 8], [1, 5], [2], [4], [7]]


def test_unsupported_attention_is_refused():
    model = _llama("sdpa")
    batch = collate_groups(_rows()[0], pad_token_id=0)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(NotImplementedError, match="attn_implementation='sdpa'"):
        group_logps(model, batch)
    torch.manual_seed(0)
    sliding = Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
                                           sliding_window=4, max_window_layers=0, attn_implementation="sdpa"))
    with pytest.raises(NotImplementedError, match="sliding-window"):
        group_logps(sliding, batch)


def _bad(**kw) -> dict:
    row = {"prompt_token_ids": [5, 6, 7], "chosen_token_ids": [8, 9, EOS], "rejected_token_ids": [8, 10, EOS],
           "divergence_index": 1}
    return {**row, **kw}


@pytest.mark.parametrize("row, match", [
    (_bad(prompt_token_ids=[]), "row 1: prompt_token_ids is empty"),
    (_bad(divergence_index=2), r"row 1: divergence_index=2 .* first differ at completion token 1"),
    (_bad(chosen_token_ids=[8], divergence_index=2), r"row 1: divergence_index=2 .* token 1"),
    (_bad(rejected_token_ids=[8, 9, EOS]), "row 1: chosen and rejected token ids are identical"),
    ({"prompt_token_ids": [5], "chosen_token_ids": [8]}, r"row 1: missing column\(s\) \['rejected_token_ids'"),
])
def test_bad_rows_are_named(row, match):
    with pytest.raises(ValueError, match=match):
        collate_groups([_bad(), row], pad_token_id=0)
    with pytest.raises(ValueError, match=match):
        group_pairs([_bad(), row])


def test_every_bad_row_is_listed_and_empty_input_refused():
    with pytest.raises(ValueError, match=r"(?s)row 0: prompt.*row 2: divergence"):
        collate_groups([_bad(prompt_token_ids=[]), _bad(), _bad(divergence_index=2)], pad_token_id=0)
    with pytest.raises(ValueError, match="no rows"):
        collate_groups([], pad_token_id=0)
    with pytest.raises(ValueError, match="pad_token_id"):
        collate_groups([_bad()], pad_token_id=-1)


def test_decision_only_pairs_count_their_divergence_token_alone(model):
    """``train.decision_only``: a listed pair's log-probs are those of its divergence token,
    on both sides (checked against the full forward's per-token values), the same in turn and
    pair packing; pairs not listed keep every token."""
    rows, _ = _rows(seed=3)
    kinds = ["call-or-not", "value", "name", "call-or-not", "key", "value", "call-or-not"]
    rows = [r | {"branch_kind": k} for r, k in zip(rows, kinds)]
    tail = tail_weights(rows, ["call-or-not"])
    assert tail.tolist() == [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    with torch.no_grad():
        full = group_logps(model, collate_groups(rows, pad_token_id=0), 0.0)
        fast = group_logps(model, collate_groups(rows, pad_token_id=0), 0.0, tail)
        ref = pair_logps(model, collate_pairs(rows, pad_token_id=0), 0.0, tail)
        turn = turn_logps(model, rows, 0, 0.0, ["call-or-not"])
    _assert_same(fast, ref)
    _assert_same(turn, ref)
    for i, r in enumerate(rows):
        d, c, j = r["divergence_index"], r["chosen_token_ids"], r["rejected_token_ids"]
        if tail[i] == 1:
            assert _close(fast.chosen[i], full.chosen[i]) and _close(fast.rejected[i], full.rejected[i])
            continue
        # The divergence token alone: its log-prob from a plain forward of prompt + seq[:d].
        for side, seq, got in (("chosen", c, fast.chosen[i]), ("rejected", j, fast.rejected[i])):
            if len(seq) <= d:
                assert got == 0 and getattr(fast, f"{side}_tokens")[i] == 0
                continue
            with torch.no_grad():
                logits = model(torch.tensor([r["prompt_token_ids"] + seq[:d]])).logits[0, -1]
            want = logits.double().log_softmax(-1)[seq[d]]
            assert _close(got, want), (i, side, float(got), float(want))
            assert getattr(fast, f"{side}_tokens")[i] == 1
        assert (fast.rejected[i] - full.rejected[i]).abs() > 1e-3 or len(j) <= d + 1  # the tail did count before


@pytest.mark.parametrize("arch", ["qwen2-sdpa", "llama-eager"])  # both families, both attentions
def test_binary_decision_scores_the_text_side_as_one_minus_p_call(arch):
    """``train.binary_decision``: in a pair that differs at its first token with one side
    calling (``call_side`` 1: the chosen, 2: the rejected), the other side's first token counts
    log(1 - p(the call token)), checked against a plain forward; the same in turn, pair and
    naive packing, values and DPO gradients; pairs with ``call_side`` 0 are unchanged."""
    from ttpa_ray.train.pair_forward import call_sides

    family, attn = arch.split("-")
    model = (_qwen2 if family == "qwen2" else _llama)(attn)
    rows, _ = _rows(seed=4)
    sides = [1, 0, 0, 0, 2, 0, 0]  # rows 0 and 4 diverge at their first token
    assert [r["divergence_index"] == 0 for r in rows] == [s > 0 for s in sides]
    rows = [r | {"call_side": s} for r, s in zip(rows, sides)]
    side = call_sides(rows, True)
    params = [p for p in model.parameters() if p.requires_grad]

    def run(fn):
        out = fn()
        losses, _, _ = dpo_loss(out.chosen, out.rejected, torch.zeros(7, dtype=torch.float64),
                                torch.zeros(7, dtype=torch.float64), beta=0.1)
        return out, torch.autograd.grad(losses.sum(), params)

    pairs = collate_pairs(rows, pad_token_id=0)
    fast, g_fast = run(lambda: group_logps(model, collate_groups(rows, pad_token_id=0), 1.0, None, side))
    for other in (lambda: pair_logps(model, pairs, 1.0, None, side), lambda: naive_pair_logps(model, pairs, 1.0, side),
                  lambda: turn_logps(model, rows, 0, 1.0, (), binary=True)):
        ref, g_ref = run(other)
        _assert_same(fast, ref)
        assert all(_close(a, b) for a, b in zip(g_fast, g_ref))
    with torch.no_grad():
        plain = group_logps(model, collate_groups(rows, pad_token_id=0), 1.0)
    for i, r in enumerate(rows):
        if not sides[i]:
            assert _close(fast.chosen[i], plain.chosen[i]) and _close(fast.rejected[i], plain.rejected[i])
            continue
        with torch.no_grad():
            lp = model(torch.tensor([r["prompt_token_ids"]])).logits[0, -1].double().log_softmax(-1)
        call, text = ((r["chosen_token_ids"][0], "rejected") if sides[i] == 1 else (r["rejected_token_ids"][0], "chosen"))
        text_first = (r["rejected_token_ids"] if text == "rejected" else r["chosen_token_ids"])[0]
        shift = torch.log1p(-lp[call].exp()) - lp[text_first]  # the text side's first token, swapped
        assert _close(getattr(fast, text)[i] - getattr(plain, text)[i], shift) and shift.abs() > 1e-3
    with pytest.raises(ValueError, match="call_side"):
        call_sides([{"prompt_token_ids": [1]}], True)


def test_chosen_first_is_the_log_prob_of_each_turns_first_chosen_token(model):
    """``train.decision_loss`` reads ``chosen_first``: log p(chosen[0] | prompt), the turn's
    call-or-answer decision, from the packed forward, equal to a plain forward's, per pair
    (the pairs of a turn share it), in input row order through :func:`turn_logps`; and
    ``train.decision_anchor`` ``call_first``: log p(a given token, the call tag's first) there."""
    rows, groups = _rows(seed=5)
    with torch.no_grad():
        fast = group_logps(model, collate_groups(rows, pad_token_id=0), 0.0, call_token_id=7)
        turn = turn_logps(model, rows, 0, 0.0, call_token_id=7)
        assert turn_logps(model, rows, 0, 0.0).call_first is None
    for i, r in enumerate(rows):
        logits = model(torch.tensor([r["prompt_token_ids"]])).logits[0, -1].double().log_softmax(-1)
        want = logits[r["chosen_token_ids"][0]]
        assert _close(fast.chosen_first[i], want) and _close(turn.chosen_first[i], want), i
        assert _close(fast.call_first[i], logits[7]) and _close(turn.call_first[i], logits[7]), i
    for idx in groups:
        assert len({round(float(fast.chosen_first[i]), 9) for i in idx}) == 1
    assert len({round(float(fast.chosen_first[idx[0]]), 6) for idx in groups}) == len(groups)  # turns differ
