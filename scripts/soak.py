#!/usr/bin/env python3
"""Soak test: one worker, a paced stream and a loop of faults; nothing may be lost.

Starts Kafka and Redis through ``scripts/services.py`` when they are not running (and stops
at the end only what it started), runs a ``driftwatch worker`` subprocess on fresh topics,
produces card events at ``--rate`` for ``--duration`` seconds and, every ``--fault-every``
seconds, injects the next fault of ``--faults`` in turn:

    redis   stop Redis for --outage seconds, then start it (Redis keeps no data: a restart
            wipes the feature windows and models, never events)
    kafka   stop Kafka for --outage seconds (the producer holds meanwhile), then start it
    kill    SIGKILL the worker and start a new one at once
    stop    SIGSTOP the worker past its session timeout, then SIGCONT it
    poison  mix --poison hostile messages (bad JSON, tombstones, extreme numbers...) in

Then it drains: reads predictions and dead letters until every produced message has one
(or --drain seconds pass) and prints the figures. Exit status 1 if anything was lost.
Everything runs on 127.0.0.1 and every wait is bounded.

    python scripts/soak.py --duration 300 --rate 200
    python scripts/soak.py --duration 60 --faults kill,poison --fault-every 10

The Redis and Kafka stopped here are the local ones of ``scripts/services.py``; a Redis
restart loses whatever that Redis held (it runs without persistence).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import random
import secrets
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from stream.service.config import Settings, load_settings  # noqa: E402
from stream.service.kafka_security import client_options  # noqa: E402
from stream.service.topics import ensure_topics  # noqa: E402
from stream.tools.synthetic import CardStream  # noqa: E402
from tests.integration.faults import (  # noqa: E402
    Accounting,
    Outbound,
    PacedProducer,
    good,
    hold,
    poison_messages,
    read_outputs,
    running,
    services,
    stopped,
)
from tests.integration.worker_process import WorkerProcess  # noqa: E402

FAULTS = ("redis", "kafka", "kill", "stop", "poison")
SESSION_TIMEOUT_S = 6.0
N_CARDS = 500


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number greater than 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def _faults(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in FAULTS]
    if not kinds or unknown:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a comma-separated list of {', '.join(FAULTS)}"
        )
    return kinds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soak.py",
        description="Run a driftwatch worker under a paced stream and a loop of faults.",
    )
    parser.add_argument("--duration", type=_positive_float, default=300.0,
                        help="seconds of production and faults (default 300)")  # fmt: skip
    parser.add_argument("--rate", type=_positive_float, default=200.0,
                        help="events per second (default 200)")  # fmt: skip
    parser.add_argument("--fault-every", type=_positive_float, default=20.0,
                        help="seconds between the ends of two faults (default 20)")  # fmt: skip
    parser.add_argument("--outage", type=_positive_float, default=10.0,
                        help="seconds a service stays stopped (default 10)")  # fmt: skip
    parser.add_argument("--faults", type=_faults, default=FAULTS,
                        help=f"faults to inject in turn (default {','.join(FAULTS)})")  # fmt: skip
    parser.add_argument("--poison", type=_positive_int, default=200,
                        help="hostile messages per poison fault (default 200)")  # fmt: skip
    parser.add_argument("--drain", type=_positive_float, default=300.0,
                        help="seconds to wait for the last outputs (default 300)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=1, help="seed of the stream and the poison")
    parser.add_argument("--monitoring", action="store_true",
                        help="keep drift monitoring on (CPU-heavy calibration)")  # fmt: skip
    parser.add_argument("--workdir", type=Path, help="worker logs (default: a new temp dir)")
    return parser


@dataclass
class Run:
    """What happened during a soak, for the report."""

    faults: Counter[str] = field(default_factory=Counter)
    kill_restarts: int = 0
    crash_restarts: int = 0
    fault_errors: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)


def soak_settings(uid: str, kafka: str, redis_url: str, monitoring: bool) -> Settings:
    sample = load_settings(REPO / "driftwatch.toml")
    names = ("events", "labels", "predictions", "alerts", "dlq", "monitor")
    return Settings.model_validate(
        {
            "kafka": {"bootstrap": kafka},
            "topics": {**{n: f"soak-{n}-{uid}" for n in names}, "partitions": 4},
            "redis": {"url": redis_url, "prefix": f"soak-{uid}"},
            "worker": {
                "app_id": f"soak-{uid}",
                "batch_max_latency": "20ms",
                "metrics_address": "127.0.0.1:0",
                "session_timeout": f"{SESSION_TIMEOUT_S:g}s",
            },
            "features": [f.model_dump() for f in sample.features],
            "windows": sample.windows.model_dump(),
            "model": sample.model.model_dump(),
            "monitoring": {**sample.monitoring.model_dump(), "enabled": monitoring},
        }
    )


def ensure_services(run: Run) -> dict[str, str]:
    """Start Kafka and Redis if they are not running; their addresses."""
    addresses = {}
    for name in ("kafka", "redis"):
        status = services("status", name)
        if not status["running"]:
            result = services("start", name)
            if result["result"] == "started":
                run.started.append(name)
                log(f"started {name} at {result['address']}")
            status = result
        addresses[name] = str(status["address"])
    return addresses


def events_forever(seed: int) -> Iterator[Outbound]:
    cards = CardStream(seed=seed, n_cards=N_CARDS, run_id=f"soak{seed}")
    for i in itertools.count():
        yield good([cards.event(i)[0]])[0]


class Soak:
    def __init__(
        self, args: argparse.Namespace, settings: Settings, workdir: Path, run: Run
    ) -> None:
        self.args = args
        self.settings = settings
        self.workdir = workdir
        self.env = {"DRIFTWATCH_SNAPSHOT_KEY": secrets.token_hex(16)}
        self.rng = random.Random(args.seed)
        self.run = run
        self.workers: list[WorkerProcess] = []
        self.producer = PacedProducer(
            settings.kafka.bootstrap,
            settings.topics.events,
            events_forever(args.seed),
            args.rate,
            options=client_options(settings),
        )

    @property
    def worker(self) -> WorkerProcess:
        return self.workers[-1]

    def start_worker(self) -> None:
        worker = WorkerProcess(
            self.settings, self.workdir / f"worker-{len(self.workers)}", self.env
        )
        self.workers.append(worker)
        worker.start(timeout=120)

    def check_worker(self) -> None:
        if not self.worker.alive():
            self.run.crash_restarts += 1
            log(f"worker exited unexpectedly ({self.worker.log}); restarting it")
            self.start_worker()

    def inject(self, kind: str) -> None:
        outage = self.args.outage
        if kind == "redis":
            with stopped("redis"):
                hold(outage, [self.worker])
        elif kind == "kafka":
            if not self.producer.pause(60):
                raise RuntimeError("producer did not pause within 60 s")
            try:
                with stopped("kafka"):
                    hold(outage, [self.worker])
            finally:
                self.producer.resume()
        elif kind == "kill":
            self.worker.kill()
            self.run.kill_restarts += 1
            self.start_worker()
        elif kind == "stop":
            self.worker.pause()
            try:
                hold(max(outage, SESSION_TIMEOUT_S + 4), [self.worker])
            finally:
                self.worker.resume()
        else:  # poison at the stream's current event time
            ts = CardStream().start_ms + len(self.producer.produced()) * CardStream().step_ms
            entities = [f"card-{i}" for i in range(N_CARDS)]
            prefix = f"poison{self.run.faults['poison']}"
            self.producer.inject(
                poison_messages(self.rng, self.args.poison, entities, ts, prefix=prefix)
            )

    def faults_loop(self) -> None:
        kinds = list(self.args.faults)
        self.rng.shuffle(kinds)
        end = time.monotonic() + self.args.duration
        for n in itertools.count():
            next_at = time.monotonic() + self.args.fault_every
            while time.monotonic() < min(next_at, end):
                self.check_worker()
                if self.producer.finished:
                    raise RuntimeError(f"producer stopped: {self.producer.error!r}")
                time.sleep(0.2)
            if time.monotonic() >= end:
                return
            kind = kinds[n % len(kinds)]
            log(f"fault {n + 1}: {kind} ({len(self.producer.produced())} messages produced)")
            try:
                self.inject(kind)
            except Exception as exc:  # count it, make sure the worker runs, go on
                self.run.fault_errors.append(f"{kind}: {exc}")
                log(f"fault {kind} went wrong: {exc}")
            self.run.faults[kind] += 1

    def execute(self) -> tuple[Accounting, float]:
        t0 = time.monotonic()
        asyncio.run(ensure_topics(self.settings))
        self.start_worker()
        self.producer.start()
        try:
            self.faults_loop()
        finally:
            self.producer.stop(120)
            for name in ("redis", "kafka"):
                if not running(name):
                    services("start", name)
        if self.producer.error is not None:
            raise RuntimeError(f"producer failed: {self.producer.error!r}")
        self.check_worker()
        sent = self.producer.produced()
        t = self.settings.topics
        log(f"draining: {len(sent)} messages produced; waiting up to {self.args.drain:g} s")
        outputs = read_outputs(
            self.settings.kafka.bootstrap, t.events, t.predictions, t.dlq, sent,
            self.args.drain, settle=2.0, options=client_options(self.settings),
        )  # fmt: skip
        accounting = outputs.account(sent)
        if accounting.lost:
            log(outputs.describe_lost(accounting.lost))
        return accounting, time.monotonic() - t0

    def close(self) -> None:
        for w in self.workers:
            w.stop()


def report(soak: Soak, acc: Accounting, wall: float) -> str:
    run, args = soak.run, soak.args
    faults = ", ".join(f"{k} {run.faults[k]}" for k in args.faults) or "none"
    alive = "yes" if soak.worker.alive() else "NO"
    rows = [
        ("duration / rate", f"{args.duration:g} s at {args.rate:g} events/s"),
        ("events produced", f"{acc.produced} ({acc.good} good, {acc.poison} poison)"),
        ("predicted", str(acc.predicted)),
        ("dead-lettered", str(acc.dead_lettered)),
        ("lost", str(len(acc.lost))),
        ("duplicates", str(acc.duplicates)),
        ("faults injected", faults),
        ("fault errors", "; ".join(run.fault_errors) or "none"),
        ("worker restarts", f"{run.kill_restarts} after kills, {run.crash_restarts} after crashes"),
        ("producer retries", str(soak.producer.retries)),
        ("worker alive at end", alive),
        ("worker logs", str(soak.workdir)),
        ("wall time", f"{wall:.1f} s"),
        ("result", "OK" if not acc.lost else "LOST EVENTS"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # our clients during outages
    if os.environ.get("DRIFTWATCH_TEST_KAFKA") or os.environ.get("DRIFTWATCH_TEST_REDIS"):
        print("soak.py: injects faults into the local services only", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="driftwatch-soak-"))
    run = Run()
    soak: Soak | None = None
    try:
        addresses = ensure_services(run)
        settings = soak_settings(
            uuid.uuid4().hex[:12],
            addresses["kafka"],
            f"redis://{addresses['redis']}/0",
            args.monitoring,
        )
        soak = Soak(args, settings, workdir, run)
        accounting, wall = soak.execute()
        print(report(soak, accounting, wall))
        return 1 if accounting.lost else 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"soak.py: {exc}", file=sys.stderr)
        return 1
    finally:
        if soak is not None:
            soak.close()
        for name in reversed(run.started):
            services("stop", name)
            log(f"stopped {name}")


if __name__ == "__main__":
    sys.exit(main())
