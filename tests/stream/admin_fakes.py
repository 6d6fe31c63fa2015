"""A stand-in for aiokafka's admin client where only its coordinator's answers matter."""

from __future__ import annotations

from typing import Any


class CoordinatorAdmin:
    """Answers each request with the next error code of ``codes`` (then 0), as
    :meth:`answer` builds it; counts the requests in ``asked``."""

    def __init__(self, codes: list[int]) -> None:
        self.codes = codes
        self.asked = 0

    async def find_coordinator(self, group: str) -> int:
        return 1

    async def _send_request(self, request: Any, node: int) -> Any:
        code = self.codes[self.asked] if self.asked < len(self.codes) else 0
        self.asked += 1
        return self.answer(code)

    def answer(self, code: int) -> Any:
        raise NotImplementedError


async def no_wait(_: float) -> None:
    """``asyncio.sleep`` for the retry loops: no pause."""
    return None
