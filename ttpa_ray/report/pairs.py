"""The report's look at the preference pairs (pure; :mod:`ttpa_ray.report.build` calls it).

Two things beside the pair statistics: a table of the TPS branches and the pairs they gave per
decision kind (the sample manifest's ``branches_by_kind`` and ``pairs_by_kind``), and pair
examples: a few pairs with the chosen and the rejected side next to each other, the shared
part plain and the divergence token highlighted, with each side's ESM score and error codes.

The divergence is located on the *text*: the longest common prefix of the chosen and the
rejected completion text, character by character. ``pairs.parquet`` holds each side's text and
token ids but no per-token text, and the report loads no tokenizer, so ``divergence_index``
(the token where the sides part) cannot be mapped to characters; the highlighted "divergence
token" is the word (or the single symbol) that starts where the texts first differ. It starts at
or after the divergence token's first character (a token shared in part, e.g. ``Lis`` of
``Lisbon`` vs ``Lima``, keeps its shared characters plain).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ttpa_ray.report.render import Block, Note, PairCard, PairExample, PairSide, Table, fmt
from ttpa_ray.sample.tps import CALL_OR_NOT, first_difference

KIND_ORDER = ("name", "key", "value", CALL_OR_NOT, "sample")
"""Branch kinds in table order: TPS decisions inside a call, the call-or-not branch, n-sample."""
NOT_RECORDED = "not recorded"
"""The branch kind shown for pairs of an older run (``pairs.parquet`` without ``branch_kind``)."""
MAX_EXAMPLES = 6
# Columns read for every pair (statistics, example choice) and for the example pairs only.
STAT_COLUMNS = ("id", "chosen_score", "rejected_score", "chosen_is_gold", "mode", "branch_kind")
TEXT_COLUMNS = ("instance_id", "turn_index", "chosen", "rejected", "chosen_errors", "rejected_errors",
                "divergence_index")
# Shown characters: the shared part keeps its end, the part after the divergence token its start.
_SHARED_CHARS, _REST_CHARS, _TOKEN_CHARS = 600, 400, 40


# --------------------------------------------------------------------------- reading


def read_pairs(path: Path) -> list[dict[str, Any]]:
    """Rows of ``pairs.parquet``: every pair's :data:`STAT_COLUMNS` (those present), and for the
    pairs :func:`example_ids` picks the :data:`TEXT_COLUMNS` too. ``[]`` for a file without
    scores (an empty pairs file has only an ``id`` column)."""
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    if "chosen_score" not in names:
        return []
    rows = pq.read_table(path, columns=[c for c in STAT_COLUMNS if c in names]).to_pylist()
    ids = example_ids(rows)
    text = [c for c in TEXT_COLUMNS if c in names]
    if ids and text and "chosen" in text and "rejected" in text:
        full = {r["id"]: r for r in pq.read_table(path, columns=["id", *text],
                                                  filters=[("id", "in", ids)]).to_pylist()}
        for r in rows:
            r.update(full.get(r.get("id"), {}))
    return rows


def kind_of(row: dict[str, Any]) -> str:
    """The branch kind of a pair's rejected side; :data:`NOT_RECORDED` for an older run's pair."""
    return str(row.get("branch_kind") or NOT_RECORDED)


def _kind_key(kind: str) -> tuple[int, str]:
    return (KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER), kind)


def example_ids(rows: Sequence[dict[str, Any]], limit: int = MAX_EXAMPLES) -> list[int]:
    """Ids of the pairs to show: the first pair (lowest id) of each branch kind in
    :data:`KIND_ORDER`, then the second of each, and so on, at most ``limit``.

    >>> rows = [{"id": i, "branch_kind": k} for i, k in enumerate(["value", "name", "value", "name", "key"])]
    >>> example_ids(rows), example_ids(rows, limit=2)
    ([1, 4, 0, 3, 2], [1, 4])
    """
    by_kind: dict[str, list[int]] = {}
    for r in rows:
        if r.get("id") is not None:
            by_kind.setdefault(kind_of(r), []).append(int(r["id"]))
    queues = [sorted(by_kind[k]) for k in sorted(by_kind, key=_kind_key)]
    out: list[int] = []
    for depth in range(max(map(len, queues), default=0)):
        out += [q[depth] for q in queues if depth < len(q)]
    return out[:limit]


# --------------------------------------------------------------------------- branches per kind


def branch_table(runs: Sequence[tuple[str, dict[str, Any] | None]]) -> list[Block]:
    """The "TPS branches by decision kind" table over runs of ``(label, sample manifest)`` (runs
    whose sample stage completed), with a note per run whose manifest has no per-kind counts (an
    older run) or no branches at all. Branches are the scored candidates of each kind (whole
    completions, kind ``sample``, in n-sample mode); pairs count by the rejected side's kind."""
    rows: list[list[str]] = []
    blocks: list[Block] = []
    for label, m in runs:
        branches, pairs = (m or {}).get("branches_by_kind"), (m or {}).get("pairs_by_kind")
        if not isinstance(branches, dict) or not isinstance(pairs, dict):
            blocks.append(Note(f"sample ({label}): branches and pairs per decision kind not recorded (an older "
                               "run: the sample manifest has no branches_by_kind / pairs_by_kind)"))
            continue
        if not branches and not pairs:
            blocks.append(Note(f"sample ({label}): no branches (no candidate was scored)"))
            continue
        for kind in sorted(set(branches) | set(pairs), key=_kind_key):
            b, p = int(branches.get(kind, 0)), int(pairs.get(kind, 0))
            rows.append([label, kind or "(none)", fmt(b), fmt(p), fmt(p / b) if b else "–"])
        b, p = sum(int(v) for v in branches.values()), sum(int(v) for v in pairs.values())
        rows.append([label, "total", fmt(b), fmt(p), fmt(p / b) if b else "–"])
    if rows:
        blocks.insert(0, Table("TPS branches by decision kind",
                               ["run", "kind", "branches", "pairs", "pairs per branch"], rows))
    return blocks


