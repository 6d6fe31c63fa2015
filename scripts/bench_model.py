#!/usr/bin/env python3
"""Micro-benchmark of the model's hot path: µs per event to score and to learn.

Ten raw features (8 numeric, 2 categorical with 5 declared categories each); the first
``--windowed`` numeric features carry three windows (1m, 1h, 24h) with all six aggregates,
so an event reaches the model with 10 + 18 * windowed + 1 keys, as the worker enriches it.
Every pipeline first learns ``--warmup`` events (so trees have grown and encoders have seen
every category), then scores ``--events`` events one by one (``predict``), in batches of
``--batch`` (``predict_many``), and learns them. Best of ``--repeat`` runs; pure logic only.

    .venv/bin/python scripts/bench_model.py [--events 20000] [--windowed 1] [--batch 500]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream.features.plan import window_names  # noqa: E402
from stream.model.online import OnlineModel, create_model  # noqa: E402
from stream.service.config import PIPELINES_BY_TASK, FeatureSpec, ModelSettings  # noqa: E402

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
    return f"{name:<30} {predict:>11.1f} {many:>16.1f} {learn:>9.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=5_000)
    parser.add_argument("--windowed", type=int, default=1, choices=range(9))
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", help="run only pipelines whose task/pipeline contains this")
    args = parser.parse_args()
    specs = feature_specs(args.windowed)
    keys = len(make_events(specs, 1, seed=0)[0][0])
    print(f"{keys} keys per event ({args.windowed} windowed features), {args.events} events")
    print(f"{'pipeline':<30} {'predict µs':>11} {'predict_many µs':>16} {'learn µs':>9}")
    for task, pipeline in PIPELINES:
        if args.only and args.only not in f"{task}/{pipeline}":
            continue
        print(bench(task, pipeline, specs, args), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
