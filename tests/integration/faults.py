"""Fault injection and loss accounting for the fault tests and ``scripts/soak.py``.

No pytest here (the soak script imports this module). Everything talks to 127.0.0.1 and
every wait is bounded.

- :func:`services` / :func:`stopped`: stop and start Kafka or Redis through
  ``scripts/services.py``, exactly as the test fixtures start them.
- :func:`pause_mid_batch`: SIGSTOP a worker between reading a batch's states from Redis
  and writing them back (the window in which a blind write loses another worker's updates).
- :class:`Outbound` / :class:`Sent`: a message to produce, and where the broker put it.
- :func:`poison_messages`: seeded malformed, hostile and borderline event messages.
- :class:`PacedProducer`: produces at a fixed rate in a background thread; it can be
  paused (for a broker outage) and can take extra messages (poison bursts) on the way.
- :class:`Outputs`: what the worker published (predictions by event id, dead letters by
  input position) and which produced messages have neither (lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import redis
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from stream.tools.synthetic import CATEGORIES, CardStream
from tests.integration.kafka_io import consume_until, send_with_offsets
from tests.integration.worker_process import WorkerProcess

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
SERVICES = [sys.executable, str(REPO / "scripts" / "services.py")]
DAY_MS = 86_400_000
Y2000_MS = 946_684_800_000

# --- services --------------------------------------------------------------------------


def services(action: str, name: str, timeout: float = 300.0) -> dict[str, Any]:
    """Run ``scripts/services.py ACTION NAME --json``; its result for NAME."""
    proc = subprocess.run(
        [*SERVICES, action, name, "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/services.py {action} {name} failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout)[name]
    return result


def running(name: str) -> bool:
    return bool(services("status", name)["running"])


@contextlib.contextmanager
def stopped(name: str) -> Iterator[None]:
    """Stop a service for the duration of the block; it is started again whatever happens."""
    services("stop", name)
    try:
        yield
    finally:
        services("start", name)


def hold(seconds: float, workers: Sequence[WorkerProcess] = ()) -> None:
    """Let ``seconds`` pass (a fault's duration), failing at once if a worker dies."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        for w in workers:
            if not w.alive():
                raise RuntimeError(f"worker died during the fault:\n{w.tail()}")
        time.sleep(min(0.5, left))


def _tcp_table() -> list[list[str]]:
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            rows += [line.split() for line in Path(table).read_text().splitlines()[1:]]
    return rows


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1], 16)


