"""Labels meet their predictions whichever arrives first, exactly once (real Redis)."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import redis.asyncio as aioredis

from stream.ingest.scoring import EventProcessor, LabelProcessor
from stream.labels.join import PendingPrediction
from stream.labels.store import PredictionStore, StoreInFlight
from stream.messages import Label
from stream.model.online import create_model
from stream.records import Incoming
from stream.service.config import Settings
from stream.service.metrics import Metrics
from stream.timestamps import now_ms

pytestmark = pytest.mark.integration

SCORED_AT = 1_763_800_000_123


def pred(event_id: str) -> PendingPrediction:
    # scored at a 13-digit epoch ms: the sorted-set score must keep every digit
    return PendingPrediction(event_id, "c1", 1000, {"amount": 1.0}, 2, 0, 0.25, SCORED_AT)


async def store(ps: PredictionStore, preds: list[PendingPrediction]) -> list:
    claimed, _ = await ps.store_or_claim(preds, lambda: None)
    return claimed


def test_label_after_prediction_and_label_before_prediction(redis_url: str, uid: str) -> None:
    async def go() -> None:
        client = aioredis.Redis.from_url(redis_url)
        ps = PredictionStore(client, f"test-{uid}", horizon_s=60)
        assert await store(ps, [pred("e1")]) == []
        # e1's prediction waits; e2's label overtakes its event and is parked
        taken = await ps.take([Label(event_id="e1", label=1), Label(event_id="e2", label=0)])
        assert list(taken) == ["e1"] and taken["e1"].score == 0.25
        assert await client.zcard(ps.pending_key) == 0
        claimed = await store(ps, [pred("e2"), pred("e3")])
        assert [(p.event_id, lb.label) for p, lb in claimed] == [("e2", 0)]
        assert await client.exists(ps.key("e2"), ps.label_key("e2")) == 0
        assert await client.exists(ps.key("e3")) == 1 and await client.zcard(ps.pending_key) == 1
        assert await client.ttl(ps.key("e3")) > 0
        # stored byte for byte as encoded, and pending since the time it was scored
        assert await client.get(ps.key("e3")) == pred("e3").encode()
        assert await client.zscore(ps.pending_key, "e3") == SCORED_AT
        # a second label for e1 finds nothing any more: parked, never joined twice
        assert await ps.take([Label(event_id="e1", label=1)]) == {}
        await client.aclose()

    asyncio.run(go())


def test_concurrent_sides_join_each_pair_once(redis_url: str, uid: str) -> None:
    async def go() -> int:
        client = aioredis.Redis.from_url(redis_url)
        ps = PredictionStore(client, f"test-{uid}", horizon_s=60)
        ids = [f"e{i}" for i in range(2000)]

        async def scorer() -> int:
            n = 0
            for i in range(0, len(ids), 50):
                n += len(await store(ps, [pred(e) for e in ids[i : i + 50]]))
            return n

        async def labeller() -> int:
            n = 0
            for i in range(0, len(ids), 70):
                n += len(await ps.take([Label(event_id=e, label=1) for e in ids[i : i + 70]]))
            return n

        joined = sum(await asyncio.gather(scorer(), labeller()))
        await client.aclose()
        return joined

    assert asyncio.run(go()) == 2000


def test_a_claimed_label_is_claimed_again_by_its_record_only(redis_url: str, uid: str) -> None:
    """A batch that fails after its claim (the reply lost with the connection, a crash before
    its outputs were acknowledged) is processed again from the same records: its label must
    join again, not be gone. Another copy of the event (another record) does not get it."""

    async def go() -> None:
        client = aioredis.Redis.from_url(redis_url)
        ps = PredictionStore(client, f"test-{uid}", horizon_s=60, claim_ttl_s=120)
        assert await ps.take([Label(event_id="e2", label=1)]) == {}  # parked
        for _ in range(2):  # the first attempt, then its retry
            claimed, _ = await ps.store_or_claim([pred("e2")], lambda: None, ["3:10"])
            assert [(p.event_id, lb.label) for p, lb in claimed] == [("e2", 1)]
            assert await client.zcard(ps.parked_key) == 0
            assert await client.exists(ps.key("e2")) == 0  # joined: no prediction waits
        assert 0 < await client.ttl(ps.label_key("e2")) <= 120
        # the same event in another record (a producer's duplicate) waits like any event
        claimed, _ = await ps.store_or_claim([pred("e2")], lambda: None, ["3:11"])
        assert claimed == [] and await client.exists(ps.key("e2")) == 1
        # the sweep does not count the claimed label unmatched
        assert await ps.sweep_expired(SCORED_AT + 10**9) == (1, 0)
        await client.aclose()

    asyncio.run(go())


def test_an_event_batch_processed_again_after_its_claim_joins_its_label_again(
    redis_url: str, uid: str
) -> None:
    """EventProcessor end to end on real Redis: the same batch twice (as a retry after a
    failure past the claim) yields the training example both times."""
    settings = Settings(
        redis={"url": redis_url, "prefix": f"test-{uid}"},
        features=[{"name": "amount", "windows": ["1h"], "aggregates": ["count"]}],
    )
    model = create_model(settings.model, settings.features)

    async def go() -> list[list[str]]:
        client = aioredis.Redis.from_url(redis_url)
        processor = EventProcessor(settings, client, lambda: model, Metrics())
        labels = LabelProcessor(settings, client, Metrics())
        now = now_ms()
        label = Incoming("labels", 0, 0, None, orjson.dumps({"event_id": "e1", "label": 1}))
        assert (await labels.process([label]))[0] == []  # overtook its event: parked
        event = {"event_id": "e1", "entity_id": "c1", "ts": now, "features": {"amount": 5.0}}
        batch = [Incoming("events", 2, 41, b"c1", orjson.dumps(event))]
        runs = [await processor.process(batch) for _ in range(2)]
        # the claimed label is an example once the store answers (read after the batch's
        # predictions are published)
        ids = []
        for run in runs:
            joined = [ex for joins in run.joins for ex in await joins.examples()]
            ids.append([ex.event_id for ex in run.examples + joined])
        await client.aclose()
        return ids

    assert asyncio.run(go()) == [["e1"], ["e1"]]


def test_a_store_whose_reply_was_lost_is_run_again_and_claims_again(
    redis_url: str, uid: str
) -> None:
    """The reply of a store sent ahead is read after the batch is published; when it cannot
    be (the connection broke), the store runs again: its label is claimed again."""

    async def go() -> None:
        client = aioredis.Redis.from_url(redis_url)
        ps = PredictionStore(client, f"test-{uid}", horizon_s=60, claim_ttl_s=120)
        assert await ps.take([Label(event_id="e2", label=1)]) == {}  # parked
        sent = await ps.send([pred("e2"), pred("e3")], ["3:10", "3:11"])
        await sent.abandon()  # the connection dropped with the reply unread
        claimed = await sent.result()  # sent again
        assert [(p.event_id, lb.label) for p, lb in claimed] == [("e2", 1)]
        assert await client.exists(ps.key("e3")) == 1 and await client.zcard(ps.parked_key) == 0
        assert await sent.result() == claimed  # and again: the same
        await client.aclose()

    asyncio.run(go())


def test_a_reply_read_cancelled_midway_never_reaches_the_next_command(
    redis_url: str, uid: str
) -> None:
    """A batch cancelled while its store's reply is on the way (a rebalance, a stop): the
    connection is dropped, not handed back to the pool with that reply still to come."""

    async def go() -> None:
        client = aioredis.Redis.from_url(redis_url, max_connections=1)
        ps = PredictionStore(client, f"test-{uid}", horizon_s=60, claim_ttl_s=120)
        conn = await client.connection_pool.get_connection()
        await conn.send_command("BLPOP", f"test-{uid}-empty", 0.5)  # answers nil in 0.5 s
        sent = StoreInFlight(ps, [pred("e9")], ("PING",), conn)
        reading = asyncio.create_task(sent.result())
        await asyncio.sleep(0.1)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        await asyncio.sleep(0.6)  # the nil has come by now, on the dropped connection
        assert await client.ping() is True  # its own reply, not the cancelled one's
        await client.aclose()

    asyncio.run(go())
