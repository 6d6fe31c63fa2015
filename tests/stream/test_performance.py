"""PerformanceMonitor: exact rolling metrics, margin alerts, ADWIN concept drift."""

from __future__ import annotations

import math
import pickle
from typing import Any

import numpy as np
import pytest
from river import metrics as rm
from river import utils

from stream.config import MonitoringSettings
from stream.exceptions import ConfigError
from stream.labels import TrainingExample
from stream.messages import Alert
from stream.performance import PerformanceMonitor, roc_auc

# the defaults: a margin of 0.05 is ~3 standard errors of precision/recall over 500 labels
SETTINGS = MonitoringSettings(
    performance_reference=1000, performance_window=500, performance_margin=0.05, check_every=10
)
FLIP_AT = 2000  # index of the first example whose label rule is flipped
FLIP_END = 3000
TOTAL = 5000
MAX_DELAY = 100  # labels after the flip within which the alerts must fire


def binary_stream(seed: int, flip: bool = True, n: int = TOTAL) -> list[TrainingExample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = float(rng.normal())
        truth = int(x > 0) ^ int(rng.random() < 0.05)
        if flip and FLIP_AT <= i < FLIP_END:
            truth = 1 - truth  # the concept changes: the label rule flips
        score = 1 / (1 + math.exp(-3 * x))
        out.append(
            TrainingExample(f"e{i}", {"x": x}, truth, i * 10, i * 10 + 5, 3, int(x > 0), score)
        )
    return out


def run(
    mon: PerformanceMonitor, examples: list[TrainingExample], size: int = 50
) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = []
    for start in range(0, len(examples), size):
        alerts.extend(mon.update(examples[start : start + size], now_ms=start))
    return alerts


def index_of(alert: dict[str, Any]) -> int:
    return (int(alert["ts"]) - 5) // 10


@pytest.fixture(scope="module")
def flipped() -> list[dict[str, Any]]:
    return run(PerformanceMonitor("binary", SETTINGS, "fraud"), binary_stream(0))


def test_label_flip_raises_performance_alerts_naming_the_drop(
    flipped: list[dict[str, Any]],
) -> None:
    firing = [a for a in flipped if a["kind"] == "performance" and a["status"] == "firing"]
    assert sorted(a["subject"] for a in firing) == sorted(
        ["accuracy", "precision", "recall", "f1", "roc_auc"]
    )
    delays = {a["subject"]: index_of(a) - FLIP_AT for a in firing}
    print(f"performance alert delay (labels after the flip, window 500): {delays}")
    assert all(0 <= d <= MAX_DELAY for d in delays.values()), delays
    for raw in firing:
        alert = Alert.model_validate(raw)
        ev = alert.evidence
        assert alert.detector == "margin" and alert.model_version == 3
        assert ev["reference_value"] - ev["current_value"] > 0.05
        assert alert.statistic == ev["current_value"]
        assert alert.threshold == pytest.approx(ev["reference_value"] - 0.05)
        assert alert.message.startswith(f"{alert.subject} dropped from ")
        assert f"{ev['change']:+.3f}" in alert.message
        assert alert.reference.n == 1000 and alert.reference.from_ts == 0
        assert alert.window.n == 500 and alert.window.to_ts is not None


def test_label_flip_raises_one_concept_drift_alert(flipped: list[dict[str, Any]]) -> None:
    concept = [a for a in flipped if a["kind"] == "concept_drift"]
    assert [a["status"] for a in concept] == ["firing", "resolved"]
    firing = Alert.model_validate(concept[0])
    delay = index_of(concept[0]) - FLIP_AT
    print(f"ADWIN concept-drift delay: {delay} labels")
    assert 0 <= delay <= MAX_DELAY
    assert (firing.subject, firing.detector) == ("error_rate", "adwin")
    assert firing.evidence["after"] > firing.evidence["before"]
    assert firing.statistic is not None and firing.threshold is not None
    assert firing.statistic > firing.threshold
    assert 0 < index_of(concept[1]) - FLIP_END <= 600


def test_flip_back_resolves_each_episode_once(flipped: list[dict[str, Any]]) -> None:
    for subject in ("accuracy", "precision", "recall", "f1", "roc_auc", "error_rate"):
        episode = [a for a in flipped if a["subject"] == subject]
        assert [a["status"] for a in episode] == ["firing", "resolved"], subject
        assert episode[0]["alert_id"] == episode[1]["alert_id"]
        assert FLIP_END <= index_of(episode[1]) <= FLIP_END + 600


def test_stationary_stream_raises_nothing() -> None:
    mon = PerformanceMonitor("binary", SETTINGS, "fraud")
    assert run(mon, binary_stream(1, flip=False, n=30_000), size=500) == []
    assert mon.metrics()["accuracy"] == pytest.approx(0.95, abs=0.05)


def test_metrics_equal_river_rolling_and_brute_force_auc() -> None:
    examples = binary_stream(2, n=1230)
    mon = PerformanceMonitor("binary", SETTINGS, "fraud")
    run(mon, examples, size=41)
    window = examples[-500:]
    expected = {}
    for name, metric in {
        "accuracy": rm.Accuracy(),
        "precision": rm.Precision(),
        "recall": rm.Recall(),
        "f1": rm.F1(),
    }.items():
        rolling = utils.Rolling(type(metric), window_size=500)
        for e in examples:
            rolling.update(e.y, e.prediction)
        expected[name] = rolling.get()
    pos = [e.score for e in window if e.y == 1]
    neg = [e.score for e in window if e.y == 0]
    pairs = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    expected["roc_auc"] = pairs / (len(pos) * len(neg))
    assert mon.metrics() == pytest.approx(expected, abs=1e-12)


def test_roc_auc_of_one_class_is_nan() -> None:
    assert math.isnan(roc_auc(np.array([True, True]), np.array([0.1, 0.2])))


def regression_stream(seed: int) -> list[TrainingExample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(TOTAL):
        x = float(rng.normal())
        y = 2 * x + float(rng.normal()) + (3.0 if FLIP_AT <= i < FLIP_END else 0.0)
        out.append(TrainingExample(f"e{i}", {"x": x}, y, i * 10, i * 10 + 5, 1, 2 * x, 2 * x))
    return out


def test_regression_error_metrics_rise_in_relative_terms() -> None:
    # a relative margin must exceed the metric's noise: RMSE over 500 labels varies by ~3%
    settings = SETTINGS.model_copy(update={"performance_margin": 0.15})
    mon = PerformanceMonitor("regression", settings, "price")
    alerts = run(mon, regression_stream(3))
    firing = {a["subject"]: a for a in reversed(alerts) if a["status"] == "firing"}
    assert set(firing) == {"mae", "rmse", "r2", "error_rate"}
    mae = firing["mae"]
    assert mae["message"].startswith("mae rose from ")
    assert mae["threshold"] == pytest.approx(mae["evidence"]["reference_value"] * 1.15)
    print(f"regression alert delays: { {k: index_of(a) - FLIP_AT for k, a in firing.items()} }")
    assert all(0 <= index_of(a) - FLIP_AT <= MAX_DELAY for a in firing.values())
    assert [a["status"] for a in alerts if a["subject"] == "mae"] == ["firing", "resolved"]
    window = regression_stream(3)[-500:]
    errors = np.array([e.y - e.prediction for e in window])  # type: ignore[operator]
    assert mon.metrics()["mae"] == pytest.approx(np.mean(np.abs(errors)), rel=1e-12)
    assert mon.metrics()["rmse"] == pytest.approx(np.sqrt(np.mean(errors**2)), rel=1e-12)


def test_multiclass_rule_change() -> None:
    rng = np.random.default_rng(4)
    examples = []
    for i in range(TOTAL):
        x = float(rng.normal())
        cls = "low" if x < -0.5 else ("mid" if x < 0.5 else "high")
        truth = (
            {"low": "high", "mid": "mid", "high": "low"}[cls] if FLIP_AT <= i < FLIP_END else cls
        )
        examples.append(TrainingExample(f"e{i}", {"x": x}, truth, i * 10, i * 10 + 5, 1, cls, 0.9))
    mon = PerformanceMonitor("multiclass", SETTINGS, "kind")
    alerts = run(mon, examples)
    assert sorted((a["subject"], a["status"]) for a in alerts) == sorted(
        (s, st) for s in ("accuracy", "macro_f1", "error_rate") for st in ("firing", "resolved")
    )
    assert mon.metrics() == {"accuracy": 1.0, "macro_f1": 1.0}


def test_pickle_mid_stream_continues_identically() -> None:
    examples = binary_stream(0)
    straight = PerformanceMonitor("binary", SETTINGS, "fraud")
    expected = run(straight, examples)
    first = PerformanceMonitor("binary", SETTINGS, "fraud")
    cut = FLIP_AT + 20
    alerts = run(first, examples[:cut])
    restored: PerformanceMonitor = pickle.loads(pickle.dumps(first))  # noqa: S301 - our own bytes
    for start in range(cut, len(examples), 50):
        alerts.extend(restored.update(examples[start : start + 50], now_ms=start))
    assert strip(alerts) == strip(expected)  # only the processing time in the evidence differs


def strip(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in a.items() if k != "evidence"} for a in alerts]


def test_same_alerts_whatever_the_batching() -> None:
    examples = binary_stream(0)
    by_50 = run(PerformanceMonitor("binary", SETTINGS, "fraud"), examples, 50)
    by_13 = run(PerformanceMonitor("binary", SETTINGS, "fraud"), examples, 13)
    assert strip(by_13) == strip(by_50)


def test_metric_selection_and_validation() -> None:
    narrowed = SETTINGS.model_copy(update={"performance_metrics": ("f1",)})
    mon = PerformanceMonitor("binary", narrowed, "fraud")
    run(mon, binary_stream(5, n=1200))
    assert set(mon.metrics()) == {"f1"}
    with pytest.raises(ConfigError, match="mae"):
        PerformanceMonitor(
            "binary", SETTINGS.model_copy(update={"performance_metrics": ("mae",)}), "m"
        )


def test_invalid_labels_are_skipped() -> None:
    mon = PerformanceMonitor("binary", SETTINGS, "fraud")
    bad = TrainingExample("e", {}, "maybe", 0, 1, 1, 0, 0.1)
    assert mon.update([bad], now_ms=0) == [] and mon.skipped == 1
    assert mon.reference is None


def test_metrics_are_reported_before_the_reference_is_complete() -> None:
    mon = PerformanceMonitor("binary", SETTINGS, "fraud")
    assert mon.metrics() == {}
    assert mon.update(binary_stream(6, n=20), now_ms=0) == []
    assert mon.reference is None
    assert set(mon.metrics()) == {"accuracy", "precision", "recall", "f1", "roc_auc"}
