#!/usr/bin/env python3
"""Micro-benchmark of the scoring hot path: µs per event to score, to learn, and for each
part of ``EventProcessor.process``.

Ten raw features (8 numeric, 2 categorical with 5 declared categories each); the first
``--windowed`` numeric features carry three windows (1m, 1h, 24h) with all six aggregates,
so an event reaches the model with 10 + 18 * windowed + 1 keys, as the worker enriches it.
Every pipeline first learns ``--warmup`` events (so trees have grown and encoders have seen
every category), then scores ``--events`` events with River one by one (``predict``), in
batches of ``--batch`` (``predict_many``: the numpy snapshot for a linear pipeline, River
for the others), and learns them. Best of ``--repeat`` runs; pure logic only.

Then the parts of ``EventProcessor.process`` for the logistic pipeline, per event, with
the baseline of each in the same run: validation; enrichment (``FeatureStore.enrich``
against an in-memory stand-in for Redis, so only our CPU is measured); scoring with River
event by event vs the snapshot; the per-event records frozen vs slotted.

    .venv/bin/python scripts/bench_model.py [--events 20000] [--windowed 1] [--batch 500]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream.features.plan import window_names  # noqa: E402
from stream.features.state import stored_generation  # noqa: E402
from stream.ingest.scoring import EventProcessor, _feature_input  # noqa: E402
from stream.model.online import OnlineModel, create_model  # noqa: E402
from stream.records import Incoming, ScoredEvent, ValidEvent  # noqa: E402
from stream.service.config import (  # noqa: E402
    PIPELINES_BY_TASK,
    FeatureSpec,
    ModelSettings,
    Settings,
)
from stream.service.metrics import Metrics  # noqa: E402

PIPELINES = [(task, p) for task, ps in PIPELINES_BY_TASK.items() for p in ps]
CATEGORIES = ("a", "b", "c", "d", "e")


def feature_specs(windowed: int) -> list[FeatureSpec]:
    windows = ("1m", "1h", "24h")
    numeric = [
        FeatureSpec(name=f"num{i}", windows=windows if i < windowed else ()) for i in range(8)
    ]
    categorical = [
        FeatureSpec(name=f"cat{i}", kind="categorical", categories=CATEGORIES) for i in range(2)
    ]
    return numeric + categorical


def make_events(specs: list[FeatureSpec], n: int, seed: int) -> list[tuple[dict[str, Any], int]]:
    """Enriched events and a learnable binary label (num0 above its median, 10 % noise)."""
    rng = random.Random(seed)
    enriched = window_names(specs)
    events = []
    for _ in range(n):
        x: dict[str, Any] = {s.name: rng.gauss(0, 1) for s in specs if s.kind == "numeric"}
        x.update({s.name: rng.choice(CATEGORIES) for s in specs if s.kind == "categorical"})
        x.update({name: rng.lognormvariate(0, 1) for name in enriched})
        y = int(x["num0"] > 0)
        events.append((x, 1 - y if rng.random() < 0.1 else y))
    return events


def label(task: str, x: dict[str, Any], y: int) -> Any:
    if task == "binary":
        return y
    if task == "multiclass":
        return CATEGORIES[min(int(abs(x["num0"]) * 2), 4)]
    return 3.0 * x["num0"] + x["num1"]


def best_us(run: Callable[[], None], n: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        run()
        times.append(time.perf_counter_ns() - start)
    return min(times) / n / 1000


def bench(task: str, pipeline: str, specs: list[FeatureSpec], args: argparse.Namespace) -> str:
    warm = make_events(specs, args.warmup, seed=1)
    events = make_events(specs, args.events, seed=2)
    xs = [x for x, _ in events]
    labelled = [(x, label(task, x, y)) for x, y in events]

    def fresh() -> OnlineModel:
        settings = ModelSettings.model_validate({"task": task, "pipeline": pipeline})
        model = create_model(settings, specs)
        for x, y in warm:
            model.learn(x, label(task, x, y))
        return model

    model = fresh()

    def predict_each() -> None:
        for x in xs:
            model.predict(x)

    def predict_batches() -> None:
        for i in range(0, len(xs), args.batch):
            model.predict_many(xs[i : i + args.batch])

    def learn_all() -> None:
        learner = fresh()  # a warmed-up copy each run; only the learning loop is timed
        start = time.perf_counter_ns()
        for x, y in labelled:
            learner.learn(x, y)
        learn_ns.append(time.perf_counter_ns() - start)

    learn_ns: list[int] = []
    for _ in range(args.repeat):
        learn_all()
    predict = best_us(predict_each, len(xs), args.repeat)
    many = best_us(predict_batches, len(xs), args.repeat)
    learn = min(learn_ns) / len(xs) / 1000
    name = f"{task}/{pipeline}"
    how = "snapshot" if model.linear_snapshot() is not None else "River"
    return (
        f"{name:<30} {predict:>11.1f} {many:>16.1f} {how:>9} {predict / many:>6.1f}x {learn:>9.1f}"
    )


class InMemoryRedis:
    """What FeatureStore uses of Redis (MGET and its conditional-write script), in memory:
    enrichment is timed without the network."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self.data.get(k) for k in keys]

    def register_script(self, _source: str) -> Callable[..., Any]:
        async def write(keys: list[str], args: list[Any]) -> list[int]:
            k, a, entity = 0, 2, 0
            conflicts = []
            # the layout of stream.features.store._WRITE_IF_UNCHANGED
            while a < len(args):
                entity += 1
                expected, n, state = args[a : a + 3]
                if stored_generation(self.data.get(keys[k])) == expected:
                    self.data[keys[k]] = state
                    for j in range(1, n + 1):
                        self.data[keys[k + j]] = args[a + 2 + j]
                else:
                    conflicts.append(entity)
                k += 1 + n
                a += 3 + n
            return conflicts

        return write


