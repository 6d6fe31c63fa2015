"""Monitor states in Redis: signed, bound to their key, with a format version.

A worker that owns a monitor saves its state (reference, windows, open episodes, the offset
of the last message applied) so that a restarted or newly assigned owner resumes from it.
The state is a pickle, so it is signed like a model snapshot and unpickled only after the
signature checks out. The signature covers the format version and the Redis key as well as
the bytes, so a valid state copied to another subject's key is refused.

Record (Redis hash at ``{prefix}:monitor:{name}``)
    ``format`` (:data:`FORMAT`), ``state`` (the pickled :class:`Owned`), ``sig`` (hex
    HMAC-SHA256 of domain, key, format and state).
Format 3
    Subject monitors carry their event-time order (per-partition high-water marks and
    buffered values) and the prediction subjects' settling block.
Format 2
    The same record; its subject monitors predate event-time order. Still read: they are
    upgraded while unpickling (``SubjectMonitor.__setstate__``: no partitions known, the
    settings' new fields at their defaults) and written back as format 3 at the next save.
Format 1 (before format versions)
    ``state`` and ``sig`` over the state alone, pickled when the classes lived in other
    modules. Still read: the modules are renamed while unpickling (:data:`MOVED_MODULES`)
    and a subject's state must name the subject of its key; it is written back in the
    current format at the next save.
"""

from __future__ import annotations

import io
import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from stream.model.snapshot_format import sign, verify
from stream.monitoring.base import Monitor

log = logging.getLogger(__name__)

FORMAT = 3
#: Formats read with the current record layout (older monitors are upgraded on unpickling).
READABLE = (b"2", b"3")
_DOMAIN = b"driftwatch-monitor-state\x00"

#: Where format-1 states' classes live now (stream/ was reorganised by subsystem).
MOVED_MODULES = {
    "stream.monitor_hub": "stream.monitoring.state_store",
    "stream.monitoring": "stream.monitoring.drift",
    "stream.quality": "stream.monitoring.quality",
    "stream.alerts": "stream.monitoring.alerts",
    "stream.subjects": "stream.monitoring.subjects",
    "stream.config": "stream.service.config",
}


@dataclass
class Owned:
    """One monitor with the offset of the last message it applied."""

    monitor: Monitor
    partition: int
    offset: int = -1
    dirty: bool = False
    generation: int = 0  # of the pinned references this monitor follows


class _Renaming(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(MOVED_MODULES.get(module, module), name)


def _signed(redis_key: str, fmt: bytes, blob: bytes) -> bytes:
    key = redis_key.encode()
    return _DOMAIN + len(key).to_bytes(4, "big") + key + fmt + b"\x00" + blob


def encode_state(redis_key: str, owned: Owned, key: bytes) -> dict[str, bytes]:
    """The hash fields of ``owned`` stored at ``redis_key``.

    >>> fields = encode_state("dw:monitor:amount", Owned(None, 0), b"k")  # type: ignore[arg-type]
    >>> sorted(fields), fields["format"]
    (['format', 'sig', 'state'], b'3')
    """
    blob = pickle.dumps(owned, protocol=pickle.HIGHEST_PROTOCOL)
    fmt = str(FORMAT).encode()
    return {"format": fmt, "state": blob, "sig": sign(_signed(redis_key, fmt, blob), key).encode()}


def decode_state(
    redis_key: str, name: str, fields: Mapping[bytes, bytes], key: bytes
) -> Owned | None:
    """The state stored at ``redis_key`` for monitor ``name``, or ``None`` if refused.

    Refused (logged, never unpickled): a wrong or missing signature, a state signed for
    another key, an unknown format.

    >>> fields = encode_state("dw:monitor:a", Owned(None, 3), b"k")  # type: ignore[arg-type]
    >>> decode_state("dw:monitor:a", "a", {k.encode(): v for k, v in fields.items()}, b"k")
    Owned(monitor=None, partition=3, offset=-1, dirty=False, generation=0)
    >>> decode_state("dw:monitor:b", "b", {k.encode(): v for k, v in fields.items()}, b"k")
    """
    blob, sig, fmt = fields.get(b"state", b""), fields.get(b"sig"), fields.get(b"format")
    if fmt is None:
        return _legacy(redis_key, name, blob, sig, key)
    if fmt not in READABLE or not verify(_signed(redis_key, fmt, blob), sig, key):
        log.error("monitor state %s (format %r) failed its check: not loaded, starting afresh",
                  redis_key, fmt)  # fmt: skip
        return None
    owned = cast(Owned, pickle.loads(blob))  # noqa: S301 - HMAC verified above
    owned.dirty = fmt != str(FORMAT).encode()  # an older format is rewritten at the next save
    return owned


def _legacy(redis_key: str, name: str, blob: bytes, sig: bytes | None, key: bytes) -> Owned | None:
    if not verify(blob, sig, key):
        log.error("monitor state %s (format 1) failed its check: not loaded", redis_key)
        return None
    owned = cast(Owned, _Renaming(io.BytesIO(blob)).load())  # HMAC verified above
    subject = getattr(owned.monitor, "subject", name)
    if subject != name:  # format 1 signed the bytes only: check what they say they are
        log.error("monitor state %s holds subject %r: not loaded", redis_key, subject)
        return None
    owned.dirty = True  # rewrite it in the current format at the next save
    return owned


class MonitorStateStore:
    """Loads and saves the monitor states of one deployment (Redis key prefix)."""

    def __init__(self, redis: aioredis.Redis, prefix: str, key: bytes) -> None:
        self.redis = redis
        self.prefix = prefix
        self.key = key

    def redis_key(self, name: str) -> str:
        return f"{self.prefix}:monitor:{name}"

    async def load(self, name: str) -> Owned | None:
        """The saved state of monitor ``name``; ``None`` if there is none or it is refused."""
        key = self.redis_key(name)
        fields = cast(dict[bytes, bytes], await self.redis.hgetall(key))
        return decode_state(key, name, fields, self.key) if fields else None

    async def save(self, states: Mapping[str, Owned]) -> None:
        """Write ``states`` in one atomic round trip; they are marked clean once written."""
        if not states:
            return
        pipe = self.redis.pipeline(transaction=True)
        for name, owned in states.items():
            key = self.redis_key(name)
            pipe.delete(key)  # a format-1 hash must not keep fields the new one lacks
            pipe.hset(key, mapping=encode_state(key, owned, self.key))  # type: ignore[arg-type]
        await pipe.execute()
        for owned in states.values():  # only once written: a failed save is tried again
            owned.dirty = False
