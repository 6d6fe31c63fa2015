"""Every Grafana panel's query returns data from a real Prometheus scraping a real worker.

A ``driftwatch worker`` process scores a demo stream (events with drift, malformed events,
events with data-quality problems, then delayed labels) while Debian's ``prometheus``,
started through ``scripts/services.py``, scrapes its ``/metrics`` every second. Then every
PromQL expression of every dashboard under ``deploy/grafana/dashboards`` (panel targets and
annotations) is evaluated through Prometheus' HTTP API: it must parse and return at least one
finite sample. A panel over a metric that nobody exports fails here.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.service.batches import consumer_group
from stream.service.config import Settings, load_settings
from stream.tools.synthetic import CardStream, Drift, bad_event
from tests.integration.kafka_io import produce, wait_consumed

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
pytestmark = pytest.mark.integration

N_EVENTS = 3000
DRIFT_AT = 2000  # after the monitors' reference (monitoring.reference_size = 2000 values)
N_BAD = 10
N_QUALITY = 20
N_UNMATCHED = 5
#: Stands in for Grafana's $__rate_interval, $__interval and $__range: long enough to cover
#: the whole run, so a rate over it sees every sample of this test.
WINDOW = "10m"
WAIT_S = 120.0
CHUNKS = 10
CHUNK_PAUSE_S = 0.5  # with CHUNKS, spreads a burst over ~5 scrapes of 1 s

# Expressions allowed to return no data, each with the reason (they must still parse).
# Empty: every panel must show data.
ALLOWED_EMPTY: dict[str, str] = {}


@pytest.fixture
def observed_settings(settings: Settings) -> Settings:
    """The sample features and model of driftwatch.toml, /metrics on a free local port."""
    sample = load_settings(REPO / "driftwatch.toml")
    worker = settings.worker.model_copy(update={"metrics_address": f"127.0.0.1:{free_port()}"})
    champion = sample.model.model_copy(update={"publish_every": 200})
    # a challenger in shadow, so that the champion-and-challengers panels have data
    challenger = champion.model_copy(
        update={"name": f"{champion.name}-fast", "role": "challenger", "learning_rate": 0.2}
    )
    return settings.model_copy(
        update={
            "features": sample.features,
            "windows": sample.windows,
            "model": champion,
            "models": (champion, challenger),
            # small reference and windows so that drift, alerts, quality and performance
            # metrics all have data within this short stream
            "monitoring": sample.monitoring.model_copy(
                update={
                    "reference_size": 500,
                    "window": 300,
                    "performance_reference": 200,
                    "performance_window": 100,
                    "quality_window": 100,
                }
            ),
            "worker": worker,
        }
    )


@pytest.fixture
def prometheus(observed_settings: Settings, tmp_path: Path) -> Iterator[str]:
    """A real Prometheus scraping the test's worker every second; its base URL."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    target = observed_settings.worker.metrics_address
    config.write_text(
        json.dumps(  # JSON is YAML: no YAML writer needed
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {"job_name": "driftwatch", "static_configs": [{"targets": [target]}]}
                ],
            }
        )
    )
    env = {
        **os.environ,
        "DRIFTWATCH_RUN_DIR": str(tmp_path / "prometheus-run"),
        "DRIFTWATCH_PROMETHEUS_PORT": str(port),
        "DRIFTWATCH_PROMETHEUS_CONFIG": str(config),
    }
    services = [sys.executable, str(REPO / "scripts" / "services.py")]
    started = subprocess.run(
        [*services, "start", "prometheus"], env=env, capture_output=True, text=True, timeout=180
    )
    assert started.returncode == 0, f"prometheus did not start:\n{started.stderr}"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        subprocess.run([*services, "stop", "prometheus"], env=env, capture_output=True, timeout=60)


