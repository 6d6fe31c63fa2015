"""The lineup in a real Redis: seeding, promotions racing, the policy's bounds, waking scorers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from stream.messages import TrainingExample
from stream.model.lifecycle import Learners
from stream.model.lineup import Entry, Lineup, champion_of, configured, lifecycle_alert
from stream.model.served import ModelSet
from stream.service.config import ModelSettings, Settings
from stream.service.metrics import Metrics

pytestmark = pytest.mark.integration


@pytest.fixture
def config(redis_url: str, uid: str) -> Settings:
    return Settings(
        redis={"url": redis_url, "prefix": f"test-{uid}"},
        models=[{"name": "a", "role": "champion"}, {"name": "b", "role": "challenger"}],
        lifecycle={
            "retrain_on": ["concept_drift"], "min_labels": 20, "compare_window": 50,
            "max_challengers": 2, "retire_after": 40, "auto_promote": True,
        },
    )  # fmt: skip


@pytest_asyncio.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def keys_cleaned(redis_url: str, config: Settings) -> Iterator[None]:
    yield

    async def clean() -> None:
        client = aioredis.from_url(redis_url)
        keys = [k async for k in client.scan_iter(f"{config.redis.prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()

    asyncio.run(clean())


def roles(entries: dict[str, Entry]) -> dict[str, str]:
    return {name: e.role for name, e in sorted(entries.items())}


def notice(name: str) -> Any:
    return lambda old: lifecycle_alert(
        "promoted", name, version=None, message="m", evidence={"previous": old.name}
    )


async def test_seeding_keeps_the_roles_promotions_gave(redis, config, keys_cleaned) -> None:
    lineup = Lineup(redis, config.redis.prefix)
    assert roles(await lineup.seed(configured(config))) == {"a": "champion", "b": "challenger"}
    assert (await lineup.promote("b", notice("b"))).name == "a"
    # a restart with the same configuration (new settings for b) keeps b serving
    changed = config.model_copy(
        update={
            "models": (config.models[0], config.models[1].model_copy(update={"learning_rate": 0.2}))
        }
    )
    after = await lineup.seed(configured(changed))
    assert roles(after) == {"a": "challenger", "b": "champion"}
    assert after["b"].spec.learning_rate == 0.2
    # a configuration naming a new champion: it joins as a challenger, one champion stays
    other = Settings(redis=config.redis, models=[{"name": "c", "role": "champion"}])
    assert roles(await lineup.seed(configured(other))) == {
        "a": "challenger",
        "b": "champion",
        "c": "challenger",
    }
    assert [a["subject"] for a in await lineup.history()] == ["b"]
    with pytest.raises(KeyError):
        await lineup.promote("nobody", notice("nobody"))
    assert await lineup.promote("b", notice("b")) is None  # the champion already


async def test_promotions_racing_leave_one_champion_and_a_consistent_history(
    redis_url, config, keys_cleaned
) -> None:
    names = [f"m{i}" for i in range(6)]
    seed = Settings(
        redis=config.redis,
        models=[
            {"name": n, "role": "champion" if i == 0 else "challenger"} for i, n in enumerate(names)
        ],
    )
    clients = [aioredis.from_url(redis_url) for _ in names]
    try:
        await Lineup(clients[0], config.redis.prefix).seed(configured(seed))
        made = 0
        for _ in range(5):
            results = await asyncio.gather(
                *(
                    Lineup(c, config.redis.prefix).promote(n, notice(n))
                    for c, n in zip(clients, names, strict=True)
                )
            )
            entries = await Lineup(clients[0], config.redis.prefix).entries()
            assert sum(e.role == "champion" for e in entries.values()) == 1
            made += sum(r is not None for r in results)
        history = await Lineup(clients[0], config.redis.prefix).history()
        assert len(history) == made >= 5
        # each promotion names the champion before it: the chain has no gap
        champion = "m0"
        for a in history:
            assert a["evidence"]["previous"] == champion
            champion = a["subject"]
        assert champion == champion_of(entries).name
    finally:
        for c in clients:
            await c.aclose()


async def test_a_promotion_wakes_a_scorer_waiting_on_a_long_poll(
    redis, config, keys_cleaned
) -> None:
    models = ModelSet(config, redis)
    await models.ready()
    assert models.model.name == "a" and [m.name for m in models.shadows] == ["b"]
    waiting = asyncio.create_task(models.wait_for_change(30.0))
    await asyncio.sleep(0.3)
    t0 = time.monotonic()
    await Lineup(redis, config.redis.prefix).promote("b", notice("b"))
    assert await asyncio.wait_for(waiting, 5.0)
    assert time.monotonic() - t0 < 3.0
    assert await models.refresh()
    assert models.model.name == "b" and [m.name for m in models.shadows] == ["a"]


def example(
    i: int, y: int, champion: int, others: dict[str, int], ts: int
) -> tuple[int, TrainingExample]:
    shadow = {name: (1, p, float(p)) for name, p in others.items()}
    return i, TrainingExample(f"e{i}", {}, y, ts, ts, 1, champion, float(champion), "a", shadow)


def drift_alert(ts: int) -> dict[str, Any]:
    return {
        "kind": "concept_drift",
        "status": "firing",
        "alert_id": f"concept_drift:error_rate:adwin:{ts}",
        "ts": ts,
    }


async def test_retraining_is_bounded_and_a_loser_is_retired(redis, config, keys_cleaned) -> None:
    single = config.model_copy(update={"models": (config.models[0],)})
    learners = Learners(single, redis, Metrics())
    await learners.sync()
    started = await learners.decide([drift_alert(1000)], ts=1000)
    assert [(a["detector"], a["subject"]) for a in started] == [("started", "a.r1")]
    assert (
        learners.entries["a.r1"].since_ts == 1000 and learners.entries["a.r1"].origin == "retrain"
    )
    # a second alert while a.r1 is young (fewer than min_labels compared) starts nothing
    assert await learners.decide([drift_alert(1100)], ts=1100) == []
    # a.r1 as good as the champion: compared, never promoted, then retired after retire_after
    batch = [example(i, i % 2, i % 2, {"a.r1": i % 2}, 2000 + i) for i in range(25)]
    learners.judge({"a": batch}, now=0)
    assert learners.comparisons["a.r1"].total == 25
    out = await learners.decide([drift_alert(3000)], ts=3000)  # no longer young: a.r2
    assert [(a["detector"], a["subject"]) for a in out] == [("started", "a.r2")]
    batch = [example(i, i % 2, i % 2, {"a.r1": i % 2, "a.r2": i % 2}, 4000 + i) for i in range(25)]
    learners.judge({"a": batch}, now=0)
    # two live retrained challengers: the bound holds; a.r1 (50 compared >= 40) is retired
    out = await learners.decide([drift_alert(5000)], ts=5000)
    assert [(a["detector"], a["subject"]) for a in out] == [("retired", "a.r1")]
    assert sorted(learners.entries) == ["a", "a.r2"]
    history = await learners.lineup.history()
    assert [(a["detector"], a["subject"]) for a in history] == [
        ("started", "a.r1"), ("started", "a.r2"), ("retired", "a.r1"),
    ]  # fmt: skip
    assert history[-1]["evidence"]["compared"] == 50


async def test_the_policy_promotes_a_significantly_better_challenger_only(
    redis, config, keys_cleaned
) -> None:
    learners = Learners(config, redis, Metrics())
    await learners.sync()
    # b right where a is wrong on 1 in 4, else both right: margin 0.25 but only after 20 labels
    batch = [example(i, 1, 0 if i % 4 == 0 else 1, {"b": 1}, 100 + i) for i in range(16)]
    learners.judge({"a": batch}, now=0)
    assert await learners.decide([], ts=200) == []  # 16 labels < min_labels
    batch = [example(i, 1, 0 if i % 4 == 0 else 1, {"b": 1}, 200 + i) for i in range(16, 40)]
    learners.judge({"a": batch}, now=0)
    out = await learners.decide([], ts=300)
    assert [(a["detector"], a["subject"]) for a in out] == [("promoted", "b")]
    ev = out[0]["evidence"]
    assert (ev["labels"], ev["challenger_better"], ev["champion_better"]) == (40, 10, 0)
    assert ev["p_value"] == pytest.approx(0.5**10)
    assert out[0]["ts"] == 300
    assert learners.champion == "b" and learners.entries["a"].role == "challenger"
    assert learners.comparisons["a"].total == 0  # a new champion: compared afresh
    exported = await redis.hgetall(f"{config.redis.prefix}:lineup:compare")
    assert set(exported) == {b"b"}  # the last export, before the promotion


async def test_the_policy_never_undoes_an_operators_rollback(redis, config, keys_cleaned) -> None:
    from stream.model.versions import promote_challenger

    learners = Learners(config, redis, Metrics())
    await learners.sync()
    # the operator promotes b, a retrained c starts, the operator rolls back to a: b and c
    # are held; a challenger started afterwards is not
    await promote_challenger(learners.lineup, redis, "b")
    started = lifecycle_alert("started", "c", version=0, message="m", evidence={})
    c = Entry(ModelSettings(name="c", role="challenger"), "challenger", "retrain", since_ts=1)
    assert await learners.lineup.start(c, started)
    await promote_challenger(learners.lineup, redis, "a")
    d = Entry(ModelSettings(name="d", role="challenger"), "challenger", "retrain", since_ts=2)
    assert await learners.lineup.start(d, {**started, "subject": "d"})
    await learners.sync()
    assert learners.champion == "a"
    assert {n: e.held for n, e in learners.entries.items()} == {
        "a": False, "b": True, "c": True, "d": False
    }  # fmt: skip
    batch = [example(i, 1, 0, {"b": 1}, 100 + i) for i in range(40)]  # b right, a wrong
    learners.judge({"a": batch}, now=0)
    assert learners.verdicts()["b"].beats(20, 0.02, 0.01)
    assert await learners.decide([], ts=200) == []
    assert learners.champion == "a"
    # the operator may still promote it; then it is no longer held
    await promote_challenger(learners.lineup, redis, "b")
    entries = await learners.lineup.entries()
    assert entries["b"].role == "champion" and not entries["b"].held and entries["a"].held


def test_a_shadow_is_never_promoted_by_the_policy(redis_url, config, keys_cleaned) -> None:
    shadowed = config.model_copy(
        update={"models": (config.models[0], ModelSettings(name="b", role="shadow"))}
    )

    async def go() -> list[dict[str, Any]]:
        client = aioredis.from_url(redis_url)
        try:
            learners = Learners(shadowed, client, Metrics())
            await learners.sync()
            batch = [example(i, 1, 0, {"b": 1}, 100 + i) for i in range(40)]
            learners.judge({"a": batch}, now=0)
            assert learners.verdicts()["b"].beats(20, 0.02, 0.01)
            return await learners.decide([], ts=200)
        finally:
            await client.aclose()

    assert asyncio.run(go()) == []


async def test_each_arm_is_judged_on_what_it_served(redis, config, keys_cleaned) -> None:
    metrics = Metrics()
    learners = Learners(config, redis, metrics)
    await learners.sync()
    # entities of b's arm: b served (right 3 in 4); the others: a served (right 1 in 2)
    batch = [
        (i, TrainingExample(f"e{i}", {}, 1, i, i, 3, int(i % 4 != 0), 0.5, "b", {"a": (4, 0, 0.1)}))
        for i in range(40)
    ] + [example(i, 1, i % 2, {"b": 1}, 100 + i) for i in range(40, 80)]
    learners.judge({"a": batch}, now=0)
    assert learners.arms.metrics() == {"b": (0.75, 40), "a": (0.5, 40)}
    await learners.decide([], ts=200)
    assert metrics.arm_metric.labels("b", "metric")._value.get() == 0.75
    assert metrics.arm_metric.labels("a", "labels")._value.get() == 40


async def test_a_data_drift_alert_of_a_chosen_subject_starts_a_challenger_once(
    redis, config, keys_cleaned
) -> None:
    from types import SimpleNamespace

    from stream.service.resilience import Health
    from stream.service.steps import WatchStep

    chosen = config.model_copy(
        update={
            "models": (config.models[0],),
            "lifecycle": config.lifecycle.model_copy(
                update={"retrain_on": ("data_drift",), "retrain_subjects": ("amount",)}
            ),
        }
    )
    metrics = Metrics()
    watch = WatchStep(chosen, metrics, Health(metrics), SimpleNamespace(redis=redis), None)  # type: ignore[arg-type]

    def drift(subject: str, to_ts: int) -> dict[str, Any]:
        alert_id = f"data_drift:{subject}:ks:{to_ts}"
        return {"kind": "data_drift", "status": "firing", "subject": subject, "ts": to_ts,
                "alert_id": alert_id, "window": {"to_ts": to_ts}}  # fmt: skip

    # the monitors hand over only the chosen subject's firing alerts
    await watch._hand_over([drift("hour", 500), {**drift("amount", 600), "status": "resolved"}])
    learners = Learners(chosen, redis, Metrics())
    await learners.sync()
    assert await learners.decide([], ts=700) == []
    await watch._hand_over([drift("amount", 800)])
    out = await learners.decide([], ts=900)
    assert [(a["detector"], a["subject"]) for a in out] == [("started", "a.r1")]
    assert out[0]["evidence"]["trigger_kind"] == "data_drift"
    assert learners.entries["a.r1"].since_ts == 800
    # acted on: the next batch does not start another one from the same alert
    batch = [example(i, 1, 1, {"a.r1": 1}, 1000 + i) for i in range(30)]
    learners.judge({"a": batch}, now=0)  # a.r1 is no longer young
    assert await learners.decide([], ts=1100) == []
