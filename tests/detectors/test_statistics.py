"""The pure statistics equal their scipy references (property tests)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import detectors
from detectors.exceptions import InvalidInputError
from detectors.ks import KSReference, ks_slot_statistic, ks_sorted_statistic

from .conftest import sample_pairs

FLOATS = hnp.arrays(
    np.float64,
    st.integers(1, 40),
    elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=60, deadline=None)
@given(pair=sample_pairs(max_size=3000))
def test_ks_equals_scipy_ks_2samp(pair: tuple[np.ndarray, np.ndarray]) -> None:
    ref, cur = pair
    with warnings.catch_warnings():
        # scipy warns when its exact p-value fails (e.g. heavy ties) and falls back to the
        # asymptotic one; ks() falls back the same way, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = scipy.stats.ks_2samp(ref, cur)
    assert detectors.ks(ref, cur) == (expected.statistic, expected.pvalue)


@settings(max_examples=100, deadline=None)
@given(ref=FLOATS, cur=FLOATS)
def test_ks_equals_scipy_on_arbitrary_floats(ref: np.ndarray, cur: np.ndarray) -> None:
    with warnings.catch_warnings():
        # scipy warns when its exact p-value fails and it falls back; ks() falls back silently
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = scipy.stats.ks_2samp(ref, cur)
    assert detectors.ks(ref, cur) == (expected.statistic, expected.pvalue)


def test_ks_switches_to_asymptotic_like_scipy() -> None:
    rng = np.random.default_rng(0)
    ref, cur = rng.normal(size=12_000), rng.normal(0.05, size=300)
    expected = scipy.stats.ks_2samp(ref, cur)
    assert detectors.ks(ref, cur) == (expected.statistic, expected.pvalue)


@settings(max_examples=100, deadline=None)
@given(pair=sample_pairs())
def test_wasserstein_equals_scipy(pair: tuple[np.ndarray, np.ndarray]) -> None:
    ref, cur = pair
    assert detectors.wasserstein(ref, cur) == scipy.stats.wasserstein_distance(ref, cur)


@settings(max_examples=100, deadline=None)
@given(ref=FLOATS, cur=FLOATS)
def test_wasserstein_equals_scipy_on_arbitrary_floats(ref: np.ndarray, cur: np.ndarray) -> None:
    assert detectors.wasserstein(ref, cur) == scipy.stats.wasserstein_distance(ref, cur)


COUNTS = hnp.arrays(np.int64, st.integers(1, 12), elements=st.integers(0, 1000))


@settings(max_examples=200, deadline=None)
@given(ref=COUNTS, data=st.data())
def test_chi2_equals_scipy_contingency(ref: np.ndarray, data: st.DataObject) -> None:
    cur = data.draw(hnp.arrays(np.int64, ref.size, elements=st.integers(0, 1000)))
    if ref.sum() == 0 or cur.sum() == 0:
        with pytest.raises(InvalidInputError, match="positive total"):
            detectors.chi2(ref, cur)
        return
    used = (ref + cur) > 0
    table = np.array([ref[used], cur[used]])
    expected = scipy.stats.chi2_contingency(table, correction=False)
    stat, p = detectors.chi2(ref, cur)
    assert math.isclose(stat, expected.statistic, rel_tol=1e-12, abs_tol=1e-12)
    assert math.isclose(p, expected.pvalue, rel_tol=1e-9, abs_tol=1e-15)


def psi_by_the_docstring(ref: np.ndarray, cur: np.ndarray, bins: int) -> float:
    """PSI re-derived line by line from detectors.psi's docstring."""
    edges = np.unique(np.quantile(ref, [i / bins for i in range(1, bins)]))
    total = 0.0
    for low, high in zip([-np.inf, *edges], [*edges, np.inf], strict=True):
        r = max(np.mean((ref >= low) & (ref < high)), 1e-4)
        c = max(np.mean((cur >= low) & (cur < high)), 1e-4)
        total += (c - r) * math.log(c / r)
    return total


