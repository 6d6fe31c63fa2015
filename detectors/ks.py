"""Two-sample Kolmogorov-Smirnov statistic and the streaming :class:`KSDetector`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats
from scipy.stats import _stats_py

from detectors.calibration import search_sorted
from detectors.validation import finite_1d
from detectors.window import RankedStream, SortedWindow, SortedWindowDetector

#: scipy.stats.ks_2samp(method="auto") uses the exact distribution up to this sample size.
_MAX_EXACT_N = 10_000


def ks(reference: Any, current: Any) -> tuple[float, float]:
    """Two-sided two-sample Kolmogorov-Smirnov test, identical to ``scipy.stats.ks_2samp``.

    The statistic is ``sup_x |F_reference(x) - F_current(x)|`` over the empirical CDFs.  The
    p-value follows scipy's ``method="auto"``: the exact null distribution when both samples
    have at most 10,000 values (computed by scipy's own exact routine, which also rounds the
    statistic to the lattice ``k / lcm(n, m)``), otherwise Smirnov's asymptotic
    ``scipy.stats.kstwo.sf(d, round(n m / (n + m)))``.  Where scipy's exact computation fails
    and scipy falls back to the asymptotic one (with a warning), so do we (silently).

    Parameters
    ----------
    reference, current
        1-D samples of finite numbers (any length >= 1; ties allowed).

    Returns
    -------
    tuple
        ``(statistic, p_value)``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> d, p = ks(rng.normal(size=500), rng.normal(0.3, size=200))
    >>> round(d, 4), round(p, 6)
    (0.164, 0.000821)
    """
    ref = np.sort(finite_1d("reference", reference))
    cur = np.sort(finite_1d("current", current))
    statistic = float(ks_sorted_statistic(ref, cur[np.newaxis])[0])
    return ks_p_value(statistic, ref.size, cur.size)


def ks_sorted_statistic(
    reference: NDArray[np.float64], rows: NDArray[np.float64]
) -> NDArray[np.float64]:
    """KS statistic of each sorted row of ``rows`` against the sorted ``reference``.

    The supremum is reached just at or just below a value of the current sample, so with the
    reference ranks ``kr = #{ref <= x}`` and ``kl = #{ref < x}`` of each sorted value, the
    candidates are ``|kr/n - (i+1)/m|`` at the last copy of a value and ``|kl/n - i/m|`` at its
    first copy.  The arithmetic is scipy's (``count / n - count / m``), so it is bit-identical.
    """
    n, m = reference.size, rows.shape[-1]
    steps = np.arange(m + 1) / m
    after = np.abs(reference.searchsorted(rows, side="right") / n - steps[1:])
    before = np.abs(reference.searchsorted(rows, side="left") / n - steps[:-1])
    if m > 1:
        new = rows[..., 1:] != rows[..., :-1]
        edge = np.ones(rows.shape[:-1] + (1,), dtype=bool)
        after = np.where(np.concatenate([new, edge], axis=-1), after, 0.0)
        before = np.where(np.concatenate([edge, new], axis=-1), before, 0.0)
    result: NDArray[np.float64] = np.maximum(after.max(axis=-1), before.max(axis=-1))
    return result


def ks_p_value(statistic: float, n: int, m: int) -> tuple[float, float]:
    """``(statistic, p_value)`` as ``scipy.stats.ks_2samp(method="auto")`` reports them."""
    if max(n, m) <= _MAX_EXACT_N:
        gcd = math.gcd(n, m)
        # scipy's private exact routine, so that the p-values are scipy's to the last bit;
        # pinned by tests/detectors/test_ks.py against the public ks_2samp.
        success, statistic, prob = _stats_py._attempt_exact_2kssamp(
            n, m, gcd, statistic, "two-sided"
        )
        statistic = float(statistic)  # rounded to the lattice k / lcm(n, m) even on failure
        if success:
            return statistic, float(np.clip(prob, 0.0, 1.0))
    big, small = max(n, m), min(n, m)
    en = float(big) * small / (big + small)
    return statistic, float(np.clip(stats.kstwo.sf(statistic, np.round(en)), 0.0, 1.0))


def ks_critical_value(n: int, m: int, level: float) -> float:
    """KS statistic of samples of ``n`` and ``m`` values exceeded with probability ``level``.

    Smirnov's asymptotic law, as :func:`ks_p_value` uses it for large samples:
    ``scipy.stats.kstwo.isf(level, round(n m / (n + m)))``.  Distribution-free for continuous
    data (ties only make the statistic smaller), so it is the floor of
    :class:`KSDetector`'s thresholds.

    >>> round(ks_critical_value(2000, 1000, 0.01), 4)
    0.0628
    """
    return float(stats.kstwo.isf(level, max(1, round(n * m / (n + m)))))


def _p_value_only(statistic: float, n: int, m: int) -> float:
    return ks_p_value(statistic, n, m)[1]


@dataclass(frozen=True)
class KSReference:
    """A sorted reference and the CDF values of its *slots*.

    A value ``x`` maps to slot ``kl + kr`` (``kl = #{ref < x}``, ``kr = #{ref <= x}``): values in
    the same gap between reference values share the slot ``2 kl``, a value equal to a reference
    value gets its own slot.  The KS statistic only depends on the window's sorted slots (the
    ECDF difference is extremal at the ends of a gap), so a window of slots needs no search.
    """

    sorted: NDArray[np.float64]
    cdf_at: NDArray[np.float64]
    cdf_below: NDArray[np.float64]
    _steps: dict[int, NDArray[np.float64]] = field(default_factory=dict, compare=False)

    @classmethod
    def from_values(cls, values: NDArray[np.float64]) -> KSReference:
        """Sort ``values`` and tabulate ``kr / n`` and ``kl / n`` for every slot."""
        ordered = np.sort(values)
        n = ordered.size
        slots = np.arange(2 * n + 1)
        below, at = slots // 2, slots // 2
        _, first, count = np.unique(ordered, return_index=True, return_counts=True)
        below[first + first + count], at[first + first + count] = first, first + count
        return cls(ordered, at / n, below / n)

    def steps(self, m: int) -> NDArray[np.float64]:
        """``i / m`` for ``i = 0..m`` (cached per window size)."""
        if m not in self._steps:
            self._steps[m] = np.arange(m + 1) / m
        return self._steps[m]

    def slots(self, values: NDArray[np.float64]) -> NDArray[np.float64]:
        """Slot of each value (as floats, to live in a :class:`SortedWindow`)."""
        left = search_sorted(self.sorted, values, "left")
        right = search_sorted(self.sorted, values, "right")
        slots: NDArray[np.float64] = (left + right).astype(np.float64)
        return slots


def ks_slot_statistic(ref: KSReference, rows: NDArray[np.float64]) -> NDArray[np.float64]:
    """KS statistic of each sorted row of slots (see :class:`KSReference`).

    The same floats as :func:`ks_sorted_statistic`, read from tables, without finding the
    first and last copy of each value: ``D = max(max_i (i+1)/m - kr_i/n, max_i kl_i/n -
    i/m)``, over every position ``i`` of the sorted row.  Among copies of one value the first
    sum is largest at the last copy and the second at the first copy, so the other copies
    never win; and the two candidates of :func:`ks_sorted_statistic` left out (``kr/n -
    (i+1)/m`` after a value, ``i/m - kl/n`` before one) are each at most a candidate kept at
    the neighbouring value, as ``kr`` of a value is at most ``kl`` of the next.  Rounding
    keeps every one of these orders (each candidate is one subtraction of tabulated
    quotients), so the maxima are bit-identical.
    """
    m = rows.shape[-1]
    steps = ref.steps(m)
    index = rows.astype(np.intp)
    above: NDArray[np.float64] = (steps[1:] - ref.cdf_at.take(index)).max(axis=-1)
    below: NDArray[np.float64] = (ref.cdf_below.take(index) - steps[:-1]).max(axis=-1)
    return np.maximum(above, below)


class KSDetector(SortedWindowDetector):
    """Streaming two-sample KS test of sliding windows against a fixed reference.

    The statistic of each window equals :func:`ks` on the same values; values are mapped to
    reference slots on arrival (:class:`KSReference`) and kept sorted incrementally
    (:class:`~detectors.window.SortedWindow`), so a check is a few table look-ups.
    ``p_value`` on the result is :func:`ks`'s (exact, so computed lazily).  The threshold on
    the statistic is calibrated to ``ert`` (:mod:`detectors.calibration`).  See
    :class:`~detectors.base.Detector` for the parameters.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> det = KSDetector(window=200, check_every=10, ert=1e4).fit(rng.normal(size=2000))
    >>> quiet = det.update(rng.normal(size=1000))
    >>> quiet.drift, round(quiet.threshold, 4)
    (False, 0.1451)
    >>> shifted = det.update(rng.normal(1.0, size=200))
    >>> shifted.drift, round(shifted.statistic, 4), f"{shifted.p_value:.1e}"
    (True, 0.44, '2.1e-32')
    """

    name = "ks"

    def __init__(
        self,
        window: int = 1000,
        check_every: int = 10,
        ert: float = 1e5,
        short_window: int | None = 200,
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
        self._state = KSReference.from_values(finite_1d("reference", reference))

    def _encode(self, name: str, values: Any) -> NDArray[np.float64]:
        return self._state.slots(finite_1d(name, values))

    def _floor(self, window: int, level: float) -> float:
        return ks_critical_value(self._state.sorted.size, window, level)

    def _simulate(
        self, rng: np.random.Generator, size: int
    ) -> tuple[KSReference, NDArray[np.float64]]:
        pseudo, values = self._draw_pair(rng, size)
        return pseudo, pseudo.slots(values)

    def _calibration_stream(
        self, rng: np.random.Generator, size: int
    ) -> tuple[KSReference, RankedStream]:
        # slots are non-decreasing in the value: the values' order sorts them, and the
        # slots of sorted values are found without a sort
        pseudo, values = self._draw_pair(rng, size)
        order = np.argsort(values)
        return pseudo, RankedStream(order, pseudo.slots(values[order]), None)

    def _draw_pair(
        self, rng: np.random.Generator, size: int
    ) -> tuple[KSReference, NDArray[np.float64]]:
        """A pseudo-reference and ``size`` stream values drawn as the reference's."""
        reference = self._state.sorted
        pseudo = KSReference.from_values(self._draw(rng, reference, reference.size))
        return pseudo, self._draw(rng, reference, size)

    def _sorted_statistic(
        self, state: KSReference, rows: NDArray[np.float64], tags: NDArray[np.int64] | None
    ) -> NDArray[np.float64]:
        return ks_slot_statistic(state, rows)

    def _window_statistic(self, window: SortedWindow) -> float:
        return float(ks_slot_statistic(self._state, window.sorted))

    def _p_value_fn(self, statistic: float, window: int) -> Callable[[], float] | None:
        return partial(_p_value_only, statistic, self._state.sorted.size, window)
