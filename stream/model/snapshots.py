"""Signed, versioned snapshots of an :class:`~stream.model.online.OnlineModel` in Redis.

One trainer per model learns and publishes numbered versions; every scorer serves the
*current* version through a :class:`~stream.model.holder.ModelHolder`, told of each move of
``current`` by an entry on a Redis stream (and polling ``current`` as a fallback). Each
version is a signed record (:mod:`stream.model.snapshot_format`), verified before anything
in it is used and unpickled only after its signature checks out.

Keys, for ``{p}`` = the Redis prefix and ``{n}`` = the model name::

    {p}:model:{n}:seq          INCR counter: the last version number handed out
    {p}:model:{n}:v:{version}  hash: meta (JSON), model (pickle), sig (hex HMAC)
    {p}:model:{n}:versions     sorted set of the stored version numbers
    {p}:model:{n}:current      the version scorers serve
    {p}:model:{n}:pinned       set by promote/rollback: publish no longer moves ``current``
    {p}:model:{n}:checkpoint   hash like a version: the trainer's state, not published
    {p}:model:{n}:changes      stream: an entry per publication and per promote/rollback,
                               fields ``version`` (published) and ``current``; an entry
                               with field ``reference`` when the reference model moves
    {p}:model:{n}:reference    hash: a copy of the version the prediction monitors judge by
                               (the *reference model*), its record and ``version``

Scorers block on ``changes`` (``XREAD BLOCK``) instead of only polling: a stream, not
pub/sub, because an entry written while a scorer was disconnected is still there when it
reads again, and because it is a key under the prefix, which the worker's least-privilege
Redis user may read and write (it has no pub/sub channels, README: Least privilege).

A promoted or rolled-back version stays current while the trainer keeps publishing (else a
rollback would be undone within ``publish_interval``); ``promote()`` without a version makes
the latest current again and lets publications move ``current`` once more. The trainer's
own learning state is its checkpoint, which promotion and rollback do not touch.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any, cast

import orjson
from redis.asyncio import Redis

from stream.exceptions import SnapshotIntegrityError, SnapshotNotFoundError
from stream.model.online import OnlineModel
from stream.model.snapshot_format import (
    NO_KEY,
    SnapshotInfo,
    decode_record,
    encode_record,
    read_info,
    unverified_info,
)
from stream.service.config import Settings
from stream.timestamps import now_ms

log = logging.getLogger(__name__)

# Store, index, move `current` unless pinned or newer, announce the publication on the
# changes stream, then prune all but the newest `keep` versions and the current one,
# atomically.
_PUBLISH = """
redis.call('HSET', KEYS[1], 'meta', ARGV[2], 'model', ARGV[3], 'sig', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[1])
local current = redis.call('GET', KEYS[3])
local newer = not current or tonumber(current) < tonumber(ARGV[1])
if newer and redis.call('EXISTS', KEYS[4]) == 0 then
  redis.call('SET', KEYS[3], ARGV[1])
  current = ARGV[1]
end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[7], '*', 'version', ARGV[1], 'current', current)
for _, v in ipairs(redis.call('ZRANGE', KEYS[2], 0, -(tonumber(ARGV[5]) + 1))) do
  if v ~= current then
    redis.call('DEL', ARGV[6] .. v)
    redis.call('ZREM', KEYS[2], v)
  end
end
return current
"""
# Make a stored version current; ARGV[2] == 'pin' holds it there, anything else unpins.
_PROMOTE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
if ARGV[2] == 'pin' then redis.call('SET', KEYS[3], ARGV[1]) else redis.call('DEL', KEYS[3]) end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', 'current', ARGV[1])
return 1
"""
# Copy a stored version's record to the reference key unless a reference is there already
# (the first prediction monitor to ask wins), and announce it. Returns the reference version,
# 0 if the version asked for is no longer stored.
_PIN_REFERENCE = """
local pinned = redis.call('HGET', KEYS[1], 'version')
if pinned then return tonumber(pinned) end
local fields = redis.call('HGETALL', KEYS[2])
if #fields == 0 then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], unpack(fields))
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'reference', ARGV[1])
return tonumber(ARGV[1])
"""
#: Entries kept on the changes stream (approximately): a scorer needs only the newest.
CHANGES_KEPT = 100
#: Longest single wait on the changes stream, under the client's 30 s socket timeout.
MAX_BLOCK_S = 10.0
#: The id before every stream entry.
NO_CHANGE = b"0-0"


