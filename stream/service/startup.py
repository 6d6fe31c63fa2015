"""Start-up checks: before a worker joins any consumer group, its dependencies must answer.

A worker that starts with a wrong Redis password, a ``rediss://`` URL without its CA or an
unreachable broker would otherwise report ready, consume, and fail on every batch. Each
check raises :class:`~stream.exceptions.StartupError` with one line naming the service, the
settings that point at it and the cause; nothing has been consumed then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterator

import redis.asyncio as aioredis
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from stream.exceptions import ConfigError, StartupError
from stream.service.config import Settings
from stream.service.kafka_access import check_access
from stream.service.redaction import masked_url
from stream.service.redis_client import redis_client
from stream.service.topics import ensure_topics

CHECK_TIMEOUT_S = 30.0


async def check_redis(settings: Settings, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """PING Redis with the configured URL and credentials (TLS, ACL user and AUTH included),
    then try the kinds of command a worker runs on a key of its prefix (ACL rights)."""
    client = redis_client(settings)
    try:
        await asyncio.wait_for(_ping(client, settings), timeout_s)
    except (RedisError, OSError, TimeoutError) as exc:
        raise StartupError(
            f"redis at {masked_url(settings.redis.url)} (settings redis.url, redis.username, "
            f"redis.ssl_*, DRIFTWATCH_REDIS_PASSWORD): {_cause(exc, timeout_s)}"
        ) from None
    finally:
        await client.aclose()


async def _ping(client: aioredis.Redis, settings: Settings) -> None:
    await client.ping()
    if settings.redis_password is not None:
        # redis-py forgives a password the server does not ask for; a configured password
        # that nothing checks is a misconfiguration (the wrong server, or ACLs not set up)
        user = client.connection_pool.connection_kwargs.get("username")
        secret = settings.redis_password.get_secret_value()
        await client.execute_command("AUTH", *([user] if user else []), secret)
    await _probe_rights(client, settings.redis.prefix)


async def _probe_rights(client: aioredis.Redis, prefix: str) -> None:
    """Write, read, script and delete a key of the prefix: an ACL user without the rights a
    worker needs fails here, naming the command (``NOPERM ... 'evalsha' command``)."""
    key = f"{prefix}:startup-check:{uuid.uuid4().hex}"
    await client.set(key, b"1", px=60_000)
    await client.eval("return redis.call('GET', KEYS[1])", 1, key)
    await client.delete(key)


async def check_kafka(settings: Settings, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """Reach the brokers (TLS and SASL included), create the missing topics and check the
    worker's rights on its topics and consumer groups."""
    with _aiokafka_errors() as seen:
        try:
            await asyncio.wait_for(_check_kafka(settings), timeout_s)
        except (KafkaError, OSError, TimeoutError, ConfigError) as exc:
            # aiokafka logs why a connection failed (TLS, SASL) and raises "unable to bootstrap"
            why = f"{_cause(exc, timeout_s)}{'; ' + seen[-1] if seen else ''}"
            raise StartupError(
                f"kafka at {settings.kafka.bootstrap} (settings kafka.bootstrap, "
                f"kafka.security_protocol, kafka.sasl_*, kafka.ssl_*, "
                f"DRIFTWATCH_KAFKA_SASL_PASSWORD): {why}"
            ) from None


async def _check_kafka(settings: Settings) -> None:
    await ensure_topics(settings)
    await check_access(settings)


@contextlib.contextmanager
def _aiokafka_errors() -> Iterator[list[str]]:
    """Collect (and keep off the console) what aiokafka logs while the check runs."""
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage().splitlines()[0])

    logger = logging.getLogger("aiokafka")
    handler, propagate = Collect(logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def check_snapshot_key(settings: Settings) -> None:
    """Model snapshots are signed: without the key nothing can be published or loaded."""
    if settings.snapshot_key is None or not settings.snapshot_key.get_secret_value():
        raise StartupError(
            "snapshot key (environment DRIFTWATCH_SNAPSHOT_KEY) is not set: model snapshots "
            "are signed with it and cannot be published or loaded without it"
        )


async def check_all(settings: Settings) -> None:
    """Every start-up check, cheapest first."""
    check_snapshot_key(settings)
    await check_redis(settings)
    await check_kafka(settings)


def _cause(exc: BaseException, timeout_s: float) -> str:
    """One line for an exception: its type and first line.

    >>> _cause(TimeoutError(), 30.0)
    'no answer within 30 s'
    >>> _cause(ConnectionRefusedError(111, "Connection refused\\nmore"), 30.0)
    'ConnectionRefusedError: [Errno 111] Connection refused'
    """
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"no answer within {timeout_s:g} s"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else repr(exc)}"
