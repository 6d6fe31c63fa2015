"""The scorer encodes an event's features once and splices them into its messages: the bytes
must be those of the plain encoders, whatever the values."""

from __future__ import annotations

import dataclasses
import math
import random

import orjson

from stream.labels.join import PendingPrediction
from stream.messages import Prediction, encode_prediction


def features(rng: random.Random) -> dict[str, float | str]:
    out: dict[str, float | str] = {}
    for i in range(rng.randrange(0, 70)):
        kind = rng.random()
        if kind < 0.6:
            out[f"f{i}_mean_1h"] = rng.uniform(-1e6, 1e6) * 10 ** rng.randrange(-12, 9)
        elif kind < 0.8:
            out[f"f{i}"] = float(rng.randrange(-5, 5))
        else:
            out[f"c{i}"] = rng.choice(["fuel", "caf\u00e9", 'a "quoted" \\ one', ""])
    return out


def test_encoded_features_give_the_bytes_of_the_plain_encoders() -> None:
    rng = random.Random(7)
    for n in range(300):
        x = features(rng)
        fragment = orjson.Fragment(orjson.dumps(x))
        proba = None if n % 3 == 0 else {"0": rng.random(), "1": rng.random()}
        prediction: int | float | str | None = rng.choice([None, 1, 0.25, "fraud"])
        args = (f"e{n}", f"card-{n}", 1_763_800_000_000 + n, "fraud", n, prediction, proba)
        score = rng.choice([rng.random(), 0.0, 1e-300, -math.pi])
        plain = Prediction(*args, score, x, 1_763_800_000_500).encode()
        assert encode_prediction(*args, score, fragment, 1_763_800_000_500) == plain
        shadow = {"challenger": (2, prediction, score)} if n % 2 else {}
        pending = PendingPrediction(args[0], args[1], args[2], x, n, prediction, score, 9, "m",
                                    shadow)  # fmt: skip
        spliced = dataclasses.replace(pending, x_json=fragment)
        assert spliced.encode() == pending.encode()
        assert PendingPrediction.decode(spliced.encode()) == pending
