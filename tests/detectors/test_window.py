"""The sliding windows against a plain list of the last ``size`` values."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.window import CountWindow, SortedWindow


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(2, 40),
    pushes=st.lists(st.tuples(st.integers(0, 90), st.booleans()), min_size=1, max_size=40),
)
def test_sorted_window_holds_the_last_values_sorted_with_their_tags(
    seed: int, size: int, pushes: list[tuple[int, bool]]
) -> None:
    rng = np.random.default_rng(seed)
    reference = np.sort(rng.integers(0, 10, 15).astype(np.float64))
    window, seen = SortedWindow(size), np.empty(0)
    for count, read in pushes:  # read: a check sorts now; else keys pile up unsorted
        keys = rng.integers(0, 12, count).astype(np.float64)  # ties, and keys off the reference
        window.push(keys, reference.searchsorted(keys, side="right"))
        seen = np.concatenate([seen, keys])[-size:]
        if read:
            assert window.sorted.tolist() == sorted(seen.tolist())
            assert window.tags.tolist() == reference.searchsorted(window.sorted, "right").tolist()
        assert window.values().tolist() == seen.tolist()
        assert window.full == (len(seen) == size)
    assert window.sorted.tolist() == sorted(seen.tolist())


def test_one_value_into_a_sorted_full_window_is_inserted_in_place() -> None:
    window = SortedWindow(4)
    window.push(np.array([3.0, 1.0, 2.0, 5.0]), np.array([30, 10, 20, 50]))
    assert window.sorted.tolist() == [1.0, 2.0, 3.0, 5.0]
    window.push(np.array([4.0]), np.array([40]))  # evicts 3.0, the oldest
    assert window.sorted.tolist() == [1.0, 2.0, 4.0, 5.0]
    assert window.tags.tolist() == [10, 20, 40, 50]
    assert window.values().tolist() == [1.0, 2.0, 5.0, 4.0]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(1, 30),
    pushes=st.lists(st.integers(0, 70), min_size=1, max_size=20),
)
def test_count_window_counts_the_last_codes(seed: int, size: int, pushes: list[int]) -> None:
    rng = np.random.default_rng(seed)
    window, seen = CountWindow(size, 5), np.empty(0, dtype=np.int64)
    for count in pushes:
        codes = rng.integers(0, 5, count)
        window.push(codes)
        seen = np.concatenate([seen, codes])[-size:]
        assert window.counts.tolist() == np.bincount(seen, minlength=5).tolist()
        assert window.values().tolist() == seen.tolist()
