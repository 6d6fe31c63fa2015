#!/usr/bin/env python3
"""End-to-end benchmark: driftwatch workers against a raw aiokafka passthrough.

Every row runs on the same local broker and Redis in the same run, so read the ratios:

- **aiokafka passthrough** (``scripts/aiokafka_passthrough.py``, in its own process as the
  worker is): consume, republish unchanged, commit after the acks; the most a Python Kafka
  client moves here. It runs first and again last; *vs pass* is against the faster of the
  two (the hypervisor's steal comes and goes within a run, and moved it by a fifth).
- **Faust echo (floor)**: ``scripts/faust_echo.py``, a Faust agent republishing the raw
  events with the worker's Faust settings: the most a worker on Faust's per-message path
  could move (the worker reads events and labels off that path, ``stream/service/batches.py``).
- **worker, sample config**: ``driftwatch.toml`` (its features, windows, model and the
  monitoring subjects it chose), on card events like the demo's; monitoring on and off.
- **worker, every subject**: a 10-feature LogReg, three features with 1m/1h/24h windows (18
  enriched features each), monitoring every raw and enriched feature and the predictions,
  the monitors' child at ``priority = "idle"`` like the sample config's.
- **+ 1 shadow challenger** (``--challenger``): the sample config, monitoring off, with a
  second model (``[[models]]``, role ``challenger``) scored on every event in shadow.
  *CPU µs/event* (the worker process's CPU time over the backlog, its monitors' child
  process excluded) against the monitors-off row is the challenger's cost.

For each row: N events are produced first, then the worker starts. *scorer* is N over the
time from the first prediction to the last (read from the predictions topic's end offsets,
not by consuming the records: that reader would take a third of a core from the machine the
worker shares with the broker and Redis); *monitors behind* is how long after the last
prediction the monitors had consumed every value the scorer sent them (the worker's
``driftwatch_monitor_values_total``); *sustained* is N over the time from the first
prediction until both were done: the rate at which scorer and monitors keep up. Latency
(event produced → prediction consumed, p50/p99) is then measured at half the sustained
rate for a few seconds, by a reader in a process of its own; the table's footnote names
the rows whose phase took Redis's key count past a power of two (Redis then doubles and
rehashes its keyspace's hash tables, and each command costs more for a second or so).
*CPU µs/event* is the worker process's CPU time up to its last prediction, and its
monitors' child process's and the whole machine's (every process, the broker and Redis
included) up to the monitors' last value, with the machine's *load* (its busy share of all
cores) over that time: a row whose load is near 100% is bound by the machine's cores.
Before the measured rows, ``--warmup`` events (20,000; 0: none) go once through each kind
of row (passthrough, worker with monitors, without, every subject), unmeasured: the
benchmark's broker is started fresh, and its JIT compiler spends seconds of CPU the first
times a kind of traffic comes (``jstat -compiler``: 1.3 s of compilation during a worker
row's phases on a new broker, 0.5 s the second time), which would be charged to whichever
row comes first (the first passthrough ran at 30,000-39,000 events/s, the last at
41,000-44,000).
``--memory`` adds a run of 1,000,000 events over 100,000 entities and prints the worker's
resident memory (and its monitors' child process's) as it goes. The table's last lines set
the worker rows against their targets (:data:`TARGETS`, p99 within 100 ms, monitors within
5 s), the ratios to four places: 0.1996 shows as 0.200 in the table.

The services are started if they are not running (``python3 scripts/services.py start``)
and stopped again at the end.

    python scripts/bench_pipeline.py [--events 100000] [--batch-size 500] [--memory]
                                     [--challenger] [--warmup 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from stream.messages import SubjectBatch, SubjectColumns, decode_monitor_message  # noqa: E402
from stream.monitoring.subjects import monitored_subjects  # noqa: E402
from stream.service.config import Settings, WorkerSettings  # noqa: E402
from stream.service.kafka_security import client_options  # noqa: E402
from stream.service.topics import ensure_topics  # noqa: E402
from stream.tools.synthetic import CardStream  # noqa: E402
from tests.integration.worker_process import ASSIGNED_LINE, WorkerProcess  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
from aiokafka_passthrough import READY as PASSTHROUGH_READY  # noqa: E402

N_FEATURES = 10
WINDOWED = 3
SERVICES = [sys.executable, str(REPO / "scripts" / "services.py")]
PASSTHROUGH = "aiokafka passthrough"
PASSTHROUGH_COMMAND = [sys.executable, str(REPO / "scripts" / "aiokafka_passthrough.py")]
POLL_S = 0.02  # how often the backlog's progress is read (its first and last output)
TICK_S = 0.001  # how often a paced producer sends the events due

#: ``(event, key)`` of event number ``i``; its ``ts`` is set when it is produced.
Events = Callable[[int], dict[str, Any]]


def _topics(uid: str) -> dict[str, Any]:
    return {
        "events": f"bench-events-{uid}",
        "labels": f"bench-labels-{uid}",
        "predictions": f"bench-predictions-{uid}",
        "alerts": f"bench-alerts-{uid}",
        "dlq": f"bench-dlq-{uid}",
        "monitor": f"bench-monitor-{uid}",
        "shadow": f"bench-shadow-{uid}",
        "partitions": 4,
    }


def _common(uid: str, bootstrap: str, redis_url: str, batch_size: int) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap": bootstrap},
        "topics": _topics(uid),
        "redis": {"url": redis_url, "prefix": f"bench-{uid}"},
        "worker": {
            "app_id": f"bench-{uid}",
            "batch_size": batch_size,
            "metrics_address": f"127.0.0.1:{_free_port()}",
        },
    }


def bench_settings(
    uid: str, bootstrap: str, redis_url: str, batch_size: int, **extra: Any
) -> Settings:
    """The 10-feature benchmark config (monitoring every subject unless ``extra`` says),
    the monitors' child at ``priority = "idle"`` as in the sample config (alternating with
    the default ``"low"``: 8,721 / 8,355 against 8,513 / 7,643 events/s sustained)."""
    features = [
        {"name": f"f{i}", "impute": 0.0, "windows": ["1m", "1h", "24h"] if i < WINDOWED else []}
        for i in range(N_FEATURES)
    ]
    monitoring = {"subjects": [], "priority": "idle", **extra.pop("monitoring", {})}
    return Settings.model_validate(
        {
            **_common(uid, bootstrap, redis_url, batch_size),
            "features": features,
            "model": {"name": "bench"},
            "monitoring": monitoring,
            **extra,
        }
    )


def sample_settings(
    uid: str, bootstrap: str, redis_url: str, batch_size: int, monitoring: bool
) -> Settings:
    """``driftwatch.toml`` as shipped, on this run's topics, Redis prefix and group."""
    config = tomllib.loads((REPO / "driftwatch.toml").read_text())
    common = _common(uid, bootstrap, redis_url, batch_size)
    for section, values in common.items():
        config[section] = {**config.get(section, {}), **values}
    config["monitoring"] = {**config.get("monitoring", {}), "enabled": monitoring}
    return Settings.model_validate(config)