class SnapshotStore:
    """Versioned, signed snapshots of one model in Redis.

    Parameters
    ----------
    redis
        A ``redis.asyncio.Redis`` client returning bytes (``decode_responses=False``).
    prefix
        The configured Redis key prefix.
    model_name
        The configured model name.
    key
        The HMAC key; empty means none is configured, and every load and publish is refused.
    keep_versions
        How many of the newest versions to keep (the current one is always kept as well).

    Examples
    --------
    >>> import redis.asyncio
    >>> store = SnapshotStore(redis.asyncio.Redis(), "dw", "fraud", b"secret")
    >>> store.current_key
    'dw:model:fraud:current'
    """

    def __init__(
        self, redis: Redis, prefix: str, model_name: str, key: bytes, *, keep_versions: int = 20
    ) -> None:
        if redis.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("SnapshotStore needs a Redis client with decode_responses=False")
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be at least 1, got {keep_versions}")
        self.redis = redis
        self.prefix = prefix
        self.model_name = model_name
        self.key = key
        self.keep_versions = keep_versions
        self._reset()

    def _reset(self) -> None:
        base = f"{self.prefix}:model:{self.model_name}"
        self.seq_key = f"{base}:seq"
        self.version_key_prefix = f"{base}:v:"
        self.index_key = f"{base}:versions"
        self.current_key = f"{base}:current"
        self.pinned_key = f"{base}:pinned"
        self.checkpoint_key = f"{base}:checkpoint"
        self.changes_key = f"{base}:changes"
        self.reference_key = f"{base}:reference"
        self._publish = self.redis.register_script(_PUBLISH)
        self._promote = self.redis.register_script(_PROMOTE)
        self._pin_reference = self.redis.register_script(_PIN_REFERENCE)

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> SnapshotStore:
        """The store for the configured model, prefix, key and ``keep_versions``.

        Examples
        --------
        >>> import redis.asyncio
        >>> from stream.service.config import Settings
        >>> s = Settings(model={"name": "fraud"}, snapshot_key="secret")
        >>> SnapshotStore.from_settings(redis.asyncio.Redis(), s).version_key(3)
        'dw:model:fraud:v:3'
        """
        secret = settings.snapshot_key.get_secret_value() if settings.snapshot_key else ""
        return cls(
            redis,
            settings.redis.prefix,
            settings.model.name,
            secret.encode(),
            keep_versions=settings.model.keep_versions,
        )

    def version_key(self, version: int) -> str:
        """The Redis key of one version's record (see the module docstring for all keys).

        >>> import redis.asyncio
        >>> SnapshotStore(redis.asyncio.Redis(), "dw", "m", b"k").version_key(7)
        'dw:model:m:v:7'
        """
        return f"{self.version_key_prefix}{version}"

    async def publish(self, model: OnlineModel, meta: Mapping[str, Any] | None = None) -> int:
        """Store ``model`` as a new version (the highest so far plus one) and return it.

        The new version becomes current unless an operator pinned one (promote/rollback);
        the publication is announced on the changes stream; versions beyond the newest
        ``keep_versions`` are deleted, never the current one. ``model`` itself is not
        changed; the stored copy carries the new version number.

        Examples
        --------
        >>> version = await store.publish(model, {"offset": 812})  # doctest: +SKIP
        """
        version, _ = await self.publish_sized(model, meta)
        return version

    async def publish_sized(
        self, model: OnlineModel, meta: Mapping[str, Any] | None = None
    ) -> tuple[int, int]:
        """:meth:`publish`, returning the version and the size of its record in bytes.

        >>> version, size = await store.publish_sized(model, {"offset": 812})  # doctest: +SKIP
        """
        if not self.key:
            raise SnapshotIntegrityError(f"cannot publish model {self.model_name!r}: {NO_KEY}")
        version = int(await self.redis.incr(self.seq_key))
        record = encode_record(
            model, meta, self.key, kind="version", version=version, created_at=now_ms()
        )
        keys = [
            self.version_key(version),
            self.index_key,
            self.current_key,
            self.pinned_key,
            self.changes_key,
        ]
        fields = [record["meta"], record["model"], record["sig"]]
        args: list[bytes | str | int] = [
            version, *fields, self.keep_versions, self.version_key_prefix, CHANGES_KEPT
        ]  # fmt: skip
        await self._publish(keys=keys, args=args)
        return version, sum(len(v) for v in fields)

    async def last_change(self) -> bytes:
        """The id of the newest entry of the changes stream (:data:`NO_CHANGE` if none).

        Read it *before* reading ``current``: a move after that read is then seen by
        :meth:`wait_for_change` from this id.

        >>> await store.last_change()  # doctest: +SKIP
        b'1763800000200-0'
        """
        newest = cast(list[Any], await self.redis.xrevrange(self.changes_key, count=1))
        return bytes(newest[0][0]) if newest else NO_CHANGE

    async def wait_for_change(self, after: bytes, timeout_s: float) -> bytes | None:
        """Wait up to ``timeout_s`` (at most :data:`MAX_BLOCK_S`) for an entry after
        ``after`` on the changes stream; the id of the newest one, or None if none came.

        >>> await store.wait_for_change(b"0-0", 1.0)  # doctest: +SKIP
        b'1763800000200-0'
        """
        block_ms = max(1, int(min(timeout_s, MAX_BLOCK_S) * 1000))
        reply = cast(
            list[Any],
            await self.redis.xread({self.changes_key: after}, count=CHANGES_KEPT, block=block_ms),
        )
        entries = [entry for _, stream_entries in reply or [] for entry in stream_entries]
        return bytes(entries[-1][0]) if entries else None

    async def trainer_learned(self) -> int | None:
        """Examples in the trainer's checkpoint, or None if there is none yet.

        Read from the checkpoint's metadata without verifying its signature (the whole
        record would have to be fetched): a number for the lag gauge, never a model.

        >>> await store.trainer_learned()  # doctest: +SKIP
        3500
        """
        raw = await self.redis.hget(self.checkpoint_key, "meta")
        if raw is None:
            return None
        try:
            return int(orjson.loads(raw)["n_learned"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None

    async def current_version(self) -> int | None:
        """The version scorers should serve (one GET), or None before the first publish.

        >>> await store.current_version()  # doctest: +SKIP
        7
        """
        return _int_or_none(await self.redis.get(self.current_key))

    async def pinned_version(self) -> int | None:
        """The version an operator pinned with promote/rollback, or None if following.

        >>> await store.pinned_version()  # doctest: +SKIP
        """
        return _int_or_none(await self.redis.get(self.pinned_key))

    async def load_newest_valid(
        self, exclude: Collection[int] = ()
    ) -> tuple[OnlineModel, SnapshotInfo] | None:
        """The newest stored version that verifies (skipping ``exclude``), or None.

        For a scorer whose current version was refused and a trainer whose checkpoint was:
        never fall back to an untrained model while a valid trained one exists.

        >>> model, info = await store.load_newest_valid(exclude={7})  # doctest: +SKIP
        """
        for version in reversed(await self._stored(0, -1)):
            if version in exclude:
                continue
            fields = await self._hash(self.version_key(version))
            try:
                return decode_record(
                    fields, self.key, name=self.model_name, kind="version", version=version
                )
            except SnapshotIntegrityError as exc:
                log.error("model %s: skipping version %d: %s", self.model_name, version, exc)
        return None

    async def load(self, version: int | None = None) -> OnlineModel:
        """Verify and load a version (the current one by default).

        Raises
        ------
        SnapshotNotFoundError
            Nothing is published yet, or that version is not stored.
        SnapshotIntegrityError
            The record fails its check; it was not unpickled.

        Examples
        --------
        >>> model = await store.load()  # doctest: +SKIP
        """
        model, _ = await self.load_version(version)
        return model

    async def load_version(self, version: int | None = None) -> tuple[OnlineModel, SnapshotInfo]:
        """:meth:`load`, with the version's metadata (when it was published, its offset).

        >>> model, info = await store.load_version(7)  # doctest: +SKIP
        """
        version, fields = await self._fields(version)
        return decode_record(
            fields, self.key, name=self.model_name, kind="version", version=version
        )

    async def _fields(self, version: int | None) -> tuple[int, Mapping[bytes, bytes]]:
        if version is None:
            version = await self.current_version()
            if version is None:
                raise SnapshotNotFoundError(f"model {self.model_name!r} has no published version")
        fields = await self._hash(self.version_key(version))
        if not fields:
            raise SnapshotNotFoundError(
                f"version {version} of model {self.model_name!r} does not exist "
                f"(key {self.version_key(version)})"
            )
        return version, fields

    async def versions(self) -> list[SnapshotInfo]:
        """Every stored version, oldest first, with ``valid`` telling whether it verifies.

        The records are checked but never unpickled.

        >>> [(i.version, i.valid) for i in await store.versions()]  # doctest: +SKIP
        [(6, True), (7, True)]
        """
        numbers = await self._stored(0, -1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for version in numbers:
                pipe.hgetall(self.version_key(version))
            records = await pipe.execute()
        return [self._listed(f, v) for f, v in zip(records, numbers, strict=True) if f]

    async def _stored(self, start: int, end: int) -> list[int]:
        raw = cast(list[bytes], await self.redis.zrange(self.index_key, start, end))
        return [int(v) for v in raw]

    async def _hash(self, key: str) -> dict[bytes, bytes]:
        return cast(dict[bytes, bytes], await self.redis.hgetall(key))

    def _listed(self, fields: Mapping[bytes, bytes], version: int) -> SnapshotInfo:
        try:
            return read_info(
                fields, self.key, name=self.model_name, kind="version", version=version
            )
        except SnapshotIntegrityError:
            return unverified_info(fields, version)

    async def promote(self, version: int | None = None) -> int:
        """Make ``version`` current and pin it; without a version, follow the latest again.

        The version must exist and verify. Returns the version now current.

        >>> await store.promote(5)  # doctest: +SKIP
        5
        """
        pin = version is not None
        if version is None:
            latest = await self._stored(-1, -1)
            if not latest:
                raise SnapshotNotFoundError(f"model {self.model_name!r} has no published version")
            version = latest[0]
        version, fields = await self._fields(version)
        read_info(fields, self.key, name=self.model_name, kind="version", version=version)
        moved = await self._promote(
            keys=[self.version_key(version), self.current_key, self.pinned_key, self.changes_key],
            args=[version, "pin" if pin else "follow", CHANGES_KEPT],
        )
        if not moved:  # pruned between the check and the switch
            raise SnapshotNotFoundError(f"version {version} of {self.model_name!r} was deleted")
        return version

    async def rollback(self) -> int:
        """Make the newest version older than the current one current (pinned); return it.

        >>> await store.rollback()  # doctest: +SKIP
        6
        """
        current = await self.current_version()
        if current is None:
            raise SnapshotNotFoundError(f"model {self.model_name!r} has no published version")
        older = cast(
            list[bytes],
            await self.redis.zrevrangebyscore(self.index_key, f"({current}", "-inf", 0, 1),
        )
        if not older:
            raise SnapshotNotFoundError(
                f"model {self.model_name!r} has no stored version older than {current}"
            )
        return await self.promote(int(older[0]))

    async def save_checkpoint(self, model: OnlineModel, meta: Mapping[str, Any] | None) -> None:
        """Overwrite the trainer's signed checkpoint (one HSET, so it is replaced atomically).

        >>> await store.save_checkpoint(model, {"offset": 812})  # doctest: +SKIP
        """
        record = encode_record(
            model, meta, self.key, kind="checkpoint", version=model.version, created_at=now_ms()
        )
        await self.redis.hset(self.checkpoint_key, mapping=record)  # type: ignore[arg-type]

    async def load_checkpoint(self) -> tuple[OnlineModel, SnapshotInfo] | None:
        """The trainer's checkpoint and its metadata, or None if there is none yet.

        >>> model, info = await store.load_checkpoint()  # doctest: +SKIP
        >>> info.meta["offset"]  # doctest: +SKIP
        812
        """
        fields = await self._hash(self.checkpoint_key)
        if not fields:
            return None
        return decode_record(
            fields, self.key, name=self.model_name, kind="checkpoint", version=None
        )

    # -- the reference model of the prediction monitors (stream.monitoring.settling) --------

    async def pin_reference(self, version: int) -> int:
        """Make ``version`` the reference model unless there is one; return the reference.

        The record is copied (pruning never removes it) and the change is announced, so
        every scorer starts sending the reference model's scores within a poll.  If
        ``version`` is no longer stored, the current version is pinned instead.

        >>> await store.pin_reference(12)  # doctest: +SKIP
        12
        """
        for candidate in (version, await self.current_version()):
            if candidate is None:
                break
            pinned = await self._pin_reference(
                keys=[self.reference_key, self.version_key(candidate), self.changes_key],
                args=[candidate, CHANGES_KEPT],
            )
            if int(pinned):
                return int(pinned)
        raise SnapshotNotFoundError(
            f"model {self.model_name!r}: version {version} to pin as the reference is gone"
        )

    async def reference_version(self) -> int | None:
        """The reference model's version (one HGET), or None if there is none.

        >>> await store.reference_version()  # doctest: +SKIP
        12
        """
        return _int_or_none(await self.redis.hget(self.reference_key, "version"))

    async def load_reference(self) -> OnlineModel | None:
        """Verify and load the reference model, or None if there is none.

        Raises
        ------
        SnapshotIntegrityError
            The record fails its check; it was not unpickled.

        >>> (await store.load_reference()).version  # doctest: +SKIP
        12
        """
        fields = await self._hash(self.reference_key)
        raw = fields.pop(b"version", None)
        if raw is None:
            return None
        model, _ = decode_record(
            fields, self.key, name=self.model_name, kind="version", version=int(raw)
        )
        return model

    async def unpin_reference(self) -> bool:
        """Drop the reference model (the prediction monitors settle and pin anew); whether
        there was one.

        >>> await store.unpin_reference()  # doctest: +SKIP
        True
        """
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.reference_key)
            pipe.xadd(self.changes_key, {"reference": ""}, maxlen=CHANGES_KEPT)
            deleted, _ = await pipe.execute()
        return bool(deleted)


def _int_or_none(raw: bytes | str | None) -> int | None:
    return None if raw is None else int(raw)
