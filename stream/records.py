"""The records that travel inside a worker, between its subsystems (pure, no I/O).

A consumed Kafka record (:class:`Incoming`), a message to publish (:class:`Outgoing`), an
accepted event (:class:`ValidEvent`) and what scoring made of it (:class:`ScoredEvent`,
:class:`BatchResult`): the scoring side builds them, the monitoring side reads them, and
neither needs the other's I/O. The messages on the topics are in :mod:`stream.messages`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from stream.messages import TrainingExample

# The per-event records are slotted but not frozen: a worker builds several per event, and a
# frozen dataclass's __init__ (object.__setattr__ per field) costs about five times as much.
# Nothing mutates them after they are built.

QualityKind = Literal["missing", "out_of_range", "unseen_category"]


@dataclass(slots=True)
class QualityIssue:
    feature: str
    kind: QualityKind


@dataclass(slots=True)
class ValidEvent:
    """An accepted event: raw features after imputation, and its data-quality problems."""

    event_id: str
    entity_id: str
    ts_ms: int
    values: dict[str, float | str]
    label: int | float | str | bool | None
    quality: tuple[QualityIssue, ...]
    missing: frozenset[str]


@dataclass(slots=True)
class Incoming:
    """A consumed Kafka record, as the agents see it."""

    topic: str
    partition: int | None
    offset: int | None
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes


@dataclass(slots=True)
class ScoredEvent:
    """What the monitors see of one scored event."""

    event: ValidEvent
    x: dict[str, float | str]
    prediction: int | float | str | None
    proba: dict[str, float] | None
    score: float
    model_version: int
    partition: int | None = None  # events-topic partition the event came from
    model: str = ""  # the model that served it
    offset: int | None = None  # and its offset there

    @property
    def claimant(self) -> str:
        """The id of the record the event came from (``partition:offset``; empty if
        unknown): the label join lets it claim its label again (stream.labels.store)."""
        if self.partition is None or self.offset is None:
            return ""
        return f"{self.partition}:{self.offset}"


class Joins(Protocol):
    """Training examples known only once Redis answers (the labels that were waiting for a
    batch's predictions): read after the batch's outputs are published, before its commit."""

    async def examples(self) -> list[TrainingExample]:
        """The examples; may be called again after it raised."""

    async def abandon(self) -> None:
        """The batch goes no further: the answer is not needed."""


@dataclass
class BatchResult:
    outgoing: list[Outgoing]
    scored: list[ScoredEvent]
    examples: list[TrainingExample]
    rejected: int
    joins: list[Joins] = field(default_factory=list)

    @classmethod
    def merge(cls, parts: Iterable[BatchResult]) -> BatchResult:
        """One result from the results of consecutive parts of a batch."""
        merged = cls([], [], [], 0)
        for part in parts:
            merged.outgoing += part.outgoing
            merged.scored += part.scored
            merged.examples += part.examples
            merged.rejected += part.rejected
            merged.joins += part.joins
        return merged


#: More messages a step publishes once its first ones are (see :class:`Outputs`).
Later = Callable[[], Awaitable[list[Outgoing]]]


class Outputs(list[Outgoing]):
    """A step's messages to publish now, and ``later``: calls that give more once these are
    published (each may be called again after it raised). The batch is committed only when
    both are acknowledged."""

    def __init__(self, messages: Iterable[Outgoing] = (), later: Iterable[Later] = ()) -> None:
        super().__init__(messages)
        self.later = list(later)
