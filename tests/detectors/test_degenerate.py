"""Degenerate references: a (nearly) constant reference never calibrates to a threshold of 0."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from detectors import Chi2Detector, Detector, KSDetector, PSIDetector, WassersteinDetector
from detectors.calibration import stretch_level
from detectors.ks import ks_critical_value

NUMERIC = (KSDetector, PSIDetector, WassersteinDetector)
# the service's sizes and a family-wise ert split over 23 pairs
PARAMS: dict[str, Any] = {"window": 1000, "check_every": 100, "ert": 2.3e7}
CONSTANT = np.full(2000, 3.0)
NEARLY = np.concatenate([np.full(1999, 3.0), [3.1]])


@pytest.mark.parametrize("reference", [CONSTANT, NEARLY], ids=["constant", "nearly"])
@pytest.mark.parametrize("cls", NUMERIC)
def test_a_constant_reference_gets_a_positive_threshold(
    cls: type[Detector], reference: np.ndarray
) -> None:
    det = cls(**PARAMS).fit(reference)
    assert all(t > 0 for t in det.thresholds.values()), det.thresholds
    assert det.thresholds == det.floors  # the calibration alone said ~0


@pytest.mark.parametrize("reference", [CONSTANT, NEARLY], ids=["constant", "nearly"])
@pytest.mark.parametrize("cls", NUMERIC)
def test_one_differing_value_does_not_fire(cls: type[Detector], reference: np.ndarray) -> None:
    det = cls(**PARAMS).fit(reference)
    window = np.full(3000, 3.0)
    window[2500] = 50.0  # one value far away, then a whole window more
    results = [det.update(window[i : i + 100]) for i in range(0, 3000, 100)]
    assert not any(r.drift for r in results)


@pytest.mark.parametrize("cls", [KSDetector, PSIDetector])
def test_a_real_change_away_from_a_constant_reference_is_caught(cls: type[Detector]) -> None:
    det = cls(**PARAMS).fit(CONSTANT)
    stream = np.full(1000, 3.0)
    stream[::3] = 1.0  # a third of the values moved below the constant
    result = det.update(stream)
    assert result.drift and result.statistic is not None
    assert result.statistic > result.threshold > 0


def test_a_class_never_predicted_before_is_caught_and_one_is_not() -> None:
    det = Chi2Detector(**PARAMS).fit(["0"] * 2000)
    assert det.thresholds == det.floors and min(det.thresholds.values()) > 0
    once = ["0"] * 1200
    once[700] = "1"
    assert not det.update(once).drift
    often = ["0", "0", "0", "1"] * 300  # a quarter of the predictions now say '1'
    result = det.update(often)
    assert result.started and result.statistic is not None and result.statistic > 100


def test_wasserstein_sits_out_on_a_constant_reference_and_ks_judges() -> None:
    level = stretch_level((150, 1000), 100, PARAMS["ert"])
    assert WassersteinDetector(**PARAMS).fit(CONSTANT).thresholds == {
        150: float("inf"),
        1000: float("inf"),
    }
    # the share of the reference off its largest atom decides (KS's critical value of the
    # window: the short window's is the larger)
    critical = ks_critical_value(2000, 150, level)
    off = int(2000 * critical) + 20
    spread = np.concatenate([np.full(2000 - off, 3.0), np.linspace(0, 6, off)])
    thresholds = WassersteinDetector(**PARAMS).fit(spread).thresholds
    assert all(np.isfinite(t) and t > 0 for t in thresholds.values())


@pytest.mark.parametrize("cls", [*NUMERIC, Chi2Detector])
def test_the_floor_changes_nothing_on_a_continuous_reference(cls: type[Detector]) -> None:
    rng = np.random.default_rng(5)
    if cls is Chi2Detector:
        reference: Any = rng.choice(["a", "b", "c", "d"], 2000, p=[0.4, 0.3, 0.2, 0.1])
    else:
        reference = rng.normal(size=2000)
    det = cls(**PARAMS).fit(reference)
    for size, threshold in det.thresholds.items():
        assert det.floors[size] < threshold


def test_a_fixed_threshold_is_not_floored() -> None:
    det = KSDetector(threshold=0.01, **PARAMS).fit(CONSTANT)
    assert set(det.thresholds.values()) == {0.01}
