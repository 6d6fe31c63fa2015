"""Shared data generators for the detectors tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from numpy.typing import NDArray

#: continuous values, heavy ties (few distinct values), a constant array
KINDS = ("continuous", "ties", "constant")


def sample(kind: str, size: int, seed: int, shift: float = 0.0) -> NDArray[np.float64]:
    """A seeded sample of ``size`` values of the given ``kind``."""
    rng = np.random.default_rng(seed)
    if kind == "continuous":
        return rng.normal(shift, 1.0, size)
    if kind == "ties":
        return rng.integers(0, 4, size).astype(np.float64) + shift
    return np.full(size, 3.0 + shift)


@st.composite
def sample_pairs(
    draw: st.DrawFn, max_size: int = 5000
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Two samples of sizes 1..max_size, of independently drawn kinds, shifted or not."""
    sizes = st.one_of(st.integers(1, 30), st.integers(1, max_size))
    n, m = draw(sizes), draw(sizes)
    kinds = st.sampled_from(KINDS)
    seed = draw(st.integers(0, 2**32 - 1))
    shift = draw(st.sampled_from([0.0, 0.3, 1.0]))
    return sample(draw(kinds), n, seed), sample(draw(kinds), m, seed + 1, shift)
