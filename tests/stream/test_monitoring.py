"""SubjectMonitor: warm-up, reference, one firing/resolved per detector episode, evidence."""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from stream.exceptions import ConfigError
from stream.features.plan import window_names
from stream.messages import (
    Alert,
    SubjectBatch,
    SubjectKind,
    decode_monitor_batch,
    encode_monitor_batch,
)
from stream.monitoring.drift import SubjectMonitor
from stream.monitoring.reference import reference_values
from stream.monitoring.subjects import (
    SINCE_LAST_WARMUP_MS,
    monitored_subjects,
    subject_batches,
)
from stream.records import ScoredEvent, ValidEvent
from stream.service.config import FeatureSpec, ModelSettings, MonitoringSettings, Settings

# small sizes keep the suite fast; ert is family-wise, split over FAMILY (subject, detector) pairs
SETTINGS = MonitoringSettings(reference_size=500, window=200, check_every=10, ert=1e5)
NUMERIC = ("ks", "psi", "wasserstein")
FAMILY = 7  # two numeric subjects x 3 detectors + one categorical x chi2
STEP_MS = 10  # event-time spacing of the synthetic streams
DRIFT_AT = 3000  # index of the first drifted value
DRIFT_END = 5000
TOTAL = 8000
MAX_DELAY = 200  # values after DRIFT_AT (one window) within which every detector must fire
MAX_RESOLVE = 600  # values after DRIFT_END within which every episode must end


def monitor(subject: str = "amount", kind: SubjectKind = "numeric", **kw: Any) -> SubjectMonitor:
    detectors = NUMERIC if kind == "numeric" else ("chi2",)
    return SubjectMonitor(subject, kind, detectors, SETTINGS, FAMILY, "fraud", **kw)


def batches(
    subject: str, values: Sequence[Any], size: int, kind: SubjectKind = "numeric", t0: int = 0
) -> Iterator[SubjectBatch]:
    for start in range(0, len(values), size):
        chunk = list(values[start : start + size])
        ts = [t0 + (start + i) * STEP_MS for i in range(len(chunk))]
        yield SubjectBatch(subject, kind, chunk, ts, 7)


def run(mon: SubjectMonitor, values: Sequence[Any], size: int = 250) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = []
    for batch in batches(mon.subject, values, size, mon.kind):
        alerts.extend(mon.update(batch))
    return alerts


def drifted(seed: int, shift: float) -> list[float]:
    rng = np.random.default_rng(seed)
    values = rng.normal(10.0, 2.0, TOTAL)
    values[DRIFT_AT:DRIFT_END] += shift * 2.0
    return values.tolist()


def index_of(alert: dict[str, Any]) -> int:
    return int(alert["ts"]) // STEP_MS


@pytest.fixture(scope="module")
def drift_run() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return run(monitor("amount"), drifted(1, 1.0)), run(monitor("other"), drifted(2, 0.0))


