"""Alert construction: the docs/contracts.md contract, deterministic ids, Kafka key."""

from __future__ import annotations

from typing import Any

import orjson

from stream.messages import Alert
from stream.monitoring.alerts import Span, alert_key, finite_or_none, make_alert


def build(status: str = "firing", **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "statistic": 0.21,
        "p_value": 1e-9,
        "threshold": 0.08,
        "reference": Span(2000, 0, 19_990),
        "window": Span(1000, 30_000, 39_990),
        "model": "fraud",
        "model_version": 7,
        "ts": 39_990,
        "message": "amount: KS 0.21 > 0.08",
        "evidence": {"window": {"mean": 61.2}},
    }
    args.update(kw)
    return make_alert("data_drift", status, "amount", "ks", **args)  # type: ignore[arg-type]


def test_alert_validates_and_round_trips_as_json() -> None:
    alert = build()
    parsed = Alert.model_validate(orjson.loads(orjson.dumps(alert)))
    assert parsed.model_dump() == alert
    assert alert["reference"] == {"n": 2000, "from_ts": 0, "to_ts": 19_990}
    assert alert["window"] == {"n": 1000, "from_ts": 30_000, "to_ts": 39_990}


def test_firing_and_resolved_of_one_episode_share_the_id() -> None:
    firing = build()
    resolved = build("resolved", ts=60_000, episode_start_ts=39_990)
    assert firing["alert_id"] == resolved["alert_id"] == "data_drift:amount:ks:39990"
    assert build()["alert_id"] == firing["alert_id"]  # a replay gives the same id
    assert build(ts=40_000)["alert_id"] != firing["alert_id"]


def test_key_is_kind_and_subject() -> None:
    assert alert_key(build()) == b"data_drift:amount"


def test_non_finite_numbers_become_null() -> None:
    alert = build(statistic=float("inf"), p_value=None, threshold=float("nan"))
    assert (alert["statistic"], alert["p_value"], alert["threshold"]) == (None, None, None)
    Alert.model_validate(alert)
    assert finite_or_none(3) == 3.0
