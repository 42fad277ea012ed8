"""Loops over many customers that numpy cannot express without many passes.

Compiled with numba (``cache=True``: the machine code is kept beside this file
in ``__pycache__``, so a worker compiles once per machine, not per start). Each
kernel adds floats in the order the plain Python definition would, with no
``fastmath``, so its results are the same numbers, bit for bit; the callers'
tests compare them with the plain definitions.
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

#: The largest finite float: where present values end in a compiled tree.
LARGEST = float(np.finfo(np.float64).max)


@numba.njit(cache=True, nogil=True)
def tree_sums(
    rows: npt.NDArray[np.float64],
    feature: npt.NDArray[np.intp],
    threshold: npt.NDArray[np.float64],
    children: npt.NDArray[np.intp],
    depth: int,
    value: npt.NDArray[np.float64],
    roots: npt.NDArray[np.intp],
    firsts: npt.NDArray[np.intp],
    ends: npt.NDArray[np.intp],
    baselines: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """Each booster's raw score for each row: its baseline, then the leaf value of
    each of its trees (``firsts[b]`` to ``ends[b]``) added in turn.

    A node compares ``copy[feature[node]] > threshold[node]``, where a row's
    ``copy`` is the row twice, missing values as -inf in the first half and
    +inf in the second, infinities clipped to the finite range (see
    :class:`pipeline.boosters.CompiledBoosters`); a node's children are
    ``children[2 * node]`` (left) and ``children[2 * node + 1]`` (right), and a
    leaf is its own child, so ``depth`` steps (the deepest tree's) end every
    walk on its leaf.
    """
    n, width = rows.shape
    out = np.empty((n, len(firsts)))
    copy = np.empty(2 * width)
    for i in range(n):
        for j in range(width):
            x = rows[i, j]
            if np.isnan(x):
                copy[j] = -np.inf
                copy[width + j] = np.inf
                continue
            if x > LARGEST:
                x = LARGEST
            elif x < -LARGEST:
                x = -LARGEST
            copy[j] = x
            copy[width + j] = x
        for b in range(len(firsts)):
            total = baselines[b]
            for t in range(firsts[b], ends[b]):
                node = roots[t]
                for _ in range(depth):  # a leaf is its own child: no test, no branch
                    node = children[2 * node + (copy[feature[node]] > threshold[node])]
                total += value[node]
            out[i, b] = total
    return out


@numba.njit(cache=True, nogil=True, inline="always")
def _week_value(ring: npt.NDArray[np.generic], r: int, head: int, week: int) -> float:
    """Ring row ``r``'s value for ``week``: zero unless the ring holds that week."""
    size = ring.shape[1]
    return ring[r, week % size] if week <= head and week > head - size else 0.0


@numba.njit(cache=True, nogil=True)
def window_sums(
    ring: npt.NDArray[np.generic],
    head: npt.NDArray[np.generic],
    rows: npt.NDArray[np.intp],
    now_week: int,
    starts: npt.NDArray[np.intp],
    ends: npt.NDArray[np.intp],
) -> npt.NDArray[np.float64]:
    """Sums over windows of weekly rings, for the customers at ``rows``.

    Ring row ``r`` holds week ``w`` at slot ``w % size`` for the ``size`` weeks
    up to its head week ``head[r]``. Laid out as the ``size`` weeks ending with
    ``now_week``, oldest first (weeks the ring does not hold read as zero),
    window ``k`` is positions ``starts[k]`` to ``ends[k]``; each sum adds them
    oldest first from zero, as a loop over the weeks would.
    """
    size = ring.shape[1]
    first_week = now_week - size + 1
    out = np.empty((len(rows), len(starts)))
    for i in range(len(rows)):
        r = rows[i]
        h = head[r]
        for k in range(len(starts)):
            total = 0.0
            for position in range(starts[k], ends[k]):
                total += _week_value(ring, r, h, first_week + position)
            out[i, k] = total
    return out


@numba.njit(cache=True, nogil=True)
def window_max(
    ring: npt.NDArray[np.float64],
    head: npt.NDArray[np.generic],
    rows: npt.NDArray[np.intp],
    now_week: int,
    start: int,
) -> npt.NDArray[np.float64]:
    """The largest value of positions ``start`` to the end of each ring laid out
    as in :func:`window_sums` (weeks not held count as zero; NaN if any is NaN)."""
    size = ring.shape[1]
    first_week = now_week - size + 1
    out = np.empty(len(rows))
    for i in range(len(rows)):
        r = rows[i]
        h = head[r]
        top = -np.inf
        for position in range(start, size):
            value = _week_value(ring, r, h, first_week + position)
            if np.isnan(value):
                top = np.nan
                break
            top = max(top, value)
        out[i] = top
    return out
