"""``driftwatch replay`` without the network: arguments, the range rule, the merge, metrics."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from stream.messages import TrainingExample
from stream.service.cli import build_parser, main
from stream.service.config import Settings, TopicSettings
from stream.tools.replay import (
    ArrivalOrder,
    RangeMetrics,
    in_range,
    output_topics,
    replay_options,
    time_of,
)

FROM, TO = "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"
FROM_MS, TO_MS = 1_767_225_600_000, 1_767_229_200_000
HORIZON_MS = 3_600_000


def test_options_parse_both_time_forms_and_default_to_a_fresh_prefix() -> None:
    one = replay_options(Settings(), FROM, str(TO_MS))
    two = replay_options(Settings(), str(FROM_MS), TO)
    assert (one.start_ms, one.end_ms) == (two.start_ms, two.end_ms) == (FROM_MS, TO_MS)
    assert one.prefix.startswith("dw:replay:") and one.prefix != two.prefix
    assert output_topics(Settings(), one.suffix) == ("predictions.replay", "events.dlq.replay")


@pytest.mark.parametrize(
    ("start", "end", "wrong"),
    [(TO, FROM, "must be before"), (FROM, FROM, "must be before"), ("soon", TO, "--from/--to")],
)
def test_an_empty_or_unreadable_range_names_the_options(start: str, end: str, wrong: str) -> None:
    with pytest.raises(ValueError, match=wrong):
        replay_options(Settings(), start, end)


@pytest.mark.parametrize("prefix", ["dw", "dw:fw", "dw:replay", "d w", "dw*"])
def test_a_prefix_that_could_touch_live_keys_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="--prefix"):
        replay_options(Settings(), FROM, TO, prefix=prefix)


def test_a_prefix_that_holds_the_live_one_is_refused() -> None:
    live = Settings(redis={"prefix": "prod:dw"})
    with pytest.raises(ValueError, match="--prefix"):
        replay_options(live, FROM, TO, prefix="prod")
    assert replay_options(live, FROM, TO, prefix="backtest").prefix == "backtest"
    assert replay_options(live, FROM, TO, prefix="prod:dw:replay:x").prefix == "prod:dw:replay:x"


@pytest.mark.parametrize("suffix", ["", " ", "/x", ".shadow"])
def test_a_suffix_that_names_a_live_topic_or_no_topic_is_refused(suffix: str) -> None:
    # ".shadow": predictions + suffix would be the shadow topic
    with pytest.raises(ValueError, match="--suffix"):
        replay_options(Settings(topics=TopicSettings(shadow="predictions.shadow")), FROM, TO,
                       suffix=suffix)  # fmt: skip


def test_the_time_of_a_message_is_its_ts_else_its_record_timestamp() -> None:
    assert time_of(b'{"ts": 1767225600000}', 7) == FROM_MS
    assert time_of(b'{"ts": "2026-01-01T00:00:00Z"}', 7) == FROM_MS
    for unreadable in (b"{not json", b"[1, 2]", b'{"ts": true}', b'{"ts": 1.5}', b"{}", None):
        assert time_of(unreadable, 7) == 7


def test_events_are_in_the_range_by_event_time_and_labels_until_the_horizon() -> None:
    options = replay_options(Settings(), FROM, TO)

    def event(ts: int, record_ts: int = FROM_MS) -> bool:
        return in_range(True, b'{"ts": %d}' % ts, record_ts, options, HORIZON_MS)

    def label(ts: int | None, record_ts: int) -> bool:
        value = b'{"label": 1}' if ts is None else b'{"label": 1, "ts": %d}' % ts
        return in_range(False, value, record_ts, options, HORIZON_MS)

    assert [event(FROM_MS - 1), event(FROM_MS), event(TO_MS - 1), event(TO_MS)] == [
        False, True, True, False,
    ]  # fmt: skip
    assert not event(FROM_MS - 1, record_ts=FROM_MS + 10)  # late, but before the range
    assert in_range(True, b"{not json", FROM_MS + 5, options, HORIZON_MS)  # dead-lettered
    assert not in_range(True, b"{not json", TO_MS, options, HORIZON_MS)
    assert label(TO_MS + HORIZON_MS - 1, 0) and not label(TO_MS + HORIZON_MS, 0)
    assert not label(FROM_MS - 1, TO_MS)  # its own time wins over the record's
    assert label(None, TO_MS + 5) and not label(None, FROM_MS - 5)


def test_arrival_order_merges_sources_by_timestamp_and_waits_for_an_empty_one() -> None:
    order: ArrivalOrder[str, str] = ArrivalOrder(["events", "labels"])
    order.add("events", [(1, "e1"), (4, "e4")])
    assert order.blocked and order.release(10) == []  # labels may still bring time 0
    order.add("labels", [(4, "l4"), (9, "l9")])
    assert order.release(10) == ["e1", "e4"]  # a tie: the source listed first
    assert order.release(10) == []  # events is open and empty again
    order.close("events")
    assert order.release(1) == ["l4"] and order.release(5) == ["l9"]
    assert not order.finished
    order.close("labels")
    assert order.finished


def test_arrival_order_equals_a_sort_of_all_items_whatever_the_fetch_sizes() -> None:
    rng = random.Random(5)
    sources = {s: sorted(rng.sample(range(10_000), 300)) for s in ("a", "b", "c")}
    order: ArrivalOrder[str, tuple[int, str]] = ArrivalOrder(sources)
    out: list[tuple[int, str]] = []
    pending = {s: list(ts) for s, ts in sources.items()}
    for _ in range(10_000):  # bounded: each round fetches from one source, as getmany does
        if not order.open:
            break
        s = rng.choice(sorted(order.open))
        n = rng.randint(1, 40)
        chunk, pending[s] = pending[s][:n], pending[s][n:]
        order.add(s, [(t, (t, s)) for t in chunk])
        if not pending[s]:
            order.close(s)
        out += order.release(rng.randint(1, 50))
    out += order.release(10_000)
    assert order.finished
    assert out == sorted(out, key=lambda item: (item[0], "abc".index(item[1])))
    assert len(out) == len({(t, s) for s, ts in sources.items() for t in ts})


def _example(i: int, y: object, prediction: object, score: float) -> TrainingExample:
    return TrainingExample(f"e{i}", {}, y, 0, 0, 1, prediction, score)


def test_range_metrics_are_the_metrics_of_every_valid_example() -> None:
    metrics = RangeMetrics("binary", ("accuracy", "roc_auc"))
    metrics.add([_example(0, 1, 1, 0.9), _example(1, "0", 1, 0.6), _example(2, 0, 0, 0.2)])
    metrics.add([_example(3, "yes", 1, 0.7), _example(4, True, 0, 0.4)])  # "yes": not a label
    values, ses = metrics.values()
    assert values["accuracy"] == pytest.approx(2 / 4)
    assert values["roc_auc"] == pytest.approx(3 / 4)  # 0.9 and 0.4 over 0.6 and 0.2: 3 of 4
    assert set(ses) == {"accuracy", "roc_auc"}
    assert RangeMetrics("binary", ("accuracy",)).values() == ({}, {})


def test_range_metrics_of_classes_and_of_values() -> None:
    classes = RangeMetrics("multiclass", ("accuracy",))
    classes.add([_example(0, "a", "a", 0.5), _example(1, 2, "2", 0.5), _example(2, "b", None, 0)])
    assert classes.values()[0] == {"accuracy": pytest.approx(2 / 3)}
    values = RangeMetrics("regression", ("mae", "rmse"))
    values.add([_example(0, 1.0, 2.0, 2.0), _example(1, "3", 0.0, 0.0)])
    assert values.values()[0] == {"mae": pytest.approx(2.0), "rmse": pytest.approx(5**0.5)}


def test_the_command_line_reads_the_replay_arguments() -> None:
    args = build_parser().parse_args(
        ["replay", "--from", FROM, "--to", str(TO_MS), "--model", "fraud", "--version", "3",
         "--prefix", "bt", "--suffix", ".bt", "--keep-state"]
    )  # fmt: skip
    assert (args.command, args.start, args.end, args.model_name) == (
        "replay",
        FROM,
        "1767229200000",
        "fraud",
    )
    assert (args.version, args.prefix, args.suffix, args.keep_state) == (3, "bt", ".bt", True)
    defaults = build_parser().parse_args(["replay", "--from", FROM, "--to", TO])
    assert (defaults.version, defaults.prefix, defaults.suffix, defaults.keep_state) == (
        None, None, ".replay", False,
    )  # fmt: skip


@pytest.mark.parametrize(
    "argv",
    [
        ["replay", "--from", FROM],  # no --to
        ["replay", "--from", FROM, "--to", TO, "--version", "0"],
        ["replay", "--from", TO, "--to", FROM],  # found once the configuration is read
        ["replay", "--from", "yesterday", "--to", TO],
        ["replay", "--from", FROM, "--to", TO, "--prefix", "dw"],
        ["replay", "--from", FROM, "--to", TO, "--suffix", ""],
    ],
)
def test_a_bad_argument_prints_the_usage_and_exits_2(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # no driftwatch.toml: the defaults, and no service is reached
    for name in [k for k in os.environ if k.startswith("DRIFTWATCH_")]:
        monkeypatch.delenv(name)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "usage: driftwatch replay" in capsys.readouterr().err
