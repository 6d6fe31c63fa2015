"""Snapshot signing and records: what verifies, what is refused, and that refused bytes are
never unpickled. Pure: no Redis (the store itself is tested in tests/integration)."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio

from stream.exceptions import SnapshotIntegrityError
from stream.model import snapshot_format as snapshot_records
from stream.model.holder import ModelHolder
from stream.model.online import OnlineModel, create_model
from stream.model.snapshot_format import (
    SnapshotInfo,
    decode_record,
    encode_record,
    read_info,
    sign,
    verify,
)
from stream.model.snapshots import SnapshotStore
from stream.service.config import ModelSettings, Settings

KEY = b"test-key-not-a-secret"
PROBES = [{"amount": float(a), "hour": a % 24} for a in range(0, 100, 7)]


class Explodes:
    """Unpickling this writes a file: proof that a refused record was (not) unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.path, "unpickled!"))


def trained(n: int = 50) -> OnlineModel:
    model = create_model(ModelSettings(name="fraud"), [])
    for i in range(n):
        model.learn({"amount": float(i), "hour": i % 24}, int(i > n / 2))
    return model


def record(model: OnlineModel | None = None, **kw: Any) -> dict[bytes, bytes]:
    """A record as Redis returns it (bytes field names)."""
    args: dict[str, Any] = {"kind": "version", "version": 3, "created_at": 1_700_000_000_000}
    args.update(kw)
    rec = encode_record(model or trained(), {"offset": 41}, args.pop("key", KEY), **args)
    return {k.encode(): v for k, v in rec.items()}


def decode(fields: dict[bytes, bytes], key: bytes = KEY, **kw: Any) -> tuple[OnlineModel, Any]:
    where: dict[str, Any] = {"name": "fraud", "kind": "version", "version": 3}
    where.update(kw)
    return decode_record(fields, key, **where)


