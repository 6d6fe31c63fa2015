"""The Redis client of a worker or CLI command, from the settings (password from the env)."""

from __future__ import annotations

import redis.asyncio as aioredis

from stream.config import Settings


def redis_client(settings: Settings) -> aioredis.Redis:
    """A lazily connecting asyncio client for ``settings.redis.url``.

    >>> redis_client(Settings()).connection_pool.connection_kwargs["port"]
    6379
    """
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    return aioredis.Redis.from_url(settings.redis.url, password=password)
