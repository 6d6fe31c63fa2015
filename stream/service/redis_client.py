"""The Redis client of a worker or CLI command, from the settings (password from the env)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.connection import HiredisRespSerializer
from redis.utils import HIREDIS_AVAILABLE

if HIREDIS_AVAILABLE:
    import hiredis

from stream.service.config import RedisSettings, Settings

T = TypeVar("T")

SOCKET_CONNECT_TIMEOUT_S = 5.0
SOCKET_TIMEOUT_S = 30.0


def redis_client(settings: Settings) -> aioredis.Redis:
    """A lazily connecting asyncio client for ``settings.redis.url``.

    >>> redis_client(Settings()).connection_pool.connection_kwargs["port"]
    6379
    """
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    # bounded waits: a Redis that hangs (paused, network gone) must surface as an error the
    # worker retries, not as a batch stuck forever
    client = aioredis.Redis.from_url(
        settings.redis.url,
        password=password,
        socket_connect_timeout=SOCKET_CONNECT_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        **connection_options(settings.redis),
    )
    pool = client.connection_pool
    pool.connection_class = hiredis_packing(pool.connection_class)  # no connection made yet
    return client


_PACKING: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def hiredis_packing(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """``base`` (plain, TLS or unix socket) packing its commands with hiredis.

    redis-py's synchronous client packs commands with hiredis when it is installed; its
    asyncio client still packs them in Python (redis/redis-py#4176), which cost about 6 %
    of a worker's CPU (the feature store's MGET and script calls carry a key per event).
    It calls hiredis's ``pack_command`` as redis-py's own hiredis serializer does (that
    serializer where it would change the arguments), so the bytes on the wire are the same
    (tests/stream/test_redis_packing.py).
    Without hiredis, ``base`` is returned unchanged.
    """
    if not HIREDIS_AVAILABLE:
        return base
    if base not in _PACKING:
        serializer = HiredisRespSerializer()

        def pack_command(self: AbstractConnection, *args: Any) -> list[bytes]:
            # hiredis directly where redis-py's serializer would change nothing: it splits a
            # command name with spaces and copies every argument in a Python loop first (a
            # third of the packing time of a script call with an argument per event)
            first = args[0]
            if isinstance(first, str) and " " not in first:
                try:
                    return [hiredis.pack_command(args)]
                except TypeError:
                    pass  # a bytearray, or a value Redis cannot take: the serializer's way
            return serializer.pack(*args)

        name = f"Hiredis{base.__name__}"
        _PACKING[base] = type(name, (base,), {"pack_command": pack_command})
    return _PACKING[base]


def connection_options(redis: RedisSettings) -> dict[str, Any]:
    """The ACL user and, for ``rediss://``, the TLS arguments of redis-py's connections.

    Unset values are left out, so that what the URL says (``redis://user:pw@host``,
    ``?ssl_cert_reqs=...``) still applies.

    >>> connection_options(RedisSettings(url="rediss://h:6380/0", username="dw"))
    {'username': 'dw', 'ssl_check_hostname': True}
    """
    options: dict[str, Any] = {}
    if redis.username is not None:
        options["username"] = redis.username
    if redis.url.startswith("rediss://"):
        options["ssl_check_hostname"] = redis.ssl_check_hostname
        tls = {
            "ssl_ca_certs": redis.ssl_cafile,
            "ssl_certfile": redis.ssl_certfile,
            "ssl_keyfile": redis.ssl_keyfile,
        }
        options.update({k: v for k, v in tls.items() if v is not None})
    return options


def acl_rules(prefix: str) -> str:
    """The Redis ACL rules of a worker's user: its key prefix only, no channels, the data,
    scripting, transaction (MULTI, WATCH: the lineup) and connection commands without the
    dangerous ones (``ACL SETUSER``).

    >>> acl_rules("dw").split()
    ... # doctest: +NORMALIZE_WHITESPACE
    ['resetkeys', '~dw:*', 'resetchannels', '-@all', '+@read', '+@write', '+@scripting',
     '+@transaction', '+@connection', '-@dangerous']
    """
    return (
        f"resetkeys ~{prefix}:* resetchannels "
        "-@all +@read +@write +@scripting +@transaction +@connection -@dangerous"
    )


async def overlapped(
    redis: aioredis.Redis, command: Sequence[Any], meanwhile: Callable[[], T]
) -> tuple[Any, T]:
    """Send ``command``, run ``meanwhile`` while the server works on it, then read the reply.

    redis-py sends a command and reads its reply in one await: the caller's CPU work cannot
    overlap the server's. A batch's feature-window write and its predictions' store keep
    Redis busy for milliseconds each, during which the scorer can score and build its
    messages. The reply is read even if ``meanwhile`` raises (the connection goes back to
    the pool with nothing pending), then its exception is raised; an error reply raises
    ``ResponseError``, a connection error drops the connection (redis-py's handling).
    """
    pool = redis.connection_pool
    conn = await pool.get_connection()
    try:
        await conn.send_command(*command)
        try:
            done = meanwhile()
        finally:
            reply = await conn.read_response()
    finally:
        await pool.release(conn)
    return reply, done
