"""Dead letters always fit a producer request, and still identify the original input."""

from __future__ import annotations

import base64
import hashlib

import orjson
import pytest

from stream.exceptions import RejectedInput
from stream.ingest.scoring import reject
from stream.messages import (
    DLQ_MAX_ERROR_CHARS,
    DLQ_MAX_KEY_BYTES,
    DLQ_MAX_PAYLOAD_BYTES,
    DeadLetter,
    dead_letter,
    dead_letter_key,
)
from stream.records import Incoming
from stream.service.config import Settings
from stream.service.metrics import Metrics

SIZE = 1_048_000  # about Kafka's default max request: such an input's dead letter was lost
KAFKA_DEFAULT_MAX_REQUEST = 1_048_576


def letter(payload: bytes, key: bytes | None = b"k", error: str = "oversize") -> DeadLetter:
    raw = dead_letter(error, "decode", "events", 3, 42, key, payload, 1_763_800_000_000)
    assert len(raw) < 500_000, len(raw)
    return DeadLetter.model_validate_json(raw)


@pytest.mark.parametrize(
    "payload",
    [
        b"a" * SIZE,  # plain ASCII
        b"\x01" * SIZE,  # every byte escapes to six in JSON (\u0001)
        b'"\\' * (SIZE // 2),  # quotes and backslashes escape to two
        "é".encode() * (SIZE // 2),  # two-byte UTF-8
        bytes(range(256)) * (SIZE // 256),  # not UTF-8: base64
    ],
    ids=["ascii", "control", "quotes", "utf8", "binary"],
)
def test_a_megabyte_payload_fits_and_is_identified(payload: bytes) -> None:
    d = letter(payload)
    assert d.payload_truncated is True and d.payload_bytes == len(payload)
    assert d.payload_sha256 == hashlib.sha256(payload).hexdigest()
    kept = base64.b64decode(d.payload) if d.payload_encoding == "base64" else d.payload.encode()
    assert 0 < len(kept) <= DLQ_MAX_PAYLOAD_BYTES and payload.startswith(kept)


def test_truncation_does_not_split_a_utf8_character() -> None:
    for prefix in (b"", b"a", b"ab", b"abc"):  # move the cut through a 4-byte character
        payload = prefix + "😀".encode() * (DLQ_MAX_PAYLOAD_BYTES // 4 + 1)
        d = letter(payload)
        assert d.payload_encoding == "utf-8" and payload.startswith(d.payload.encode())
        assert DLQ_MAX_PAYLOAD_BYTES - 3 <= len(d.payload.encode()) <= DLQ_MAX_PAYLOAD_BYTES


def test_a_small_payload_is_kept_whole() -> None:
    d = letter(b'{"event_id": "e1"}')
    assert (d.payload, d.payload_encoding, d.payload_truncated) == (
        '{"event_id": "e1"}',
        "utf-8",
        False,
    )
    assert (
        d.payload_bytes == 18
        and d.payload_sha256 == hashlib.sha256(b'{"event_id": "e1"}').hexdigest()
    )
    assert letter(b"").payload_sha256 == hashlib.sha256(b"").hexdigest()


def test_error_and_key_are_capped() -> None:
    d = letter(b"x", key=b"\x01" * SIZE, error="\x00" * SIZE)
    assert len(d.error) == DLQ_MAX_ERROR_CHARS and d.error.endswith("...")
    assert d.key is not None and len(d.key.encode()) == DLQ_MAX_KEY_BYTES
    assert letter(b"x", key=None).key is None


def test_worst_case_dead_letter_is_far_below_the_request_limit() -> None:
    raw = dead_letter("\x01" * SIZE, "validate", "t" * 249, 0, 0, b"\x01" * SIZE, b"\x01" * SIZE, 0)
    assert len(raw) < KAFKA_DEFAULT_MAX_REQUEST // 2


def test_dead_letter_key() -> None:
    assert dead_letter_key(None) is None
    assert dead_letter_key(b"card-1") == b"card-1"
    assert dead_letter_key(b"k" * SIZE) == b"k" * DLQ_MAX_KEY_BYTES
    # a multi-byte character at the cut is left out whole
    key = dead_letter_key(b"k" + "é".encode() * DLQ_MAX_KEY_BYTES)
    assert key is not None and len(key) == DLQ_MAX_KEY_BYTES - 1 and key.decode()


def test_reject_caps_the_record_key() -> None:
    settings = Settings()
    msg = Incoming("events", 0, 7, b"k" * SIZE, b"\x01" * SIZE)
    out = reject(settings, Metrics(), msg, RejectedInput("too big", "decode", "oversize"))
    assert out.topic == settings.topics.dlq and out.key == b"k" * DLQ_MAX_KEY_BYTES
    assert len(out.key) + len(out.value) < 500_000
    assert orjson.loads(out.value)["payload_bytes"] == SIZE
