"""TPS pure parts: decision spans, branch points (call-or-not included), pair selection."""

from __future__ import annotations

import math

from ttpa_ray.sample import tps

GOLD = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3, '
        '"opts": {"unit": "c"}}}\n</tool_call>')


def test_decision_spans_cover_name_keys_values_only():
    spans = tps.decision_spans(GOLD)
    got = [(GOLD[a:b], k) for a, b, k, _ in spans]
    assert got == [("get_weather", "name"), ("city", "key"), ("Paris", "value"), ("days", "key"), ("3", "value"),
                   ("opts", "key"), ('{"unit": "c"}', "value")]
    two = GOLD + "\n" + GOLD.replace("get_weather", "f")
    assert {c for *_, c in tps.decision_spans(two)} == {0, 1}
    assert tps.decision_spans("no call here") == []
    assert tps.decision_spans("<tool_call>{broken") == []


def test_branch_points_respect_spans_threshold_and_cap():
    ids = [10, 11, 12, 13]
    roles = [None, ("name", 0), ("value", 0), ("value", 0)]
    lp = [{10: 0.0, 99: math.log(0.9)},                 # structure: never a branch
          {11: math.log(0.5), 20: math.log(0.3), 21: math.log(0.01)},
          {12: math.log(0.6), 22: math.log(0.4)},
          {13: math.log(0.9), 23: math.log(0.06)}]
    got = tps.branch_points(ids, lp, roles, min_prob=0.05, max_branches=2)
    assert [(b.position, b.token_id) for b in got] == [(1, 20), (2, 22)]   # 2 most probable of 3
    assert all(b.token_id != ids[b.position] for b in got)
    got = tps.branch_points(ids, lp, roles, min_prob=0.05, max_branches=5)
    assert [(b.position, b.token_id) for b in got] == [(1, 20), (2, 22), (3, 23)]


def test_call_or_not_branch_at_position_0_ignores_min_prob():
    ids = [10, 11, 12]
    roles = [None, ("name", 0), None]                       # position 0 opens the call: structure
    lp = [{10: math.log(0.97), 30: math.log(0.02), 31: math.log(0.01)},
          {11: math.log(0.5), 20: math.log(0.3)},
          {12: 0.0}]
    points = tps.branch_points(ids, lp, roles, min_prob=0.05, max_branches=4)
    assert [(b.position, b.kind) for b in points] == [(1, "name")]            # 0.02 < min_prob: not a decision
    first = tps.call_or_not_branch(ids[0], lp[0], opens=lambda t: t == 10)   # gold 10 opens a call
    assert (first.position, first.token_id, first.kind, first.call) == (0, 30, "call-or-not", -1)
    assert math.isclose(first.prob, 0.02)
    # A no-call turn: the alternative that would open a call wins over a more probable one.
    first = tps.call_or_not_branch(ids[0], lp[0], opens=lambda t: t == 31)
    assert (first.token_id, first.kind) == (31, "call-or-not")
    assert tps.call_or_not_branch(10, {10: 0.0}, opens=lambda t: False) is None   # nothing to branch to
    assert tps.call_or_not_branch(10, None, opens=lambda t: False) is None


def c(ids: list[int], score: float, valid: bool = True) -> dict:
    return {"token_ids": ids, "esm_score": score, "valid": valid}


def test_make_pairs_rules():
    gold = c([1, 2, 3], 1.0)
    # Best above threshold: chosen = best; rejected = strictly lower ones; a tie at the top is dropped.
    a, b, t, d = c([1, 5], 0.9), c([1, 6], 0.4, False), c([1, 7], 0.9), c([1, 8], 0.2, False)
    pairs, why = tps.make_pairs([a, b, t, d], gold, 0.8, chosen_must_be_valid=True)
    assert why == "" and all(ch is a for ch, _ in pairs) and [r for _, r in pairs] == [b, d]
    # Best below threshold: chosen = gold.
    pairs, _ = tps.make_pairs([c([1, 5], 0.5, False), c([1, 6], 0.3, False)], gold, 0.8, chosen_must_be_valid=True)
    assert all(ch is gold for ch, _ in pairs) and len(pairs) == 2
    # All tied: nothing rejected -> no pair, counted.
    assert tps.make_pairs([c([1, 5], 1.0), c([1, 6], 1.0)], gold, 0.8, chosen_must_be_valid=True) == ([], "no_rejected")
    # A candidate identical to gold is not a candidate.
    assert tps.make_pairs([c([1, 2, 3], 0.2)], gold, 0.8, chosen_must_be_valid=True) == ([], "no_candidate")
    assert tps.first_difference([1, 2, 3], [1, 2, 4]) == 2 and tps.first_difference([1], [1, 2]) == 1


def test_chosen_must_be_valid():
    gold = c([1, 2, 3], 1.0)
    wrong_value = c([1, 2, 9], 0.85, valid=False)       # e.g. ['value_error']: above the threshold, still wrong
    worse = c([1, 7], 0.3, valid=False)
    pairs, _ = tps.make_pairs([wrong_value, worse], gold, 0.8, chosen_must_be_valid=True)
    assert [(ch is gold, r) for ch, r in pairs] == [(True, wrong_value), (True, worse)]
    pairs, _ = tps.make_pairs([wrong_value, worse], gold, 0.8, chosen_must_be_valid=False)   # the released rule
    assert [(ch, r) for ch, r in pairs] == [(wrong_value, worse)]


def test_no_call_turn_keeps_the_gold_text_chosen():
    gold = c([1, 2, 3], 1.0)
    other_text = c([1, 4], 1.0)                         # ESM scores any text 1.0 when no call is expected
    a_call = c([5, 6], 0.0, valid=False)                # unexpected_call
    pairs, why = tps.make_pairs([other_text, a_call], gold, 0.8, chosen_must_be_valid=False, no_call=True)
    assert why == "" and [(ch, r) for ch, r in pairs] == [(gold, a_call)]
    assert tps.make_pairs([other_text], gold, 0.8, chosen_must_be_valid=True, no_call=True) == ([], "no_rejected")