@dataclass(frozen=True)
class FrozenValidEvent:  # the records as they were before slots: the baseline
    event_id: str
    entity_id: str
    ts_ms: int
    values: dict[str, float | str]
    label: int | float | str | bool | None
    quality: tuple[Any, ...]
    missing: frozenset[str]


@dataclass(frozen=True)
class FrozenScoredEvent:
    event: Any
    x: dict[str, float | str]
    prediction: int | float | str | None
    proba: dict[str, float] | None
    score: float
    model_version: int


def messages(specs: list[FeatureSpec], n: int, entities: int) -> list[Incoming]:
    rng = random.Random(5)
    t0 = int(time.time() * 1000) - n * 5
    out = []
    for i, (x, _) in enumerate(make_events(specs, n, seed=3)):
        raw = {k: v for k, v in x.items() if any(k == s.name for s in specs)}
        event = {"event_id": f"e{i}", "entity_id": f"c{rng.randrange(entities)}",
                 "ts": t0 + i * 5, "features": raw}  # fmt: skip
        out.append(Incoming("events", 0, i, None, orjson.dumps(event)))
    return out


def bench_process(specs: list[FeatureSpec], args: argparse.Namespace) -> None:
    """µs per event of each part of EventProcessor.process, logistic pipeline."""
    settings = Settings(features=tuple(specs))
    model = create_model(settings.model, specs)
    for x, y in make_events(specs, args.warmup, seed=1):
        model.learn(x, y)
    river = create_model(settings.model, specs)
    river.estimator = model.estimator
    river._linear = (river.n_learned, None)  # no snapshot: River event by event, the baseline
    processor = EventProcessor(settings, aioredis.Redis(), lambda: model, Metrics())
    batches = [
        msgs[i : i + args.batch]
        for msgs in [messages(specs, args.events, args.entities)]
        for i in range(0, len(msgs), args.batch)
    ]
    n = args.events
    now = int(time.time() * 1000) + 1000
    times: dict[str, float] = {}

    def timed(name: str, run: Callable[[], Any], setup: Callable[[], Any] = lambda: None) -> Any:
        best = None
        for _ in range(args.repeat):
            setup()
            gc.collect()  # each part starts from the same heap, not the last part's garbage
            start = time.perf_counter_ns()
            out = run()
            elapsed = (time.perf_counter_ns() - start) / n / 1000
            best = elapsed if best is None else min(best, elapsed)
        times[name] = best or 0.0
        return out

    def empty_redis() -> None:  # every run applies the events afresh
        fake: Any = InMemoryRedis()
        processor.features.redis = fake
        processor.features._write = fake.register_script("")

    def each(step: Callable[[Any], Any], items: Sequence[Any]) -> None:
        for item in items:  # results dropped as the worker does: a heap that grows with
            step(item)  # every batch slows the collector, charged to whatever runs then

    timed("validation", lambda: each(lambda b: processor._validate(b, now), batches))
    valid = [processor._validate(b, now)[0] for b in batches]
    inputs = [[_feature_input(ev) for _, ev in v] for v in valid]

    async def enrich_all(keep: bool) -> list[Any]:
        kept = []
        for i in inputs:
            applied = await processor.features.enrich(i)
            if keep:
                kept.append(applied)
        return kept

    timed(
        "enrichment (CPU, in-memory Redis)",
        lambda: asyncio.run(enrich_all(keep=False)),
        empty_redis,
    )
    empty_redis()
    pairs = list(zip(valid, asyncio.run(enrich_all(keep=True)), strict=True))
    for name, served in (("scoring, River per event", river), ("scoring, snapshot", model)):

        def score_all(m: Any = served) -> Any:
            return each(lambda p: processor._score([m], p[0], p[1].results), pairs)

        timed(name, score_all)
    scored = [s for v, a in pairs for s in processor._score([model], v, a.results)[0]]
    records: list[tuple[str, Any, Any]] = [
        ("records, frozen (before)", FrozenValidEvent, FrozenScoredEvent),
        ("records, slots", ValidEvent, ScoredEvent),
    ]
    for name, event_type, scored_type in records:
        timed(name, partial(_build_records, event_type, scored_type, scored))  # n objects
    print(f"\nEventProcessor.process parts, logistic pipeline, batches of {args.batch}, "
          f"{n} events over {args.entities} entities (µs per event):")  # fmt: skip
    for name, us in times.items():
        print(f"  {name:<36} {us:>7.1f}")
    before, after = times["scoring, River per event"], times["scoring, snapshot"]
    print(f"  scoring speed-up {before / after:.1f}x")


