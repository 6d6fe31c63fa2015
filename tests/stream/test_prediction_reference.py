"""Prediction drift of an online learner: when the reference is taken, degenerate references.

The stream goes scorer -> monitor_messages -> encoded monitor batch -> SubjectMonitor, as in a
worker (no broker): events of the synthetic card stream are scored by the served version of
a River model that learns every batch, as the trainer publishes after every batch.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from stream.messages import SubjectBatch, SubjectKind, decode_monitor_batch
from stream.model.online import create_model
from stream.monitoring.drift import SubjectMonitor
from stream.monitoring.hub import monitor_messages
from stream.monitoring.subjects import PREDICTION_CLASS, PREDICTION_SCORE
from stream.records import BatchResult, ScoredEvent, ValidEvent
from stream.service.config import FeatureSpec, ModelSettings, MonitoringSettings
from stream.tools.synthetic import CardStream, Drift

FEATURES = (
    FeatureSpec(name="amount", min=0),
    FeatureSpec(name="hour", min=0, max=23),
    FeatureSpec(name="merchant_category", kind="categorical"),
)
# the service's defaults and the sample config's family of 23 (subject, detector) pairs
SETTINGS = MonitoringSettings(reference_size=2000, window=1000, check_every=100, ert=1e6)
FAMILY = 23
KINDS: dict[str, SubjectKind] = {PREDICTION_SCORE: "numeric", PREDICTION_CLASS: "categorical"}
BATCH = 100


def monitors() -> dict[str, SubjectMonitor]:
    return {
        PREDICTION_SCORE: SubjectMonitor(
            PREDICTION_SCORE, "numeric", ("ks", "psi", "wasserstein"), SETTINGS, FAMILY, "fraud"
        ),
        PREDICTION_CLASS: SubjectMonitor(
            PREDICTION_CLASS, "categorical", ("chi2",), SETTINGS, FAMILY, "fraud"
        ),
        # the same scores watched as if they were a feature: reference = the first block
        "as_feature": SubjectMonitor(
            "as_feature", "numeric", ("ks", "psi", "wasserstein"), SETTINGS, FAMILY, "fraud"
        ),
    }


def scored_batch(events: list[tuple[dict[str, Any], int]], model: Any, version: int) -> Any:
    xs = [e["features"] for e, _ in events]
    out = []
    for (e, _), x, s in zip(events, xs, model.predict_many(xs), strict=True):
        ev = ValidEvent(e["event_id"], e["entity_id"], e["ts"], x, None, (), frozenset())
        out.append(ScoredEvent(ev, x, s.prediction, s.proba, s.score, version))
    return BatchResult([], out, [], 0)


def feed(mons: dict[str, SubjectMonitor], result: BatchResult) -> list[dict[str, Any]]:
    alerts = []
    for _, value in monitor_messages(result, KINDS):
        batch = decode_monitor_batch(value)
        if not isinstance(batch, SubjectBatch):
            continue  # the data-quality counts
        alerts += mons[batch.subject].update(batch)
        if batch.subject == PREDICTION_SCORE:
            alerts += mons["as_feature"].update(replace(batch, subject="as_feature"))
    return alerts


@functools.cache
def learning_run(drift: str | None, n: int = 40_000) -> tuple[list[Any], dict[str, str]]:
    """A model learning every batch (labels one batch later); version k serves batch k."""
    stream = CardStream(seed=11, drifts=(Drift.parse(drift),) if drift else ())
    model = create_model(ModelSettings(name="fraud"), FEATURES)
    mons = monitors()
    alerts: list[dict[str, Any]] = []
    for version, start in enumerate(range(0, n, BATCH)):
        events = [stream.event(i) for i in range(start, start + BATCH)]
        alerts += feed(mons, scored_batch(events, model, version))
        for event, label in events:
            model.learn(event["features"], label)
    return alerts, {name: m.phase for name, m in mons.items()}


def test_a_learning_model_on_a_stationary_stream_raises_no_prediction_drift() -> None:
    alerts, phases = learning_run(None)
    assert phases == {
        PREDICTION_SCORE: "fitted",
        PREDICTION_CLASS: "fitted",
        "as_feature": "fitted",
    }
    predictions = [a for a in alerts if a["kind"] == "prediction_drift"]
    assert predictions == []
    # the guard: the same scores judged against the first block fire while the model learns
    assert any(a["subject"] == "as_feature" and a["status"] == "firing" for a in alerts)


def test_a_real_change_of_the_predictions_is_still_caught() -> None:
    alerts, _ = learning_run("category_mix@20000")
    firing = {(a["subject"], a["detector"]) for a in alerts if a["kind"] == "prediction_drift"}
    assert (PREDICTION_CLASS, "chi2") in firing and (PREDICTION_SCORE, "ks") in firing
    stream = CardStream()
    start_ms = stream.start_ms + 20_000 * stream.step_ms
    delays = [
        (a["ts"] - start_ms) // stream.step_ms
        for a in alerts
        if a["status"] == "firing" and a["kind"] == "prediction_drift"
    ]
    print(f"prediction drift delays (events after the change): {sorted(delays)}")
    assert delays and all(0 <= d <= 500 for d in delays), delays


def subject_batch(subject: str, values: list[Any], t0: int, version: int = 3) -> SubjectBatch:
    kind: SubjectKind = "numeric" if subject == PREDICTION_SCORE else "categorical"
    return SubjectBatch(subject, kind, values, list(range(t0, t0 + len(values))), version)


def test_the_untrained_version_never_enters_the_reference() -> None:
    mon = monitors()[PREDICTION_SCORE]
    rng = np.random.default_rng(0)
    mon.update(subject_batch(PREDICTION_SCORE, [0.5] * 3000, 0, version=0))
    assert mon.phase == "warming_up" and mon.dropped == 3000
    mon.update(subject_batch(PREDICTION_SCORE, rng.beta(2, 5, 4000).tolist(), 3000))
    assert mon.phase == "fitted" and mon.reference.from_ts == 5000


def test_the_reference_waits_until_two_blocks_agree() -> None:
    mon = monitors()[PREDICTION_SCORE]
    rng = np.random.default_rng(1)
    for block, a in enumerate((1.0, 1.5, 2.0)):  # a model still converging
        mon.update(subject_batch(PREDICTION_SCORE, rng.beta(a, 5, 2000).tolist(), block * 2000))
        assert mon.phase == "settling"
    phases = {r.labels: r.value for r in mon.readings() if r.gauge == "monitor_phase"}
    assert phases == {(PREDICTION_SCORE,): 2.0}
    mon.update(subject_batch(PREDICTION_SCORE, rng.beta(2.0, 5, 2000).tolist(), 6000))
    assert mon.phase == "fitted" and mon.reference.from_ts == 6000


@pytest.mark.parametrize("subject", [PREDICTION_SCORE, PREDICTION_CLASS])
def test_a_constant_prediction_reference_never_calibrates_to_zero(subject: str) -> None:
    mon = monitors()[subject]
    constant: Any = 0.5 if subject == PREDICTION_SCORE else "0"
    other: Any = 0.1 if subject == PREDICTION_SCORE else "1"
    result = [ScoredEvent(ValidEvent(f"e{i}", "c", i, {}, None, (), frozenset()), {},
                          "0", None, 0.5, 3) for i in range(4000)]  # fmt: skip
    mons = {**monitors(), subject: mon}
    for start in range(0, 4000, 500):
        assert feed(mons, BatchResult([], result[start : start + 500], [], 0)) == []
    assert mon.phase == "fitted"
    thresholds = {d: t for d, (_, t, _) in mon.statistics().items()}
    assert all(t > 0 for t in thresholds.values()), thresholds
    once = [constant] * 1500
    once[200] = other  # one differing value
    assert mon.update(subject_batch(subject, once, 4000)) == []
    often = [constant, constant, constant, other] * 500  # a quarter now differ
    alerts = mon.update(subject_batch(subject, often, 5500))
    firing = [a for a in alerts if a["status"] == "firing"]
    expected = {"ks", "psi"} if subject == PREDICTION_SCORE else {"chi2"}
    assert {a["detector"] for a in firing} == expected and len(firing) == len(expected)
    assert all(a["threshold"] and a["threshold"] > 0 for a in firing)
