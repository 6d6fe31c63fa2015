"""FeatureStore's side of the conditional write, without Redis: which keys and arguments the
script gets. The script itself runs in tests/integration/test_feature_store.py."""

from __future__ import annotations

from dataclasses import replace

import redis.asyncio as aioredis

from stream.features.state import encode_state, new_state
from stream.features.store import FeatureStore, Loaded, marker
from stream.features.windows import FeatureInput
from stream.service.config import FeatureSpec, Settings, WindowSettings

T0 = 1_763_800_000_000


def store() -> FeatureStore:
    settings = Settings(
        redis={"prefix": "dw"},
        features=[FeatureSpec(name="amount", windows=("1m", "1h"))],
        windows=WindowSettings(grace="5m", dedupe_ttl="2h"),
    )
    return FeatureStore(aioredis.Redis(), settings)


def test_the_write_is_the_keys_and_one_argument_per_stored_value_of_exact_bytes() -> None:
    fs = store()
    events = [
        FeatureInput("e-1", "card-1", T0, {"amount": 1.5}),
        FeatureInput("e-2", "card-2", T0 + 10, {"amount": 0.1}),
        FeatureInput("e-3", "card-1", T0 + 2_500, {"amount": 1e-7}),
        FeatureInput("e-1", "card-1", T0, {"amount": 1.5}),  # a redelivery: no second marker
        FeatureInput("e-4", "card-3", T0 - 900_000, {"amount": 3.0}),  # late: not applied
    ]
    known = {"card-2": new_state(41), "card-3": {**new_state(5), "t": T0}}
    update = fs.update(Loaded({e: encode_state(s) for e, s in known.items()}, {}), events)
    keys, args = fs.write_args(update)

    assert keys == ["dw:fw:card-1", "dw:seen:e-1", "dw:seen:e-3", "dw:fw:card-2", "dw:seen:e-2"]
    assert args[:2] == [fs.state_ttl_s, 7200] == [4200, 7200]
    # per entity: the generation it must still have, its number of markers, then what is
    # stored, byte for byte
    assert args[2:] == [
        0, 2, encode_state(update.states["card-1"]), marker(-1.0), marker(2.5),
        41, 1, encode_state(update.states["card-2"]), marker(-1.0),
    ]  # fmt: skip


def test_a_state_with_characters_json_escapes_is_passed_unchanged() -> None:
    fs = store()
    made = fs.update(Loaded({}, {}), [FeatureInput('e"\\\n', "card-é", T0, {"amount": 2.0})])
    update = replace(made, encoded={})  # write_args encodes the states itself
    update.states["card-é"]["w"]['odd "name"\t'] = []  # what a stored state may hold
    keys, args = fs.write_args(update)
    g, n, state, mark = args[2:]
    assert keys == ["dw:fw:card-é", 'dw:seen:e"\\\n']
    assert state == encode_state(update.states["card-é"])
    assert b'"odd \\"name\\"\\t":[]' in state  # type: ignore[operator]  # its own escapes
    assert (g, n, mark) == (0, 1, marker(-1.0))


def test_a_replayed_batch_writes_nothing() -> None:
    fs = store()
    events = [FeatureInput("e-1", "card-1", T0, {"amount": 1.5})]
    first = fs.update(Loaded({}, {}), events)
    replay = fs.update(Loaded(dict(first.encoded), dict(first.applied_since)), events)
    assert replay.states == {} and fs.write_args(replay) == ([], [4200, 7200])