def test_every_dashboard_query_returns_data(
    observed_settings: Settings,
    worker_factory: Callable[[Settings], Any],
    prometheus: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s = observed_settings
    worker_factory(s)
    metrics_url = f"http://{s.worker.metrics_address}/metrics"
    wait_for(lambda: http_get(metrics_url) is not None, "the worker's /metrics")
    wait_for(
        lambda: prom_values(prometheus, 'up{job="driftwatch"}') == [1.0],
        "prometheus to scrape the worker",
    )

    events, labels = demo_stream(s)
    # two rounds of events then their labels: the second round is scored by a published
    # (learned) model, whose live performance the model dashboard shows
    half_e, half_l = len(events) // 2, len(labels) // 2
    produce_paced(s, s.topics.events, events[:half_e])
    wait_for(
        lambda: scraped(metrics_url, "driftwatch_events_received_total") >= half_e,
        "the first half of the events",
    )
    produce_paced(s, s.topics.labels, labels[:half_l])
    wait_for(
        lambda: scraped(metrics_url, "driftwatch_model_published_version") >= 1,
        "a published model version",
    )
    produce_paced(s, s.topics.events, events[half_e:])
    accepted = N_EVENTS + N_QUALITY
    wait_for(
        lambda: (
            scraped(metrics_url, "driftwatch_events_accepted_total") >= accepted
            and scraped(metrics_url, "driftwatch_events_rejected_total") >= N_BAD
        ),
        f"{accepted} accepted and {N_BAD} rejected events",
    )
    produce_paced(s, s.topics.labels, labels[half_l:])  # labels come later
    # labels of unknown events wait (parked) for their event; they count as unmatched only
    # when the label horizon has passed, so here the joinable ones are awaited
    joinable = len(labels) - N_UNMATCHED
    wait_for(
        lambda: (
            scraped(metrics_url, "driftwatch_labels_joined_total") >= joinable
            and scraped(metrics_url, "driftwatch_model_learned_examples_total") > 0
        ),
        f"{joinable} labels joined, and learned",
    )
    group = consumer_group(s, s.topics.monitor)
    asyncio.run(wait_consumed(s.kafka.bootstrap, group, s.topics.monitor, WAIT_S))
    for metric in ("driftwatch_drift_statistic", "driftwatch_model_metric"):
        wait_for(lambda m=metric: prom_values(prometheus, m) != [], f"prometheus to have {metric}")
    final = scraped(metrics_url, "driftwatch_labels_joined_total")
    wait_for(
        lambda: (
            sum(prom_values(prometheus, "driftwatch_labels_joined_total")) >= final
            and prom_values(prometheus, "driftwatch_consumer_lag_messages") != []
        ),
        "prometheus to scrape the final counts and the consumer lag",
    )

    # everything consumed and committed: the lag of the input topics drains to zero
    drained = (
        f'sum(driftwatch_consumer_lag_messages{{topic=~"{s.topics.events}|{s.topics.labels}"}})'
    )
    wait_for(lambda: prom_values(prometheus, drained) == [0.0], "consumer lag to drain to 0")
    assert prom_values(prometheus, "driftwatch_rebalances_total")[0] >= 1
    assigned = prom_values(
        prometheus, f'driftwatch_assigned_partitions{{topic="{s.topics.events}"}}'
    )
    assert assigned == [float(s.topics.partitions)]

    queries = [q for path in sorted(DASHBOARDS.glob("*.json")) for q in dashboard_queries(path)]
    assert len(queries) >= 30, queries
    variables = resolve_variables(prometheus, sorted(DASHBOARDS.glob("*.json")))
    failures, allowed_with_data, evaluated = [], [], 0
    for where, expr in queries:
        result = prom_query(prometheus, substitute(expr, variables))
        evaluated += 1
        if result["status"] != "success":
            failures.append(f"{where}: {expr}\n    invalid: {result.get('error')}")
            continue
        has_data = any(math.isfinite(v) for v in sample_values(result))
        if expr in ALLOWED_EMPTY:
            if has_data:
                allowed_with_data.append(f"{where}: {expr}")
        elif not has_data:
            failures.append(f"{where}: {expr}\n    no data")
    stale = set(ALLOWED_EMPTY) - {expr for _, expr in queries}
    assert not stale, f"ALLOWED_EMPTY names expressions no dashboard has: {sorted(stale)}"

    exposition = http_get(metrics_url) or ""
    series = [ln for ln in exposition.splitlines() if ln and not ln.startswith("#")]
    in_prometheus = prom_values(prometheus, 'count({job="driftwatch"})')
    with capsys.disabled():
        print(
            f"\nobservability: {evaluated} dashboard expressions evaluated, "
            f"{len(ALLOWED_EMPTY)} allow-listed as possibly empty; the worker exports "
            f"{len(series)} series on /metrics ({in_prometheus} in Prometheus with up/scrape_*)"
        )
        for line in allowed_with_data:
            print(f"observability: allow-listed but returning data (remove it): {line}")
    assert not failures, "dashboard queries failing:\n" + "\n".join(failures)


def demo_stream(s: Settings) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    """Events (with a mean shift, malformed and low-quality ones), then their labels."""
    cards = CardStream(seed=5, n_cards=100, run_id="obs", drifts=(Drift("mean_shift", DRIFT_AT),))
    pairs = list(cards.events(N_EVENTS))
    events = [(e["entity_id"].encode(), orjson.dumps(e)) for e, _ in pairs]
    last_ts = pairs[-1][0]["ts"]
    for i in range(N_QUALITY):  # accepted, imputed, counted as data-quality problems
        features = {"amount": 60_000.0, "merchant_category": "crypto", "hour": None}
        event = {
            "event_id": f"obs-q{i}",
            "entity_id": "card-q",
            "ts": last_ts,
            "features": features,
        }
        events.insert(i * 100, (b"card-q", orjson.dumps(event)))
    for i in range(N_BAD):
        events.insert(i * 250 + 7, (b"bad", bad_event(i)))
    lag_ms = 30_000
    labels = [
        (
            e["event_id"].encode(),
            orjson.dumps({"event_id": e["event_id"], "label": y, "ts": e["ts"] + lag_ms}),
        )
        for e, y in pairs
    ]
    labels += [
        (f"obs-none-{i}".encode(), orjson.dumps({"event_id": f"obs-none-{i}", "label": 0}))
        for i in range(N_UNMATCHED)
    ]
    return events, labels


def produce_paced(s: Settings, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """Send ``records`` in chunks over a few scrape intervals, as a live stream arrives.

    A burst processed between two scrapes would leave a labelled series (created by its
    first observation) with no increase that rate() can see: Prometheus never counts a
    series' first sample as an increase.
    """
    size = -(-len(records) // CHUNKS)
    for start in range(0, len(records), size):
        asyncio.run(produce(s.kafka.bootstrap, topic, records[start : start + size]))
        time.sleep(CHUNK_PAUSE_S)


def dashboard_queries(path: Path) -> list[tuple[str, str]]:
    """``(where, expr)`` of every Prometheus target and annotation of a dashboard."""
    board = json.loads(path.read_text())
    out = []
    panels = list(board["panels"])
    while panels:
        p = panels.pop(0)
        panels.extend(p.get("panels", []))  # collapsed rows hold their panels
        for t in p.get("targets", []):
            out.append((f"{path.name} / {p['title']} / {t['refId']}", t["expr"]))
    for a in board.get("annotations", {}).get("list", []):
        if a.get("datasource", {}).get("type") == "prometheus":
            out.append((f"{path.name} / annotation {a['name']}", a["expr"]))
    return out


def resolve_variables(base: str, paths: list[Path]) -> dict[str, str]:
    """Each template variable as a regex of its current label values ('.*' if none yet)."""
    values: dict[str, str] = {}
    for path in paths:
        for var in json.loads(path.read_text())["templating"]["list"]:
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["definition"])
            assert m, f"{path.name}: variable {var['name']}: unsupported {var['definition']}"
            metric, label = m.groups()
            found = prom_get(base, f"/api/v1/label/{label}/values", {"match[]": metric})["data"]
            # as Grafana renders a multi-value variable inside a PromQL string: regex-escaped,
            # with the escaping backslash itself escaped for the string literal
            escaped = (re.escape(v).replace("\\", "\\\\") for v in found)
            values[var["name"]] = "|".join(escaped) or var["allValue"]
    return values


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Grafana's built-in and template variables replaced by concrete values."""
    for name in ("__rate_interval", "__interval", "__range"):
        expr = expr.replace(f"${name}", WINDOW)
    for name, value in variables.items():
        expr = expr.replace(f"${name}", value)
    assert "$" not in expr, f"unresolved variable in {expr}"
    return expr


def sample_values(result: dict[str, Any]) -> list[float]:
    data = result["data"]
    if data["resultType"] == "scalar":
        return [float(data["result"][1])]
    return [float(r["value"][1]) for r in data["result"]]


def prom_query(base: str, expr: str) -> dict[str, Any]:
    return prom_get(base, "/api/v1/query", {"query": expr})


def prom_values(base: str, expr: str) -> list[float]:
    result = prom_query(base, expr)
    return sample_values(result) if result["status"] == "success" else []


def prom_get(base: str, path: str, params: dict[str, str]) -> dict[str, Any]:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - local http only
            body: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 400/422 carry the error as JSON
        body = json.loads(exc.read())
    return body


def http_get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - local http only
            text: str = resp.read().decode()
            return text
    except OSError:
        return None


def scraped(metrics_url: str, name: str) -> float:
    """Sum of ``name`` over all its label sets on the worker's /metrics (0 if absent)."""
    text = http_get(metrics_url) or ""
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", re.M)
    return sum(float(v) for v in pattern.findall(text))


def wait_for(check: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise TimeoutError(f"no {what} within {timeout:.0f}s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
