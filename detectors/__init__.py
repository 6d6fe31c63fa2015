"""Drift statistics and streaming drift detectors (numpy/scipy only, no I/O).

Pure statistics, equal to their scipy references on the same inputs::

    ks(reference, current) -> (statistic, p_value)            # scipy.stats.ks_2samp
    wasserstein(reference, current) -> float                   # scipy.stats.wasserstein_distance
    psi(reference, current, bins=10) -> float                  # quantile bins, see psi()
    chi2(reference_counts, current_counts) -> (stat, p_value)  # scipy.stats.chi2_contingency

Streaming detectors with thresholds calibrated to an expected run length between false alarms
(:mod:`detectors.calibration`): :class:`KSDetector`, :class:`WassersteinDetector`,
:class:`PSIDetector`, :class:`Chi2Detector`; :class:`Monitor` runs one per feature with a
family-wise false-alarm budget.
"""

from detectors.base import Detector, DetectorResult
from detectors.chi2 import Chi2Detector, chi2
from detectors.exceptions import (
    CalibrationError,
    DetectorError,
    InvalidInputError,
    NotFittedError,
)
from detectors.family import Monitor, bonferroni_ert
from detectors.ks import KSDetector, ks
from detectors.psi import PSIDetector, psi
from detectors.wasserstein import WassersteinDetector, wasserstein

__all__ = [
    "CalibrationError",
    "Chi2Detector",
    "Detector",
    "DetectorError",
    "DetectorResult",
    "InvalidInputError",
    "KSDetector",
    "Monitor",
    "bonferroni_ert",
    "NotFittedError",
    "PSIDetector",
    "WassersteinDetector",
    "chi2",
    "ks",
    "psi",
    "wasserstein",
]
