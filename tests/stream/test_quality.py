"""QualityMonitor: exact rolling rates, one firing/resolved per episode; quality_counts."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np

from stream.messages import Alert
from stream.monitoring.quality import QualityMonitor, quality_counts
from stream.records import QualityIssue, ScoredEvent, ValidEvent
from stream.service.config import MonitoringSettings

SETTINGS = MonitoringSettings(quality_window=200, max_missing_rate=0.05, max_dlq_rate=0.02)


def feed(
    mon: QualityMonitor, feature: str, flags: list[bool], size: int, kind: str = "missing"
) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = []
    for start in range(0, len(flags), size):
        chunk = flags[start : start + size]
        ts = (start * 10, (start + len(chunk) - 1) * 10)
        alerts.extend(mon.update(feature, len(chunk), {kind: sum(chunk)}, ts))
    return alerts


def expected_rate(flags: list[bool], size: int, window: int) -> float:
    """Brute force: the newest whole batches holding at least ``window`` events."""
    chunks = [flags[i : i + size] for i in range(0, len(flags), size)]
    kept: list[list[bool]] = []
    for chunk in reversed(chunks):
        if sum(len(c) for c in kept) >= window:
            break
        kept.append(chunk)
    events = [f for c in kept for f in c]
    return sum(events) / len(events)


def test_rates_are_exact() -> None:
    rng = np.random.default_rng(0)
    for size in (1, 7, 50, 200, 333):
        flags = (rng.random(1500) < 0.03).tolist()
        mon = QualityMonitor(SETTINGS, "fraud")
        feed(mon, "amount", flags, size)
        assert mon.rates() == {("amount", "missing"): expected_rate(flags, size, 200)}


def test_episode_fires_and_resolves_once() -> None:
    rng = np.random.default_rng(1)
    flags = np.concatenate(
        [rng.random(2000) < 0.01, rng.random(1000) < 0.2, rng.random(2000) < 0.01]
    ).tolist()
    mon = QualityMonitor(SETTINGS, "fraud")
    alerts = feed(mon, "amount", flags, 25)
    assert [(a["status"], a["detector"]) for a in alerts] == [
        ("firing", "missing_rate"),
        ("resolved", "missing_rate"),
    ]
    firing, resolved = (Alert.model_validate(a) for a in alerts)
    assert firing.alert_id == resolved.alert_id
    assert 2000 <= firing.ts // 10 <= 2100
    assert 3000 <= resolved.ts // 10 <= 3300
    assert firing.statistic is not None and firing.statistic > 0.05 and firing.threshold == 0.05
    assert resolved.statistic is not None and resolved.statistic <= 0.025
    assert firing.kind == "data_quality" and firing.subject == "amount"
    assert firing.window.n >= 200 and firing.window.to_ts == firing.ts
    assert firing.evidence["count"] == round(firing.statistic * firing.window.n)
    assert "missing values" in firing.message


def test_no_alert_before_half_a_window() -> None:
    mon = QualityMonitor(SETTINGS, "fraud")
    assert mon.update("amount", 99, {"missing": 99}, (0, 1)) == []
    alerts = mon.update("amount", 1, {"missing": 1}, (2, 3))
    assert [a["status"] for a in alerts] == ["firing"]


def test_dlq_rate_and_unknown_kinds() -> None:
    mon = QualityMonitor(SETTINGS, "fraud")
    alerts = mon.update("dlq", 200, {"rejected": 5}, (0, 9))
    assert [(a["subject"], a["detector"]) for a in alerts] == [("dlq", "dlq_rate")]
    assert "rejected to the DLQ" in alerts[0]["message"]
    assert mon.update("amount", 200, {"weird": 200}, (0, 9)) == []
    assert mon.update("amount", 0, {"missing": 0}, (0, 0)) == []
    assert mon.rates() == {("dlq", "rejected"): 0.025, ("amount", "weird"): 1.0}


def test_pickle_round_trip_continues() -> None:
    flags = [i % 5 == 0 for i in range(1000)]
    straight = QualityMonitor(SETTINGS, "fraud")
    expected = feed(straight, "amount", flags, 40)
    first = QualityMonitor(SETTINGS, "fraud")
    alerts = feed(first, "amount", flags[:400], 40)
    restored: QualityMonitor = pickle.loads(pickle.dumps(first))  # noqa: S301 - our own bytes
    for start in range(400, 1000, 40):
        chunk = flags[start : start + 40]
        alerts.extend(
            restored.update("amount", 40, {"missing": sum(chunk)}, (start * 10, (start + 39) * 10))
        )
    assert alerts == expected and restored.rates() == straight.rates()


def scored(values: dict[str, float | str], issues: list[tuple[str, str]]) -> ScoredEvent:
    quality = tuple(QualityIssue(f, k) for f, k in issues)  # type: ignore[arg-type]
    missing = frozenset(f for f, k in issues if k == "missing")
    return ScoredEvent(
        ValidEvent("e", "c", 0, values, None, quality, missing), values, 0, None, 0.1, 1
    )


def test_quality_counts() -> None:
    batch = [
        scored({"amount": 5.0, "kind": "x"}, [("kind", "unseen_category")]),
        scored({"amount": 500.0, "kind": "a"}, [("amount", "out_of_range")]),
        scored({"kind": "a"}, [("amount", "missing")]),
    ]
    assert quality_counts(batch) == {
        "amount": (3, {"missing": 1, "out_of_range": 1}),
        "kind": (3, {"missing": 0, "unseen_category": 1}),
    }
    assert quality_counts([]) == {}
