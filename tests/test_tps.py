"""TPS pure parts: decision spans, branch points, pair selection."""

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


def test_make_pairs_rules():
    gold = {"token_ids": [1, 2, 3], "esm_score": 1.0}
    c = lambda ids, s: {"token_ids": ids, "esm_score": s}  # noqa: E731
    # Best above threshold: chosen = best; rejected = strictly lower ones; a tie at the top is dropped.
    a, b, t, d = c([1, 5], 0.9), c([1, 6], 0.4), c([1, 7], 0.9), c([1, 8], 0.2)
    pairs, why = tps.make_pairs([a, b, t, d], gold, 0.8)
    assert why == "" and all(ch is a for ch, _ in pairs) and [r for _, r in pairs] == [b, d]
    # Best below threshold: chosen = gold.
    pairs, _ = tps.make_pairs([c([1, 5], 0.5), c([1, 6], 0.3)], gold, 0.8)
    assert all(ch is gold for ch, _ in pairs) and len(pairs) == 2
    # All tied: nothing rejected -> no pair, counted.
    assert tps.make_pairs([c([1, 5], 1.0), c([1, 6], 1.0)], gold, 0.8) == ([], "no_rejected")
    # A candidate identical to gold is not a candidate.
    assert tps.make_pairs([c([1, 2, 3], 0.2)], gold, 0.8) == ([], "no_candidate")
    assert tps.first_difference([1, 2, 3], [1, 2, 4]) == 2 and tps.first_difference([1], [1, 2]) == 1
