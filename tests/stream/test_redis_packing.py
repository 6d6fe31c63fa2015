"""The worker's Redis connections pack commands with hiredis, byte for byte as redis-py does."""

from __future__ import annotations

import random
from typing import Any

import pytest
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from stream.service.config import RedisSettings, Settings
from stream.service.redis_client import hiredis_packing, redis_client


def _args(rng: random.Random) -> tuple[Any, ...]:
    pool: list[Any] = [
        "key:é",
        b"\x00\xff bytes with spaces",
        0,
        -17,
        12345678901234567,
        1.5,
        1763800000123.0,
        float(rng.random()),
        '{"v":1,"g":3}',
        b"",
        bytearray(b"ba"),
        memoryview(b"mv"),
    ]
    return (rng.choice(["MGET", "SET", "EVAL", "ZADD", "CLIENT SETNAME"]),
            *rng.choices(pool, k=rng.randrange(0, 12)))  # fmt: skip


@pytest.mark.parametrize("base", [Connection, SSLConnection, UnixDomainSocketConnection])
def test_commands_pack_to_the_same_bytes_as_redis_py(base: type) -> None:
    fast = hiredis_packing(base)
    assert fast is not base and issubclass(fast, base)
    python, hiredis = Connection(), hiredis_packing(Connection)()
    rng = random.Random(7)
    for _ in range(500):
        args = _args(rng)
        assert b"".join(hiredis.pack_command(*args)) == b"".join(python.pack_command(*args))


def test_a_value_redis_cannot_take_is_a_data_error() -> None:
    with pytest.raises(DataError):
        hiredis_packing(Connection)().pack_command("SET", "k", None)  # type: ignore[arg-type]


def test_the_worker_client_uses_it() -> None:
    pool = redis_client(Settings()).connection_pool
    assert pool.connection_class is hiredis_packing(Connection)
    tls = redis_client(
        Settings(redis=RedisSettings(url="rediss://127.0.0.1:6390/0"))
    ).connection_pool
    assert pool.connection_class is not tls.connection_class
    assert issubclass(tls.connection_class, SSLConnection)
