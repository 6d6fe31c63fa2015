"""Start-up checks: before a worker joins any consumer group, its dependencies must answer.

A worker that starts with a wrong Redis password, a ``rediss://`` URL without its CA or an
unreachable broker would otherwise report ready, consume, and fail on every batch. Each
check raises :class:`~stream.exceptions.StartupError` with one line naming the service, the
settings that point at it and the cause; nothing has been consumed then.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from stream.exceptions import StartupError
from stream.service.config import Settings
from stream.service.redaction import masked_url
from stream.service.redis_client import redis_client
from stream.service.topics import ensure_topics

CHECK_TIMEOUT_S = 30.0


async def check_redis(settings: Settings, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """PING Redis with the configured URL and credentials (TLS and AUTH included)."""
    client = redis_client(settings)
    try:
        await asyncio.wait_for(_ping(client, settings), timeout_s)
    except (RedisError, OSError, TimeoutError) as exc:
        raise StartupError(
            f"redis at {masked_url(settings.redis.url)} (settings redis.url, "
            f"DRIFTWATCH_REDIS_PASSWORD): {_cause(exc, timeout_s)}"
        ) from None
    finally:
        await client.aclose()


async def _ping(client: aioredis.Redis, settings: Settings) -> None:
    await client.ping()
    if settings.redis_password is not None:
        # redis-py forgives a password the server does not ask for; a configured password
        # that nothing checks is a misconfiguration (the wrong server, or ACLs not set up)
        await client.execute_command("AUTH", settings.redis_password.get_secret_value())


async def check_kafka(settings: Settings, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """Reach the brokers and create the missing topics."""
    try:
        await asyncio.wait_for(ensure_topics(settings), timeout_s)
    except (KafkaError, OSError, TimeoutError) as exc:
        raise StartupError(
            f"kafka at {settings.kafka.bootstrap} (settings kafka.bootstrap, "
            f"kafka.security_protocol): {_cause(exc, timeout_s)}"
        ) from None


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