def bench_event(i: int) -> dict[str, Any]:
    feats = {f"f{j}": float((i * (j + 3)) % 97) / 7.0 for j in range(N_FEATURES)}
    return {"event_id": f"e-{i}", "entity_id": f"card-{i % 1000}", "features": feats}


def card_events(n_cards: int) -> Events:
    cards = CardStream(seed=11, n_cards=n_cards, run_id="e")

    def event(i: int) -> dict[str, Any]:
        return cards.event(i)[0]

    return event


async def produce(s: Settings, events: Events, n: int, rate: float = 0.0, offset: int = 0) -> None:
    """Produce events ``offset .. offset + n``, each stamped (``ts``) as it is sent; at
    ``rate`` events/s if given, else as fast as possible.

    Paced, the events are made before the clock starts and the ones due are sent every
    :data:`TICK_S` (sleeping before each event cost a wake-up per event): 21 instead of 27
    µs of CPU per event at 15,000/s, 6 of them making the event. The latency phase's
    producer shares the machine's cores with the worker it measures."""
    producer = AIOKafkaProducer(linger_ms=5, acks="all", **client_options(s))
    await producer.start()
    try:
        made = [events(i) for i in range(offset, offset + n)] if rate > 0 else None
        t0, i = time.monotonic(), 0
        while i < n:
            due = n if rate <= 0 else min(n, int((time.monotonic() - t0) * rate) + 1)
            for j in range(i, due):
                body = events(offset + j) if made is None else made[j]
                body["ts"] = int(time.time() * 1000)
                key = body["entity_id"].encode()
                await producer.send(s.topics.events, orjson.dumps(body), key=key)
            i = due
            if i < n:
                await asyncio.sleep(TICK_S)
        await producer.flush()
    finally:
        await producer.stop()