def redis_ports_of(pid: int, redis_port: int) -> set[int]:
    """The local ports of the TCP connections process ``pid`` holds to ``redis_port``."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    return {
        _port(row[1]) for row in _tcp_table() if row[9] in inodes and _port(row[2]) == redis_port
    }


def _unread_bytes(local_port: int, redis_port: int) -> int:
    """Bytes waiting in the receive queue of the connection from ``local_port`` to Redis."""
    for row in _tcp_table():
        if _port(row[1]) == local_port and _port(row[2]) == redis_port:
            return int(row[4].split(":")[1], 16)
    return 0


def pause_mid_batch(worker: WorkerProcess, redis_url: str, timeout: float = 10.0) -> bool:
    """SIGSTOP ``worker`` in the middle of a batch: states read, new states not written.

    Polls Redis ``CLIENT LIST`` for one of the worker's connections whose last command is
    the ``MGET`` of a batch's feature states, whose reply the worker has taken off the
    socket (stopped while the reply is still in flight, the read would merely time out
    and be retried), while the worker is on the CPU (computing the batch). It stops the
    worker then and checks that the connection's last command is still that ``MGET``
    (no write slipped in); if not, it resumes the worker at once and waits for the next
    batch. After ``timeout`` without such a moment it stops the worker anyway. Returns
    whether it caught one.
    """
    client = redis.Redis.from_url(redis_url, socket_timeout=5.0)
    redis_port = int(client.connection_pool.connection_kwargs.get("port", 6379))
    assert worker.pid is not None  # noqa: S101 - started
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ports = redis_ports_of(worker.pid, redis_port)
            reading = [
                c["addr"]
                for c in client.client_list()
                if c.get("cmd") == "mget" and _port_of(c["addr"]) in ports
            ]
            for addr in reading:
                if _unread_bytes(_port_of(addr), redis_port) or worker.state() != "R":
                    continue
                worker.pause()
                if any(c["addr"] == addr and c.get("cmd") == "mget" for c in client.client_list()):
                    return True
                worker.resume()  # it got to its write first: the next batch
            time.sleep(0.001)
    finally:
        client.close()
    worker.pause()
    return False


def pause_at_write(
    worker: WorkerProcess, redis_url: str, send: Callable[[], T], timeout: float = 20.0
) -> tuple[bool, T]:
    """SIGSTOP ``worker`` with a batch of what ``send()`` produces read and not published.

    Pauses Redis's writes (``CLIENT PAUSE ... WRITE``: reads go on), calls ``send()``, and
    waits for one of the worker's connections to block on a script, the batch's state
    write (a batch publishes nothing before its states are written), then half a second
    for the batches behind it; stops the worker and lets the writes go (they are applied,
    their replies wait for the worker). Deterministic where :func:`pause_mid_batch` has to
    be on time: on a busy machine a burst's few batches could all slip past its polls.
    Returns whether a write was caught (after ``timeout`` it stops the worker anyway) and
    what ``send`` returned.
    """
    client = redis.Redis.from_url(redis_url, socket_timeout=5.0)
    redis_port = int(client.connection_pool.connection_kwargs.get("port", 6379))
    assert worker.pid is not None  # noqa: S101 - started
    client.execute_command("CLIENT", "PAUSE", int(timeout * 1000), "WRITE")
    try:
        sent = send()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ports = redis_ports_of(worker.pid, redis_port)
            if any(
                "b" in c.get("flags", "")
                and c.get("cmd") in ("eval", "evalsha")
                and _port_of(c["addr"]) in ports
                for c in client.client_list()
            ):
                time.sleep(0.5)
                worker.pause()
                return True, sent
            time.sleep(0.01)
        worker.pause()
        return False, sent
    finally:
        client.execute_command("CLIENT", "UNPAUSE")
        client.close()


def _port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


# --- messages ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Outbound:
    """A message to produce to the events topic.

    ``event_id`` is the id a prediction of it would carry (None if it cannot have one);
    ``good`` messages must be predicted, the others predicted or dead-lettered.
    """

    key: bytes | None
    value: bytes | None
    event_id: str | None
    good: bool
    kind: str = "good"


@dataclass(frozen=True)
class Sent:
    """A produced message and the position the broker acknowledged for it."""

    message: Outbound
    partition: int
    offset: int


def card_events(n: int, seed: int, n_cards: int, run_id: str, start: int = 0) -> list[dict]:
    """``n`` CardStream events (no labels) from event number ``start``."""
    cards = CardStream(seed=seed, n_cards=n_cards, run_id=run_id)
    return [cards.event(i)[0] for i in range(start + n)][start:]


def good(events: Iterable[dict[str, Any]]) -> list[Outbound]:
    """Valid events, keyed by entity."""
    return [Outbound(e["entity_id"].encode(), orjson.dumps(e), e["event_id"], True) for e in events]


def poison(value: bytes | None, key: bytes | None, kind: str) -> Outbound:
    """A message that may be invalid; if it parses as an object with a string event_id, a
    prediction with that id also accounts for it."""
    event_id = None
    with contextlib.suppress(orjson.JSONDecodeError, TypeError):
        obj = orjson.loads(value) if value is not None else None
        if isinstance(obj, dict) and isinstance(obj.get("event_id"), str):
            event_id = obj["event_id"]
    return Outbound(key, value, event_id, False, kind)


def _base(rng: random.Random, event_id: str, entities: Sequence[str], ts0: int) -> dict:
    return {
        "event_id": event_id,
        "entity_id": rng.choice(entities),
        "ts": ts0 + rng.randrange(0, 120_000),
        "features": {
            "amount": round(rng.uniform(1.0, 500.0), 2),
            "merchant_category": rng.choice(CATEGORIES),
            "hour": rng.randrange(24),
        },
    }


def _raw(obj: dict, token: str, raw: str) -> bytes:
    """``obj`` as JSON with the string ``token`` replaced by a raw JSON fragment."""
    return orjson.dumps(obj).replace(f'"{token}"'.encode(), raw.encode())


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def poison_messages(
    rng: random.Random, n: int, entities: Sequence[str], ts0: int, prefix: str = "fz"
) -> list[Outbound]:
    """``n`` seeded hostile messages of many kinds; some happen to be valid events.

    Kinds: random bytes (also invalid UTF-8), empty value, null value (tombstone), JSON
    non-objects, objects missing fields, wrong types, nested junk, huge strings, NaN and
    Infinity tokens, extreme numbers, booleans for numbers, odd timestamps, empty or 10 KB
    event ids, too many fields, odd labels, byte-order marks and trailing garbage.
    """
    now = int(time.time() * 1000)
    out = []
    for i in range(n):
        eid = f"{prefix}-{i}"
        base = _base(rng, eid, entities, ts0)
        feats = base["features"]
        kind = rng.choice(_KINDS)
        value: bytes | None
        if kind == "random_bytes":
            value = rng.randbytes(rng.randrange(1, 300))
        elif kind == "invalid_utf8":
            value = orjson.dumps(base).replace(eid.encode(), b"\xff\xfe\xc3(" + eid.encode())
        elif kind == "empty":
            value = b""
        elif kind == "tombstone":
            value = None
        elif kind == "whitespace":
            value = rng.choice([b" ", b"\n\t ", b"\x00", b"\r\n"])
        elif kind == "json_non_object":
            value = rng.choice(
                [b"null", b"0", b"-1.5e300", b"true", b'"event"', b"[]", b"[1,2,3]",
                 b'[{"event_id":"x","entity_id":"y","ts":1,"features":{}}]', b'""']
            )  # fmt: skip
        elif kind == "missing_field":
            del base[rng.choice(["event_id", "entity_id", "ts", "features"])]
            value = orjson.dumps(base)
        elif kind == "wrong_type":
            name = rng.choice(["event_id", "entity_id", "ts", "features"])
            base[name] = rng.choice([123, None, [], {}, True, 1.5, [eid], {"id": eid}])
            value = orjson.dumps(base)
        elif kind == "feature_wrong_type":
            name = rng.choice(["amount", "merchant_category", "hour"])
            feats[name] = rng.choice(["12.5", "NaN", "inf", [], {}, [1.0], {"v": 1}, 7, True])
            value = orjson.dumps(base)
        elif kind == "nested_junk":
            depth = rng.choice([3, 30, 300, 2000])
            junk = "[" * depth + "1" + "]" * depth
            where = rng.choice(["amount", "extra", "message"])
            if where == "message":
                value = ("[" * depth + orjson.dumps(base).decode() + "]" * depth).encode()
            elif where == "amount":
                feats["amount"] = "JUNK"
                value = _raw(base, "JUNK", junk)
            else:
                base["extra"] = "JUNK"
                value = _raw(base, "JUNK", junk)
        elif kind == "huge_string":
            size = rng.choice([20_000, 40_000, 70_000, 200_000])
            name = rng.choice(["entity_id", "merchant_category", "extra"])
            if name == "merchant_category":
                feats[name] = "m" * size
            else:
                base[name] = "s" * size
            value = orjson.dumps(base)
        elif kind == "nan_token":
            name = rng.choice(["amount", "hour", "ts"])
            token = rng.choice(["NaN", "Infinity", "-Infinity", "nan", "1e400", "-1e400"])
            if name == "ts":
                base["ts"] = "TOKEN"
            else:
                feats[name] = "TOKEN"
            value = _raw(base, "TOKEN", token)
        elif kind == "extreme_number":
            name = rng.choice(["amount", "hour", "ts"])
            number = rng.choice(
                ["1e308", "-1e308", "1.797e308", "1e16", "-5e15", "5e-324", "1e300",
                 "18446744073709551616", "9223372036854775807", "-9223372036854775808", "-1"]
            )  # fmt: skip
            if name == "ts":
                base["ts"] = "NUMBER"
            else:
                feats[name] = "NUMBER"
            value = _raw(base, "NUMBER", number)
        elif kind == "bool_for_number":
            name = rng.choice(["amount", "hour", "ts"])
            if name == "ts":
                base["ts"] = rng.choice([True, False])
            else:
                feats[name] = rng.choice([True, False])
            value = orjson.dumps(base)
        elif kind == "weird_ts":
            base["ts"] = rng.choice(
                ["", " ", "yesterday", "2025-13-45T00:00:00Z", "NaN", "1e400", "-1",
                 "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "1763800000000",
                 "1999-12-31T23:59:59Z", "2025-11-22T08:26:40+25:00", "\u0000",
                 _iso(now + 3 * DAY_MS), "  " + _iso(ts0) + "  ", _iso(ts0)]
            )  # fmt: skip
            value = orjson.dumps(base)
        elif kind == "ts_out_of_range":
            base["ts"] = rng.choice([0, 1, Y2000_MS - 1, now + 2 * DAY_MS, 10**16, 1e300, 1e18])
            value = orjson.dumps(base)
        elif kind == "odd_event_id":
            base["event_id"] = rng.choice(["", "x" * 10_240, "y" * 257])
            value = orjson.dumps(base)
        elif kind == "odd_entity_id":
            base["entity_id"] = rng.choice(["", "\u0000\u0001", "카드-1", "e" * 300, " "])
            value = orjson.dumps(base)
        elif kind == "too_many_fields":
            feats.update({f"f{j}": j for j in range(rng.choice([300, 2000]))})
            value = orjson.dumps(base)
        elif kind == "odd_label":
            base["label"] = rng.choice([[1], {"y": 1}, 1e308, "yes", 2, -1, None, True, 0.5])
            value = orjson.dumps(base)
        elif kind == "bom":
            value = b"\xef\xbb\xbf" + orjson.dumps(base)
        elif kind == "trailing_garbage":
            value = orjson.dumps(base) + rng.choice([b"}", b"\x00", b" {}", b"garbage"])
        else:  # "duplicate_keys": orjson keeps the last one
            value = orjson.dumps(base)[:-1] + f',"event_id":"{eid}-dup"}}'.encode()
        key = rng.choice([None, rng.choice(entities).encode(), rng.randbytes(8), b""])
        if value is None and key is None:
            key = rng.choice(entities).encode()  # Kafka takes no record without both
        out.append(poison(value, key, kind))
    return out


_KINDS = (
    "random_bytes", "invalid_utf8", "empty", "tombstone", "whitespace", "json_non_object",
    "missing_field", "wrong_type", "feature_wrong_type", "nested_junk", "huge_string",
    "nan_token", "extreme_number", "bool_for_number", "weird_ts", "ts_out_of_range",
    "odd_event_id", "odd_entity_id", "too_many_fields", "odd_label", "bom",
    "trailing_garbage", "duplicate_keys",
)  # fmt: skip


def mix(rng: random.Random, goods: Sequence[Outbound], bad: Sequence[Outbound]) -> list[Outbound]:
    """Both lists merged at random positions, each keeping its own order."""
    tags = [True] * len(goods) + [False] * len(bad)
    rng.shuffle(tags)
    g, b = iter(goods), iter(bad)
    return [next(g) if t else next(b) for t in tags]


# --- producing ---------------------------------------------------------------------------


class PacedProducer:
    """Produces messages at ``rate`` per second in a background thread.

    ``source`` may be endless (stop it with :meth:`stop`). :meth:`pause` waits until no
    send is in flight, so a broker can be stopped without a half-sent chunk; a chunk that
    fails anyway is sent again (its copies are duplicates, never losses). :meth:`inject`
    queues extra messages that go out ahead of the source.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        source: Iterable[Outbound],
        rate: float,
        chunk: int | None = None,
        max_request_size: int = 1_048_576,
        chunk_timeout: float = 180.0,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.options = options  # client_options(settings); None: plaintext to bootstrap
        self.topic = topic
        self.rate = rate
        self.chunk = chunk or max(1, round(rate / 10))
        self.max_request_size = max_request_size
        self.chunk_timeout = chunk_timeout
        self.sent: list[Sent] = []
        self.retries = 0
        self.error: BaseException | None = None
        self._source = iter(source)
        self._injected: deque[Outbound] = deque()
        self._lock = threading.Lock()
        self._paused = False
        self._idle = True
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._main, name="paced-producer", daemon=True)

    def start(self) -> PacedProducer:
        self._thread.start()
        return self

    @property
    def finished(self) -> bool:
        return not self._thread.is_alive()

    def produced(self) -> list[Sent]:
        with self._lock:
            return list(self.sent)

    def inject(self, messages: Iterable[Outbound]) -> None:
        with self._lock:
            self._injected.extend(messages)

    def pause(self, timeout: float = 60.0) -> bool:
        """Hold production; True once no send is in flight (within ``timeout``)."""
        with self._lock:
            self._paused = True
            self._idle = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._idle:
                    return True
            if self.finished:
                return True
            time.sleep(0.02)
        return False

    def resume(self) -> None:
        with self._lock:
            self._paused = False

    def stop(self, timeout: float = 60.0) -> bool:
        """End production after the chunk in flight; True if the thread ended in time."""
        self._stopping.set()
        self.resume()
        self._thread.join(timeout)
        return self.finished

    def join(self, timeout: float) -> bool:
        """Wait for a finite source to be produced; True if it was within ``timeout``."""
        self._thread.join(timeout)
        return self.finished

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported through .error
            self.error = exc

    def _next_chunk(self) -> list[Outbound]:
        with self._lock:
            chunk = [self._injected.popleft() for _ in range(len(self._injected))]
        for message in self._source:
            chunk.append(message)
            if len(chunk) >= self.chunk:
                break
        return chunk

    async def _run(self) -> None:
        producer = AIOKafkaProducer(
            **(self.options or {"bootstrap_servers": self.bootstrap}),
            acks="all",
            linger_ms=5,
            max_request_size=self.max_request_size,
        )
        await producer.start()
        try:
            base, count = time.monotonic(), 0
            while not self._stopping.is_set():
                with self._lock:
                    paused = self._paused
                    self._idle = paused
                if paused:
                    await asyncio.sleep(0.05)
                    base, count = time.monotonic(), 0  # no catch-up burst after a pause
                    continue
                chunk = self._next_chunk()
                if not chunk:
                    return
                await self._send(producer, chunk)
                count += len(chunk)
                while not self._stopping.is_set() and not self._paused:
                    wait = base + count / self.rate - time.monotonic()
                    if wait <= 0:
                        break
                    await asyncio.sleep(min(wait, 0.05))
            with self._lock:  # stopping: what was injected still goes out
                rest = [self._injected.popleft() for _ in range(len(self._injected))]
            if rest:
                await self._send(producer, rest)
        finally:
            with self._lock:
                self._idle = True
            await producer.stop()

    async def _send(self, producer: AIOKafkaProducer, chunk: list[Outbound]) -> None:
        deadline = time.monotonic() + self.chunk_timeout
        records = [(m.key, m.value) for m in chunk]
        while True:
            try:
                positions = await send_with_offsets(producer, self.topic, records, 60.0)
            except Exception:
                if time.monotonic() > deadline:
                    raise
                self.retries += 1
                await asyncio.sleep(1.0)
                continue
            with self._lock:
                self.sent.extend(Sent(m, p, o) for m, (p, o) in zip(chunk, positions, strict=True))
            return


