"""The shape every streaming detector shares: ``fit``, ``update`` and :class:`DetectorResult`.

A detector compares a sliding window of recent values (one or two window sizes) against a
fixed reference, every ``check_every`` values.  Its threshold is calibrated on the reference
(:mod:`detectors.calibration`) so that a stationary stream raises, on average, at most one
false alarm per ``ert`` values.

Episodes
--------
An alarm is an *episode*, not one event per check.  An episode starts at the first check where
the statistic of any window exceeds its threshold (``started=True`` on that result) and stays on
(``drift=True``) until every window's statistic has been at or below ``release * threshold`` for
``patience`` consecutive checks (``ended=True`` on that result).  The lower release level is the
hysteresis that keeps a statistic hovering around the threshold from flapping.

Degenerate references
---------------------
A constant reference (the scores of an untrained model, a feature stuck at one value) has a
degenerate null: every simulated window equals it, the calibration returns a threshold of 0
and any single differing value would fire.  Each calibrated threshold is therefore never
below the method's *floor* (:attr:`Detector.floors`): the analytic critical value of one
check at the level the calibration fits the maximum over a stretch to
(:func:`detectors.calibration.stretch_level`).  The maximum over a stretch's checks is at
least any single check, so on a continuous reference the calibrated threshold is above the
floor and the floor changes nothing; on a (nearly) constant one it takes over.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Self

import numpy as np
from numpy.typing import NDArray

from detectors.exceptions import InvalidInputError, NotFittedError
from detectors.validation import finite_1d, positive_int


@dataclass(frozen=True)
class DetectorResult:
    """The state of a detector after an ``update``.

    Attributes
    ----------
    drift
        Whether a drift episode is on after consuming the values.
    statistic
        Latest computed statistic (``None`` before the first check).  With several windows, the
        statistic of the window closest to (or furthest past) its threshold.
    threshold
        The calibrated threshold ``statistic`` is compared against (alarm when ``>``).
    n_seen
        Values consumed since ``fit``.
    started
        A drift episode started during this update.
    ended
        A drift episode ended during this update.
    window
        Size of the window ``statistic`` was computed on (``None`` before the first check).
    p_value
        p-value of ``statistic`` where the method defines one (KS, chi-square), else ``None``.
        Computed on first access, because the exact KS p-value costs milliseconds.
    """

    drift: bool
    statistic: float | None
    threshold: float
    n_seen: int
    started: bool = False
    ended: bool = False
    window: int | None = None
    p_value_fn: Callable[[], float] | None = field(default=None, repr=False, compare=False)

    @cached_property
    def p_value(self) -> float | None:
        """p-value of ``statistic`` (``None`` where the method defines none)."""
        return None if self.p_value_fn is None else self.p_value_fn()


class Detector(abc.ABC):
    """Base class of the streaming detectors.

    Parameters
    ----------
    window
        Size of the (long) sliding window of recent values.
    check_every
        Compute the statistic every ``check_every`` values.
    ert
        Expected run length: the declared mean number of values between false alarms on a
        stationary stream.  The thresholds are calibrated to it.
    short_window
        Size of an optional second, shorter window that reacts faster to large changes.  The
        false-alarm budget is shared: each window is calibrated to ``ert * n_windows``.
        ``None`` (or a value ``>= window``) keeps a single window.
    release
        Hysteresis: an episode may end only when every statistic is ``<= release * threshold``.
    patience
        An episode ends after ``patience`` consecutive checks under the release level.
    threshold
        Fixed threshold for every window; skips the calibration when given.
    n_streams
        Number of simulated stationary streams used by the calibration.
    random_state
        Seed of the calibration; the same seed and reference give the same thresholds.
    """

    #: Name used in alerts (``"ks"``, ``"psi"``...).
    name: str = ""

    def __init__(
        self,
        window: int = 1000,
        check_every: int = 10,
        ert: float = 1e5,
        short_window: int | None = None,
        release: float = 0.9,
        patience: int = 10,
        threshold: float | None = None,
        n_streams: int = 100,
        random_state: int | None = 0,
    ) -> None:
        self.window = window
        self.check_every = check_every
        self.ert = ert
        self.short_window = short_window
        self.release = release
        self.patience = patience
        self.threshold = threshold
        self.n_streams = n_streams
        self.random_state = random_state
        self._validate_params()
        self._reset()

    # -- parameters -------------------------------------------------------------------------

    def _validate_params(self) -> None:
        positive_int("window", self.window, minimum=2)
        positive_int("check_every", self.check_every)
        positive_int("patience", self.patience)
        positive_int("n_streams", self.n_streams, minimum=10)
        if self.short_window is not None:
            positive_int("short_window", self.short_window, minimum=2)
        if not (isinstance(self.ert, int | float) and 1 <= self.ert < float("inf")):
            raise InvalidInputError(f"ert: expected a finite number >= 1, got {self.ert!r}")
        if not (isinstance(self.release, int | float) and 0 < self.release <= 1):
            raise InvalidInputError(f"release: expected a number in (0, 1], got {self.release!r}")
        if self.threshold is not None and not (
            isinstance(self.threshold, int | float) and np.isfinite(self.threshold)
        ):
            raise InvalidInputError(
                f"threshold: expected a finite number or None, got {self.threshold!r}"
            )

    @property
    def windows(self) -> tuple[int, ...]:
        """The window sizes monitored, shortest first."""
        if self.short_window is None or self.short_window >= self.window:
            return (self.window,)
        return (self.short_window, self.window)

    def clone(self, **overrides: Any) -> Self:
        """Return a new, unfitted detector with the same parameters (and ``overrides``)."""
        params = {name: getattr(self, name) for name in inspect.signature(type(self)).parameters}
        params.update(overrides)
        return type(self)(**params)

    def __repr__(self) -> str:
        params = inspect.signature(type(self)).parameters
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in params)
        return f"{type(self).__name__}({args})"

    # -- state ------------------------------------------------------------------------------

    def _reset(self) -> None:
        """Drop everything derived from the reference and the stream."""
        self._fitted = False
        self._state: Any = None
        self._thresholds: NDArray[np.float64] = np.full(len(self.windows), np.nan)
        self._n_seen = 0
        self._drift = False
        self._calm_checks = 0
        self._last: tuple[float, int, Callable[[], float] | None] | None = None
        self._null: NDArray[Any] | None = None

    def reset(self) -> Self:
        """Forget the stream consumed since ``fit`` but keep the reference and thresholds."""
        fitted, thresholds, state = self._fitted, self._thresholds, self._state
        self._reset()
        if fitted:
            self._fitted, self._thresholds, self._state = True, thresholds, state
            self._start_windows()
        return self

    @property
    def thresholds(self) -> dict[int, float]:
        """Calibrated threshold of each window size."""
        self._require_fitted()
        return {size: float(t) for size, t in zip(self.windows, self._thresholds, strict=True)}

    @property
    def floors(self) -> dict[int, float]:
        """Lowest threshold of each window size (see "Degenerate references" above)."""
        self._require_fitted()
        return {size: float(f) for size, f in zip(self.windows, self._floors(), strict=True)}

    def _floors(self) -> NDArray[np.float64]:
        """The floor of each window's calibrated threshold (none by default)."""
        return np.zeros(len(self.windows))

    def _encode_null(self, null: Any) -> NDArray[Any]:
        """The ``null`` stretch as the calibration draws from it (raw numbers by default)."""
        return finite_1d("null", null)

    def _require_fitted(self) -> None:
        if not self._fitted:
            raise NotFittedError(f"{type(self).__name__}: call fit(reference) before update()")

    # -- public API -------------------------------------------------------------------------

    def fit(self, reference: Any, null: Any = None) -> Self:
        """Set the reference, calibrate the thresholds and empty the windows.

        ``null`` (optional): an observed stationary stretch of the stream, in time order,
        whose correlation in time the calibration must keep (the scores of an online model
        whose weights keep moving): the simulated streams are then moving blocks of it
        (:func:`detectors.calibration.block_bootstrap`) instead of independent draws from
        the reference.
        """
        self._reset()
        self._fit_reference(reference)
        if self.threshold is None:
            self._null = None if null is None else self._encode_null(null)
            self._thresholds = np.maximum(self._calibrate(), self._floors())
            self._null = None  # only the calibration reads it: keep pickles small
        else:
            self._thresholds = np.full(len(self.windows), float(self.threshold))
        self._fitted = True
        self._start_windows()
        return self

    def update(self, values: Any) -> DetectorResult:
        """Consume ``values`` (oldest first) and return the state after the last one."""
        self._require_fitted()
        encoded = self._encode("values", values)
        started = ended = False
        position, total = 0, len(encoded)
        while position < total:
            take = self.check_every - self._n_seen % self.check_every
            chunk = encoded[position : position + take]
            position += len(chunk)
            self._push(chunk)
            self._n_seen += len(chunk)
            if self._n_seen % self.check_every == 0:
                began, stopped = self._check()
                started, ended = started or began, ended or stopped
        return self._result(started, ended)

    def statistics(self) -> dict[int, float]:
        """Current statistic of every full window (window size -> statistic); no state change."""
        self._require_fitted()
        return {self.windows[index]: stat for index, stat, _ in self._statistics()}

    # -- episodes ---------------------------------------------------------------------------

    def _check(self) -> tuple[bool, bool]:
        stats = self._statistics()
        if not stats:
            return False, False
        # One plain loop: at check_every=1 this runs on every value.
        thresholds = self._thresholds.tolist()
        fire, calm = False, True
        best, best_excess = stats[0], _excess(stats[0][1], thresholds[stats[0][0]])
        for item in stats:
            threshold = thresholds[item[0]]
            fire = fire or item[1] > threshold
            calm = calm and item[1] <= self.release * threshold
            excess = _excess(item[1], threshold)
            if excess > best_excess:  # the first largest excess, as max() picks
                best, best_excess = item, excess
        index, stat, p_value_fn = best
        self._last = (stat, index, p_value_fn)
        if not self._drift:
            self._drift = fire
            return fire, False
        self._calm_checks = self._calm_checks + 1 if calm else 0
        if self._calm_checks >= self.patience:
            self._drift, self._calm_checks = False, 0
            return False, True
        return False, False

    def _result(self, started: bool, ended: bool) -> DetectorResult:
        if self._last is None:
            return DetectorResult(
                drift=self._drift,
                statistic=None,
                threshold=float(self._thresholds[-1]),
                n_seen=self._n_seen,
                started=started,
                ended=ended,
            )
        stat, index, p_value_fn = self._last
        return DetectorResult(
            drift=self._drift,
            statistic=stat,
            threshold=float(self._thresholds[index]),
            n_seen=self._n_seen,
            started=started,
            ended=ended,
            window=self.windows[index],
            p_value_fn=p_value_fn,
        )

    # -- what each method provides ----------------------------------------------------------

    @abc.abstractmethod
    def _fit_reference(self, reference: Any) -> None:
        """Validate and store the reference and everything derived from it."""

    @abc.abstractmethod
    def _calibrate(self) -> NDArray[np.float64]:
        """Return one threshold per window size (see :mod:`detectors.calibration`)."""

    @abc.abstractmethod
    def _start_windows(self) -> None:
        """Create empty sliding windows."""

    @abc.abstractmethod
    def _encode(self, name: str, values: Any) -> NDArray[Any]:
        """Validate raw values and convert them to what the windows store."""

    @abc.abstractmethod
    def _push(self, encoded: NDArray[Any]) -> None:
        """Append encoded values to every window, evicting the oldest."""

    @abc.abstractmethod
    def _statistics(self) -> list[tuple[int, float, Callable[[], float] | None]]:
        """``(window index, statistic, p-value function)`` for every full window."""


def _excess(statistic: float, threshold: float) -> float:
    if threshold > 0:
        return statistic / threshold
    return float("inf") if statistic > 0 else 0.0
