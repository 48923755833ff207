"""Column helpers for the NumPy batches that Ray Data hands to ``map_batches`` and for the
Arrow/Parquet tables the stages write.

Two Ray Data habits make these needed:

- a column of lists, dicts or strings must be a NumPy *object* array of the Python values
  (``np.array`` would try to make a 2-D array of equal-length lists);
- a pass-through column that is all null within one block arrives as NaN floats. Handed on as
  floats it clashes with the same column as strings in another block (Arrow cannot unify float
  and string), so it is turned back into None, which Arrow reads as null of any type.

>>> object_column([[1, 2], [3, 4]]).shape
(2,)
>>> none_if_nan(float("nan")) is None, none_if_nan("x")
(True, 'x')
>>> nulls_as_none({"a": np.array([np.nan, np.nan]), "b": np.array([1.0, np.nan])})["a"].tolist()
[None, None]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def object_column(values: Sequence[Any]) -> np.ndarray:
    """A 1-D object array holding ``values`` as they are (lists stay lists)."""
    arr = np.empty(len(values), dtype=object)
    arr[:] = list(values)
    return arr


def none_if_nan(x: Any) -> Any:
    """None for a NaN (np.float32 included) or None, else ``x``: one cell of a maybe-null column."""
    if x is None or (isinstance(x, (float, np.floating)) and x != x):
        return None
    return x


def nulls_as_none(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A copy of ``batch`` whose all-NaN float columns (all-null in their block) hold None."""
    out = dict(batch)
    for k, v in batch.items():
        if v.dtype.kind == "f" and len(v) and bool(np.isnan(v).all()):
            out[k] = object_column([None] * len(v))
    return out
