"""Alerts leave the worker as plain JSON even when their evidence holds numpy scalars."""

from __future__ import annotations

import numpy as np
import orjson

from stream.service.publish import encode_alert


def test_numpy_scalars_become_plain_json_numbers() -> None:
    alert = {"statistic": np.float64(0.25), "evidence": {"n": np.int64(3), "q": [np.float32(1.5)]}}
    assert orjson.loads(encode_alert(alert)) == {
        "statistic": 0.25,
        "evidence": {"n": 3, "q": [1.5]},
    }
