"""Many features, one false-alarm budget: :func:`bonferroni_ert` and :class:`Monitor`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from detectors.base import Detector, DetectorResult
from detectors.exceptions import InvalidInputError, NotFittedError


def bonferroni_ert(ert: float, family_size: int) -> float:
    """The expected run length each of ``family_size`` detectors is calibrated to.

    Splitting the false-alarm rate evenly (Bonferroni) keeps the expected number of false
    alarms over the whole family in ``N`` stationary values at most ``N / ert``, whatever
    the dependence between the detectors.

    >>> bonferroni_ert(1e6, 27)
    27000000.0
    """
    if family_size < 1:
        raise InvalidInputError(f"family_size: expected >= 1, got {family_size}")
    return float(ert) * family_size


class Monitor:
    """Run one detector per feature with a family-wise expected run length ``ert``.

    With ``k`` features, each feature's detector is a clone of its prototype calibrated to
    ``ert * k`` (Bonferroni split of the false-alarm rate): the expected number of false
    alarms over all features in ``N`` stationary values is at most ``k * N / (ert * k) =
    N / ert``, whatever the dependence between features.  The prototypes' own ``ert`` is
    ignored; their other parameters are kept.

    Parameters
    ----------
    detectors
        Feature name -> prototype detector (not fitted; it is cloned).
    ert
        Family-wise expected number of values between false alarms on a stationary stream.

    Examples
    --------
    >>> import numpy as np
    >>> from detectors import KSDetector, Chi2Detector
    >>> rng = np.random.default_rng(0)
    >>> mon = Monitor({"amount": KSDetector(window=200), "kind": Chi2Detector(window=200)},
    ...               ert=1e4)
    >>> mon = mon.fit({"amount": rng.normal(size=2000), "kind": rng.choice(["a", "b"], 2000)})
    >>> mon.detectors["amount"].ert
    20000.0
    >>> results = mon.update({"amount": rng.normal(1.0, size=300),
    ...                       "kind": rng.choice(["a", "b"], 300)})
    >>> {name: r.drift for name, r in results.items()}
    {'amount': True, 'kind': False}
    """

    def __init__(self, detectors: Mapping[str, Detector], ert: float = 1e5) -> None:
        self.prototypes = dict(detectors)
        self.ert = ert
        if not self.prototypes:
            raise InvalidInputError("detectors: expected at least one feature, got none")
        if not (isinstance(ert, int | float) and 1 <= ert < float("inf")):
            raise InvalidInputError(f"ert: expected a finite number >= 1, got {ert!r}")
        self._reset()

    def _reset(self) -> None:
        self.detectors: dict[str, Detector] = {}

    def fit(self, references: Mapping[str, Any]) -> Self:
        """Clone and fit one detector per feature on its reference values."""
        missing = sorted(set(self.prototypes) - set(references))
        if missing:
            raise InvalidInputError(f"references: expected every feature, missing {missing}")
        self._reset()
        share = bonferroni_ert(self.ert, len(self.prototypes))
        for name, prototype in self.prototypes.items():
            self.detectors[name] = prototype.clone(ert=share).fit(references[name])
        return self

    def update(self, values: Mapping[str, Any]) -> dict[str, DetectorResult]:
        """Feed each feature its new values; return the results of the features updated."""
        if not self.detectors:
            raise NotFittedError("Monitor: call fit(references) before update()")
        unknown = sorted(set(values) - set(self.detectors))
        if unknown:
            raise InvalidInputError(f"values: unknown features {unknown}")
        return {name: self.detectors[name].update(batch) for name, batch in values.items()}
