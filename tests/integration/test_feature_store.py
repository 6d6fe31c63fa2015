"""Feature windows through a real Redis server: the stored and returned aggregates equal the
offline recomputation, replays change nothing, every key expires, and a batch costs one read
and one write round trip (a conditional one: a state another writer changed is re-read).

Round trips are counted at the socket: a connection class that counts its writes (each
write is followed by waiting for the replies) and records the commands it packs. The Redis
server's MONITOR feed, filtered to that client's ports, confirms the command list.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis

from stream.features.offline import recompute_offline
from stream.features.state import State, encode_state
from stream.features.store import FeatureStore
from stream.features.windows import EventResult, FeatureInput, update_batch
from stream.service.config import FeatureSpec, RedisSettings, Settings, WindowSettings

pytestmark = pytest.mark.integration

T0 = 1_763_800_000_000
SPECS = (
    FeatureSpec(name="amount", windows=("1m", "1h", "24h")),
    FeatureSpec(name="hour"),
)
WAIT_S = 10.0


@dataclass
class Wire:
    """What one client sent: socket writes (round trips), commands, local ports."""

    round_trips: int = 0
    commands: list[str] = field(default_factory=list)
    ports: set[int] = field(default_factory=set)

    def reset(self) -> None:
        self.round_trips = 0
        self.commands.clear()


def counting_client(url: str, wire: Wire) -> aioredis.Redis:
    class CountingConnection(aioredis.Connection):
        async def _connect(self) -> None:
            await super()._connect()
            assert self._writer is not None
            wire.ports.add(self._writer.get_extra_info("sockname")[1])

        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            wire.round_trips += 1
            await super().send_packed_command(command, check_health)

        def pack_command(self, *args: Any) -> list[bytes]:
            name = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
            wire.commands.append(name.split()[0].upper())
            return super().pack_command(*args)

    pool = aioredis.ConnectionPool.from_url(
        url, connection_class=CountingConnection, socket_timeout=WAIT_S
    )
    return aioredis.Redis.from_pool(pool)  # owns the pool: aclose() disconnects it


@pytest.fixture
def feature_settings(redis_url: str, uid: str) -> Settings:
    return Settings(
        redis=RedisSettings(url=redis_url, prefix=f"test-{uid}"),
        features=SPECS,
        windows=WindowSettings(buckets=12, grace="5m", dedupe_ttl="1d"),
    )


@pytest.fixture
async def wired(redis_url: str, uid: str) -> AsyncIterator[tuple[aioredis.Redis, Wire]]:
    wire = Wire()
    client = counting_client(redis_url, wire)
    await asyncio.wait_for(client.ping(), WAIT_S)
    yield client, wire
    keys = [k async for k in client.scan_iter(match=f"test-{uid}:*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def card_stream(n: int, seed: int = 11) -> list[FeatureInput]:
    """Card-like events: out of order (some beyond the 5 min grace), missing amounts, and
    redeliveries of earlier events."""
    rng = random.Random(seed)
    events: list[FeatureInput] = []
    clock = T0
    for i in range(n):
        if events and rng.random() < 0.05:
            events.append(events[rng.randrange(len(events))])
            continue
        clock += rng.randrange(0, 20_000)
        lag = rng.randrange(0, 420_000) if rng.random() < 0.1 else 0
        amount = None if rng.random() < 0.05 else round(rng.lognormvariate(3, 1.2), 2)
        values = {"amount": amount, "hour": float(rng.randrange(24))}
        events.append(FeatureInput(f"e-{i}", f"card-{rng.randrange(25)}", clock - lag, values))
    return events


def batches(events: Sequence[FeatureInput], seed: int = 5) -> list[Sequence[FeatureInput]]:
    rng = random.Random(seed)
    out, start = [], 0
    while start < len(events):
        size = rng.randrange(1, 120)
        out.append(events[start : start + size])
        start += size
    return out


def assert_close(actual: Sequence[EventResult], expected: Sequence[EventResult]) -> None:
    assert [(r.event_id, r.duplicate, r.late) for r in actual] == [
        (r.event_id, r.duplicate, r.late) for r in expected
    ]
    for a, e in zip(actual, expected, strict=True):
        assert a.enriched.keys() == e.enriched.keys()
        for name, value in e.enriched.items():
            assert math.isclose(a.enriched[name], value, rel_tol=1e-9, abs_tol=1e-9), (
                f"{a.event_id} {name}: {a.enriched[name]!r} != offline {value!r}"
            )


async def snapshot(client: aioredis.Redis, uid: str) -> dict[Any, Any]:
    keys = sorted([k async for k in client.scan_iter(match=f"test-{uid}:*", count=1000)])
    return dict(zip(keys, await client.mget(keys), strict=True)) if keys else {}


async def enrich_all(
    store: FeatureStore, parts: Sequence[Sequence[FeatureInput]]
) -> list[EventResult]:
    results: list[EventResult] = []
    for part in parts:
        results.extend((await asyncio.wait_for(store.enrich(part), WAIT_S)).results)
    return results


async def test_stored_and_returned_aggregates_equal_offline_recomputation(
    wired: tuple[aioredis.Redis, Wire], feature_settings: Settings
) -> None:
    client, _ = wired
    store = FeatureStore(client, feature_settings)
    events = card_stream(1500)
    parts = batches(events)

    results = await enrich_all(store, parts)

    offline = recompute_offline(events, SPECS, feature_settings.windows)
    assert_close(results, offline)
    assert any(r.late for r in results) and any(r.duplicate for r in results)
    # what Redis holds is, byte for byte, the state of the pure path run on the same batches
    states: dict[str, State] = {}
    seen: dict[str, float | None] = {}
    for part in parts:
        update = update_batch(states, seen, part, SPECS, feature_settings.windows)
        states.update(update.states)
        seen.update(update.applied_since)
    stored = await client.mget([store.state_key(e) for e in states])
    assert stored == [encode_state(s) for s in states.values()]


async def test_replaying_a_batch_changes_nothing(
    wired: tuple[aioredis.Redis, Wire], feature_settings: Settings, uid: str
) -> None:
    client, _ = wired
    store = FeatureStore(client, feature_settings)
    events = card_stream(600, seed=3)
    parts = batches(events, seed=4)
    await enrich_all(store, parts)
    before = await snapshot(client, uid)

    for part in (parts[0], parts[len(parts) // 2], parts[-1], events):
        replayed = await asyncio.wait_for(store.enrich(part), WAIT_S)
        assert all(r.duplicate or r.late for r in replayed.results)
        assert replayed.update.states == {} and replayed.update.applied_ids == ()
        # a duplicate's features are those of the same event appended to the input
        expected = recompute_offline([*events, *part], SPECS, feature_settings.windows)
        assert_close(replayed.results, expected[len(events) :])
        assert await snapshot(client, uid) == before  # byte-identical, same keys

    # and the next new event sees the windows exactly as if nothing had been replayed
    probe = FeatureInput("probe", "card-1", events[-1].ts_ms + 1, {"amount": 7.0})
    after = await asyncio.wait_for(store.enrich([probe]), WAIT_S)
    expected = recompute_offline([*events, probe], SPECS, feature_settings.windows)
    assert_close(after.results, expected[-1:])


async def test_every_key_expires(
    wired: tuple[aioredis.Redis, Wire], feature_settings: Settings, uid: str
) -> None:
    client, _ = wired
    store = FeatureStore(client, feature_settings)
    await enrich_all(store, batches(card_stream(300, seed=8)))

    keys = [k async for k in client.scan_iter(match=f"test-{uid}:*", count=1000)]
    ttls = dict(zip(keys, [await client.ttl(k) for k in keys], strict=True))
    state_ttl = 86_400 + 300 + 300  # longest window + grace + margin
    assert store.state_ttl_s == state_ttl
    fw = [t for k, t in ttls.items() if b":fw:" in k]
    marks = [t for k, t in ttls.items() if b":seen:" in k]
    assert len(fw) == 25 and len(marks) + len(fw) == len(keys)
    assert all(state_ttl - 60 < t <= state_ttl for t in fw)
    assert all(86_400 - 60 < t <= 86_400 for t in marks)


@pytest.mark.parametrize("size", [1, 10, 500])
async def test_one_read_and_one_write_round_trip_per_batch(
    wired: tuple[aioredis.Redis, Wire], feature_settings: Settings, redis_url: str, size: int
) -> None:
    client, wire = wired
    store = FeatureStore(client, feature_settings)
    events = card_stream(2 * size + 1, seed=size)
    await store.enrich(events[:1])  # warm up: the connection's handshake and the script load
    batch = events[1 : 1 + size]

    sent = await watch_server(redis_url, client, wire, store.enrich(batch))
    assert sent.result.conflicts == 0
    assert wire.round_trips == 2
    assert wire.commands == ["MGET", "EVALSHA"]  # the states and markers in one atomic call
    assert sent.server_commands == wire.commands

    # a replayed batch reads once and has nothing to write
    wire.reset()
    replay = await store.enrich(batch)
    assert wire.round_trips == 1 and wire.commands == ["MGET"]
    assert replay.update.applied_ids == ()


async def test_a_state_changed_by_another_writer_is_reread_not_overwritten(
    wired: tuple[aioredis.Redis, Wire], feature_settings: Settings
) -> None:
    client, wire = wired
    store = FeatureStore(client, feature_settings)
    first = FeatureInput("a-1", "card-1", T0, {"amount": 1.0, "hour": 1.0})
    await store.enrich([first])
    mine = [FeatureInput("a-2", "card-1", T0 + 1_000, {"amount": 2.0, "hour": 1.0})]
    loaded = await store.load(mine)
    update = store.update(loaded, mine)
    # another worker applies an event of the same entity between this read and write
    theirs = FeatureInput("b-1", "card-1", T0 + 500, {"amount": 4.0, "hour": 1.0})
    await FeatureStore(client, feature_settings).enrich([theirs])
    assert await store.write(update) == ["card-1"]  # refused: nothing of it was written

    wire.reset()
    applied = await store.enrich(mine)  # what a batch does: re-read, re-apply, write
    assert applied.conflicts == 0 and wire.round_trips == 2
    expected = recompute_offline([first, theirs, *mine], SPECS, feature_settings.windows)
    assert_close(applied.results, expected[-1:])
    assert applied.results[0].enriched["amount_count_1h"] == 3.0


@dataclass
class Sent:
    result: Any
    server_commands: list[str]


async def watch_server(url: str, client: aioredis.Redis, wire: Wire, action: Any) -> Sent:
    """Run ``action`` while the server's MONITOR feed records what ``client`` sends."""
    marker = f"end-of-batch-{random.random()}"
    watcher = aioredis.Redis.from_url(url, socket_timeout=WAIT_S)
    try:
        async with watcher.monitor() as monitor:
            wire.reset()
            result = await asyncio.wait_for(action, WAIT_S)
            counted = (wire.round_trips, list(wire.commands))
            await client.echo(marker)
            wire.round_trips, wire.commands[:] = counted
            seen: list[str] = []
            async with asyncio.timeout(WAIT_S):
                while True:
                    info = await monitor.next_command()
                    if info["client_port"].isdigit() and int(info["client_port"]) in wire.ports:
                        if marker in info["command"]:
                            break
                        seen.append(info["command"].split()[0].upper())
    finally:
        await watcher.aclose()
    return Sent(result, seen)


async def test_work_meanwhile_runs_once_the_write_is_sent_and_survives_lost_scripts(
    wired: tuple[aioredis.Redis, Wire], feature_settings: Settings
) -> None:
    client, wire = wired
    store = FeatureStore(client, feature_settings)
    events = card_stream(41, seed=3)
    await store.enrich(events[:1])
    seen: list[tuple[int, int]] = []

    def meanwhile(results: Sequence[EventResult]) -> None:
        seen.append((wire.round_trips, len(results)))  # the write is on its way by now

    wire.reset()
    applied = await store.enrich(events[1:21], meanwhile)
    assert seen == [(2, 20)] and wire.commands == ["MGET", "EVALSHA"]

    await client.script_flush()  # a restarted server: the write's script is gone
    seen.clear()
    applied = await store.enrich(events[21:], meanwhile)
    assert [n for _, n in seen] == [20]  # called once, not again for the script resent
    expected = recompute_offline(events, SPECS, feature_settings.windows)
    assert_close(applied.results, expected[21:])
    assert applied.conflicts == 0
