"""Message contracts of the topics (docs/contracts.md): Event, Label, Prediction, Alert, DeadLetter.

Inputs are validated at the edge with these models; unknown extra fields are ignored.
Timestamps arrive as epoch milliseconds or ISO-8601 strings and leave as epoch milliseconds.
A dead letter always fits a producer request: its payload, error and key are capped
(``DLQ_MAX_*``) and it carries the size and SHA-256 of the full original payload.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from numpy.typing import NDArray
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    TypeAdapter,
)

from stream.timestamps import to_epoch_ms

EpochMs = Annotated[int, BeforeValidator(to_epoch_ms)]
#: The longest id (event, entity) an input message may carry, in characters.
MAX_ID_LENGTH = 256
NonEmpty = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
LabelValue = StrictInt | StrictFloat | str | StrictBool


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=False)


class Event(_In):
    event_id: NonEmpty
    entity_id: NonEmpty
    ts: EpochMs
    features: dict[str, Any]
    label: LabelValue | None = None


class Label(_In):
    event_id: NonEmpty
    label: LabelValue
    ts: EpochMs | None = None


@dataclass(slots=True)
class Prediction:
    """A scored event (topic ``predictions``, keyed by entity_id).

    Built by the scorer and encoded with orjson (a dataclass encodes natively, about 2 us);
    read back, validated, with :func:`read_prediction`.

    >>> p = Prediction("e1", "c1", 5, "fraud", 3, 1, {"0": 0.2, "1": 0.8}, 0.8, {"a": 1.0}, 6)
    >>> read_prediction(p.encode()) == p
    True
    """

    event_id: str
    entity_id: str
    ts: int
    model: str
    model_version: int
    prediction: int | float | str | None
    proba: dict[str, float] | None
    score: float
    features: dict[str, float | str]
    processed_at: int

    def encode(self) -> bytes:
        return orjson.dumps(self)


def encode_prediction(
    event_id: str,
    entity_id: str,
    ts: int,
    model: str,
    model_version: int,
    prediction: int | float | str | None,
    proba: dict[str, float] | None,
    score: float,
    features: orjson.Fragment,
    processed_at: int,
) -> bytes:
    """The bytes of ``Prediction(...).encode()`` with the features already encoded as JSON.

    The scorer encodes an event's features once for its prediction, its shadow predictions
    and its stored pending prediction (encoding them was a tenth of the worker's CPU).

    >>> x = {"a": 1.0}
    >>> args = ("e1", "c1", 5, "fraud", 3, 1, {"0": 0.2, "1": 0.8}, 0.8)
    >>> encode_prediction(*args, orjson.Fragment(orjson.dumps(x)), 6) == Prediction(
    ...     *args, x, 6).encode()
    True
    """
    # a dict with Prediction's fields in its order: the bytes of Prediction.encode, with
    # the Fragment written as it is (tests/stream/test_messages_encoding.py). orjson
    # encodes a dict faster than a slotted dataclass: 1.42 -> 0.60 µs per message.
    return orjson.dumps(
        {
            "event_id": event_id,
            "entity_id": entity_id,
            "ts": ts,
            "model": model,
            "model_version": model_version,
            "prediction": prediction,
            "proba": proba,
            "score": score,
            "features": features,
            "processed_at": processed_at,
        }
    )


def read_prediction(raw: bytes) -> Prediction:
    """A Prediction message, validated (raises ``pydantic.ValidationError``)."""
    return _PREDICTION.validate_json(raw)


AlertKind = Literal[
    "data_drift",
    "prediction_drift",
    "performance",
    "concept_drift",
    "data_quality",
    "model_health",
    "model_lifecycle",
]
AlertStatus = Literal["firing", "resolved"]


class Window(BaseModel):
    n: int
    from_ts: int | None
    to_ts: int | None


class Alert(BaseModel):
    alert_id: str
    kind: AlertKind
    status: AlertStatus
    subject: str
    detector: str
    statistic: float | None
    p_value: float | None
    threshold: float | None
    reference: Window
    window: Window
    model: str
    model_version: int | None
    ts: int
    message: str
    evidence: dict[str, Any] = {}


#: Payload bytes a dead letter keeps: even when JSON escapes every one of them to six bytes
#: (``\u0001``), the dead letter stays near 420 kB, within Kafka's default 1 MB request.
DLQ_MAX_PAYLOAD_BYTES = 65_536
DLQ_MAX_ERROR_CHARS = 2_000
DLQ_MAX_KEY_BYTES = 1_024


class DeadLetter(BaseModel):
    """A rejected input, and what identifies its payload when it had to be cut.

    ``payload`` holds at most DLQ_MAX_PAYLOAD_BYTES of the original input; ``payload_bytes``
    and ``payload_sha256`` describe the whole of it; ``payload_truncated`` says whether
    bytes were cut.
    """

    error: str
    stage: str
    topic: str
    partition: int | None
    offset: int | None
    key: str | None
    payload: str
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    payload_bytes: int
    payload_sha256: str
    payload_truncated: bool
    ts: int


def dead_letter(
    error: str,
    stage: str,
    topic: str,
    partition: int | None,
    offset: int | None,
    key: bytes | None,
    payload: bytes,
    now_ms: int,
) -> bytes:
    """The DeadLetter JSON for a rejected input, small enough for any producer request.

    The payload is cut to DLQ_MAX_PAYLOAD_BYTES (at a character boundary when it is UTF-8;
    other bytes travel as base64), the error to DLQ_MAX_ERROR_CHARS and the key to
    DLQ_MAX_KEY_BYTES; size and SHA-256 of the full payload identify the original.

    >>> orjson.loads(dead_letter("not JSON", "decode", "events", 0, 7, b"k", b"\\xff", 1))
    ... # doctest: +NORMALIZE_WHITESPACE
    {'error': 'not JSON', 'stage': 'decode', 'topic': 'events', 'partition': 0, 'offset': 7,
     'key': 'k', 'payload': '/w==', 'payload_encoding': 'base64', 'payload_bytes': 1,
     'payload_sha256': 'a8100ae6aa1940d0b663bb31cd466142ebbdbd5187131b92d93818987832eb89',
     'payload_truncated': False, 'ts': 1}
    """
    text, encoding = _text(payload, DLQ_MAX_PAYLOAD_BYTES)
    letter = DeadLetter(
        error=_clip(error, DLQ_MAX_ERROR_CHARS),
        stage=stage,
        topic=topic,
        partition=partition,
        offset=offset,
        key=None if key is None else _text(key, DLQ_MAX_KEY_BYTES)[0],
        payload=text,
        payload_encoding=encoding,
        payload_bytes=len(payload),
        payload_sha256=hashlib.sha256(payload).hexdigest(),
        payload_truncated=len(payload) > DLQ_MAX_PAYLOAD_BYTES,
        ts=now_ms,
    )
    return orjson.dumps(letter.model_dump())


def dead_letter_key(key: bytes | None) -> bytes | None:
    """The Kafka key of a dead-letter record: the input's key, capped at DLQ_MAX_KEY_BYTES.

    >>> dead_letter_key(b"card-1"), len(dead_letter_key(b"k" * 5000) or b""), dead_letter_key(None)
    (b'card-1', 1024, None)
    """
    return None if key is None else _head(key, DLQ_MAX_KEY_BYTES)


def _head(raw: bytes, limit: int) -> bytes:
    """At most ``limit`` bytes of ``raw``, not cutting a UTF-8 character in two."""
    if len(raw) <= limit:
        return raw
    cut = limit
    # a UTF-8 character is at most 4 bytes: step back over at most 3 continuation bytes
    for _ in range(3):
        if raw[cut] & 0xC0 != 0x80:
            break
        cut -= 1
    return raw[:cut]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text(raw: bytes, limit: int) -> tuple[str, Literal["utf-8", "base64"]]:
    """At most ``limit`` bytes of ``raw`` as UTF-8 text, or as base64 if they are not."""
    try:
        return _head(raw, limit).decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw[:limit]).decode("ascii"), "base64"


#: One model's output for an event: (version, prediction, score).
Outputs = tuple[int, int | float | str | None, float]


@dataclass(frozen=True, slots=True)
class TrainingExample:
    """(x, y) in label-arrival order, with what the monitors need to judge the model.

    The message of the internal topic ``{app_id}-train-{model}``. ``model_version``,
    ``prediction`` and ``score`` are the served model's, ``model`` names it (empty in
    examples of versions before the lineup: the configured champion); ``shadow`` holds the
    other models' outputs for the same event, by model name.

    >>> x = TrainingExample("e1", {"a": 1.0}, 1, 1000, 6000, 3, 0, 0.2)
    >>> TrainingExample.decode(x.encode()) == x, x.lag_s
    (True, 5.0)
    """

    event_id: str
    x: dict[str, float | str]
    y: Any
    event_ts_ms: int
    label_ts_ms: int
    model_version: int
    prediction: int | float | str | None
    score: float
    model: str = ""
    shadow: dict[str, Outputs] = field(default_factory=dict)

    def encode(self) -> bytes:
        return orjson.dumps(self)

    def outputs(self, model: str, served_default: str) -> Outputs | None:
        """Model ``model``'s (version, prediction, score) for this event, if it scored it.

        ``served_default`` is the model an example without ``model`` was served by.

        >>> x = TrainingExample("e", {}, 1, 0, 0, 3, 0, 0.2, "a", {"b": (2, 1, 0.9)})
        >>> x.outputs("a", "a"), x.outputs("b", "a"), x.outputs("c", "a")
        ((3, 0, 0.2), (2, 1, 0.9), None)
        """
        if model == (self.model or served_default):
            return (self.model_version, self.prediction, self.score)
        return self.shadow.get(model)

    @classmethod
    def decode(cls, raw: bytes) -> TrainingExample:
        """Read and validate one message (raises ``pydantic.ValidationError``)."""
        return _TRAINING_EXAMPLE.validate_json(raw)

    @property
    def lag_s(self) -> float:
        """Label lag: label time minus event time, in seconds."""
        return max(0.0, (self.label_ts_ms - self.event_ts_ms) / 1000.0)


SubjectKind = Literal["numeric", "categorical"]


@dataclass(frozen=True)
class SubjectBatch:
    """One subject's values from one scored batch, in event order (monitor topic, tag ``D``).

    ``partitions`` names the events-topic partition of each value, so that the monitor can
    merge the partitions by event time (:mod:`stream.monitoring.event_order`); ``None`` when
    the scorer does not say (the values are then judged in the order they arrive).
    Its lists are read, never changed: the batches of one message share their times and
    partitions (:meth:`SubjectColumns.batches`).

    >>> b = SubjectBatch("amount", "numeric", [1.5, 2.0], [1000, 1001], 3, [0, 2])
    >>> decode_monitor_batch(encode_monitor_batch(b)) == b
    True
    """

    subject: str
    kind: SubjectKind
    values: list[float] | list[str]
    ts: list[int]
    model_version: int
    partitions: list[int] | None = None


@dataclass(frozen=True)
class QualityBatch:
    """One feature's data-quality counts from one scored batch (monitor topic, tag ``Q``).

    ``n`` events, ``counts`` problems per kind, event times from ``ts[0]`` to ``ts[1]``.

    >>> q = QualityBatch("amount", 500, {"missing": 3}, (1000, 1999))
    >>> decode_monitor_batch(encode_monitor_batch(q)) == q
    True
    """

    feature: str
    n: int
    counts: dict[str, int]
    ts: tuple[int, int]

    @property
    def subject(self) -> str:
        """The monitor-topic key: ``quality:{feature}``."""
        return f"quality:{self.feature}"


MonitorBatch = SubjectBatch | QualityBatch


def encode_monitor_batch(batch: MonitorBatch) -> bytes:
    """A monitor-topic value: one tag byte and compact JSON (short keys: one per subject and
    scoring batch, so its size matters)."""
    if isinstance(batch, SubjectBatch):
        body: dict[str, Any] = {"s": batch.subject, "k": batch.kind, "v": batch.values,
                                "t": batch.ts, "m": batch.model_version}  # fmt: skip
        if batch.partitions is not None:
            body["p"] = batch.partitions
        return b"D" + orjson.dumps(body)
    return b"Q" + orjson.dumps(
        {"feature": batch.feature, "n": batch.n, "counts": batch.counts, "ts": batch.ts}
    )


def decode_monitor_batch(raw: bytes) -> MonitorBatch:
    """Read a one-batch monitor-topic value (tag ``D`` or ``Q``); raises ``ValueError`` (or a
    JSON/key error) if it is not one."""
    tag, body = raw[:1], orjson.loads(raw[1:])
    if tag == b"D":
        return SubjectBatch(body["s"], body["k"], body["v"], body["t"], body["m"], body.get("p"))
    if tag == b"Q":
        return QualityBatch(body["feature"], int(body["n"]), dict(body["counts"]),
                            (int(body["ts"][0]), int(body["ts"][1])))  # fmt: skip
    raise ValueError(f"unknown monitor message tag {tag!r}")


@dataclass(frozen=True)
class SubjectColumns:
    """Several subjects' values from one scored batch, by event (monitor topic, tag ``G``).

    The scorer sends one such message per monitor-topic partition and scored batch instead
    of one :class:`SubjectBatch` per subject: the event times and source partitions, which
    every subject of a batch shares, travel once, and the numeric values as one float64
    matrix, not as JSON text (about 2.1 KB per event with the 67 subjects of the
    10-feature benchmark config as ``D`` messages).

    ``numeric[j]`` (subject, model version) owns row ``j`` of ``values``, ``nan`` where the
    subject has no value for an event (a monitor never takes a non-finite value);
    ``categorical`` holds (subject, model version, one value or ``None`` per event).

    >>> import numpy as np
    >>> c = SubjectColumns(np.array([5, 7]), np.array([0, 1]), [("x", 3)],
    ...                    np.array([[1.5, np.nan]]), [("kind", 3, [None, "a"])])
    >>> [(b.subject, b.values, b.ts, b.partitions) for b in decode_monitor_message(c.encode())]
    [('x', [1.5], [5], [0]), ('kind', ['a'], [7], [1])]
    """

    ts: NDArray[np.int64]
    partitions: NDArray[np.int64] | None
    numeric: list[tuple[str, int]]
    values: NDArray[np.float64]
    categorical: list[tuple[str, int, list[str | None]]]

    @property
    def subjects(self) -> list[str]:
        return [s for s, _ in self.numeric] + [s for s, _, _ in self.categorical]

    def select(self, names: Collection[str]) -> SubjectColumns:
        """The columns of the subjects in ``names`` only."""
        rows = [j for j, (s, _) in enumerate(self.numeric) if s in names]
        return SubjectColumns(
            self.ts,
            self.partitions,
            [self.numeric[j] for j in rows],
            self.values[rows],
            [c for c in self.categorical if c[0] in names],
        )

    def __add__(self, other: SubjectColumns) -> SubjectColumns:
        """Both column sets of the same events (e.g. the features and the reference model's
        outputs)."""
        return SubjectColumns(
            self.ts,
            self.partitions,
            self.numeric + other.numeric,
            np.concatenate((self.values, other.values)),
            self.categorical + other.categorical,
        )

    def batches(self) -> list[SubjectBatch]:
        """One :class:`SubjectBatch` per subject with at least one value, in event order."""
        out: list[SubjectBatch] = []
        ts, parts = self.ts, self.partitions
        # the subjects with a value for every event share one list of times and of
        # partitions (converting them once per subject was a fifth of the monitors' CPU)
        every_ts: list[int] | None = None
        every_part: list[int] | None = None
        for (subject, version), row in zip(self.numeric, self.values, strict=True):
            keep = row == row  # not nan
            if keep.all():
                if every_ts is None:
                    every_ts = ts.tolist()
                    every_part = None if parts is None else parts.tolist()
                out.append(SubjectBatch(subject, "numeric", row.tolist(), every_ts, version,
                                        every_part))  # fmt: skip
            elif keep.any():
                p = None if parts is None else parts[keep].tolist()
                out.append(SubjectBatch(subject, "numeric", row[keep].tolist(),
                                        ts[keep].tolist(), version, p))  # fmt: skip
        for subject, version, found in self.categorical:
            rows = [i for i, v in enumerate(found) if v is not None]
            if rows:
                values: list[str] = [found[i] for i in rows]  # type: ignore[misc]
                p = None if parts is None else parts[rows].tolist()
                out.append(SubjectBatch(subject, "categorical", values, ts[rows].tolist(),
                                        version, p))  # fmt: skip
        return out

    def encode(self) -> bytes:
        """``G``, the header's length (4 bytes, little-endian), the header (JSON), the event
        times (int64), the partitions (int32, if known) and the numeric rows (float64)."""
        n = len(self.ts)
        header = orjson.dumps({
            "n": n,
            "p": self.partitions is not None,
            "num": self.numeric,
            "cat": self.categorical,
        })  # fmt: skip
        parts = b"" if self.partitions is None else self.partitions.astype("<i4").tobytes()
        return b"".join((
            b"G", len(header).to_bytes(4, "little"), header, self.ts.astype("<i8").tobytes(),
            parts, np.ascontiguousarray(self.values, dtype="<f8").tobytes(),
        ))  # fmt: skip

    @classmethod
    def decode(cls, raw: bytes) -> SubjectColumns:
        """Read a ``G`` value; raises ``ValueError`` (or a JSON/key error) if it is not one."""
        if raw[:1] != b"G" or len(raw) < 5:
            raise ValueError("not a subject-columns message")
        size = int.from_bytes(raw[1:5], "little")
        header = orjson.loads(raw[5 : 5 + size])
        n, numeric = int(header["n"]), [(str(s), int(m)) for s, m in header["num"]]
        categorical = [(str(s), int(m), list(v)) for s, m, v in header["cat"]]
        if any(len(v) != n for _, _, v in categorical):
            raise ValueError(f"a categorical column does not hold one value per event ({n})")
        at, end = 5 + size, len(raw)
        widths = 8 + (4 if header["p"] else 0) + 8 * len(numeric)
        if end - at != n * widths:
            raise ValueError(f"{end - at} bytes of columns, expected {n * widths}")
        ts = np.frombuffer(raw, "<i8", n, at).astype(np.int64)
        at += 8 * n
        parts = None
        if header["p"]:
            parts = np.frombuffer(raw, "<i4", n, at).astype(np.int64)
            at += 4 * n
        values = np.frombuffer(raw, "<f8", n * len(numeric), at).reshape(len(numeric), n)
        return cls(ts, parts, numeric, values, categorical)


def decode_monitor_message(raw: bytes) -> list[MonitorBatch]:
    """The batches of a monitor-topic value: one for ``D`` and ``Q``, one per subject with a
    value for ``G`` (:class:`SubjectColumns`). Raises ``ValueError`` (or a JSON/key error)
    if it is not a monitor message."""
    if raw[:1] == b"G":
        return list(SubjectColumns.decode(raw).batches())
    return [decode_monitor_batch(raw)]


_PREDICTION = TypeAdapter(Prediction)
_TRAINING_EXAMPLE = TypeAdapter(TrainingExample)
