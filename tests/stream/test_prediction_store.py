"""PredictionStore's side of the Redis scripts, without Redis: which keys and arguments each
script gets, and how the sweep adds up. The scripts themselves run in integration tests."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

import stream.labels.store as store_module
from stream.labels.join import PendingPrediction
from stream.labels.store import PredictionStore
from stream.messages import Label


class FakeScript:
    def __init__(self, reply: Any) -> None:
        self.reply = reply
        self.calls: list[tuple[list[str], list[Any]]] = []

    async def __call__(self, keys: list[str], args: list[Any], client: Any = None) -> Any:
        self.calls.append((keys, args))
        return self.reply(keys, args) if callable(self.reply) else self.reply


class FakeRedis:
    """Records the script calls; the parked set holds ``parked`` members of score 0."""

    def __init__(self, parked: int = 0) -> None:
        self.parked = [f"e{i}".encode() for i in range(parked)]
        self.scripts: dict[str, FakeScript] = {}
        self.zrem_ranges: list[tuple[str, Any, Any]] = []

    def register_script(self, source: str) -> FakeScript:
        forget = source == store_module._FORGET_PARKED
        self.scripts[source] = FakeScript(self._forget if forget else [None])
        return self.scripts[source]

    def _forget(self, keys: list[str], args: list[str]) -> int:
        self.parked = [m for m in self.parked if m.decode() not in args]
        return len(args)

    async def zremrangebyscore(self, key: str, low: Any, high: Any) -> int:
        self.zrem_ranges.append((key, low, high))
        return 4

    async def zrangebyscore(self, key: str, low: Any, high: Any, start: int, num: int) -> list:
        assert key == "dw:parked" and start == 0
        return self.parked[:num]


def pending(event_id: str) -> PendingPrediction:
    return PendingPrediction(event_id, "c1", 1, {"a": 1.0}, 1, 0, 0.5, 2_000)


def test_take_parks_with_the_callers_clock() -> None:
    redis = FakeRedis()
    store = PredictionStore(redis, "dw", horizon_s=3600)  # type: ignore[arg-type]
    take = redis.scripts[store_module._TAKE_OR_PARK]
    take.reply = [None, pending("e2").encode()]
    labels = [Label(event_id="e1", label=1), Label(event_id="e2", label=0)]
    got = asyncio.run(store.take(labels, now_ms=1_234))
    assert list(got) == ["e2"]
    keys, args = take.calls[0]
    assert keys == [
        "dw:pending",
        "dw:parked",
        "dw:pred:e1",
        "dw:label:e1",
        "dw:pred:e2",
        "dw:label:e2",
    ]
    # per label: its JSON, stored as it is, then the event id it is parked under
    assert args == [3600, 1_234, labels[0].model_dump_json(), "e1",
                    labels[1].model_dump_json(), "e2"]  # fmt: skip


class FakeConnection:
    """Records what is sent and read, in order; replies ``reply``."""

    def __init__(self, reply: Any, log: list[str]) -> None:
        self.reply = reply
        self.log = log
        self.sent: list[tuple[Any, ...]] = []

    async def send_command(self, *args: Any) -> None:
        self.sent.append(args)
        self.log.append("sent")

    async def read_response(self) -> Any:
        self.log.append("read")
        return self.reply


class FakePool:
    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn
        self.released: list[FakeConnection] = []

    async def get_connection(self) -> FakeConnection:
        return self.conn

    async def release(self, conn: FakeConnection) -> None:
        self.released.append(conn)


def test_store_or_claim_is_one_eval_sent_before_the_work_meanwhile() -> None:
    redis, log = FakeRedis(), []
    parked = Label(event_id="e2", label=1)
    conn = FakeConnection([None, parked.model_dump_json().encode()], log)
    redis.connection_pool = FakePool(conn)  # type: ignore[attr-defined]
    store = PredictionStore(redis, "dw", horizon_s=10.5)  # type: ignore[arg-type]
    preds = [pending("e1"), pending("e2")]

    def meanwhile() -> int:
        log.append("meanwhile")
        return 7

    claimed, done = asyncio.run(store.store_or_claim(preds, meanwhile, ["0:7", ""]))
    # the server works on the store while the scorer works: sent, then the work, then read
    assert log == ["sent", "meanwhile", "read"] and done == 7
    assert [(p.event_id, label) for p, label in claimed] == [("e2", parked)]
    # EVAL with the script's text: no SCRIPT EXISTS or NOSCRIPT round trip
    [(command, script, n, *rest)] = conn.sent
    assert (command, script, n) == ("EVAL", store_module._STORE_OR_CLAIM, 6)
    keys, args = rest[:n], rest[n:]
    assert keys == ["dw:pending", "dw:parked", "dw:pred:e1", "dw:label:e1", "dw:pred:e2",
                    "dw:label:e2"]  # fmt: skip
    # the TTLs (prediction, claim), then per prediction: the bytes of encode() (stored as
    # they are), its score, member and claimant
    assert args == [11, 1, preds[0].encode(), 2_000, "e1", "0:7", preds[1].encode(), 2_000,
                    "e2", ""]  # fmt: skip
    assert redis.connection_pool.released == [conn]  # type: ignore[attr-defined]

    # nothing to store: nothing sent, the work done all the same
    assert asyncio.run(store.store_or_claim([], lambda: 8)) == ([], 8) and len(conn.sent) == 1


def test_the_reply_is_read_when_the_work_meanwhile_fails() -> None:
    redis, log = FakeRedis(), []
    conn = FakeConnection([None], log)
    redis.connection_pool = FakePool(conn)  # type: ignore[attr-defined]
    store = PredictionStore(redis, "dw", horizon_s=60)  # type: ignore[arg-type]

    def broken() -> None:
        raise ValueError("a bug in the messages")

    with pytest.raises(ValueError, match="a bug"):
        asyncio.run(store.store_or_claim([pending("e1")], broken))
    # nothing left pending on the connection it gives back
    assert log == ["sent", "read"] and redis.connection_pool.released == [conn]  # type: ignore[attr-defined]


def test_a_pending_prediction_is_stored_as_before_and_decodes_back() -> None:
    x: dict[str, float | str] = {"amount": 12.5, "card": "gold", "é": -0.0}
    p = PendingPrediction("e-1", "c-1", 1_763_800_000_000, x, 7, "1", 0.75, 1_763_800_000_042)
    # the stored format is unchanged: a worker of the previous version reads it
    assert p.encode() == orjson.dumps(
        {"event_id": "e-1", "entity_id": "c-1", "ts_ms": 1_763_800_000_000, "x": x,
         "model_version": 7, "prediction": "1", "score": 0.75,
         "processed_at_ms": 1_763_800_000_042}
    )  # fmt: skip
    assert PendingPrediction.decode(p.encode()) == p


@pytest.mark.parametrize("parked", [0, 3, 7, 25])
def test_sweep_counts_expired_predictions_and_unmatched_labels(
    parked: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "SWEEP_CHUNK", 7)
    redis = FakeRedis(parked)
    store = PredictionStore(redis, "dw", horizon_s=60)  # type: ignore[arg-type]
    assert asyncio.run(store.sweep_expired(100_000)) == (4, parked)
    assert redis.zrem_ranges == [("dw:pending", "-inf", 40_000)]
    forget = redis.scripts[store_module._FORGET_PARKED]
    for keys, args in forget.calls:
        assert keys == ["dw:parked", *(f"dw:label:{e}" for e in args)] and len(args) <= 7
    assert sum(len(args) for _, args in forget.calls) == parked
