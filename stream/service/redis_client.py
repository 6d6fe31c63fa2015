"""The Redis client of a worker or CLI command, from the settings (password from the env)."""

from __future__ import annotations

import redis.asyncio as aioredis

from stream.service.config import Settings

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
    return aioredis.Redis.from_url(
        settings.redis.url,
        password=password,
        socket_connect_timeout=SOCKET_CONNECT_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
    )
