"""Metrics registry, consumer-lag sampling and the generated dashboards (no broker, no network)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
from faust.types import TP
from prometheus_client import generate_latest

from stream.monitoring.alerts import AlertKind, AlertStatus
from stream.service import lag, metrics
from stream.service.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "info": ("_info",),
}


def _builder() -> Any:
    spec = importlib.util.spec_from_file_location(
        "build_dashboards", REPO / "deploy" / "grafana" / "build_dashboards.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exported_names() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        names.update(family.name + s for s in SUFFIXES[family.type])
    return names


def test_committed_dashboards_are_what_the_builder_makes() -> None:
    for name, text in _builder().render().items():
        assert (DASHBOARDS / name).read_text() == text, "run deploy/grafana/build_dashboards.py"


def test_every_dashboard_metric_is_declared() -> None:
    declared = exported_names()
    used = set()
    for path in DASHBOARDS.glob("*.json"):
        used.update(re.findall(r"\bdriftwatch_\w+", path.read_text()))
    assert used - declared == set()


def test_names_follow_prometheus_conventions() -> None:
    for family in Metrics().registry.collect():
        assert family.name.startswith("driftwatch_")
        if family.type == "histogram":
            assert family.name.endswith(("_seconds", "_events", "_score")), family.name
        assert family.name == family.name.lower()


async def test_rebalance_signals_count_and_drop_revoked_lag() -> None:
    metrics = Metrics()
    sampler = lag.LagSampler(metrics, _no_admin)
    tps = {TP("events", 0), TP("events", 1), TP("labels", 0)}
    sampler.assigned(tps, "dw-ingest")
    assert _sample(metrics, "driftwatch_rebalances_total") == 1
    assert _sample(metrics, "driftwatch_assigned_partitions", topic="events") == 2

    exported: set[TP] = set()
    lag._export(metrics, {TP("events", 0): 7, TP("events", 1): 0}, exported)
    assert _sample(metrics, "driftwatch_consumer_lag_messages", partition="0") == 7
    lag._forget(metrics, {TP("events", 0)}, exported)
    assert _sample(metrics, "driftwatch_consumer_lag_messages", partition="0") is None
    assert exported == {TP("events", 1)}

    sampler.assigned({TP("labels", 0)}, "dw-ingest")
    assert _sample(metrics, "driftwatch_rebalances_total") == 2
    assert _sample(metrics, "driftwatch_assigned_partitions", topic="events") is None
    # the other consumer's assignment adds to it (two groups, two rebalances)
    sampler.assigned({TP("dw-monitor", 0), TP("dw-monitor", 1)}, "dw")
    assert _sample(metrics, "driftwatch_rebalances_total") == 3
    assert _sample(metrics, "driftwatch_assigned_partitions", topic="labels") == 1
    assert _sample(metrics, "driftwatch_assigned_partitions", topic="dw-monitor") == 2
    sampler.unwatch("dw")
    assert _sample(metrics, "driftwatch_assigned_partitions", topic="dw-monitor") is None


def _no_admin() -> Any:
    raise AssertionError("no committed offsets are read in this test")


class FakeConsumer:
    """The part of a consumer that ``LagSampler`` reads."""

    def assignment(self) -> set[TP]:
        return {TP("events", 0), TP("events", 1)}

    async def end_offsets(self, tps: list[TP]) -> dict[TP, int]:
        return {TP("events", 0): 100, TP("events", 1): 50}

    async def position(self, tp: TP) -> int:
        return 45  # nothing committed yet on partition 1: the read position stands in


class FakeSampler(lag.LagSampler):
    """Committed offsets as the broker would answer: nothing yet on partition 1."""

    async def _committed(self, group: str, tps: list[Any]) -> dict[tuple[str, int], int]:
        return {("events", 0): 90} if group == "g" else {}


async def test_lag_is_highwater_minus_committed_or_position() -> None:
    sampler = FakeSampler(Metrics(), _no_admin)
    sampler.watch("g", lag.aiokafka_source(FakeConsumer()))  # type: ignore[arg-type]
    assert await sampler._lags() == {TP("events", 0): 10, TP("events", 1): 5}

    async def ends(tps: list[Any]) -> dict[Any, int]:
        return {TP("labels", 0): 60}

    sampler.watch("h", lag.Source(lambda: [TP("labels", 0)], ends, FakeConsumer().position))
    assert (await sampler._lags())[TP("labels", 0)] == 15  # group h committed nothing yet


def _sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def test_exposition_is_valid_before_any_traffic() -> None:
    text = generate_latest(Metrics().registry).decode()
    # unlabelled counters exist from the start, so their panels show 0 rather than "no data"
    assert "driftwatch_events_received_total 0.0" in text
    assert "driftwatch_rebalances_total 0.0" in text


def test_alert_counters_start_at_zero_for_every_kind_and_status() -> None:
    # a series born at 1 shows no change to changes()/increase(): the first alert of a kind
    # on a fresh worker would be invisible to the dashboards' alert annotation
    text = generate_latest(Metrics().registry).decode()
    for kind in get_args(AlertKind):
        for status in get_args(AlertStatus):
            line = f'driftwatch_alerts_total{{kind="{kind}",status="{status}"}} 0.0'
            assert line in text


P = "driftwatch_"


@pytest.mark.parametrize("seed", range(3))
def test_observe_many_counts_as_observe_one_by_one(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.exponential(0.05, 500), [0.001, 0.05, 60.0, 61.0, 0.0]])
    one, many = Metrics(), Metrics()
    for v in values:
        one.event_latency.observe(float(v))
        one.score.labels("m").observe(float(v) % 1)
    metrics.observe_many(many.event_latency, values)
    metrics.observe_many(many.score.labels("m"), values % 1)
    metrics.observe_many(many.score.labels("m"), [])

    def exposition(m: Metrics) -> list[tuple[str, dict[str, str], float]]:
        return [
            (s.name, s.labels, round(s.value, 9))
            for family in m.registry.collect()
            if family.name in (f"{P}event_to_prediction_seconds", f"{P}prediction_score")
            for s in family.samples
            if not s.name.endswith("_created")
        ]

    assert exposition(many) == exposition(one)
    assert len(exposition(one)) > 30


def test_observe_many_falls_back_to_observe_without_the_internals() -> None:
    class Plain:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, v: float) -> None:
            self.seen.append(v)

    h = Plain()
    metrics.observe_many(h, [1.0, 2.5])
    assert h.seen == [1.0, 2.5]
