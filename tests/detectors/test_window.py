"""The sliding windows against a plain list of the last ``size`` values."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors import KSDetector, WassersteinDetector
from detectors.window import CountWindow, RankedStream, SortedWindow


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


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(1, 300), distinct=st.integers(1, 50))
def test_ranked_stream_windows_are_the_windows_sorted(seed: int, size: int, distinct: int) -> None:
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, distinct, size).astype(np.float64) / 7  # ties
    reference = np.sort(rng.integers(0, distinct, 20).astype(np.float64) / 7)
    ranked = RankedStream.of(keys, reference, lambda ref, k: ref.searchsorted(k, "right"))
    window = int(rng.integers(1, size + 1))
    ends = np.arange(window, size + 1, dtype=np.int64)
    rows, tags = ranked.sorted_windows(window, ends)
    expected = np.sort(np.lib.stride_tricks.sliding_window_view(keys, window), axis=1)
    assert rows.tolist() == expected.tolist()
    assert tags is not None
    assert tags.tolist() == reference.searchsorted(expected, "right").tolist()


def test_ranked_stream_longer_than_int16_ranks() -> None:
    keys = np.random.default_rng(1).normal(size=40_000)
    ranked = RankedStream.of(keys, None, lambda state, k: None)
    rows, tags = ranked.sorted_windows(1000, np.array([1000, 33_000, 40_000]))
    assert tags is None
    for row, end in zip(rows, (1000, 33_000, 40_000), strict=True):
        assert row.tolist() == np.sort(keys[end - 1000 : end]).tolist()


def _per_window_sorts(detector: KSDetector | WassersteinDetector) -> list[float]:
    """The window statistics of one simulated stream, each window sorted on its own."""
    state, stream = detector._simulate(np.random.default_rng(7), 3000)
    tags = detector._tags(state, stream)
    found = []
    for end in range(600, 3001, 50):
        keys = stream[end - 500 : end]
        order = np.argsort(keys, kind="stable")
        row_tags = None if tags is None else tags[end - 500 : end][order][np.newaxis]
        found.append(float(detector._sorted_statistic(state, keys[order][np.newaxis], row_tags)[0]))
    return found


def test_calibration_windows_equal_sorting_each_window() -> None:
    # the ranked stream is an exact shortcut: the statistics are the same floats
    reference = np.random.default_rng(3).lognormal(size=800).round(1)  # ties
    for cls in (KSDetector, WassersteinDetector):
        detector = cls(window=500, check_every=50, ert=1e4).fit(reference)
        state, stream = detector._calibration_stream(np.random.default_rng(7), 3000)
        ends = np.arange(600, 3001, 50, dtype=np.int64)
        assert detector._window_statistics(state, stream, 500, ends).tolist() == (
            _per_window_sorts(detector)
        )


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
