"""First Wasserstein (earth mover's) distance and the streaming :class:`WassersteinDetector`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from detectors.calibration import search_sorted
from detectors.ks import ks_critical_value
from detectors.validation import finite_1d
from detectors.window import SortedWindow, SortedWindowDetector, Stats


def wasserstein(reference: Any, current: Any) -> float:
    """First Wasserstein distance between two samples, as ``scipy.stats.wasserstein_distance``.

    ``W1 = integral |F_reference(x) - F_current(x)| dx`` over the empirical CDFs, computed with
    scipy's own arithmetic (sorted union of the samples, CDF differences times gaps), so the
    result is the same float.  It is in the units of the data.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> round(wasserstein(rng.normal(size=500), rng.normal(0.3, size=200)), 6)
    0.330619
    """
    ref = np.sort(finite_1d("reference", reference))
    cur = np.sort(finite_1d("current", current))
    union = np.sort(np.concatenate([ref, cur]))
    gaps = np.diff(union)
    ref_cdf = ref.searchsorted(union[:-1], side="right") / ref.size
    cur_cdf = cur.searchsorted(union[:-1], side="right") / cur.size
    return float(np.vecdot(np.abs(ref_cdf - cur_cdf), gaps))


@dataclass
class WassersteinReference:
    """A reference summarised for O(window) Wasserstein distances.

    Values are centred on the reference median (W1 is shift-invariant) to keep prefix sums
    small; ``prefix[k]`` is the sum of the ``k`` smallest centred reference values, so that
    ``P(v) = integral_0^v Q(u) du`` of the reference quantile function ``Q`` is exact.
    """

    sorted: NDArray[np.float64]
    center: float
    prefix: NDArray[np.float64] = field(init=False)
    scaled: NDArray[np.float64] = field(init=False)
    twice_q: NDArray[np.float64] = field(init=False)
    twice_scaled: NDArray[np.float64] = field(init=False)
    _grids: dict[tuple[int, ...], WindowGrid] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.prefix = np.concatenate([[0.0], np.cumsum(self.sorted)])
        self.scaled = self.prefix / self.sorted.size
        self.twice_q = 2 * (np.arange(self.sorted.size + 1) / self.sorted.size)
        self.twice_scaled = 2 * self.scaled

    @classmethod
    def from_values(cls, values: NDArray[np.float64]) -> WassersteinReference:
        """Centre and sort ``values``."""
        ordered = np.sort(values)
        center = float(ordered[ordered.size // 2])
        return cls(sorted=ordered - center, center=center)

    def grid(self, *sizes: int) -> WindowGrid:
        """Constants of the quantile form for windows of ``sizes`` values, end to end (cached)."""
        if sizes not in self._grids:
            self._grids[sizes] = WindowGrid.concat([self._grid_of(m) for m in sizes])
        return self._grids[sizes]

    def _grid_of(self, m: int) -> WindowGrid:
        n = self.sorted.size
        i = np.arange(m + 1)
        k = (i * n) // m
        frac = (i * n - k * m) / (m * n)
        p = self.prefix[k] / n + frac * np.append(self.sorted, 0.0)[k]
        # q = rank / n in (i/m, (i+1)/m)  <=>  floor(i n / m) < rank < ceil((i+1) n / m)
        rank_low = k[:-1] + 1
        rank_high = -((-i[1:] * n) // m) - 1
        empty = rank_high < rank_low
        return WindowGrid(
            inv_m=np.full(m, 1.0 / m),
            low_plus_high=i[:-1] / m + i[1:] / m,
            p_width=p[1:] - p[:-1],
            p_sum=p[:-1] + p[1:],
            # an empty range gets a low bound above every rank: rank - low wraps to a huge
            # unsigned number
            rank_low=np.where(empty, n + 1, rank_low),
            rank_span=np.where(empty, 0, rank_high - rank_low).astype(np.uint64),
            starts=np.zeros(1, dtype=np.intp),
        )


@dataclass(frozen=True)
class WindowGrid:
    """Constants of each sorted position of one or several windows laid end to end.

    The i-th of ``m`` sorted values owns ``u`` in ``(a, b] = (i/m, (i+1)/m]``;
    ``low_plus_high = a + b``, ``p_width = P(b) - P(a)`` and ``p_sum = P(a) + P(b)``; a reference
    rank ``k`` has ``q = k / n`` strictly inside ``(a, b)`` iff ``k - rank_low <= rank_span``
    (unsigned).  ``starts`` are the first positions of the windows.
    """

    inv_m: NDArray[np.float64]
    low_plus_high: NDArray[np.float64]
    p_width: NDArray[np.float64]
    p_sum: NDArray[np.float64]
    rank_low: NDArray[np.int64]
    rank_span: NDArray[np.uint64]
    starts: NDArray[np.intp]

    @classmethod
    def concat(cls, grids: list[WindowGrid]) -> WindowGrid:
        """The grids of several windows end to end."""
        if len(grids) == 1:
            return grids[0]
        names = ("inv_m", "low_plus_high", "p_width", "p_sum", "rank_low", "rank_span")
        arrays = {name: np.concatenate([getattr(g, name) for g in grids]) for name in names}
        starts = np.cumsum([0] + [g.inv_m.size for g in grids[:-1]], dtype=np.intp)
        return cls(**arrays, starts=starts)


def wasserstein_sorted_statistic(
    ref: WassersteinReference,
    rows: NDArray[np.float64],
    rank: NDArray[np.int64] | None = None,
) -> NDArray[np.float64]:
    """W1 of each sorted row of centred values against ``ref``, in O(m log n) per row.

    Quantile form ``W1 = integral_0^1 |Q_cur(u) - Q_ref(u)| du``: the i-th of ``m`` sorted
    values ``x`` owns ``u`` in ``(a, b] = (i/m, (i+1)/m]`` and ``Q_ref <= x`` exactly for
    ``u <= q = #{ref <= x} / n``.  When ``q`` is outside ``(a, b)`` the piece is
    ``|x / m - (P(b) - P(a))|`` with ``P(v) = integral_0^v Q_ref``; otherwise it is
    ``x (2q - a - b) + P(a) + P(b) - 2 P(q)``.  Summing small non-negative pieces keeps the
    result within ~1e-13 relative of scipy's.  ``rank`` may pass ``#{ref <= x}`` precomputed.
    """
    if rank is None:
        rank = ref.sorted.searchsorted(rows, side="right")
    result: NDArray[np.float64] = _pieces(ref, ref.grid(rows.shape[-1]), rows, rank).sum(axis=-1)
    return result


def wasserstein_of_windows(
    ref: WassersteinReference,
    keys: NDArray[np.float64],
    rank: NDArray[np.int64],
    sizes: tuple[int, ...],
) -> list[float]:
    """W1 of several sorted windows laid end to end in ``keys`` (one vectorised pass).

    The pieces are those of :func:`wasserstein_sorted_statistic`; each window's are summed
    on their own (``np.add.reduceat``), so the results agree with it to rounding.
    """
    grid = ref.grid(*sizes)
    sums: list[float] = np.add.reduceat(_pieces(ref, grid, keys, rank), grid.starts).tolist()
    return sums


def _pieces(
    ref: WassersteinReference,
    grid: WindowGrid,
    rows: NDArray[np.float64],
    rank: NDArray[np.int64],
) -> NDArray[np.float64]:
    """The pieces ``integral_a^b |x - Q_ref(u)| du`` of :func:`wasserstein_sorted_statistic`.

    Both forms are computed for every value, in place, and the inside one kept where ``q`` is
    inside ``(a, b)``: fewer numpy calls than gathering the inside values, which matters at
    ``check_every=1``, where a check costs mostly per-call overhead.
    """
    pieces: NDArray[np.float64] = np.multiply(rows, grid.inv_m)
    pieces -= grid.p_width
    np.abs(pieces, out=pieces)
    inner = ref.twice_q.take(rank)
    inner -= grid.low_plus_high
    inner *= rows
    inner += grid.p_sum
    inner -= ref.twice_scaled.take(rank)
    # lo <= rank <= hi as one unsigned comparison
    np.copyto(pieces, inner, where=(rank - grid.rank_low).view(np.uint64) <= grid.rank_span)
    return pieces


class WassersteinDetector(SortedWindowDetector):
    """Streaming first Wasserstein distance of sliding windows against a fixed reference.

    The statistic of each window equals :func:`wasserstein` on the same values (to about
    1e-12 relative: it is computed in the quantile form from a window kept sorted, see
    :func:`wasserstein_sorted_statistic`).  Wasserstein defines no p-value.  The threshold
    (in the units of the data) is calibrated to ``ert``.  The default pairs a short window of
    150 with the long one, which catches mean shifts of half a standard deviation in about a
    hundred values.  See :class:`~detectors.base.Detector` for the parameters.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> det = WassersteinDetector(window=200, short_window=None, ert=1e4)
    >>> det = det.fit(rng.normal(size=2000))
    >>> quiet = det.update(rng.normal(size=1000))
    >>> quiet.drift, round(quiet.threshold, 4)
    (False, 0.2464)
    >>> shifted = det.update(rng.normal(1.0, size=200))
    >>> shifted.drift, round(shifted.statistic, 4), shifted.p_value
    (True, 1.0812, None)
    """

    name = "wasserstein"

    def __init__(
        self,
        window: int = 1000,
        check_every: int = 10,
        ert: float = 1e5,
        short_window: int | None = 150,
        release: float = 0.9,
        patience: int = 10,
        threshold: float | None = None,
        n_streams: int = 100,
        random_state: int | None = 0,
    ) -> None:
        super().__init__(
            window=window,
            check_every=check_every,
            ert=ert,
            short_window=short_window,
            release=release,
            patience=patience,
            threshold=threshold,
            n_streams=n_streams,
            random_state=random_state,
        )

    def _fit_reference(self, reference: Any) -> None:
        self._state = WassersteinReference.from_values(finite_1d("reference", reference))

    def _encode(self, name: str, values: Any) -> NDArray[np.float64]:
        encoded: NDArray[np.float64] = finite_1d(name, values) - self._state.center
        return encoded

    def _simulate(
        self, rng: np.random.Generator, size: int
    ) -> tuple[WassersteinReference, NDArray[np.float64]]:
        reference = self._state.sorted
        pseudo = WassersteinReference.from_values(self._draw(rng, reference, reference.size))
        return pseudo, self._draw(rng, reference, size) - pseudo.center

    def _encode_null(self, null: Any) -> NDArray[np.float64]:
        # centred like the reference it is drawn instead of
        centred: NDArray[np.float64] = finite_1d("null", null) - self._state.center
        return centred

    def _floor(self, window: int, level: float) -> float:
        # W1 is in the data's units: a reference with (almost) no spread gives it no scale,
        # and one value far away would exceed any threshold calibrated on it.  When all but
        # a KS-insignificant share of the reference sits on one value, the method sits out
        # (threshold +inf); KS, PSI and chi-square have distribution-free floors.
        reference = self._state.sorted
        atom = int(np.unique(reference, return_counts=True)[1].max())
        share_off = 1.0 - atom / reference.size
        critical = ks_critical_value(reference.size, window, level)
        return float("inf") if share_off <= critical else 0.0

    def _sorted_statistic(
        self,
        state: WassersteinReference,
        rows: NDArray[np.float64],
        tags: NDArray[np.int64] | None,
    ) -> NDArray[np.float64]:
        return wasserstein_sorted_statistic(state, rows, tags)

    def _tags(self, state: WassersteinReference, encoded: NDArray[np.float64]) -> NDArray[np.int64]:
        # the reference rank #{ref <= x}: non-decreasing in x, as SortedWindow requires
        tags: NDArray[np.int64] = search_sorted(state.sorted, encoded, "right")
        return tags

    def _window_statistic(self, window: SortedWindow) -> float:
        return float(wasserstein_sorted_statistic(self._state, window.sorted, window.tags))

    def _start_windows(self) -> None:
        super()._start_windows()
        self._share_storage()

    def _share_storage(self) -> None:
        # The sorted windows live end to end in one buffer, so that a check computes all of
        # them in one vectorised pass with no copy (its cost is mostly per-call overhead, so
        # the short window then comes almost for free).
        self._sizes = self.windows
        self._keys = np.empty(sum(self._sizes))
        self._ranks = np.zeros(sum(self._sizes), dtype=np.int64)
        start = 0
        for window in self._windows:
            end = start + window.size
            window.use_storage(self._keys[start:end], self._ranks[start:end])
            start = end

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._windows:  # unpickled views are copies: share one buffer again
            self._share_storage()

    def _statistics(self) -> Stats:
        if not self._windows or not self._windows[-1].full:  # the longest fills last
            return super()._statistics()
        for window in self._windows:
            window.sort()  # into the shared buffer
        found = wasserstein_of_windows(self._state, self._keys, self._ranks, self._sizes)
        return [(index, stat, None) for index, stat in enumerate(found)]