# --- accounting --------------------------------------------------------------------------


def finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class Accounting:
    produced: int
    good: int
    poison: int
    predicted: int
    dead_lettered: int
    lost: list[Sent]
    duplicates: int

    def summary(self) -> str:
        return (
            f"produced {self.produced} ({self.good} good, {self.poison} poison), predicted "
            f"{self.predicted}, dead-lettered {self.dead_lettered}, lost {len(self.lost)}, "
            f"duplicate outputs {self.duplicates}"
        )


@dataclass
class Outputs:
    """The worker's predictions and dead letters, indexed for the loss accounting."""

    events_topic: str
    predictions_topic: str
    dlq_topic: str
    predictions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    letters: dict[tuple[int, int], list[dict[str, Any]]] = field(default_factory=dict)
    _fed: int = 0

    def feed(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """Index the records not seen yet (``records`` only ever grows)."""
        for r in records[self._fed :]:
            value = orjson.loads(r.value) if r.value is not None else None
            if not isinstance(value, dict):
                continue
            if r.topic == self.predictions_topic:
                self.predictions.setdefault(str(value.get("event_id")), []).append(value)
            elif r.topic == self.dlq_topic and value.get("topic") == self.events_topic:
                partition, offset = value.get("partition"), value.get("offset")
                if isinstance(partition, int) and isinstance(offset, int):
                    self.letters.setdefault((partition, offset), []).append(value)
        self._fed = len(records)

    def accounted(self, s: Sent) -> bool:
        m = s.message
        if m.event_id is not None and m.event_id in self.predictions:
            return True
        return not m.good and (s.partition, s.offset) in self.letters

    def lost(self, sent: Iterable[Sent]) -> list[Sent]:
        return [s for s in sent if not self.accounted(s)]

    def account(self, sent: Sequence[Sent]) -> Accounting:
        lost = self.lost(sent)
        ids = [s.message.event_id for s in sent]
        predicted = sum(1 for i in ids if i is not None and i in self.predictions)
        dups = sum(len(v) - 1 for v in self.predictions.values())
        dups += sum(len(v) - 1 for v in self.letters.values())
        return Accounting(
            produced=len(sent),
            good=sum(s.message.good for s in sent),
            poison=sum(not s.message.good for s in sent),
            predicted=predicted,
            dead_lettered=len(sent) - predicted - len(lost),
            lost=lost,
            duplicates=dups,
        )

    def describe_lost(self, lost: Sequence[Sent], limit: int = 10) -> str:
        rows = []
        for s in lost[:limit]:
            m = s.message
            letter = self.letters.get((s.partition, s.offset))
            why = f"; dead-lettered: {letter[0].get('error')!r}" if letter else ""
            rows.append(
                f"  {m.kind} {m.event_id!r} at {s.partition}/{s.offset}{why}: "
                f"{(m.value or b'')[:120]!r}"
            )
        kinds = Counter(s.message.kind for s in lost)
        return f"{len(lost)} lost ({dict(kinds)}), e.g.:\n" + "\n".join(rows)

    def all_predictions(self) -> list[dict[str, Any]]:
        return [p for ps in self.predictions.values() for p in ps]


def read_outputs(
    bootstrap: str,
    events_topic: str,
    predictions_topic: str,
    dlq_topic: str,
    sent: Sequence[Sent],
    timeout: float,
    settle: float = 1.0,
    alive: Callable[[], bool] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Outputs:
    """Read predictions and dead letters until every sent message is accounted for (or
    ``timeout``), then ``settle`` seconds more for duplicates. With ``alive``, stop
    waiting (after one more ``settle``) as soon as it returns False: a dead worker
    publishes nothing more."""
    outputs = Outputs(events_topic, predictions_topic, dlq_topic)
    remaining = list(sent)

    def done(records: list[ConsumerRecord[bytes, bytes]]) -> bool:
        nonlocal remaining
        outputs.feed(records)
        remaining = outputs.lost(remaining)
        return not remaining or (alive is not None and not alive())

    records = asyncio.run(
        consume_until(bootstrap, [predictions_topic, dlq_topic], done, timeout, settle, options)
    )
    outputs.feed(records)
    return outputs


# --- worker logs ---------------------------------------------------------------------------

# Faust's format "[2026-01-01 00:00:00,000] [pid] [ERROR] ..." and logging.basicConfig's
# "2026-01-01 00:00:00,000 ERROR name: ..." (before Faust configures logging).
_ERROR_LINE = re.compile(r"^(\[[^\]]*\] \[\d+\] \[ERROR\]|\d{4}-\d\d-\d\d \S+ ERROR )")


def error_lines(text: str) -> list[str]:
    """The log lines at level ERROR."""
    return [line for line in text.splitlines() if _ERROR_LINE.match(line)]


def lines_with(text: str, needle: str) -> list[str]:
    """The lines containing ``needle`` (case-insensitive)."""
    low = needle.lower()
    return [line for line in text.splitlines() if low in line.lower()]
