"""The stored state of one entity's feature windows and its encoding for Redis.

:mod:`stream.features.windows` transforms these states; :mod:`stream.features.store` reads
and writes them.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

State = dict[str, Any]
"""One entity's windows: ``{"v": 1, "g": G, "t": M or None, "w": {"{feature}@{w}": [...]}}``.

Each bucket is ``[index, count, sum, M2, min, max]``, sorted by index. Window lists are
keyed by bucket width, so a config change of ``buckets`` or a window length starts that
window afresh instead of misreading old buckets. ``g`` is the state's generation: every
batch that changes the state writes it with ``g + 1``, and the store writes it only if the
stored state still has generation ``g`` (no lost update between two workers, see
:mod:`stream.features.store`). It is the second key, so the store can read it from the
encoded bytes without decoding them (:func:`stored_generation`). A state from before
generations counts as generation 0.
"""

STATE_VERSION = 1


def new_state(generation: int = 0) -> State:
    """The state of an entity without events.

    >>> new_state()
    {'v': 1, 'g': 0, 't': None, 'w': {}}
    """
    return {"v": STATE_VERSION, "g": generation, "t": None, "w": {}}


def encode_state(state: State) -> bytes:
    """Serialise a state for Redis (orjson: floats round-trip exactly).

    >>> encode_state(new_state())
    b'{"v":1,"g":0,"t":null,"w":{}}'
    """
    return orjson.dumps(state)


_GENERATION = re.compile(rb'^\{"v":\d+,"g":(\d+)')


def stored_generation(raw: bytes | None) -> int:
    """The generation of an encoded state, read from its first bytes (0 if it has none).

    The write script in :mod:`stream.features.store` reads it with the same pattern.

    >>> stored_generation(b'{"v":1,"g":41,"t":5,"w":{}}'), stored_generation(None)
    (41, 0)
    >>> stored_generation(b'{"v":1,"t":5,"w":{}}'), stored_generation(b"garbage")
    (0, 0)
    """
    if not raw:
        return 0
    match = _GENERATION.match(raw)
    return int(match.group(1)) if match else 0


def decode_state(raw: bytes | str | None) -> State:
    """Parse a state read from Redis; ``None`` (no key) gives a new state.

    A state of another :data:`STATE_VERSION`, or bytes that are not a state, are discarded:
    the windows start afresh (with the stored generation, so the next write still applies).

    >>> decode_state(b'{"v":1,"g":3,"t":5,"w":{"x@10":[[0,1,2.0,0.0,2.0,2.0]]}}')["w"]
    {'x@10': [[0, 1, 2.0, 0.0, 2.0, 2.0]]}
    >>> decode_state(None) == decode_state(b'{"v":0}') == decode_state(b"{]") == new_state()
    True
    """
    return try_decode_state(raw) or new_state(stored_generation(_as_bytes(raw)))


def try_decode_state(raw: bytes | str | None) -> State | None:
    """The decoded state, a new state for ``None``, or ``None`` if ``raw`` is not a state.

    >>> try_decode_state(b'{"v":1,"t":null,"w":[]}') is None
    True
    """
    if raw is None:
        return new_state()
    try:
        state = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(state, dict) or state.get("v") != STATE_VERSION:
        return None
    if not isinstance(state.get("w"), dict) or not isinstance(state.get("t"), int | None):
        return None
    return state


def _as_bytes(raw: bytes | str | None) -> bytes | None:
    return raw.encode() if isinstance(raw, str) else raw
