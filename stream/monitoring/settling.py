"""When the prediction reference is taken: once the online model has settled.

Pure logic, no I/O.  An online learner's scores move while it converges, whatever the
inputs do: a reference made of its first scores is judged against the scores of a better
model later, and ``prediction_drift`` fires on a stationary stream.  So the prediction
subjects (``prediction.score``, ``prediction.class``) take their reference in two rules:

1. values scored by version 0 (the untrained model, which scores every event alike) never
   enter a reference;
2. the values come in blocks of ``reference_size``; a block becomes the reference when it
   *agrees* with the block before it (:func:`blocks_agree`): the model's outputs no longer
   move from one block to the next.  Until then each block replaces the previous one.

Agreement is a two-sample test at ``monitoring.settle_level`` (default 0.01): the KS
statistic below its asymptotic critical value (numeric), Pearson's chi-square p-value above
the level (categorical).  A model still converging differs block to block by far more than
that; a settled one differs by sampling noise.  The wait is reported by the
``driftwatch_monitor_phase`` gauge (2 = settling) and one log line.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> blocks_agree("numeric", rng.beta(2, 5, 2000).tolist(), rng.beta(2, 5, 2000).tolist(), 0.01)
True
>>> blocks_agree("numeric", rng.beta(2, 5, 2000).tolist(), rng.beta(2, 4, 2000).tolist(), 0.01)
False
>>> blocks_agree("categorical", ["0"] * 1900 + ["1"] * 100, ["0"] * 1500 + ["1"] * 500, 0.01)
False
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from detectors import chi2
from detectors.ks import ks_critical_value, ks_sorted_statistic
from stream.messages import SubjectKind


def blocks_agree(
    kind: SubjectKind, previous: Sequence[Any], block: Sequence[Any], level: float
) -> bool:
    """Whether two consecutive blocks of a subject's values look alike at ``level``."""
    if kind == "numeric":
        ref = np.sort(np.asarray(previous, dtype=np.float64))
        cur = np.sort(np.asarray(block, dtype=np.float64))
        statistic = float(ks_sorted_statistic(ref, cur[np.newaxis])[0])
        return statistic <= ks_critical_value(ref.size, cur.size, level)
    before, now = Counter(previous), Counter(block)
    categories = sorted(set(before) | set(now))
    if len(categories) < 2:
        return True  # one class in both: nothing moved
    _, p_value = chi2([before[c] for c in categories], [now[c] for c in categories])
    return p_value >= level


__all__ = ["blocks_agree"]
