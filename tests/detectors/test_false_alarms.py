"""Seeded false-alarm rates on stationary streams, and the Monitor's family-wise budget.

Small windows and a small declared ERT (2,000) keep this fast; the bounds are loose (the
default-size run lengths are measured by scripts/bench_detectors.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from detectors import (
    Chi2Detector,
    Detector,
    KSDetector,
    Monitor,
    PSIDetector,
    WassersteinDetector,
    ks,
)

PARAMS: dict[str, Any] = {
    "window": 100,
    "short_window": 30,
    "check_every": 5,
    "ert": 2000.0,
    "n_streams": 50,
}
STREAMS, LENGTH = 4, 10_000


def stationary(cls: type[Detector], seed: int) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    if cls is Chi2Detector:
        cats, shares = np.array(["a", "b", "c"]), [0.6, 0.3, 0.1]
        return rng.choice(cats, 1000, p=shares).tolist(), rng.choice(cats, LENGTH, p=shares)
    return rng.normal(size=1000), rng.normal(size=LENGTH)


def alarms(det: Detector, stream: Any) -> int:
    return sum(det.update(stream[i : i + 50]).started for i in range(0, len(stream), 50))


@pytest.mark.parametrize("cls", [KSDetector, WassersteinDetector, PSIDetector, Chi2Detector])
def test_false_alarms_on_stationary_streams_stay_near_the_declared_rate(
    cls: type[Detector],
) -> None:
    total = 0
    for seed in range(STREAMS):
        reference, stream = stationary(cls, seed)
        total += alarms(cls(**PARAMS, random_state=seed).fit(reference), stream)
    expected = STREAMS * LENGTH / PARAMS["ert"]  # 20 at exactly the declared rate
    # Loose: 3x the declared rate is a broken calibration, not bad luck (P < 1e-6).
    assert total <= 3 * expected


@pytest.mark.parametrize("cls", [KSDetector, WassersteinDetector, PSIDetector, Chi2Detector])
def test_false_alarms_hold_at_a_sparse_cadence_with_batches_across_checks(
    cls: type[Detector],
) -> None:
    # The service checks every window / 10 values (1,000 / 100) and gets batches of 50-500
    # values that straddle the checks; the calibration simulates that same cadence.
    params = {**PARAMS, "check_every": 10}
    total = 0
    for seed in range(STREAMS):
        reference, stream = stationary(cls, 100 + seed)
        det = cls(**params, random_state=seed).fit(reference)
        sizes = np.random.default_rng(seed).integers(5, 120, LENGTH)
        ends = np.cumsum(sizes)[np.cumsum(sizes) < LENGTH]
        for chunk in np.split(stream, ends):
            total += det.update(chunk).started
    assert total <= 3 * STREAMS * LENGTH / params["ert"]


def test_naive_repeated_testing_would_fail_this_bound() -> None:
    rng = np.random.default_rng(0)
    reference, stream = rng.normal(size=1000), rng.normal(size=LENGTH)
    window, step = PARAMS["window"], PARAMS["check_every"]
    naive = sum(
        ks(reference, stream[end - window : end])[1] < 0.05
        for end in range(window, LENGTH + 1, step)
    )
    assert naive > 3 * LENGTH / PARAMS["ert"]


def test_monitor_splits_the_budget_across_features() -> None:
    rng = np.random.default_rng(0)
    features = [f"f{i}" for i in range(5)]
    monitor = Monitor({name: KSDetector(**PARAMS) for name in features}, ert=2000.0)
    monitor.fit({name: rng.normal(size=1000) for name in features})
    assert all(det.ert == 10_000.0 for det in monitor.detectors.values())
    started = 0
    for _ in range(0, 2 * LENGTH, 50):
        results = monitor.update({name: rng.normal(size=50) for name in features})
        started += sum(r.started for r in results.values())
    assert started <= 3 * 2 * LENGTH / 2000.0
