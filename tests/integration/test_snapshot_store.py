"""SnapshotStore and ModelHolder against the real Redis server: no mocks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from stream.exceptions import SnapshotIntegrityError, SnapshotNotFoundError
from stream.model.holder import ModelHolder
from stream.model.online import OnlineModel, create_model
from stream.model.snapshots import SnapshotStore
from stream.model.versions import list_versions, promote, rollback
from stream.service.config import ModelSettings

pytestmark = pytest.mark.integration

KEY = b"integration-test-key"
PROBES = [{"amount": float(a), "hour": a % 24} for a in range(0, 100, 9)]


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def store(client: redis.asyncio.Redis, uid: str) -> AsyncIterator[SnapshotStore]:
    store = SnapshotStore(client, f"test-{uid}", "fraud", KEY, keep_versions=3)
    yield store
    # every key the store can have written (SCAN over a shared server is slow)
    last = int(await client.get(store.seq_key) or 0)
    fixed = [store.seq_key, store.index_key, store.current_key, store.pinned_key]
    versions = [store.version_key(v) for v in range(1, last + 1)]
    await client.delete(*fixed, store.checkpoint_key, store.reference_key, *versions)
    await client.delete(store.changes_key)


def fresh() -> OnlineModel:
    return create_model(ModelSettings(name="fraud"), [])


def learned(model: OnlineModel, n: int, start: int = 0) -> OnlineModel:
    for i in range(start, start + n):
        model.learn({"amount": float(i % 100), "hour": i % 24}, int(i % 100 > 50))
    return model


async def test_publish_then_load_the_current_and_an_older_version(store: SnapshotStore) -> None:
    assert await store.current_version() is None
    with pytest.raises(SnapshotNotFoundError, match="no published version"):
        await store.load()
    model = learned(fresh(), 100)
    first = model.predict_many(PROBES)
    assert await store.publish(model, {"offset": 99}) == 1
    learned(model, 100, start=100)
    assert await store.publish(model, {"offset": 199}) == 2
    assert model.version == 0  # the caller's model is not changed
    current = await store.load()
    assert (current.version, current.n_learned) == (2, 200)
    assert current.predict_many(PROBES) == model.predict_many(PROBES)
    older = await store.load(1)
    assert older.version == 1 and older.predict_many(PROBES) == first
    with pytest.raises(SnapshotNotFoundError, match="version 9 of model 'fraud' does not exist"):
        await store.load(9)


async def test_versions_lists_metadata_oldest_first(store: SnapshotStore) -> None:
    model = fresh()
    for offset in (10, 20):
        await store.publish(learned(model, 10), {"offset": offset, "partition": 0})
    infos = await store.versions()
    assert [(i.version, i.n_learned, i.valid) for i in infos] == [(1, 10, True), (2, 20, True)]
    assert infos[1].meta == {"offset": 20, "partition": 0}
    assert infos[1].task == "binary" and infos[1].pipeline == "logistic_regression"
    assert infos[0].created_at <= infos[1].created_at


async def test_concurrent_publishes_get_distinct_versions(store: SnapshotStore) -> None:
    model = learned(fresh(), 10)
    versions = await asyncio.gather(*(store.publish(model) for _ in range(8)))
    assert sorted(versions) == list(range(1, 9))
    assert await store.current_version() == 8  # the newest wins, whatever order they land in
    assert [i.version for i in await store.versions()] == [6, 7, 8]  # keep_versions=3


async def test_old_versions_are_pruned_but_never_the_current_one(
    store: SnapshotStore, client: redis.asyncio.Redis
) -> None:
    model = fresh()
    for _ in range(5):
        await store.publish(learned(model, 5))
    assert [i.version for i in await store.versions()] == [3, 4, 5]
    assert not await client.exists(store.version_key(1), store.version_key(2))
    assert await store.promote(3) == 3  # pinned: stays current while newer ones arrive
    for _ in range(3):
        await store.publish(learned(model, 5))
    assert [i.version for i in await store.versions()] == [3, 6, 7, 8]
    assert await store.current_version() == 3
    assert (await store.load()).version == 3


async def test_promote_pins_and_promote_without_version_follows_again(
    store: SnapshotStore,
) -> None:
    model = fresh()
    for _ in range(3):
        await store.publish(learned(model, 5))
    assert await store.promote(2) == 2
    assert (await store.current_version(), await store.pinned_version()) == (2, 2)
    assert await store.publish(learned(model, 5)) == 4
    assert await store.current_version() == 2  # the trainer does not undo an operator's choice
    assert await store.promote() == 4
    assert (await store.current_version(), await store.pinned_version()) == (4, None)
    assert await store.publish(learned(model, 5)) == 5
    assert await store.current_version() == 5
    with pytest.raises(SnapshotNotFoundError, match="version 1 of model 'fraud' does not exist"):
        await store.promote(1)  # pruned (keep_versions=3)


async def test_rollback_steps_back_one_stored_version_at_a_time(store: SnapshotStore) -> None:
    model = fresh()
    for _ in range(3):
        await store.publish(learned(model, 5))
    assert await store.rollback() == 2
    assert await store.rollback() == 1
    assert (await store.load()).version == 1
    with pytest.raises(SnapshotNotFoundError, match="no stored version older than 1"):
        await store.rollback()


async def test_rollback_with_nothing_published(store: SnapshotStore) -> None:
    with pytest.raises(SnapshotNotFoundError, match="no published version"):
        await store.rollback()


async def flip_model_byte(client: redis.asyncio.Redis, key: str) -> None:
    blob = bytearray(await client.hget(key, "model") or b"")
    blob[len(blob) // 2] ^= 0x01
    await client.hset(key, "model", bytes(blob))


async def test_a_record_tampered_in_redis_is_refused(
    store: SnapshotStore, client: redis.asyncio.Redis
) -> None:
    model = learned(fresh(), 20)
    for _ in range(3):
        await store.publish(model)
    await flip_model_byte(client, store.version_key(3))
    with pytest.raises(SnapshotIntegrityError, match="version 3 .* failed its HMAC check"):
        await store.load()
    await client.hset(store.version_key(2), "meta", b'{"kind":"version","name":"fraud"}')
    with pytest.raises(SnapshotIntegrityError, match="failed its HMAC check"):
        await store.load(2)
    await client.hdel(store.version_key(1), "sig")
    with pytest.raises(SnapshotIntegrityError, match="has no signature"):
        await store.load(1)
    assert [(i.version, i.valid) for i in await store.versions()] == [
        (1, False),
        (2, False),
        (3, False),
    ]
    with pytest.raises(SnapshotIntegrityError):
        await store.promote(1)  # an operator cannot make a bad record current either
    assert await store.current_version() == 3


async def test_a_record_copied_to_another_version_is_refused(
    store: SnapshotStore, client: redis.asyncio.Redis
) -> None:
    model = fresh()
    await store.publish(learned(model, 5))
    await store.publish(learned(model, 5))
    await client.copy(store.version_key(1), store.version_key(2), replace=True)
    with pytest.raises(SnapshotIntegrityError, match="moved from another key"):
        await store.load(2)


async def test_a_store_with_another_or_no_key_refuses(
    store: SnapshotStore, client: redis.asyncio.Redis
) -> None:
    await store.publish(learned(fresh(), 5))
    other = SnapshotStore(client, store.prefix, "fraud", b"another-key")
    with pytest.raises(SnapshotIntegrityError, match="failed its HMAC check"):
        await other.load()
    keyless = SnapshotStore(client, store.prefix, "fraud", b"")
    with pytest.raises(SnapshotIntegrityError, match="DRIFTWATCH_SNAPSHOT_KEY"):
        await keyless.load()
    with pytest.raises(SnapshotIntegrityError, match="DRIFTWATCH_SNAPSHOT_KEY"):
        await keyless.publish(learned(fresh(), 5))
    assert await store.current_version() == 1  # the refused publish took no version


async def test_two_holders_serve_the_same_newly_published_version(
    store: SnapshotStore, redis_url: str, uid: str
) -> None:
    # two scorers, each with its own connection, as two workers would have
    other_client = redis.asyncio.Redis.from_url(redis_url)
    try:
        other = SnapshotStore(other_client, f"test-{uid}", "fraud", KEY)
        holders = [ModelHolder(store, fresh()), ModelHolder(other, fresh())]
        assert [await h.refresh() for h in holders] == [False, False]
        trainer = learned(fresh(), 200)
        version = await store.publish(trainer, {"offset": 199})
        assert [await h.refresh() for h in holders] == [True, True]
        assert [h.model.version for h in holders] == [version, version]
        served = [h.model.predict_many(PROBES) for h in holders]
        assert served[0] == served[1] == trainer.predict_many(PROBES)
        assert [await h.refresh() for h in holders] == [False, False]
        newer = await store.publish(learned(trainer, 50))
        assert [await h.refresh() for h in holders] == [True, True]
        assert [h.model.version for h in holders] == [newer, newer]
        await store.rollback()  # an operator rolls back: every holder follows
        assert [await h.refresh() for h in holders] == [True, True]
        assert [h.model.version for h in holders] == [version, version]
    finally:
        await other_client.aclose()


async def test_a_holder_keeps_serving_when_the_new_version_is_tampered(
    store: SnapshotStore, client: redis.asyncio.Redis
) -> None:
    holder = ModelHolder(store, fresh())
    await store.publish(learned(fresh(), 20))
    await holder.refresh()
    await store.publish(learned(fresh(), 40))
    await flip_model_byte(client, store.version_key(2))
    assert await holder.refresh() is False  # refused; version 1 is still the newest valid one
    assert [a["kind"] for a in holder.take_alerts()] == ["model_health"]
    assert await holder.refresh() is False  # refused once, not reloaded on every poll
    assert holder.model.version == 1 and holder.take_alerts() == []


async def test_a_new_holder_serves_the_newest_valid_version_when_current_is_tampered(
    store: SnapshotStore, client: redis.asyncio.Redis
) -> None:
    await store.publish(learned(fresh(), 20))
    await store.publish(learned(fresh(), 40))
    await store.publish(learned(fresh(), 60))
    await flip_model_byte(client, store.version_key(3))
    holder = ModelHolder(store, fresh())  # a restarted worker
    assert await holder.refresh() is True
    assert holder.model.version == 2 and holder.model.n_learned == 40
    [alert] = holder.take_alerts()
    assert alert["status"] == "firing" and "serving version 2" in alert["message"]


async def test_checkpoint_round_trip(store: SnapshotStore, client: redis.asyncio.Redis) -> None:
    assert await store.load_checkpoint() is None
    model = learned(fresh(), 120)
    await store.save_checkpoint(model, {"offset": 119, "partition": 0})
    learned(model, 30, start=120)
    await store.save_checkpoint(model, {"offset": 149, "partition": 0})  # overwrites
    restored = await store.load_checkpoint()
    assert restored is not None
    again, info = restored
    assert info.meta == {"offset": 149, "partition": 0} and again.n_learned == 150
    assert again.predict_many(PROBES) == model.predict_many(PROBES)
    # a checkpoint is not a published version
    assert await store.current_version() is None and await store.versions() == []
    await flip_model_byte(client, store.checkpoint_key)
    with pytest.raises(SnapshotIntegrityError, match="checkpoint of model 'fraud' failed"):
        await store.load_checkpoint()


async def test_cli_hooks_print_rows(store: SnapshotStore, client: redis.asyncio.Redis) -> None:
    assert len(await list_versions(store)) == 1  # the header: nothing published yet
    model = fresh()
    for offset in (4, 9):
        await store.publish(learned(model, 5), {"offset": offset})
    rows = await list_versions(store)
    assert rows[0].split() == [
        "VERSION",
        "CREATED",
        "(UTC)",
        "LEARNED",
        "PIPELINE",
        "CHECK",
        "META",
    ]
    assert rows[1].split()[0] == "1" and rows[2].split()[:2] == ["*", "2"]
    assert rows[2].split()[4:] == ["10", "binary/logistic_regression", "ok", '{"offset":9}']
    assert await rollback(store) == "model 'fraud': rolled back from version 2 to 1 (pinned)"
    rows = await list_versions(store)
    assert rows[1].startswith("*") and "pinned" in rows[-1]
    assert await promote(store) == (
        "model 'fraud': version 2 is current; following new versions (was 1)"
    )
    assert await promote(store, 1) == "model 'fraud': version 1 is current and pinned (was 2)"
    await flip_model_byte(client, store.version_key(2))
    assert "BAD" in (await list_versions(store))[2]


async def test_the_reference_model_is_pinned_once_and_outlives_pruning(
    store: SnapshotStore, client: redis.asyncio.Redis
) -> None:
    model = learned(fresh(), 100)
    for _ in range(2):
        await store.publish(model)
    assert await store.reference_version() is None and await store.load_reference() is None
    last = await store.last_change()
    assert await store.pin_reference(2) == 2
    assert await store.wait_for_change(last, 1.0) is not None  # scorers are told at once
    # the first to ask wins: the other prediction monitor adopts version 2
    assert await store.pin_reference(1) == 2
    for _ in range(5):  # keep_versions=3: version 2 itself is pruned
        await store.publish(learned(model, 10))
    assert await client.exists(store.version_key(2)) == 0
    reference = await store.load_reference()
    assert reference is not None and reference.version == 2
    assert reference.predict_many(PROBES) == learned(fresh(), 100).predict_many(PROBES)
    assert await store.unpin_reference() is True
    assert await store.reference_version() is None
    # a version pruned before it could be pinned: the current one instead
    assert await store.pin_reference(2) == await store.current_version() == 7


async def test_a_holder_follows_the_reference_model_and_refuses_a_tampered_one(
    store: SnapshotStore, client: redis.asyncio.Redis
) -> None:
    model = learned(fresh(), 100)
    await store.publish(model)
    holder = ModelHolder(store, fresh())
    await holder.refresh()
    assert holder.model.version == 1 and holder.reference.model is None
    await store.pin_reference(1)
    await store.publish(learned(model, 50))
    await holder.refresh()
    assert holder.model.version == 2
    assert holder.reference.model is not None and holder.reference.model.version == 1
    await store.unpin_reference()
    await holder.refresh()
    assert holder.reference.model is None
    await store.pin_reference(2)
    await client.hset(store.reference_key, "model", b"tampered")
    await holder.refresh()
    assert holder.reference.model is None  # refused: never unpickled
    assert await holder.reference.refresh() is False  # and not read again
