"""Synthetic preference pairs shaped like the sample stage's output, for tests and benches
(random token ids: they exercise shapes and numerics, not language).

>>> rows = synthetic_pairs(3, vocab=100, seed=1)
>>> all(r["chosen_token_ids"][:r["divergence_index"]] == r["rejected_token_ids"][:r["divergence_index"]]
...     and r["chosen_token_ids"][r["divergence_index"]] != r["rejected_token_ids"][r["divergence_index"]]
...     for r in rows)
True
"""

from __future__ import annotations

import random
from typing import Any


def synthetic_pairs(n: int, vocab: int, seed: int = 0, prompt: tuple[int, int] = (16, 40),
                    shared: tuple[int, int] = (0, 4), tail: tuple[int, int] = (4, 12),
                    rejected_score: float | None = None) -> list[dict[str, Any]]:
    """``n`` pairs: a random prompt (``prompt`` tokens), a shared completion prefix
    (``shared`` tokens), then chosen and rejected differ at ``divergence_index`` and go on
    for ``tail`` tokens each. ``rejected_score`` None draws one in [0, 0.5)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        d = rng.randint(*shared)
        common = [rng.randrange(3, vocab) for _ in range(d)]
        chosen = common + [rng.randrange(3, vocab) for _ in range(rng.randint(*tail))]
        rejected = common + [rng.randrange(3, vocab) for _ in range(rng.randint(*tail))]
        while rejected[d] == chosen[d]:
            rejected[d] = rng.randrange(3, vocab)
        rows.append({"id": i, "prompt_token_ids": [rng.randrange(3, vocab) for _ in range(rng.randint(*prompt))],
                     "chosen_token_ids": chosen, "rejected_token_ids": rejected, "divergence_index": d,
                     "chosen_score": 1.0,
                     "rejected_score": round(rng.random() * 0.5, 3) if rejected_score is None else rejected_score})
    return rows
