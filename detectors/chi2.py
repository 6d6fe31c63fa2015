"""Chi-square test of category counts and the streaming :class:`Chi2Detector`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from detectors import calibration
from detectors.exceptions import InvalidInputError
from detectors.validation import counts_1d, labels_1d
from detectors.window import CountWindowDetector


def chi2(reference_counts: Any, current_counts: Any) -> tuple[float, float]:
    """Chi-square test of homogeneity of two vectors of category counts.

    Equal to ``scipy.stats.chi2_contingency([reference_counts, current_counts],
    correction=False)`` (Pearson's statistic on the 2 x K table, ``K - 1`` degrees of
    freedom) after dropping the categories whose count is zero in *both* vectors, which carry
    no information and on which scipy would raise.  A category unseen in the reference
    (reference count 0, current count > 0) is an ordinary column: it pushes the statistic up.
    With a single category left the statistic is 0 and the p-value 1, as in scipy.

    Parameters
    ----------
    reference_counts, current_counts
        Non-negative counts of the same categories in the same order (same length); each
        vector must have a positive total.

    Returns
    -------
    tuple
        ``(statistic, p_value)``.

    Examples
    --------
    >>> stat, p = chi2([500, 300, 200], [40, 35, 25])
    >>> round(stat, 4), round(p, 4)
    (3.7092, 0.1565)
    >>> chi2([10, 0], [5, 5])  # the second category is unseen in the reference
    (6.666666666666667, 0.009823274507519235)
    """
    ref = counts_1d("reference_counts", reference_counts)
    cur = counts_1d("current_counts", current_counts)
    if ref.size != cur.size:
        raise InvalidInputError(
            f"current_counts: expected {ref.size} categories like reference_counts, got {cur.size}"
        )
    for name, counts in (("reference_counts", ref), ("current_counts", cur)):
        if counts.sum() <= 0:
            raise InvalidInputError(f"{name}: expected a positive total, got {counts.sum()}")
    state = Chi2Reference(ref)
    statistic = float(chi2_from_counts(state, cur[np.newaxis])[0])
    return statistic, chi2_p_value(statistic, state, cur)


@dataclass(frozen=True)
class Chi2Reference:
    """Reference counts per category code (the last code may be the 'unseen' bucket)."""

    counts: NDArray[np.float64]


def chi2_from_counts(state: Chi2Reference, counts: NDArray[Any]) -> NDArray[np.float64]:
    """Pearson statistic of each row of current counts against the reference counts."""
    ref = state.counts
    columns = ref + counts
    ref_total, cur_total = ref.sum(), counts.sum(axis=-1, keepdims=True)
    total = ref_total + cur_total
    used = columns > 0
    safe = np.where(used, columns, 1.0)
    expected_ref = ref_total * safe / total
    expected_cur = cur_total * safe / total
    terms = (ref - expected_ref) ** 2 / expected_ref + (counts - expected_cur) ** 2 / expected_cur
    result: NDArray[np.float64] = np.where(used, terms, 0.0).sum(axis=-1)
    return result


def chi2_p_value(statistic: float, state: Chi2Reference, counts: NDArray[Any]) -> float:
    """p-value of ``statistic`` with one degree of freedom per used category, minus one."""
    dof = int(np.count_nonzero(state.counts + counts)) - 1
    return 1.0 if dof <= 0 else float(stats.chi2.sf(statistic, dof))


class Chi2Detector(CountWindowDetector):
    """Streaming chi-square test of category shares in sliding windows against a reference.

    ``fit`` takes the reference *labels* (any hashable values, e.g. strings); categories are
    numbered in order of first appearance, and every label not seen in the reference is
    counted in one extra 'unseen' category, whose reference count is 0 — so new categories
    raise the statistic as a share change does.  Window counts are kept incrementally and the
    statistic equals :func:`chi2` on the window's counts.  The threshold on the statistic is
    calibrated to ``ert`` by simulating windows from the reference shares; ``p_value`` is the
    chi-square one.  See :class:`~detectors.base.Detector` for the parameters.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> cats = np.array(["a", "b", "c"])
    >>> det = Chi2Detector(window=300, ert=1e4).fit(rng.choice(cats, 2000, p=[0.5, 0.3, 0.2]))
    >>> quiet = det.update(rng.choice(cats, 1000, p=[0.5, 0.3, 0.2]))
    >>> quiet.drift, round(quiet.threshold, 3)
    (False, 11.501)
    >>> shifted = det.update(rng.choice(cats, 300, p=[0.3, 0.3, 0.4]))
    >>> shifted.drift, round(shifted.statistic, 1), f"{shifted.p_value:.1e}"
    (True, 58.6, '1.9e-13')
    """

    name = "chi2"

    def __init__(
        self,
        window: int = 1000,
        check_every: int = 10,
        ert: float = 1e5,
        short_window: int | None = 300,
        release: float = 0.9,
        patience: int = 10,
        threshold: float | None = None,
        n_streams: int = 100,
        random_state: int | None = 0,
    ) -> None:
        super().__init__(
            window,
            check_every,
            ert,
            short_window,
            release,
            patience,
            threshold,
            n_streams,
            random_state,
        )

    def _fit_reference(self, reference: Any) -> None:
        labels = labels_1d("reference", reference)
        self._categories: dict[Any, int] = {}
        for label in labels:
            self._categories.setdefault(label, len(self._categories))
        codes = self._codes(labels)
        counts = np.bincount(codes, minlength=len(self._categories) + 1).astype(np.float64)
        self._state = Chi2Reference(counts)

    def _codes(self, labels: list[Any]) -> NDArray[np.int64]:
        unseen = len(self._categories)
        lookup = self._categories.get
        return np.fromiter((lookup(x, unseen) for x in labels), np.int64, len(labels))

    def _encode(self, name: str, values: Any) -> NDArray[np.int64]:
        return self._codes(labels_1d(name, values))

    def _floor(self, window: int, level: float) -> float:
        # Pearson's statistic is ~ chi2(k - 1) for the k reference categories; a constant
        # reference (one category) against its 'unseen' bucket has one degree of freedom
        return float(stats.chi2.isf(level, max(1, len(self._categories) - 1)))

    def _n_codes(self, state: Chi2Reference) -> int:
        return int(state.counts.size)

    def _simulate(
        self, rng: np.random.Generator, size: int
    ) -> tuple[Chi2Reference, NDArray[np.int64]]:
        counts = self._state.counts
        n = int(counts.sum())
        if self._null is not None:  # moving blocks of an observed stretch (see Detector.fit)
            block = max(self.windows)
            drawn = calibration.block_bootstrap(self._null, n, block, rng)
            pseudo = Chi2Reference(np.bincount(drawn, minlength=counts.size).astype(np.float64))
            return pseudo, calibration.block_bootstrap(self._null, size, block, rng)
        shares = counts / n
        pseudo = Chi2Reference(rng.multinomial(n, shares).astype(np.float64))
        return pseudo, rng.choice(counts.size, size=size, p=shares)

    def _encode_null(self, null: Any) -> NDArray[np.int64]:
        return self._codes(labels_1d("null", null))

    def _count_statistic(
        self, state: Chi2Reference, counts: NDArray[np.int64]
    ) -> NDArray[np.float64]:
        return chi2_from_counts(state, counts)

    def _p_value_fn(self, statistic: float, counts: NDArray[np.int64]) -> Callable[[], float]:
        return partial(chi2_p_value, statistic, self._state, counts.copy())