def test_injected_drift_fires_once_per_detector_soon_after(
    drift_run: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    alerts, untouched = drift_run
    firing = [a for a in alerts if a["status"] == "firing"]
    assert sorted(a["detector"] for a in firing) == sorted(NUMERIC)
    delays = {a["detector"]: index_of(a) - DRIFT_AT for a in firing}
    print(f"detection delay (values after the change, window {SETTINGS.window}): {delays}")
    assert all(0 <= d <= MAX_DELAY for d in delays.values()), delays
    assert untouched == []


def test_end_of_drift_resolves_once_per_detector(
    drift_run: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    alerts, _ = drift_run
    resolved = [a for a in alerts if a["status"] == "resolved"]
    assert sorted(a["detector"] for a in resolved) == sorted(NUMERIC)
    delays = {a["detector"]: index_of(a) - DRIFT_END for a in resolved}
    print(f"resolution delay (values after the drift ended): {delays}")
    assert all(0 <= d <= MAX_RESOLVE for d in delays.values()), delays
    firing = {a["detector"]: a["alert_id"] for a in alerts if a["status"] == "firing"}
    assert {a["detector"]: a["alert_id"] for a in resolved} == firing


def test_alerts_carry_the_evidence(
    drift_run: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    alerts, _ = drift_run
    for raw in alerts:
        alert = Alert.model_validate(raw)
        assert alert.kind == "data_drift" and alert.subject == "amount"
        assert alert.model == "fraud" and alert.model_version == 7
        assert alert.statistic is not None and alert.threshold is not None
        assert (alert.p_value is not None) == (alert.detector == "ks")
        assert alert.reference.n == SETTINGS.reference_size
        assert (alert.reference.from_ts, alert.reference.to_ts) == (0, 499 * STEP_MS)
        assert 0 < alert.window.n <= SETTINGS.window
        assert alert.window.to_ts == alert.ts
        assert alert.window.from_ts == alert.ts - (alert.window.n - 1) * STEP_MS
        assert set(alert.evidence["reference"]) == {"p5", "p25", "p50", "p75", "p95", "mean"}
        assert set(alert.evidence["window"]) == set(alert.evidence["reference"])
        assert alert.message.startswith("amount: ")
    firing = next(a for a in alerts if a["status"] == "firing" and a["detector"] == "ks")
    assert firing["statistic"] > firing["threshold"]
    assert firing["evidence"]["window"]["mean"] > firing["evidence"]["reference"]["mean"] + 1.0
    assert firing["alert_id"] == f"data_drift:amount:ks:{firing['ts']}"


def test_long_stationary_stream_raises_nothing() -> None:
    rng = np.random.default_rng(3)
    mon = monitor("amount")
    assert run(mon, rng.lognormal(3.0, 0.5, 60_000).tolist(), size=500) == []
    stats = mon.statistics()
    assert set(stats) == set(NUMERIC)
    assert all(s is not None and s <= t and not on for s, t, on in stats.values())


def test_categorical_drift_fires_and_resolves_once() -> None:
    rng = np.random.default_rng(4)
    values = rng.choice(["grocery", "travel", "online"], TOTAL, p=[0.6, 0.3, 0.1]).astype(object)
    values[DRIFT_AT:DRIFT_END] = rng.choice(
        ["grocery", "travel", "online"], 2000, p=[0.3, 0.3, 0.4]
    )
    alerts = run(monitor("merchant", "categorical"), [str(v) for v in values])
    assert [(a["status"], a["detector"]) for a in alerts] == [
        ("firing", "chi2"),
        ("resolved", "chi2"),
    ]
    firing = Alert.model_validate(alerts[0])
    print(f"chi2 detection delay: {index_of(alerts[0]) - DRIFT_AT} values")
    assert 0 <= index_of(alerts[0]) - DRIFT_AT <= MAX_DELAY
    assert firing.p_value is not None and firing.p_value < 1e-3
    assert (
        firing.evidence["window"]["shares"]["online"]
        > firing.evidence["reference"]["shares"]["online"]
    )
    assert "'online'" in firing.message


def test_prediction_subjects_raise_prediction_drift() -> None:
    # the settling pair comes first, then the reference model (stream.monitoring.settling)
    mon = monitor("prediction.score")
    pair = np.random.default_rng(4).normal(10.0, 2.0, 2 * SETTINGS.reference_size)
    assert run(mon, pair.tolist()) == [] and mon.pin_wanted == 7
    assert mon.follow(7) == []
    alerts = run(mon, drifted(5, 1.5))
    assert {a["kind"] for a in alerts} == {"prediction_drift"}


def test_warmup_drops_values_until_the_window_is_full() -> None:
    mon = monitor("amount_mean_1m", warmup_ms=1000)
    values = np.random.default_rng(6).normal(size=1000).tolist()
    stream = list(batches("amount_mean_1m", values, 30))
    for batch in stream[:3]:
        mon.update(batch)
    assert mon.phase == "warming_up" and mon.dropped == 90
    for batch in stream[3:]:
        mon.update(batch)
    assert mon.dropped == 100  # event times 0..990 ms: the first 100 values
    assert mon.reference.n == SETTINGS.reference_size and mon.reference.from_ts == 1000
    assert mon.phase == "fitted"


def test_same_alerts_whatever_the_batching() -> None:
    values = drifted(1, 1.0)
    by_250 = run(monitor("amount"), values, size=250)
    by_37 = run(monitor("amount"), values, size=37)
    assert by_37 == by_250


def test_sparse_cadence_same_alerts_whatever_the_batching() -> None:
    # as the defaults (window / 10): batches smaller than, across and larger than a check
    sparse = SETTINGS.model_copy(update={"check_every": 20})
    values = drifted(1, 1.0)
    results = []
    for size in (250, 37, 7):
        mon = SubjectMonitor("amount", "numeric", NUMERIC, sparse, FAMILY, "fraud")
        results.append(run(mon, values, size=size))
    assert results[0] == results[1] == results[2]
    firing = [a for a in results[0] if a["status"] == "firing"]
    assert sorted(a["detector"] for a in firing) == sorted(NUMERIC)
    assert all(index_of(a) % 20 == 19 for a in firing)  # on a check, to the value


def test_pickle_mid_stream_continues_identically() -> None:
    values = drifted(1, 1.0)
    straight = monitor("amount")
    expected = run(straight, values)
    first = monitor("amount")
    cut = DRIFT_AT + 40  # inside the episode's build-up
    alerts = run(first, values[:cut])
    restored: SubjectMonitor = pickle.loads(pickle.dumps(first))  # noqa: S301 - our own bytes
    for batch in batches("amount", values[cut:], 250, t0=cut * STEP_MS):
        alerts.extend(restored.update(batch))
    assert alerts == expected
    assert restored.statistics() == straight.statistics()


def test_reset_reference_pins_and_closes_open_episodes() -> None:
    values = drifted(1, 1.0)
    mon = monitor("amount")
    alerts = run(mon, values[: DRIFT_AT + 400])
    assert {a["status"] for a in alerts} == {"firing"}
    pinned = values[DRIFT_AT : DRIFT_AT + 500]
    closed = mon.reset_reference(pinned, [i * STEP_MS for i in range(500)])
    assert sorted((a["status"], a["detector"]) for a in closed) == [
        ("resolved", d) for d in sorted(NUMERIC)
    ]
    assert [a["alert_id"] for a in closed] == [a["alert_id"] for a in alerts]
    assert mon.reference.n == 500 and mon.phase == "fitted"
    assert all(not on for _, _, on in mon.statistics().values())


def test_detectors_must_fit_the_kind() -> None:
    with pytest.raises(ConfigError, match="chi2"):
        SubjectMonitor("amount", "numeric", ("chi2",), SETTINGS, 1, "m")
    with pytest.raises(ConfigError, match="family_size"):
        SubjectMonitor("amount", "numeric", ("ks",), SETTINGS, 0, "m")


def test_detectors_get_the_bonferroni_share_and_a_stable_seed() -> None:
    a = run(monitor("amount"), drifted(1, 0.0)[:600])
    assert a == []
    mon = monitor("amount")
    run(mon, drifted(1, 0.0)[:600])
    twin = monitor("amount")
    run(twin, drifted(1, 0.0)[:600])
    assert mon.statistics() == twin.statistics()
    assert all(d.ert == SETTINGS.ert * FAMILY for d in mon._fitted.values())


def test_subject_batch_round_trip() -> None:
    batch = SubjectBatch("kind", "categorical", ["a", "b"], [1, 2], 3)
    assert decode_monitor_batch(encode_monitor_batch(batch)) == batch


def scored(
    ts: int, x: dict[str, float | str], missing: frozenset[str] = frozenset()
) -> ScoredEvent:
    raw = {k: v for k, v in x.items() if "_" not in k}
    event = ValidEvent(f"e{ts}", "c1", ts, raw, None, (), missing)
    return ScoredEvent(event, x, "1", {"1": 0.8, "0": 0.2}, 0.8, 4)


def test_subject_batches_skip_missing_and_none() -> None:
    events = [
        scored(1, {"amount": 5.0, "amount_mean_1m": 5.0, "kind": "a"}),
        scored(2, {"amount": 0.0, "amount_mean_1m": 2.5, "kind": "b"}, frozenset({"amount"})),
        scored(3, {"amount": 7.0, "kind": "a"}),
    ]
    subjects: dict[str, SubjectKind] = {
        "amount": "numeric",
        "amount_mean_1m": "numeric",
        "kind": "categorical",
        "absent": "numeric",
        "prediction.score": "numeric",
        "prediction.class": "categorical",
    }
    got = {b.subject: (b.values, b.ts, b.model_version) for b in subject_batches(events, subjects)}
    assert got == {
        "amount": ([5.0, 7.0], [1, 3], 4),
        "amount_mean_1m": ([5.0, 2.5], [1, 2], 4),
        "kind": (["a", "b", "a"], [1, 2, 3], 4),
        "prediction.score": ([0.8, 0.8, 0.8], [1, 2, 3], 4),
        "prediction.class": (["1", "1", "1"], [1, 2, 3], 4),
    }
    assert subject_batches([], subjects) == []


def test_pinned_references_see_what_the_live_monitors_see() -> None:
    # the same value rule as subject_batches: no first-event sentinel, nothing non-finite
    preds = [
        {"ts": 1, "features": {"seconds_since_last": -1.0, "amount": float("nan")}, "score": 0.5},
        {"ts": 2, "features": {"seconds_since_last": 3, "amount": 2}, "prediction": 1},
    ]
    subjects: dict[str, SubjectKind] = {
        "seconds_since_last": "numeric",
        "amount": "numeric",
        "prediction.score": "numeric",
        "prediction.class": "categorical",
    }
    assert reference_values(preds, subjects, 10) == {
        "seconds_since_last": ([3.0], [2]),
        "amount": ([2.0], [2]),
        "prediction.score": ([0.5], [1]),
        "prediction.class": (["1"], [2]),
    }


def test_monitored_subjects_names_kinds_and_warmups() -> None:
    features = (
        FeatureSpec(name="amount", windows=("1m", "1h"), aggregates=("mean", "std")),
        FeatureSpec(name="merchant", kind="categorical"),
    )
    subjects = monitored_subjects(Settings(features=features))
    enriched = set(window_names(features))
    assert (
        set(subjects) == {"amount", "merchant", "prediction.score", "prediction.class"} | enriched
    )
    assert subjects["amount_std_1h"] == ("numeric", 3_600_000)
    assert subjects["amount_mean_1m"] == ("numeric", 60_000)
    assert subjects["seconds_since_last"] == ("numeric", SINCE_LAST_WARMUP_MS)
    assert subjects["merchant"] == ("categorical", 0)
    # the model's outputs are stationary once its slowest input is
    assert subjects["prediction.class"] == ("categorical", 3_600_000)
    assert subjects["prediction.score"] == ("numeric", 3_600_000)


def test_monitored_subjects_filters() -> None:
    features = (FeatureSpec(name="amount", windows=("1m",), aggregates=("mean",)),)
    only = MonitoringSettings(subjects=("amount", "amount_mean_1m"), exclude=("amount_mean_1m",))
    assert monitored_subjects(Settings(features=features, monitoring=only)) == {
        "amount": ("numeric", 0)
    }
    regression = Settings(
        features=features,
        model=ModelSettings(task="regression", pipeline="linear_regression"),
    )
    assert "prediction.class" not in monitored_subjects(regression)