async def read_latencies(
    s: Settings, n: int, wait_s: float, consumer: AIOKafkaConsumer
) -> list[float]:
    """Read ``n`` predictions from where ``consumer`` is; their latencies in ms (event
    produced -> prediction read)."""
    latencies: list[float] = []
    try:
        deadline = time.monotonic() + wait_s
        while len(latencies) < n and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            now_ms = time.time() * 1000
            for records in batches.values():
                for rec in records:
                    latencies.append(now_ms - orjson.loads(rec.value or b"{}")["ts"])
    finally:
        await consumer.stop()
    if len(latencies) < n:
        raise RuntimeError(
            f"only {len(latencies)}/{n} outputs from {s.topics.predictions} in {wait_s}s"
        )
    return latencies


async def backlog_times(s: Settings, n: int, wait_s: float) -> tuple[float, float]:
    """Monotonic times of the first and of the ``n``-th output of the backlog, read from
    the output topic's end offsets every ``POLL_S`` (a reader of the records themselves would
    spend a core's third here, on the machine the worker and the services share)."""
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **client_options(s))
    await consumer.start()
    tps = [TopicPartition(s.topics.predictions, p) for p in range(s.topics.partitions)]
    first, seen = 0.0, 0
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            seen = sum((await consumer.end_offsets(tps)).values())
            now = time.monotonic()
            if seen and not first:
                first = now
            if seen >= n:
                return first, now
            await asyncio.sleep(POLL_S)
    finally:
        await consumer.stop()
    raise RuntimeError(f"only {seen}/{n} outputs on {s.topics.predictions} in {wait_s}s")


@dataclass
class Machine:
    """Busy CPU time of the whole machine (every process: worker, services, this script)."""

    busy_s: float
    wall_s: float
    steal_s: float  # time the hypervisor gave this machine's cores to someone else

    @staticmethod
    def now() -> tuple[float, float, float]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle, iowait
        steal = fields[7] if len(fields) > 7 else 0
        busy = sum(fields[:8]) - idle - steal
        tick = os.sysconf("SC_CLK_TCK")
        return busy / tick, time.monotonic(), steal / tick

    @classmethod
    def since(cls, start: tuple[float, float, float]) -> Machine:
        busy, wall, steal = cls.now()
        return cls(busy - start[0], wall - start[1], steal - start[2])

    @property
    def load(self) -> float:
        """Busy fraction of all the machine's cores."""
        return self.busy_s / self._cores_s

    @property
    def stolen(self) -> float:
        """Fraction of all the machine's cores' time given to other machines."""
        return self.steal_s / self._cores_s

    @property
    def _cores_s(self) -> float:
        return max(self.wall_s * (os.cpu_count() or 1), 1e-9)


@dataclass
class Row:
    name: str
    scorer: float  # events/s, first to last prediction
    behind_s: float | None  # monitors done this long after the last prediction
    sustained: float
    latencies_ms: list[float]
    rate: float  # the paced rate of the latency phase
    cpu_us: float | None = None  # the worker process's CPU per event over the backlog
    monitors_cpu_us: float | None = None  # its monitors' child process's, until they are done
    machine: Machine | None = None  # every process's, until scorer and monitors are done
    n: int = 1  # events in the backlog
    keys: tuple[int, int] = (0, 0)  # Redis's key count when the latency phase began and ended


