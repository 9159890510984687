"""The eval image's bootstrap CIs, vectorised with numpy: hb_stats.bootstrap_ci's results, in bulk.

hb_stats.bootstrap_ci (standard library, the definition) draws each resample
with ``random.Random(seed).choices(range(n), k=n)``, i.e. index
``floor(random() * n)`` per draw from one Mersenne Twister stream. This module
draws the very same indices: numpy's MT19937 is started from the state of
``random.Random(seed)``, and its ``Generator.random()`` builds a double from two
32-bit outputs exactly as ``random.random()`` does (53 bits, ``(a >> 5, b >> 6)``).
The statistics are then computed per block of resamples: the draw counts of
each sample (``bincount``) times the per-sample columns (one matrix product),
so a resample costs O(n) in C instead of O(n x metrics) in Python. Integer
columns (edit counts, 0/1 scores) sum exactly either way; other columns sum in
another order than Python's left-to-right ``sum`` (differences of ~1e-16
relative, far below the 6 decimals that metrics.json keeps). The percentiles
are hb_stats.percentile's, on the same sorted values.

numpy is in the eval image only (the report image imports hb_stats, not this).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

import hb_stats
import numpy as np
import numpy.typing as npt

# Resamples per block: the block's count matrix is block x n float64 (~50 MB at n = 100,000).
BLOCK_CELLS = 6_000_000


def python_random_generator(seed: int) -> np.random.Generator:
    """A numpy Generator whose random() yields random.Random(seed).random()'s sequence."""
    _version, internal, _gauss = random.Random(seed).getstate()  # noqa: S311 - reproducible, not crypto
    bit_generator = np.random.MT19937()
    bit_generator.state = {
        "bit_generator": "MT19937",
        "state": {"key": np.array(internal[:624], dtype=np.uint32), "pos": internal[624]},
    }
    return np.random.Generator(bit_generator)


def choices_indices(rng: np.random.Generator, n: int, k: int) -> npt.NDArray[np.int64]:
    """The next k indices that random.Random.choices(range(n), k=k) would draw: floor(random() * n)."""
    u = rng.random(k)
    u *= float(n)
    return u.astype(np.int64)


def bootstrap_ci(
    n: int,
    columns: Mapping[str, hb_stats.Columns],
    resamples: int = hb_stats.BOOTSTRAP_RESAMPLES,
    seed: int = hb_stats.BOOTSTRAP_SEED,
) -> dict[str, tuple[float, float]]:
    """hb_stats.bootstrap_ci(n, {name: statistic_of(columns)}, resamples, seed), vectorised."""
    if n == 0:
        return {name: (math.nan, math.nan) for name in columns}
    # Every distinct per-sample column once, as the columns of one n x k matrix.
    slots: dict[int, int] = {}
    matrix_cols: list[list[float]] = []
    for _kind, cols in columns.values():
        for col in cols:
            if len(col) != n:
                raise ValueError(f"a column has {len(col)} values, not n = {n}")
            if id(col) not in slots:
                slots[id(col)] = len(matrix_cols)
                matrix_cols.append(col)
    values = np.array(matrix_cols, dtype=np.float64).T if matrix_cols else np.zeros((n, 0))
    rng = python_random_generator(seed)
    block = max(1, min(resamples, BLOCK_CELLS // n))
    sums = np.empty((resamples, values.shape[1]), dtype=np.float64)
    counts = np.empty((block, n), dtype=np.float64)  # row r: how often resample r drew each sample
    done = 0
    while done < resamples:
        b = min(block, resamples - done)
        idx = choices_indices(rng, n, b * n).reshape(b, n)
        for r in range(b):  # one bincount per resample: its n counters stay in cache
            counts[r] = np.bincount(idx[r], minlength=n)
        sums[done : done + b] = counts[:b] @ values
        done += b
    out: dict[str, tuple[float, float]] = {}
    for name, (kind, cols) in columns.items():
        if kind == "ratio":
            num, den = sums[:, slots[id(cols[0])]], sums[:, slots[id(cols[1])]]
            draws = np.where(den > 0, num / np.where(den > 0, den, 1.0), num)
        else:
            draws = sums[:, slots[id(cols[0])]] / n
        ordered = sorted(draws.tolist())
        out[name] = (hb_stats.percentile(ordered, 2.5), hb_stats.percentile(ordered, 97.5))
    return out