@pytest.fixture
def loads_spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Every call of pickle.loads made by stream.model.snapshot_format."""
    calls: list[bytes] = []
    real = pickle.loads

    def spy(data: bytes, *args: Any, **kw: Any) -> Any:
        calls.append(data)
        return real(data, *args, **kw)  # noqa: S301 - the spy only forwards

    monkeypatch.setattr(snapshot_records.pickle, "loads", spy)
    yield calls


@pytest.fixture
def malicious(tmp_path: Path) -> tuple[dict[bytes, bytes], Path]:
    """A validly signed record whose model bytes were then swapped for a booby trap."""
    marker = tmp_path / "side-effect"
    fields = record()
    fields[b"model"] = pickle.dumps(Explodes(marker))
    return fields, marker


# --- sign / verify ---------------------------------------------------------------------


def test_sign_and_verify_round_trip() -> None:
    sig = sign(b"payload", KEY)
    assert len(sig) == 64 and verify(b"payload", sig, KEY)
    assert verify(b"payload", sig.encode(), KEY)  # as Redis returns it


@pytest.mark.parametrize(
    ("payload", "signature", "key"),
    [
        (b"payloaD", "good", KEY),  # tampered payload
        (b"payload", "good", b"another-key"),  # wrong key
        (b"payload", None, KEY),  # no signature
        (b"payload", "", KEY),
        (b"payload", "good", b""),  # no key configured
        (b"payload", "not hex \u00e9", KEY),  # garbage, even non-ASCII, is just "no"
    ],
)
def test_verify_refuses(payload: bytes, signature: str | None, key: bytes) -> None:
    if signature == "good":
        signature = sign(b"payload", KEY)
    assert verify(payload, signature, key) is False


def test_sign_refuses_without_a_key() -> None:
    with pytest.raises(SnapshotIntegrityError, match="DRIFTWATCH_SNAPSHOT_KEY"):
        sign(b"payload", b"")


# --- records -----------------------------------------------------------------------------


def test_record_round_trip_gives_identical_predictions(loads_spy: list[bytes]) -> None:
    model = trained()
    model.version = 2  # the stored copy carries the version it is published as
    loaded, info = decode(record(model))
    assert loaded.predict_many(PROBES) == model.predict_many(PROBES)
    assert (loaded.name, loaded.task, loaded.pipeline) == ("fraud", "binary", "logistic_regression")
    assert (loaded.version, loaded.n_learned, info.version) == (3, 50, 3)
    assert (info.created_at, info.meta, info.valid) == (1_700_000_000_000, {"offset": 41}, True)
    assert len(loads_spy) == 1


def test_read_info_checks_without_unpickling(loads_spy: list[bytes]) -> None:
    info = read_info(record(), KEY, name="fraud", kind="version", version=3)
    assert info.n_learned == 50 and loads_spy == []


def test_the_trap_fires_when_unpickled(
    malicious: tuple[dict[bytes, bytes], Path],
) -> None:
    """Control for the refusal tests below: the trap does fire when unpickled."""
    fields, marker = malicious
    pickle.loads(fields[b"model"])  # noqa: S301 - deliberately, to show the trap works
    assert marker.read_text() == "unpickled!"


def tamper_model(fields: dict[bytes, bytes]) -> None:
    blob = bytearray(fields[b"model"])
    blob[len(blob) // 2] ^= 0x01
    fields[b"model"] = bytes(blob)


def tamper_meta(fields: dict[bytes, bytes]) -> None:
    header = orjson.loads(fields[b"meta"])
    header["n_learned"] = 10**6
    fields[b"meta"] = orjson.dumps(header, option=orjson.OPT_SORT_KEYS)


def drop_signature(fields: dict[bytes, bytes]) -> None:
    del fields[b"sig"]


def empty_signature(fields: dict[bytes, bytes]) -> None:
    fields[b"sig"] = b""


def shift_boundary(fields: dict[bytes, bytes]) -> None:
    # the same concatenated bytes, split differently: the length prefix must catch it
    fields[b"meta"], fields[b"model"] = (
        fields[b"meta"][:-1],
        fields[b"meta"][-1:] + fields[b"model"],
    )


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (tamper_model, "failed its HMAC check"),
        (tamper_meta, "failed its HMAC check"),
        (drop_signature, "has no signature"),
        (empty_signature, "has no signature"),
        (shift_boundary, "failed its HMAC check"),
    ],
)
def test_a_tampered_record_is_refused_and_never_unpickled(
    tamper: Any, message: str, loads_spy: list[bytes]
) -> None:
    fields = record()
    tamper(fields)
    with pytest.raises(SnapshotIntegrityError, match=message):
        decode(fields)
    assert loads_spy == []


@pytest.mark.parametrize(
    ("key", "message"),
    [(b"another-key", "failed its HMAC check"), (b"", "DRIFTWATCH_SNAPSHOT_KEY")],
)
def test_a_trap_signed_with_another_or_no_key_never_fires(
    key: bytes, message: str, tmp_path: Path, loads_spy: list[bytes]
) -> None:
    marker = tmp_path / "side-effect"
    fields = record()
    fields[b"model"] = pickle.dumps(Explodes(marker))
    blob = snapshot_records._signed_bytes(fields[b"meta"], fields[b"model"])
    fields[b"sig"] = sign(blob, b"attacker-key").encode()  # signed, but not with our key
    with pytest.raises(SnapshotIntegrityError, match=message):
        decode(fields, key=key)
    assert not marker.exists() and loads_spy == []


def test_a_swapped_model_is_refused_and_its_trap_never_fires(
    malicious: tuple[dict[bytes, bytes], Path], loads_spy: list[bytes]
) -> None:
    fields, marker = malicious
    with pytest.raises(SnapshotIntegrityError, match="failed its HMAC check"):
        decode(fields)
    assert not marker.exists() and loads_spy == []


def test_without_a_key_even_a_valid_record_is_refused(loads_spy: list[bytes]) -> None:
    with pytest.raises(SnapshotIntegrityError, match="no snapshot key is configured"):
        decode(record(), key=b"")
    assert loads_spy == []


@pytest.mark.parametrize(
    ("where", "stored"),
    [
        ({"version": 4}, {}),  # v3's record copied over v4
        ({"name": "other"}, {}),  # another model's record
        ({"kind": "version"}, {"kind": "checkpoint"}),  # a checkpoint passed off as a version
        ({"kind": "checkpoint", "version": None}, {}),  # and the other way round
    ],
)
def test_a_validly_signed_record_in_the_wrong_place_is_refused(
    where: dict[str, Any], stored: dict[str, Any], loads_spy: list[bytes]
) -> None:
    with pytest.raises(SnapshotIntegrityError, match="moved from another key"):
        decode(record(**stored), **where)
    assert loads_spy == []


def test_an_incomplete_record_is_refused() -> None:
    fields = record()
    del fields[b"model"]
    with pytest.raises(SnapshotIntegrityError, match="incomplete"):
        decode(fields)


def test_error_messages_name_the_snapshot() -> None:
    fields = record()
    tamper_model(fields)
    with pytest.raises(SnapshotIntegrityError) as err:
        decode(fields)
    assert "snapshot version 3 of model 'fraud'" in str(err.value)


# --- store construction (no I/O) ----------------------------------------------------------


def test_store_keys_follow_the_documented_layout() -> None:
    settings = Settings(model={"name": "fraud", "keep_versions": 5}, snapshot_key="s3cret")
    store = SnapshotStore.from_settings(redis.asyncio.Redis(), settings)
    assert (store.key, store.keep_versions) == (b"s3cret", 5)
    assert store.seq_key == "dw:model:fraud:seq"
    assert store.version_key(12) == "dw:model:fraud:v:12"
    assert store.current_key == "dw:model:fraud:current"
    assert store.checkpoint_key == "dw:model:fraud:checkpoint"
    assert store.changes_key == "dw:model:fraud:changes"


def test_store_without_a_configured_key_has_an_empty_key() -> None:
    store = SnapshotStore.from_settings(redis.asyncio.Redis(), Settings())
    assert store.key == b""


def test_store_refuses_a_decoding_client() -> None:
    with pytest.raises(ValueError, match="decode_responses=False"):
        SnapshotStore(redis.asyncio.Redis(decode_responses=True), "dw", "fraud", KEY)


# --- ModelHolder against a stand-in store (the real one: tests/integration) -----------------


class StubStore:
    """Just what ModelHolder calls: current_version(), load_version() and last_change()."""

    def __init__(self) -> None:
        self.current: int | None = None
        self.models: dict[int, OnlineModel | Exception] = {}
        self.loads = 0

    async def reference_version(self) -> int | None:
        return None  # no reference model pinned

    async def current_version(self) -> int | None:
        return self.current

    async def last_change(self) -> bytes:
        return b"0-0"

    async def load_version(self, version: int) -> tuple[OnlineModel, SnapshotInfo]:
        self.loads += 1
        found = self.models[version]
        if isinstance(found, Exception):
            raise found
        return found, info_of(found)

    async def load_newest_valid(self, exclude: set[int]) -> tuple[OnlineModel, SnapshotInfo] | None:
        for version in sorted(self.models, reverse=True):
            found = self.models[version]
            if version not in exclude and not isinstance(found, Exception):
                return found, info_of(found)
        return None


def info_of(model: OnlineModel) -> SnapshotInfo:
    return SnapshotInfo(model.name, model.version, model.task, model.pipeline, 0, 1000)


def published(version: int, **kw: Any) -> OnlineModel:
    model = create_model(ModelSettings(name="fraud", **kw), [])
    model.version = version
    return model


def holder_with(stub: StubStore) -> ModelHolder:
    return ModelHolder(stub, published(0))  # type: ignore[arg-type]


async def test_holder_serves_the_initial_model_until_something_is_published() -> None:
    stub = StubStore()
    holder = holder_with(stub)
    assert await holder.refresh() is False and holder.model.version == 0
    stub.current, stub.models[1] = 1, published(1)
    assert await holder.refresh() is True and holder.model.version == 1
    assert await holder.refresh() is False and stub.loads == 1  # unchanged: no reload


async def test_holder_refuses_a_bad_version_once_and_keeps_serving() -> None:
    stub = StubStore()
    holder = holder_with(stub)
    stub.current, stub.models[1] = 1, published(1)
    await holder.refresh()
    stub.current, stub.models[2] = 2, SnapshotIntegrityError("v2 failed its HMAC check")
    assert await holder.refresh() is False  # version 1 still the newest valid one
    [alert] = holder.take_alerts()
    assert (alert["kind"], alert["status"], alert["model_version"]) == ("model_health", "firing", 2)
    assert "HMAC" in alert["message"] and "serving version 1" in alert["message"]
    assert await holder.refresh() is False and stub.loads == 2  # not retried every poll
    assert holder.model.version == 1 and holder.take_alerts() == []
    stub.current, stub.models[3] = 3, published(3)
    assert await holder.refresh() is True and holder.model.version == 3
    [resolved] = holder.take_alerts()
    assert resolved["status"] == "resolved" and resolved["alert_id"] == alert["alert_id"]


async def test_a_restarted_holder_serves_the_newest_valid_version_not_the_untrained_one() -> None:
    stub = StubStore()
    stub.models[1], stub.models[2] = published(1), published(2)
    stub.current, stub.models[3] = 3, SnapshotIntegrityError("v3 failed its HMAC check")
    holder = holder_with(stub)  # a fresh worker: serves version 0 until the first refresh
    await holder.ready()
    assert holder.model.version == 2
    assert [a["status"] for a in holder.take_alerts()] == ["firing"]


async def test_holder_refuses_a_version_of_another_task() -> None:
    stub = StubStore()
    holder = holder_with(stub)
    stub.current = 1
    stub.models[1] = published(1, task="regression", pipeline="linear_regression")
    assert await holder.refresh() is False
    assert holder.model.version == 0
    [alert] = holder.take_alerts()
    assert "regression" in alert["message"]