def paced_latencies(s: Settings, events: Events, n: int, rate: float) -> list[float]:
    """After a backlog of ``n``: produce ~5 s of events at ``rate``; their latencies in ms.

    The reader runs in a process of its own, started at the end of the predictions topic:
    on the producer's event loop, each of its reads waited behind the sends due at the time,
    and counted that as the worker's latency (reading the backlog's predictions first would
    delay it by seconds)."""
    m = max(200, int(rate * 5))
    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe()
    reader = ctx.Process(target=latency_reader, args=(s, m, 600, theirs), daemon=True)
    reader.start()
    try:
        for _ in range(2):  # "ready" once it is positioned, then the latencies
            # the reader's own deadline is 600 s; it may also die without a word
            if mine not in wait([mine, reader.sentinel], timeout=660):
                raise RuntimeError(f"the latency reader stopped (exit code {reader.exitcode})")
            answer = mine.recv()
            if isinstance(answer, BaseException):
                raise answer
            if answer == "ready":
                asyncio.run(produce(s, events, m, rate, offset=n))
        return cast(list[float], answer)
    finally:
        reader.join(10)
        if reader.is_alive():
            reader.kill()


def latency_reader(s: Settings, n: int, wait_s: float, conn: Connection) -> None:
    """The latency reader's process: position at the end of the predictions topic, say
    ``"ready"``, then send the latencies of the next ``n`` predictions (or the error)."""

    async def read() -> list[float]:
        consumer = AIOKafkaConsumer(enable_auto_commit=False, **client_options(s))
        await consumer.start()
        tps = [TopicPartition(s.topics.predictions, p) for p in range(s.topics.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)  # resolved now, before the first paced event
        conn.send("ready")
        return await read_latencies(s, n, wait_s, consumer)

    try:
        conn.send(asyncio.run(read()))
    except Exception as exc:  # noqa: BLE001 - the parent raises it
        conn.send(exc)


def run_worker(
    name: str,
    s: Settings,
    events: Events,
    n: int,
    workdir: Path,
    command: Sequence[str] | None = None,
    ready: str = ASSIGNED_LINE,
) -> Row:
    """One row: ``n`` events produced, then the worker (or ``command``, logging ``ready``
    once it consumes) started in its own process and timed on them."""
    asyncio.run(ensure_topics(s))
    asyncio.run(produce(s, events, n))
    worker = WorkerProcess(s, workdir, {"DRIFTWATCH_SNAPSHOT_KEY": "bench"}, command, ready)
    worker.start()
    try:
        cpu0, machine0 = _cpu_s(worker.pid), Machine.now()
        children0 = {pid: _cpu_s(pid) for pid in _children(worker.pid)}
        first, last = asyncio.run(backlog_times(s, n, 600))
        cpu_us = (_cpu_s(worker.pid) - cpu0) / n * 1e6
        behind: float | None = None
        done = last
        if command is None and s.monitoring.enabled:
            expected = asyncio.run(values_sent_to_monitors(s))
            done = _wait_for_metric(s, "driftwatch_monitor_values_total", expected, 600)
            behind = max(0.0, done - last)
        machine = Machine.since(machine0)
        children = sum(_cpu_s(pid) - children0.get(pid, 0.0) for pid in _children(worker.pid))
        # no shorter than one poll: a backlog read done within one would give no rate
        scorer = n / max(last - first, POLL_S)
        sustained = n / max(done - first, POLL_S)
        keys_before = _redis_keys(s)
        lat = paced_latencies(s, events, n, sustained / 2)
        keys = (keys_before, _redis_keys(s))
    finally:
        worker.stop()
        drop_run(s)
    monitors = children / n * 1e6 if command is None and s.monitoring.enabled else None
    return Row(
        name, scorer, behind, sustained, lat, sustained / 2, cpu_us, monitors, machine, n, keys
    )


async def values_sent_to_monitors(s: Settings) -> int:
    """The subject values on the monitor topic up to its end now (all the scorer sent)."""
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **client_options(s))
    await consumer.start()
    try:
        tps = [TopicPartition(s.topics.monitor, p) for p in range(s.topics.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        values = 0
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                values += sum(values_in(rec.value or b"") for rec in records)
        return values
    finally:
        await consumer.stop()


def values_in(raw: bytes) -> int:
    """The subject values of a monitor-topic message, counted as the monitors count them
    (one per value of each :class:`SubjectBatch`), without building the batches: this runs
    while the monitors catch up, on the cores they share (0.38 s of CPU for the
    every-subject row's 6.7 million values when it built them).

    >>> import numpy as np
    >>> c = SubjectColumns(np.array([5, 7]), None, [("x", 1), ("y", 1)],
    ...                    np.array([[1.5, np.nan], [2.0, 3.0]]), [("k", 1, [None, "a"])])
    >>> values_in(c.encode()), sum(len(b.values) for b in decode_monitor_message(c.encode()))
    (4, 4)
    """
    if raw[:1] != b"G":
        return sum(
            len(b.values) for b in decode_monitor_message(raw) if isinstance(b, SubjectBatch)
        )
    columns = SubjectColumns.decode(raw)
    numeric = int(np.count_nonzero(columns.values == columns.values))  # not nan
    return numeric + sum(v is not None for _, _, found in columns.categorical for v in found)


def memory_run(s: Settings, n: int, n_entities: int, workdir: Path) -> None:
    """Feed ``n`` events over ``n_entities`` entities; print the worker's RSS as it goes."""
    asyncio.run(ensure_topics(s))
    worker = WorkerProcess(s, workdir, {"DRIFTWATCH_SNAPSHOT_KEY": "bench"})
    events = card_events(n_entities)
    chunk = max(n // 10, 1)
    worker.start()
    try:
        print(f"\nmemory: {n:,} events over {n_entities:,} entities (sample config, monitoring on)")
        print(f"{'events':>10}{'RSS MiB':>10}{'peak MiB':>10}{'monitors':>10}{'Redis MiB':>11}"
              f"{'seconds':>10}")  # fmt: skip
        t0 = time.monotonic()
        for k in range(0, n, chunk):
            m = min(chunk, n - k)
            asyncio.run(produce(s, events, m, offset=k))
            _wait_for_metric(s, "driftwatch_events_received_total", k + m, 1800)
            rss, peak = _memory_mib(worker.pid)
            child = sum(_memory_mib(pid)[0] for pid in _children(worker.pid))
            used = _redis_mib(s)
            print(f"{k + m:>10,}{rss:>10.0f}{peak:>10.0f}{child:>10.0f}{used:>11.0f}"
                  f"{time.monotonic() - t0:>10.0f}")  # fmt: skip
    finally:
        worker.stop()
        drop_run(s)


def drop_run(s: Settings) -> None:
    """Delete a row's topics and Redis keys: a broker left holding every run's partitions
    (thousands after a few runs) spent 30 µs more CPU per event on the next run's rows."""
    uid = s.redis.prefix.removeprefix("bench-")

    async def topics() -> None:
        admin = AIOKafkaAdminClient(**client_options(s))
        await admin.start()
        try:
            mine = [t for t in await admin.list_topics() if uid in t]
            if mine:
                await admin.delete_topics(mine)
        finally:
            await admin.close()

    asyncio.run(topics())
    client = redis.Redis.from_url(s.redis.url)
    try:
        keys = list(client.scan_iter(match=f"{s.redis.prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.unlink(*keys[start : start + 1000])
    finally:
        client.close()


def _redis_keys(s: Settings) -> int:
    """The number of keys in the run's Redis database."""
    with redis.Redis.from_url(s.redis.url) as client:
        return int(client.dbsize())


def doublings(keys: tuple[int, int]) -> list[int]:
    """The powers of two a key count passed from ``keys[0]`` to ``keys[1]``: Redis doubles
    its keyspace's hash tables there and rehashes them while serving.

    >>> doublings((208_000, 350_000)), doublings((1, 3)), doublings((100, 120))
    ([262144], [2], [])
    """
    low, high = keys
    return [2**k for k in range(1, 64) if low < 2**k <= high]


def _redis_mib(s: Settings) -> float:
    """Redis's used memory (the whole server: the run's keys and whatever else it holds)."""
    client = redis.Redis.from_url(s.redis.url)
    try:
        return float(client.info("memory")["used_memory"]) / 2**20
    finally:
        client.close()


def _children(pid: int | None) -> list[int]:
    """The worker's child processes (the monitors' process)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (its children excluded)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _memory_mib(pid: int | None) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    kib = lambda k: float(fields[k].split()[0]) / 1024  # noqa: E731
    return kib("VmRSS"), kib("VmHWM")


def _wait_for_metric(s: Settings, name: str, at_least: float, wait_s: float) -> float:
    """Poll the worker's /metrics until ``name`` reaches ``at_least``; the time it did."""
    url = f"http://{s.worker.metrics_address}/metrics"
    deadline = time.monotonic() + wait_s
    value = 0.0
    while time.monotonic() < deadline:
        value = _metric(url, name)
        if value >= at_least:
            return time.monotonic()
        time.sleep(0.1)
    raise TimeoutError(f"{name} is {value}, not {at_least}, after {wait_s} s")


def _metric(url: str, name: str) -> float:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - 127.0.0.1
            text = response.read().decode()
    except OSError:
        return 0.0
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _reachable(host_port: str) -> bool:
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _services(bootstrap: str, redis_url: str) -> Iterator[None]:
    """Start the local services if they are not running; stop what was started."""
    redis_host = redis_url.split("//", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    if _reachable(bootstrap) and _reachable(redis_host):
        yield
        return
    print("starting the local services (python3 scripts/services.py start) ...", flush=True)
    subprocess.run([*SERVICES, "start"], check=True)  # noqa: S603 - our own script
    try:
        yield
    finally:
        subprocess.run([*SERVICES, "stop"], check=False)  # noqa: S603 - our own script


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def print_table(n: int, rows: list[Row]) -> None:
    # the faster passthrough: a first one slowed by the hypervisor would flatter every ratio
    base = max(r.sustained for r in rows if r.name.startswith(PASSTHROUGH))
    floor = rows[1].sustained
    print(f"\nend-to-end, {n:,} events of backlog; latency at half each row's sustained rate")
    header = (
        f"{'':34}{'scorer/s':>10}{'monitors':>10}{'sustained':>11}{'latency at':>12}"
        f"{'p50 ms':>8}{'p99 ms':>8}{'vs pass':>9}{'vs floor':>10}"
        f"{'CPU us/event: worker':>22}{'monitors':>10}{'machine':>9}{'load':>6}{'steal':>7}"
    )
    print(header)
    print(f"{'':34}{'':>10}{'behind s':>10}{'events/s':>11}{'events/s':>12}")
    for r in rows:
        behind = "-" if r.behind_s is None else f"{r.behind_s:.1f}"
        cpu = "-" if r.cpu_us is None else f"{r.cpu_us:.0f}"
        monitors = "-" if r.monitors_cpu_us is None else f"{r.monitors_cpu_us:.0f}"
        m = r.machine
        machine = "-" if m is None else f"{m.busy_s / r.n * 1e6:.0f}"
        load = "-" if m is None else f"{m.load:.0%}"
        steal = "-" if m is None else f"{m.stolen:.0%}"
        print(
            f"{r.name:34}{r.scorer:>10.0f}{behind:>10}{r.sustained:>11.0f}{r.rate:>12.0f}"
            f"{pct(r.latencies_ms, 50):>8.1f}{pct(r.latencies_ms, 99):>8.1f}"
            f"{r.sustained / base:>9.3f}{r.sustained / floor:>10.3f}"
            f"{cpu:>22}{monitors:>10}{machine:>9}{load:>6}{steal:>7}"
        )
    print(
        "machine: every process's CPU per event until scorer and monitors were done (worker, "
        "monitors, broker, Redis, this script); load: its share of the "
        f"{os.cpu_count()} cores. A row near 100% is bound by the machine's cores, not by one "
        "process; steal: the cores' time the hypervisor gave to other machines (noise)."
    )
    crossed = [(r.name.strip(), ks) for r in rows if (ks := doublings(r.keys))]
    if crossed:
        print(
            "Redis doubled its keyspace's hash tables during the latency phase of: "
            + "; ".join(
                f"{name} (passed {', '.join(f'{k:,}' for k in ks)} keys)" for name, ks in crossed
            )
            + ". Its commands cost more until the rehash is done: a worker writing a "
            "growing keyspace (a fresh Redis) sees it at every power of two."
        )
    off = next((r for r in rows if r.name.endswith("monitors off")), None)
    shadow = next((r for r in rows if "challenger" in r.name), None)
    if off is not None and shadow is not None and off.cpu_us and shadow.cpu_us:
        print(f"one shadow challenger: {shadow.cpu_us / off.cpu_us - 1:+.0%} CPU per event "
              "(worker process, monitoring off)")  # fmt: skip
    print(targets(rows, base))


#: (row name ends with, least ratio to the passthrough): the throughput targets
TARGETS = (("monitors on", 0.35), ("monitors off", 0.45), ("every subject", 0.2))
MAX_P99_MS = 100.0  # at half each row's sustained rate
MAX_BEHIND_S = 5.0  # monitors done after the last prediction


def targets(rows: Sequence[Row], base: float) -> str:
    """Each target against its row, unrounded where a rounded ratio would hide a miss.

    >>> row = lambda name, rate, p99, behind: Row(name, rate, behind, rate, [p99] * 2, rate / 2)
    >>> print(targets([row("worker, sample config, monitors on", 4000, 80.0, 0.5),
    ...                row("worker, every subject (67)", 1996, 120.0, 1.0)], 10_000))
    targets (ratio to the passthrough, p99 at half rate, monitors behind):
      monitors on 0.4000 >= 0.35 met; p99 80 ms met; 0.5 s behind met
      every subject 0.1996 >= 0.2 MISSED; p99 120 ms MISSED; 1.0 s behind met
    """
    verdict = {True: "met", False: "MISSED"}
    parts = []
    for suffix, least in TARGETS:
        row = next((r for r in rows if r.name.split(" (")[0].endswith(suffix)), None)
        if row is None:
            continue
        ratio, p99 = row.sustained / base, pct(row.latencies_ms, 99)
        part = (f"  {suffix} {ratio:.4f} >= {least} {verdict[ratio >= least]}; "
                f"p99 {p99:.0f} ms {verdict[p99 <= MAX_P99_MS]}")  # fmt: skip
        if row.behind_s is not None:
            part += f"; {row.behind_s:.1f} s behind {verdict[row.behind_s <= MAX_BEHIND_S]}"
        parts.append(part)
    head = "targets (ratio to the passthrough, p99 at half rate, monitors behind):"
    return "\n".join([head, *parts])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # 100,000: the monitors calibrate their detectors once, when a subject's reference is
    # complete (~0.3 s per numeric subject); a short backlog would mostly measure that
    parser.add_argument("--events", type=int, default=100_000, help="backlog per row")
    parser.add_argument("--batch-size", type=int, default=WorkerSettings().batch_size)
    parser.add_argument(
        "--memory", action="store_true", help="also 1,000,000 events over 100,000 entities"
    )
    parser.add_argument("--memory-events", type=int, default=1_000_000, help=argparse.SUPPRESS)
    parser.add_argument(
        "--challenger", action="store_true", help="also the sample config with a shadow challenger"
    )
    parser.add_argument(
        "--warmup", type=int, default=20_000, help="unmeasured events per kind of row first"
    )
    parser.add_argument(
        "--bootstrap", default=os.environ.get("DRIFTWATCH_TEST_KAFKA", "127.0.0.1:9092")
    )
    parser.add_argument(
        "--redis", default=os.environ.get("DRIFTWATCH_TEST_REDIS", "redis://127.0.0.1:6379/0")
    )
    args = parser.parse_args()
    if args.events < 1000:
        parser.error("--events must be at least 1000")
    if args.warmup and args.warmup < 1000:
        parser.error("--warmup must be 0 or at least 1000")
    with _services(args.bootstrap, args.redis):
        run(args)
    return 0


def warm_up(args: argparse.Namespace, uid: str) -> None:
    """``args.warmup`` events once through each kind of row, results dropped (see the
    module docstring: the fresh broker's JIT compilation is not the rows' cost)."""
    n, size = args.warmup, args.batch_size
    started = time.monotonic()
    cards = card_events(1000)
    kinds: list[tuple[Settings, Events, Sequence[str] | None, str]] = [
        (sample_settings(f"up{uid}", args.bootstrap, args.redis, size, True), cards,
         PASSTHROUGH_COMMAND, PASSTHROUGH_READY),
        (sample_settings(f"u1{uid}", args.bootstrap, args.redis, size, True), cards, None,
         ASSIGNED_LINE),
        (sample_settings(f"u0{uid}", args.bootstrap, args.redis, size, False), cards, None,
         ASSIGNED_LINE),
        (bench_settings(f"ua{uid}", args.bootstrap, args.redis, size), bench_event, None,
         ASSIGNED_LINE),
    ]  # fmt: skip
    for s, events, command, ready in kinds:
        with tempfile.TemporaryDirectory() as tmp:
            run_worker("warm-up", s, events, n, Path(tmp), command, ready)
    print(f"warm-up: {n:,} events through each of {len(kinds)} kinds of row, not measured "
          f"({time.monotonic() - started:.0f} s)", flush=True)  # fmt: skip


def run(args: argparse.Namespace) -> None:
    uid = uuid.uuid4().hex[:8]
    n, size = args.events, args.batch_size
    cards = card_events(1000)
    on = lambda tag: sample_settings(f"{tag}{uid}", args.bootstrap, args.redis, size, True)  # noqa: E731
    rows = []

    def passthrough(name: str, tag: str) -> Row:
        with tempfile.TemporaryDirectory() as tmp:
            return run_worker(
                name, on(tag), cards, n, Path(tmp), PASSTHROUGH_COMMAND, PASSTHROUGH_READY
            )

    if args.warmup:
        warm_up(args, uid)
    rows.append(passthrough(PASSTHROUGH, "p"))
    command = [sys.executable, str(REPO / "scripts" / "faust_echo.py")]
    with tempfile.TemporaryDirectory() as tmp:
        # Faust's own consumer logs this when it gets the partitions (the echo has no other)
        ready = "Setting newly assigned partitions"
        rows.append(run_worker("faust echo (floor)", on("f"), cards, n, Path(tmp), command, ready))
    for name, monitoring in (
        ("worker, sample config, monitors on", True),
        ("worker, sample config, monitors off", False),
    ):
        s = sample_settings(
            f"w{int(monitoring)}{uid}", args.bootstrap, args.redis, size, monitoring
        )
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(run_worker(name, s, cards, n, Path(tmp)))
    if args.challenger:
        s = sample_settings(f"c{uid}", args.bootstrap, args.redis, size, False)
        challenger = s.model.model_copy(update={"name": "challenger", "role": "challenger"})
        s = Settings.model_validate(
            {**s.model_dump(mode="json"), "models": [s.model.model_dump(), challenger.model_dump()]}
        )
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(run_worker("  + 1 shadow challenger (off)", s, cards, n, Path(tmp)))
    s = bench_settings(f"a{uid}", args.bootstrap, args.redis, size)
    with tempfile.TemporaryDirectory() as tmp:
        every = f"worker, every subject ({len(monitored_subjects(s))})"
        rows.append(run_worker(every, s, bench_event, n, Path(tmp)))
    # again at the end: the ratios use the faster of the two (the hypervisor's steal comes
    # and goes within a run and moved the passthrough by a fifth)
    rows.append(passthrough(f"{PASSTHROUGH} (again)", "q"))
    print_table(n, rows)
    if args.memory:
        s = sample_settings(f"m{uid}", args.bootstrap, args.redis, size, True)
        with tempfile.TemporaryDirectory() as tmp:
            memory_run(s, args.memory_events, 100_000, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