def _build_records(event_type: Any, scored_type: Any, scored: list[ScoredEvent]) -> list[Any]:
    """A ValidEvent and a ScoredEvent per event, of the given classes."""
    out = []
    for s in scored:
        ev = s.event
        copy = event_type(ev.event_id, ev.entity_id, ev.ts_ms, ev.values, ev.label, ev.quality,
                          ev.missing)  # fmt: skip
        out.append(scored_type(copy, s.x, s.prediction, s.proba, s.score, s.model_version))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=5_000)
    parser.add_argument("--windowed", type=int, default=1, choices=range(9))
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", help="run only pipelines whose task/pipeline contains this")
    parser.add_argument("--entities", type=int, default=1_000, help="for the process parts")
    args = parser.parse_args()
    gc.collect()  # collect as the worker does (stream.service.cli.tune_gc)
    gc.freeze()
    gc.set_threshold(Settings().worker.gc_threshold, *gc.get_threshold()[1:])
    specs = feature_specs(args.windowed)
    keys = len(make_events(specs, 1, seed=0)[0][0])
    print(f"{keys} keys per event ({args.windowed} windowed features), {args.events} events")
    print("predict: River one event at a time; predict_many: the batch as the worker scores it")
    header = f"{'pipeline':<30} {'predict µs':>11} {'predict_many µs':>16} {'by':>9} {'gain':>7}"
    print(f"{header} {'learn µs':>9}")
    for task, pipeline in PIPELINES:
        if args.only and args.only not in f"{task}/{pipeline}":
            continue
        print(bench(task, pipeline, specs, args), flush=True)
    bench_process(specs, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