# --------------------------------------------------------------------------- pair examples


def error_codes(value: Any) -> list[str]:
    """ESM error codes of one side as a list, whatever the column held: a list (an Arrow list
    column; a NumPy array through Ray Data), JSON text of a list, a comma-separated string, or
    nothing. Bytes (a pickled object) are not unpickled: the report never runs pickles.

    >>> error_codes(["value_error"]), error_codes('["type_error"]'), error_codes(None), error_codes(b"x")
    (['value_error'], ['type_error'], [], ['(unreadable: binary)'])
    """
    if value is None:
        return []
    if isinstance(value, (bytes, bytearray)):
        return ["(unreadable: binary)"]
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return error_codes(json.loads(text))
            except ValueError:
                pass
        return [c.strip() for c in text.split(",") if c.strip()]
    try:
        return [str(c) for c in value if c is not None]
    except TypeError:
        return [str(value)]


def _token_end(text: str, start: int) -> int:
    """End of the divergence token that starts at ``text[start]``: the word (letters and digits,
    after one leading space, as BPE tokens carry it) or the one other character.

    >>> t = '{"name": "get_weather"}'
    >>> t[10:_token_end(t, 10)], t[9:_token_end(t, 9)], 'a b'[1:_token_end('a b', 1)], _token_end("ab", 2)
    ('get', '"', ' b', 2)
    """
    if start >= len(text):
        return start
    i = start + 1
    if text[start].isspace() and i < len(text) and text[i].isalnum():
        i += 1
    if text[i - 1].isalnum():
        while i < len(text) and text[i].isalnum() and i - start < _TOKEN_CHARS:
            i += 1
    return i


def _clip_start(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"[… {len(text) - limit} characters] " + text[-limit:]


def _clip_end(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f" … [{len(text) - limit} more characters]"


def _side(text: str, at: int, score: Any, errors: Any) -> PairSide:
    end = _token_end(text, at)
    return PairSide(text[at:end], _clip_end(text[end:], _REST_CHARS),
                    float(score) if isinstance(score, (int, float)) else None, error_codes(errors))


def pair_example(row: dict[str, Any]) -> PairExample:
    """A pair as the report shows it: the shared text (the longest common prefix of the chosen
    and the rejected text), then per side its divergence token and the rest.

    >>> e = pair_example({"id": 3, "branch_kind": "value", "chosen": '{"city": "Oslo"}',
    ...                   "rejected": '{"city": "Bergen"}', "chosen_score": 1.0, "rejected_score": 0.8,
    ...                   "chosen_errors": [], "rejected_errors": ["value_error"], "chosen_is_gold": True})
    >>> e.shared, e.chosen.divergence, e.chosen.rest, e.rejected.divergence, e.rejected.errors
    ('{"city": "', 'Oslo', '"}', 'Bergen', ['value_error'])
    """
    chosen, rejected = str(row.get("chosen") or ""), str(row.get("rejected") or "")
    at = first_difference(chosen, rejected)  # type: ignore[arg-type]  # any sequences
    gold = row.get("chosen_is_gold")
    d = row.get("divergence_index")
    return PairExample(
        kind=kind_of(row), pair_id=int(row.get("id") or 0), instance_id=_int(row.get("instance_id")),
        turn_index=_int(row.get("turn_index")), chosen_is_gold=None if gold is None else bool(gold),
        divergence_index=_int(d), shared=_clip_start(chosen[:at], _SHARED_CHARS),
        chosen=_side(chosen, at, row.get("chosen_score"), row.get("chosen_errors")),
        rejected=_side(rejected, at, row.get("rejected_score"), row.get("rejected_errors")))


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


def pair_card(label: str, rows: Sequence[dict[str, Any]]) -> PairCard | Note:
    """The pair examples of one run (rows of :func:`read_pairs`), or a note when its pairs file
    holds no text to show."""
    by_id = {r.get("id"): r for r in rows if "chosen" in r and "rejected" in r}
    shown = [pair_example(by_id[i]) for i in example_ids(rows) if i in by_id]
    if not shown:
        return Note(f"sample ({label}): no pair examples (pairs.parquet has no chosen/rejected text)")
    return PairCard(f"Pair examples ({label}): the first pair of each branch kind (then the second ...), "
                    "chosen vs rejected; the shared text plain, the divergence token highlighted", shown)
