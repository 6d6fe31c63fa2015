"""Population stability index (PSI) and the streaming :class:`PSIDetector`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from detectors.exceptions import InvalidInputError
from detectors.validation import finite_1d, positive_int
from detectors.window import CountWindowDetector

#: Proportion that replaces an empty bin (the common 1e-4 convention, not float-min).
DEFAULT_EPS = 1e-4


def psi(reference: Any, current: Any, bins: int = 10, eps: float = DEFAULT_EPS) -> float:
    """Population stability index of ``current`` against quantile bins of ``reference``.

    Definition, step by step, so that anyone can reproduce the number:

    1. **Edges**: ``np.quantile(reference, [1/bins, 2/bins, ..., (bins-1)/bins])`` (numpy's
       default linear interpolation), then ``np.unique``: tied quantiles collapse, so a
       reference with heavy ties yields fewer than ``bins`` bins.
    2. **Bins** are half-open ``(-inf, e1), [e1, e2), ..., [e_last, +inf)``: a value equal to an
       edge goes to the bin on its right, and values outside the reference range fall in the
       first or last bin (``np.searchsorted(edges, x, side="right")``).
    3. **Proportions** ``r_i, c_i`` are bin counts divided by the sample sizes; an empty bin's
       proportion is replaced by ``eps`` (default ``1e-4``; proportions are not renormalised).
    4. ``PSI = sum_i (c_i - r_i) * ln(c_i / r_i)`` with the natural logarithm.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> round(psi(rng.normal(size=500), rng.normal(0.3, size=200)), 6)
    0.123767
    >>> psi([1, 2, 3, 4], [4, 3, 2, 1], bins=2)  # one edge, 2.5: same shares, PSI 0
    0.0
    """
    ref = finite_1d("reference", reference)
    cur = finite_1d("current", current)
    state = PSIReference.from_values(ref, positive_int("bins", bins), _check_eps(eps))
    counts = np.bincount(state.codes(cur), minlength=state.n_bins)
    return float(psi_from_counts(state, counts[np.newaxis])[0])


def _check_eps(eps: float) -> float:
    if not (isinstance(eps, int | float) and 0 < eps < 1):
        raise InvalidInputError(f"eps: expected a number in (0, 1), got {eps!r}")
    return float(eps)


@dataclass(frozen=True)
class PSIReference:
    """Bin edges and (eps-floored) bin proportions of a reference sample."""

    edges: NDArray[np.float64]
    proportions: NDArray[np.float64]
    eps: float

    @classmethod
    def from_values(cls, values: NDArray[np.float64], bins: int, eps: float) -> PSIReference:
        """Quantile bins of ``values`` (see :func:`psi`)."""
        edges = np.unique(np.quantile(values, np.arange(1, bins) / bins))
        codes = edges.searchsorted(values, side="right")
        counts = np.bincount(codes, minlength=edges.size + 1)
        return cls(edges, np.maximum(counts / values.size, eps), eps)

    @property
    def n_bins(self) -> int:
        """Number of bins (``len(edges) + 1``)."""
        return self.edges.size + 1

    def codes(self, values: NDArray[np.float64]) -> NDArray[np.int64]:
        """Bin index of each value."""
        codes: NDArray[np.int64] = self.edges.searchsorted(values, side="right")
        return codes


def psi_from_counts(state: PSIReference, counts: NDArray[np.int64]) -> NDArray[np.float64]:
    """PSI of each row of current bin counts against the reference ``state``."""
    current = np.maximum(counts / counts.sum(axis=-1, keepdims=True), state.eps)
    reference = state.proportions
    result: NDArray[np.float64] = np.sum(
        (current - reference) * np.log(current / reference), axis=-1
    )
    return result


class PSIDetector(CountWindowDetector):
    """Streaming PSI of sliding windows against quantile bins of a fixed reference.

    Bin counts of each window are kept incrementally
    (:class:`~detectors.window.CountWindow`), so a check costs ``O(bins)`` and equals
    :func:`psi` on the same window.  PSI defines no p-value; the threshold is calibrated to
    ``ert`` (the folklore 0.1 / 0.25 cut-offs ignore the window size and the check rate).
    The default adds a short window of 300.  See :class:`~detectors.base.Detector` for the
    common parameters; ``bins`` and ``eps`` are those of :func:`psi`.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> det = PSIDetector(window=500, short_window=None, ert=1e4)
    >>> det = det.fit(rng.normal(size=2000))
    >>> quiet = det.update(rng.normal(size=1000))
    >>> quiet.drift, round(quiet.threshold, 4)
    (False, 0.0622)
    >>> shifted = det.update(rng.normal(1.0, size=500))
    >>> shifted.drift, round(shifted.statistic, 4), shifted.p_value
    (True, 1.0131, None)
    """

    name = "psi"

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
        bins: int = 10,
        eps: float = DEFAULT_EPS,
    ) -> None:
        self.bins = bins
        self.eps = eps
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

    def _validate_params(self) -> None:
        super()._validate_params()
        positive_int("bins", self.bins)
        _check_eps(self.eps)

    def _fit_reference(self, reference: Any) -> None:
        values = finite_1d("reference", reference)
        self._reference = np.sort(values)
        self._state = PSIReference.from_values(values, self.bins, self.eps)

    def _encode(self, name: str, values: Any) -> NDArray[np.int64]:
        return self._state.codes(finite_1d(name, values))

    def _floor(self, window: int, level: float) -> float:
        # PSI (Jeffreys' divergence) ~ (1/n + 1/m) chi2(bins - 1) for small differences
        dof = max(1, self._state.n_bins - 1)
        scale = 1.0 / self._reference.size + 1.0 / window
        return float(scale * stats.chi2.isf(level, dof))

    def _n_codes(self, state: PSIReference) -> int:
        return state.n_bins

    def _simulate(
        self, rng: np.random.Generator, size: int
    ) -> tuple[PSIReference, NDArray[np.int64]]:
        reference = self._reference
        pseudo = PSIReference.from_values(
            self._draw(rng, reference, reference.size), self.bins, self.eps
        )
        return pseudo, pseudo.codes(self._draw(rng, reference, size))

    def _count_statistic(
        self, state: PSIReference, counts: NDArray[np.int64]
    ) -> NDArray[np.float64]:
        return psi_from_counts(state, counts)
