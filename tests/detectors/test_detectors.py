"""Every detector class through the same checks: shape, state, determinism, exactness."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import detectors
from detectors import (
    Chi2Detector,
    Detector,
    DetectorResult,
    InvalidInputError,
    KSDetector,
    NotFittedError,
    PSIDetector,
    WassersteinDetector,
)

SMALL = {"window": 60, "short_window": 20, "check_every": 5, "ert": 2000.0, "n_streams": 20}
CATEGORIES = np.array(["a", "b", "c", "d"])


def numeric(rng: np.random.Generator, size: int, shift: float = 0.0) -> Any:
    return rng.normal(shift, 1.0, size)


def categorical(rng: np.random.Generator, size: int, shift: float = 0.0) -> Any:
    shares = [0.4, 0.3, 0.2, 0.1] if shift == 0 else [0.1, 0.2, 0.3, 0.4]
    return rng.choice(CATEGORIES, size, p=shares).tolist()


CASES: list[tuple[type[Detector], Callable[..., Any]]] = [
    (KSDetector, numeric),
    (WassersteinDetector, numeric),
    (PSIDetector, numeric),
    (Chi2Detector, categorical),
]
IDS = [cls.__name__ for cls, _ in CASES]


def chi2_of_window(reference: list[Any], window: list[Any]) -> float:
    categories = list(dict.fromkeys(reference))
    index = {c: i for i, c in enumerate(categories)}
    ref = np.bincount([index[c] for c in reference], minlength=len(categories) + 1)
    cur = np.bincount([index.get(c, len(categories)) for c in window], minlength=len(ref))
    return detectors.chi2(ref, cur)[0]


def pure_statistic(det: Detector, reference: Any, window: Any) -> float:
    if isinstance(det, KSDetector):
        return detectors.ks(reference, window)[0]
    if isinstance(det, WassersteinDetector):
        return detectors.wasserstein(reference, window)
    if isinstance(det, PSIDetector):
        return detectors.psi(reference, window, bins=det.bins, eps=det.eps)
    return chi2_of_window(reference, window)


def run(det: Detector, values: Any, batch: int) -> list[DetectorResult]:
    return [det.update(values[i : i + batch]) for i in range(0, len(values), batch)]


@pytest.fixture(params=CASES, ids=IDS)
def case(request: pytest.FixtureRequest) -> tuple[type[Detector], Callable[..., Any]]:
    return request.param  # type: ignore[no-any-return]


def test_clone_copies_parameters_and_not_state(case: tuple[type[Detector], Callable[..., Any]]):
    cls, make = case
    det = cls(**SMALL).fit(make(np.random.default_rng(0), 300))
    twin = det.clone()
    assert repr(twin) == repr(det)
    assert twin.clone(window=80).window == 80
    with pytest.raises(NotFittedError, match="call fit"):
        twin.update(make(np.random.default_rng(1), 5))


def test_result_fields(case: tuple[type[Detector], Callable[..., Any]]) -> None:
    cls, make = case
    rng = np.random.default_rng(0)
    det = cls(**SMALL).fit(make(rng, 300))
    first = det.update(make(rng, 3))
    assert (first.statistic, first.window, first.p_value, first.n_seen) == (None, None, None, 3)
    assert first.threshold > 0 and not first.drift
    result = det.update(make(rng, 100))
    assert isinstance(result.statistic, float) and result.window in det.windows
    assert result.threshold == det.thresholds[result.window]
    assert result.n_seen == 103 and isinstance(result.drift, bool)
    if cls in (KSDetector, Chi2Detector):
        assert result.p_value is not None and 0.0 <= result.p_value <= 1.0
    else:
        assert result.p_value is None


def test_deterministic_with_a_seed_and_replayable_after_reset(
    case: tuple[type[Detector], Callable[..., Any]],
) -> None:
    cls, make = case
    rng = np.random.default_rng(0)
    reference, stream = make(rng, 300), make(rng, 200) + make(rng, 200, shift=1.0)
    if isinstance(stream, np.ndarray):
        stream = np.concatenate([make(rng, 200), make(rng, 200, shift=1.0)])
    one, two = cls(**SMALL).fit(reference), cls(**SMALL).fit(reference)
    assert one.thresholds == two.thresholds
    first = run(one, stream, 7)
    assert first == run(two, stream, 7)
    assert first == run(one.reset(), stream, 7)
    assert any(r.drift for r in first)


def test_pickle_round_trip_continues_identically(
    case: tuple[type[Detector], Callable[..., Any]],
) -> None:
    cls, make = case
    rng = np.random.default_rng(0)
    det = cls(**SMALL).fit(make(rng, 300))
    det.update(make(rng, 77))
    copy = pickle.loads(pickle.dumps(det))  # noqa: S301 - our own object
    more = make(rng, 120)
    assert run(copy, more, 9) == run(det, more, 9)


def test_batch_size_does_not_change_results(
    case: tuple[type[Detector], Callable[..., Any]],
) -> None:
    cls, make = case
    rng = np.random.default_rng(3)
    det = cls(**SMALL).fit(make(rng, 300))
    stream = make(rng, 150)
    by_one = run(det, stream, 1)[-1]
    assert run(det.reset(), stream, 150)[-1] == by_one
    assert run(det.reset(), stream, 13)[-1] == by_one


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batches=st.lists(st.integers(1, 90), min_size=1))
@pytest.mark.parametrize(("cls", "make"), CASES, ids=IDS)
def test_incremental_statistics_equal_the_pure_functions(
    cls: type[Detector], make: Callable[..., Any], seed: int, batches: list[int]
) -> None:
    rng = np.random.default_rng(seed)
    reference = make(rng, int(rng.integers(1, 400)))
    if cls is not Chi2Detector and seed % 3 == 0:
        reference = np.round(reference)  # heavy ties
    det = cls(**{**SMALL, "threshold": 1.0})
    det.fit(reference)
    stream: list[Any] = []
    for size in batches:
        values = make(rng, size, shift=float(rng.integers(0, 2)))
        if cls is not Chi2Detector and seed % 3 == 0:
            values = np.round(values)
        det.update(values)
        stream.extend(list(values))
        for window, statistic in det.statistics().items():
            expected = pure_statistic(det, reference, stream[-window:])
            assert statistic == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_wasserstein_default_windows_checked_on_every_value_equal_the_pure_function(
    ties: bool,
) -> None:
    # Both default windows (1000 and 150) are computed in one pass from a shared buffer.
    rng = np.random.default_rng(11)
    reference = rng.normal(3.0, 2.0, 5000)
    stream = np.concatenate([rng.normal(3.0, 2.0, 1500), rng.normal(4.0, 3.0, 800)])
    if ties:
        reference, stream = np.round(reference), np.round(stream)
    det = WassersteinDetector(check_every=1, threshold=1.0).fit(reference)
    position = 0
    for size in [1000, 1, 7, 1, 1, 150, 1, 333, 1, 1, 2, 500]:
        det.update(stream[position : position + size])
        position += size
        for window, statistic in det.statistics().items():
            expected = detectors.wasserstein(reference, stream[position - window : position])
            assert statistic == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("cls", [KSDetector, WassersteinDetector, PSIDetector, Chi2Detector])
def test_no_alarm_on_a_constant_stream(cls: type[Detector]) -> None:
    value: Any = "x" if cls is Chi2Detector else 2.5
    det = cls(**SMALL).fit([value] * 200)
    results = run(det, [value] * 1000, 10)
    assert not any(r.drift for r in results)
    assert results[-1].statistic == 0.0


def test_episode_starts_once_and_ends_after_patience() -> None:
    rng = np.random.default_rng(0)
    det = WassersteinDetector(**{**SMALL, "ert": 1e5}, patience=3).fit(rng.normal(size=500))
    results = run(det, np.concatenate([rng.normal(size=200), rng.normal(3, size=300)]), 5)
    results += run(det, rng.normal(size=400), 5)
    assert sum(r.started for r in results) == 1
    assert sum(r.ended for r in results) == 1
    start = next(i for i, r in enumerate(results) if r.started)
    end = next(i for i, r in enumerate(results) if r.ended)
    assert all(r.drift for r in results[start:end]) and not results[end].drift
    assert 200 < results[start].n_seen <= 230


@pytest.mark.parametrize("cls", [KSDetector, WassersteinDetector, PSIDetector])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_update_rejects_non_finite_values(cls: type[Detector], bad: float) -> None:
    det = cls(**SMALL).fit(np.arange(100.0))
    with pytest.raises(InvalidInputError, match="values: expected finite numbers"):
        det.update([1.0, bad])
    with pytest.raises(InvalidInputError, match="reference: expected finite numbers"):
        cls(**SMALL).fit([1.0, bad])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"window": 1}, "window: expected an integer >= 2, got 1"),
        ({"check_every": 0}, "check_every: expected an integer >= 1, got 0"),
        ({"ert": float("nan")}, "ert: expected a finite number >= 1, got nan"),
        ({"release": 1.5}, r"release: expected a number in \(0, 1\], got 1.5"),
        ({"short_window": 1.5}, "short_window: expected an integer >= 2, got 1.5"),
    ],
)
def test_parameters_are_validated(params: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        KSDetector(**params)


def test_chi2_detector_rejects_non_label_input() -> None:
    with pytest.raises(InvalidInputError, match="reference: expected a 1-D sequence"):
        Chi2Detector().fit("abc")
    with pytest.raises(InvalidInputError, match="values: expected category labels, got None"):
        Chi2Detector(**SMALL).fit(["a", "b"] * 50).update(["a", None])
