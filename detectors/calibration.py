"""Calibration of detector thresholds to a declared expected run length (ERT).

Method
------
A threshold ``h`` gives an expected run length ``ERT`` on a stationary stream when alarms
arrive (after warm-up) roughly as a Poisson process of rate ``1 / ERT``; then the probability
that a stretch of ``L`` consecutive values holds at least one check above ``h`` is
``1 - exp(-L / ERT)``.  The calibration

1. simulates ``n_streams`` stationary pairs *(pseudo-reference, stream)* by the smoothed
   bootstrap of the reference (:func:`smoothed_bootstrap`): both are fresh samples of the
   reference distribution, so the simulation sees the sampling noise of the real reference
   (a detector is always compared against a finite reference, never against the truth);
2. fills every window, then records the maximum statistic over the checks of a stretch of
   ``L`` values, using the detector's own vectorised statistic;
3. fits a Gumbel law to those maxima (extreme-value limit of a maximum over many weakly
   dependent checks) and takes the threshold at exceedance probability ``1 - exp(-L / ERT')``;
   the threshold is never below the empirical quantile of the maxima at that level.

With several windows the false-alarm budget is split evenly (Bonferroni): each window is
calibrated to ``ERT' = SAFETY * ERT * n_windows``, so the union of their alarms keeps the
declared rate.  ``SAFETY = 2``: the tail is extrapolated from 100 simulated streams and the
smoothed bootstrap only approximates the feature's distribution; without the margin the
measured run lengths came out at 1.05-1.8 x ERT (scripts/bench_detectors.py), too close to
promise "at least ERT".  It costs a few values of detection delay.
The Gumbel tail is exponential, which is conservative for statistics whose null tail is
sub-Gaussian (KS, Wasserstein) and about right for chi-square-like ones (PSI, chi-square).
The whole procedure is seeded by ``random_state``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from detectors.exceptions import CalibrationError

#: Calibrate to this multiple of the declared ERT (see the module docstring).
SAFETY = 2.0

#: ``(pseudo_state, stream) = simulate(rng, size)``: one simulated stationary pair (the stream
#: as values, or in any form its ``window_statistics`` reads).
Simulate = Callable[[np.random.Generator, int], tuple[Any, Any]]
#: ``window_statistics(state, stream, window, ends)`` -> statistic of ``stream[end-window:end]``
#: (``stream``: what ``simulate`` returned).
WindowStatistics = Callable[[Any, Any, int, NDArray[np.int64]], NDArray[np.float64]]


def smoothed_bootstrap(
    sorted_reference: NDArray[np.float64], size: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Draw ``size`` values from the linearly interpolated quantile function of a reference.

    Ties in the reference are kept as atoms (interpolating between equal order statistics
    returns that value); elsewhere the draws are continuous, unlike the plain bootstrap.

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.array([0.0, 1.0, 1.0, 1.0, 2.0])
    >>> smoothed_bootstrap(ref, 6, np.random.default_rng(3)).round(3).tolist()
    [0.343, 0.947, 1.205, 1.0, 0.377, 1.0]
    """
    n = sorted_reference.size
    if n == 1:
        return np.full(size, sorted_reference[0])
    position = rng.random(size) * (n - 1)
    low = position.astype(np.int64)
    frac = position - low
    high = np.minimum(low + 1, n - 1)
    return sorted_reference[low] + frac * (sorted_reference[high] - sorted_reference[low])


#: From this many values on, :func:`search_sorted` sorts them first.
SORTED_SEARCH_MIN = 2048


def search_sorted(
    reference: NDArray[np.float64], values: NDArray[np.float64], side: Literal["left", "right"]
) -> NDArray[np.int64]:
    """``reference.searchsorted(values, side)``, the same integers, faster for many values.

    A binary search per value mispredicts its branches on random values (about 80 ns per
    value into 2,000); searching the values in sorted order keeps them predictable, and
    sorting them costs less than that from about 2,000 values on (the calibration's
    simulated streams of 5,000: 350 -> 210 us). Below :data:`SORTED_SEARCH_MIN` values
    (the live batches), or when they are sorted already, it searches directly.

    >>> import numpy as np
    >>> ref, x = np.arange(10.0), np.random.default_rng(0).uniform(-1, 11, 5000)
    >>> bool((search_sorted(ref, x, "left") == ref.searchsorted(x, "left")).all())
    True
    """
    if len(values) < SORTED_SEARCH_MIN or bool((values[1:] >= values[:-1]).all()):
        found: NDArray[np.int64] = reference.searchsorted(values, side=side)
        return found
    order = np.argsort(values)
    out = np.empty(len(values), dtype=np.int64)
    out[order] = reference.searchsorted(values[order], side=side)
    return out


