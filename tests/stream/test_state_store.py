"""Monitor states: signed and bound to their Redis key, and readable across the move of
their classes (a state written before the restructuring of stream/ still loads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from stream.messages import QualityBatch, SubjectBatch
from stream.monitoring.drift import SubjectMonitor
from stream.monitoring.quality import QualityMonitor
from stream.monitoring.state_store import Owned, decode_state, encode_state
from stream.service.config import MonitoringSettings

FIXTURE = Path(__file__).parent / "data" / "monitor_states_before_restructuring.json"


def fixture() -> dict[str, dict[str, str]]:
    return orjson.loads(FIXTURE.read_bytes())


def legacy_fields(record: dict[str, str]) -> dict[bytes, bytes]:
    return {b"state": bytes.fromhex(record["state"]), b"sig": record["sig"].encode()}


def test_a_state_written_before_the_move_still_loads_and_goes_on_judging() -> None:
    data = fixture()
    key = data["_key"].encode()
    owned = decode_state("dw:monitor:amount", "amount", legacy_fields(data["amount"]), key)
    assert owned is not None and owned.offset == 449 and owned.partition == 2
    monitor = owned.monitor
    assert isinstance(monitor, SubjectMonitor) and monitor.phase == "fitted"
    assert monitor.statistics()["ks"][2] is True  # the episode it had open is still open
    assert owned.dirty  # to be rewritten in the current format
    # it goes on consuming: back to the reference distribution, the episode ends
    rng = np.random.default_rng(1)
    resolved = []
    for start in range(450, 1450, 100):
        values = [float(v) for v in rng.normal(size=100)]
        batch = SubjectBatch("amount", "numeric", values, list(range(start, start + 100)), 3)
        resolved += [a for a in monitor.apply(batch) if a["status"] == "resolved"]
    assert {a["detector"] for a in resolved} == {"ks", "psi"}

    quality = decode_state(
        "dw:monitor:quality:amount", "quality:amount", legacy_fields(data["quality:amount"]), key
    )
    assert quality is not None and isinstance(quality.monitor, QualityMonitor)
    assert quality.monitor.rates() == {("amount", "missing"): 0.05}
    quality.monitor.apply(QualityBatch("amount", 40, {"missing": 7}, (60, 99)))
    assert quality.monitor.rates() == {("amount", "missing"): 0.1}  # it counts on


def test_a_legacy_state_under_another_subject_s_key_is_refused() -> None:
    data = fixture()
    fields = legacy_fields(data["amount"])
    assert decode_state("dw:monitor:hour", "hour", fields, data["_key"].encode()) is None


def test_a_state_is_bound_to_its_key_and_its_signature() -> None:
    settings = MonitoringSettings(reference_size=50, window=20)
    owned = Owned(SubjectMonitor("amount", "numeric", ("ks",), settings, 1, "fraud"), 1, 7)
    fields = {k.encode(): v for k, v in encode_state("dw:monitor:amount", owned, b"k").items()}
    restored = decode_state("dw:monitor:amount", "amount", fields, b"k")
    assert restored is not None and restored.offset == 7 and not restored.dirty
    assert decode_state("dw:monitor:hour", "hour", fields, b"k") is None  # copied elsewhere
    assert decode_state("dw:monitor:amount", "amount", fields, b"other") is None
    tampered = {**fields, b"state": fields[b"state"][:-1] + b"\x00"}
    assert decode_state("dw:monitor:amount", "amount", tampered, b"k") is None
    assert decode_state("dw:monitor:amount", "amount", {**fields, b"format": b"9"}, b"k") is None