@settings(max_examples=100, deadline=None)
@given(pair=sample_pairs(), bins=st.integers(1, 20))
def test_psi_follows_its_docstring(pair: tuple[np.ndarray, np.ndarray], bins: int) -> None:
    ref, cur = pair
    expected = psi_by_the_docstring(ref, cur, bins)
    assert math.isclose(detectors.psi(ref, cur, bins=bins), expected, rel_tol=1e-9, abs_tol=1e-12)


def test_psi_of_a_sample_against_itself_is_zero() -> None:
    values = np.random.default_rng(0).normal(size=1000)
    assert detectors.psi(values, values) == pytest.approx(0.0, abs=1e-12)


@settings(max_examples=50, deadline=None)
@given(pair=sample_pairs(max_size=2000), seed=st.integers(0, 2**32 - 1))
def test_statistics_invariant_under_permutation_of_reference(
    pair: tuple[np.ndarray, np.ndarray], seed: int
) -> None:
    ref, cur = pair
    shuffled = np.random.default_rng(seed).permutation(ref)
    assert detectors.ks(shuffled, cur) == detectors.ks(ref, cur)
    assert detectors.wasserstein(shuffled, cur) == detectors.wasserstein(ref, cur)
    assert detectors.psi(shuffled, cur) == detectors.psi(ref, cur)


@pytest.mark.parametrize("function", [detectors.ks, detectors.wasserstein, detectors.psi])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected(function, bad: float) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(
        InvalidInputError, match=r"current: expected finite numbers, got (nan|inf|-inf)"
    ):
        function([1.0, 2.0], [1.0, bad])
    with pytest.raises(InvalidInputError, match="reference: expected finite"):
        function([bad], [1.0])


@pytest.mark.parametrize("function", [detectors.ks, detectors.wasserstein, detectors.psi])
def test_empty_and_2d_inputs_are_rejected(function) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInputError, match="current: expected at least one value"):
        function([1.0], [])
    with pytest.raises(InvalidInputError, match=r"reference: expected a 1-D array-like, got shape"):
        function([[1.0, 2.0]], [1.0])
    with pytest.raises(InvalidInputError, match="current: expected a 1-D array-like of finite"):
        function([1.0], ["a"])


def test_chi2_rejects_bad_counts() -> None:
    with pytest.raises(InvalidInputError, match="reference_counts: expected non-negative"):
        detectors.chi2([-1, 2], [1, 1])
    with pytest.raises(InvalidInputError, match="current_counts: expected 2 categories"):
        detectors.chi2([1, 2], [1, 1, 1])
    with pytest.raises(InvalidInputError, match="current_counts: expected finite"):
        detectors.chi2([1, 2], [1, np.nan])


def test_chi2_counts_an_unseen_category_as_its_own_column() -> None:
    stat, p = detectors.chi2([10, 0], [5, 5])
    expected = scipy.stats.chi2_contingency([[10, 0], [5, 5]], correction=False)
    assert (stat, p) == pytest.approx((expected.statistic, expected.pvalue), rel=1e-12)


def test_psi_rejects_bad_parameters() -> None:
    with pytest.raises(InvalidInputError, match="bins: expected an integer >= 1, got 0"):
        detectors.psi([1.0], [1.0], bins=0)
    with pytest.raises(InvalidInputError, match="eps: expected a number in"):
        detectors.psi([1.0], [1.0], eps=0.0)


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 300),
    m=st.integers(1, 300),
    levels=st.integers(1, 12),
)
def test_the_slot_tables_give_the_sorted_statistic_to_the_bit(
    seed: int, n: int, m: int, levels: int
) -> None:
    """With or without ties (few levels: copies of reference values and of window values)."""
    rng = np.random.default_rng(seed)
    reference = np.sort(rng.integers(0, levels, n).astype(np.float64))
    rows = np.sort(rng.integers(-1, levels + 1, (4, m)) + rng.choice([0.0, 0.5], (4, m)), axis=1)
    table = KSReference.from_values(reference)
    slots = np.sort(table.slots(rows.ravel()).reshape(rows.shape), axis=1)
    expected = ks_sorted_statistic(reference, rows)
    assert np.array_equal(ks_slot_statistic(table, slots), expected)