def block_bootstrap(
    stream: NDArray[Any], size: int, block: int, rng: np.random.Generator
) -> NDArray[Any]:
    """``size`` values made of random contiguous blocks of ``stream`` (circular).

    The moving block bootstrap (Kunsch 1989, "The jackknife and the bootstrap for general
    stationary observations"): within a block the values keep their order, so a stream whose
    values are correlated in time (the scores of an online model whose weights wander) is
    simulated with that correlation, which the smoothed bootstrap's independent draws lose.

    >>> import numpy as np
    >>> block_bootstrap(np.arange(10), 7, 3, np.random.default_rng(0)).tolist()
    [8, 9, 0, 6, 7, 8, 5]
    """
    starts = rng.integers(0, stream.size, size=-(-size // block))
    index = (starts[:, np.newaxis] + np.arange(block)) % stream.size
    return stream[index.ravel()[:size]]


def stretch_length(windows: Sequence[int], check_every: int) -> int:
    """Length ``L`` of the simulated stretch after warm-up (a multiple of ``check_every``)."""
    length = max(4 * max(windows), 2000, 20 * check_every)
    return -(-length // check_every) * check_every


def stretch_level(windows: Sequence[int], check_every: int, ert: float) -> float:
    """Probability that the maximum over one simulated stretch exceeds a window's threshold.

    The level :func:`calibrate` fits each window's threshold to (``SAFETY`` and the
    Bonferroni split over the windows included); also the level of the analytic floors.

    >>> round(stretch_level((200, 1000), 10, 1e5), 5)
    0.00995
    """
    stretch = stretch_length(windows, check_every)
    return float(-np.expm1(-stretch / (SAFETY * ert * len(windows))))


def check_ends(windows: Sequence[int], check_every: int, stretch: int) -> NDArray[np.int64]:
    """Stream positions (exclusive ends) of the checks inside the simulated stretch."""
    start = max(windows)
    first = (start // check_every + 1) * check_every
    return np.arange(first, start + stretch + 1, check_every, dtype=np.int64)


def gumbel_threshold(maxima: NDArray[np.float64], stretch: int, ert: float) -> float:
    """Threshold exceeded by the maximum over ``stretch`` values with prob. ``1-exp(-L/ert)``.

    Examples
    --------
    >>> import numpy as np
    >>> maxima = np.random.default_rng(1).gumbel(1.0, 0.1, size=500)
    >>> round(gumbel_threshold(maxima, stretch=1000, ert=1e5), 2)
    1.46
    """
    level = -np.expm1(-stretch / ert)
    empirical = float(np.quantile(maxima, 1 - level))
    if np.ptp(maxima) <= 1e-12 * max(1.0, abs(float(maxima.max()))):
        return float(maxima.max())
    loc, scale = stats.gumbel_r.fit(maxima)
    fitted = float(stats.gumbel_r.isf(level, loc, scale))
    if not np.isfinite(fitted):
        raise CalibrationError(f"Gumbel fit failed on maxima with loc={loc}, scale={scale}")
    return max(fitted, empirical)


def calibrate(
    simulate: Simulate,
    window_statistics: WindowStatistics,
    windows: Sequence[int],
    check_every: int,
    ert: float,
    n_streams: int,
    random_state: int | None,
) -> NDArray[np.float64]:
    """Return one threshold per window so that the joint false-alarm rate is ``1 / ert``."""
    rng = np.random.default_rng(random_state)
    stretch = stretch_length(windows, check_every)
    ends = check_ends(windows, check_every, stretch)
    maxima = np.empty((n_streams, len(windows)))
    for row in range(n_streams):
        state, stream = simulate(rng, max(windows) + stretch)
        for column, window in enumerate(windows):
            maxima[row, column] = window_statistics(state, stream, window, ends).max()
    return np.array(
        [
            gumbel_threshold(maxima[:, j], stretch, SAFETY * ert * len(windows))
            for j in range(len(windows))
        ]
    )
