"""ScoreStep: the stores a batch sent ahead are dropped when the batch goes no further."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from stream.records import BatchResult, Incoming, Outgoing, Outputs
from stream.service import steps
from stream.service.config import Settings
from stream.service.metrics import Metrics
from stream.service.resilience import Health
from stream.service.steps import ScoreStep, TrainingTopic


class Joins:
    def __init__(self) -> None:
        self.abandoned = False

    async def examples(self) -> list[Any]:
        return []

    async def abandon(self) -> None:
        self.abandoned = True


class Scorer:
    def __init__(self, joins: Joins) -> None:
        self.joins = joins

    async def process(self, part: Any) -> BatchResult:
        out = [Outgoing("predictions", b"c1", b"p")]
        return BatchResult(out, [], [], 0, [self.joins])


class Holder:
    reference = SimpleNamespace(model=None)

    async def ready(self) -> None:
        return None


def step(joins: Joins) -> ScoreStep:
    return ScoreStep(
        Settings(),
        Metrics(),
        Health(Metrics()),
        Scorer(joins),
        Holder(),
        TrainingTopic("t", "m"),  # type: ignore[arg-type]
    )


def test_a_batch_that_fails_after_its_store_was_sent_drops_the_reply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("a monitor batch it cannot build")

    monkeypatch.setattr(steps, "monitor_messages", broken)
    joins = Joins()
    record = Incoming("events", 0, 0, b"c1", b"{}")
    with pytest.raises(ValueError, match="cannot build"):
        asyncio.run(step(joins).process([record]))
    # processed again from the start: this attempt's connection is not left holding a reply
    assert joins.abandoned


def test_the_stores_answer_is_read_after_the_batch_is_published(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(steps, "monitor_messages", lambda *args, **kwargs: [])
    monkeypatch.setattr(ScoreStep, "_observe", lambda self, n, scored: None)
    joins = Joins()
    out = asyncio.run(step(joins).process([Incoming("events", 0, 0, b"c1", b"{}")]))
    assert isinstance(out, Outputs) and [m.value for m in out] == [b"p"]
    assert len(out.later) == 1 and asyncio.run(out.later[0]()) == [] and not joins.abandoned
