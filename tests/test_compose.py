"""docker-compose.yml agrees with the configuration defaults (Docker cannot run here)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from stream.service.config import Settings

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _host_ports(service: dict) -> dict[int, int]:
    """container port -> host port."""
    out = {}
    for spec in service.get("ports", []):
        host, container = str(spec).split(":")[-2:]
        out[int(container)] = int(host)
    return out


def test_services_present(compose: dict) -> None:
    assert {"kafka", "redis", "worker", "prometheus", "grafana", "demo"} <= set(compose["services"])
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka:")
    assert (REPO / "Dockerfile").exists()


def test_host_ports_match_default_config(compose: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("DRIFTWATCH_"):
            monkeypatch.delenv(key)
    defaults = Settings()
    kafka_port = int(defaults.kafka.bootstrap.rsplit(":", 1)[1])
    redis_port = urlparse(defaults.redis.url).port
    metrics_port = int(defaults.worker.metrics_address.rsplit(":", 1)[1])
    svc = compose["services"]
    assert kafka_port in _host_ports(svc["kafka"]).values()
    advertised = svc["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"localhost:{kafka_port}" in advertised
    assert _host_ports(svc["redis"]) == {redis_port: redis_port}
    assert _host_ports(svc["worker"]) == {metrics_port: metrics_port}


def test_worker_environment_is_valid_config(compose: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    svc = compose["services"]
    for name in ("worker", "demo"):
        env = svc[name]["environment"]
        for key, value in env.items():
            monkeypatch.setenv(
                key, str(value).replace("${DRIFTWATCH_SNAPSHOT_KEY:-change-me}", "k")
            )
        settings = Settings()
        host, port = settings.kafka.bootstrap.split(":")
        assert host == "kafka"
        advertised = svc["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
        assert f"kafka:{port}" in advertised
        assert urlparse(settings.redis.url).hostname == "redis"


def test_prometheus_scrapes_the_worker_metrics_port(compose: dict) -> None:
    prom = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = [
        t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    ]
    metrics = compose["services"]["worker"]["environment"]["DRIFTWATCH_WORKER__METRICS_ADDRESS"]
    assert f"worker:{metrics.rsplit(':', 1)[1]}" in targets
    mounts = compose["services"]["prometheus"]["volumes"]
    assert any(m.startswith("./deploy/prometheus/prometheus.yml:") for m in mounts)
    for mount in compose["services"]["grafana"]["volumes"]:
        assert (REPO / mount.split(":")[0]).exists()
