"""The ``driftwatch`` command line."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from stream.exceptions import ConfigError, DriftwatchError
from stream.service.config import Settings, load_settings
from stream.tools.synthetic import Drift

log = logging.getLogger("driftwatch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="driftwatch",
        description="Streaming online prediction and drift monitoring on Kafka.",
    )
    parser.add_argument(
        "--config",
        help="path of the TOML config (default: $DRIFTWATCH_CONFIG or ./driftwatch.toml)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("worker", help="run a worker: consume events and labels, publish predictions")
    sub.add_parser("config", help="validate the configuration and print it with secrets hidden")
    demo = sub.add_parser("demo", help="produce a synthetic stream through running workers")
    demo.add_argument("--events", type=_positive_int, default=20_000, help="events to send")
    demo.add_argument("--rate", type=float, default=1000.0, help="events/s (0: unthrottled)")
    demo.add_argument(
        "--label-delay", type=int, default=200, help="send each label this many events later"
    )
    demo.add_argument(
        "--drift",
        action="append",
        default=[],
        type=_drift,
        metavar="KIND@START[-END]",
        help="inject drift: mean_shift, variance, category_mix or concept, e.g. concept@8000",
    )
    demo.add_argument(
        "--bad-every", type=int, default=200, help="one malformed event every N (0: none)"
    )
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument(
        "--metrics-url",
        help="a worker's /metrics, for the labels-joined count (default: worker.metrics_address)",
    )
    demo.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for outputs")
    tail = sub.add_parser("tail", help="print a topic live, one readable line per message")
    tail.add_argument("what", choices=["predictions", "alerts", "dlq"])
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--limit", type=_positive_int, default=None, help="stop after N messages")
    model = sub.add_parser(
        "model", help="model versions, the lineup of champion and challengers, its history"
    )
    model.add_argument("action", choices=["versions", "promote", "rollback", "lineup", "history"])
    model.add_argument(
        "version",
        nargs="?",
        type=_positive_int,
        help="promote: the version to serve (pinned); without one, follow the latest again",
    )
    model.add_argument(
        "--model",
        dest="model_name",
        help="versions/promote/rollback: the model whose versions (default: the champion)",
    )
    model.add_argument(
        "--challenger",
        help="promote: make this model of the lineup the champion (the champion becomes a "
        "challenger: promote it back to roll back)",
    )
    model.add_argument(
        "--limit", type=_positive_int, default=None, help="history: the newest N events only"
    )
    ref = sub.add_parser("reference", help="pin the drift reference, or return to the default")
    ref.add_argument("action", choices=["pin", "unpin"])
    src = ref.add_mutually_exclusive_group()
    src.add_argument("--file", type=Path, help="JSON-lines file of Prediction messages")
    src.add_argument(
        "--range",
        nargs=2,
        metavar=("FROM", "TO"),
        help="event-time range (epoch ms or ISO-8601) of the predictions topic",
    )
    replay = sub.add_parser(
        "replay",
        help="run an event-time range of the events and labels through the scoring code into "
        "separate topics, and print the model's metrics over it",
    )
    replay.set_defaults(replay_parser=replay)  # for the errors found once the config is read
    replay.add_argument(
        "--from",
        dest="start",
        required=True,
        metavar="TIME",
        help="start of the event-time range (epoch ms or ISO-8601), included",
    )
    replay.add_argument(
        "--to",
        dest="end",
        required=True,
        metavar="TIME",
        help="end of the event-time range, excluded",
    )
    replay.add_argument(
        "--model",
        dest="model_name",
        metavar="NAME",
        help="the model of the lineup or config to replay (default: the champion)",
    )
    replay.add_argument(
        "--version",
        type=_positive_int,
        metavar="N",
        help="score with this stored version, frozen (default: a fresh model "
        "that learns each label as it arrives)",
    )
    replay.add_argument(
        "--prefix",
        metavar="P",
        help="Redis prefix of the replay's state (default: {prefix}:replay:{id})",
    )
    replay.add_argument(
        "--suffix",
        default=".replay",
        metavar="S",
        help="appended to the output topics' names (default: .replay)",
    )
    replay.add_argument(
        "--keep-state", action="store_true", help="keep the replay's Redis state afterwards"
    )
    return parser


def _drift(text: str) -> Drift:
    try:
        return Drift.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"driftwatch: configuration error:\n{exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        import orjson

        sys.stdout.write(orjson.dumps(settings.redacted(), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
        return 0
    if args.command == "worker":
        return run_worker(settings, args.log_level)
    try:
        return _run(args, settings)
    except DriftwatchError as exc:
        print(f"driftwatch: {exc}", file=sys.stderr)
        return 1
    except (RedisError, KafkaError, OSError) as exc:  # a service down: say so, no traceback
        print(f"driftwatch: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "demo":
        from stream.tools.demo import DemoOptions, run_demo

        host_port = settings.worker.metrics_address.replace("0.0.0.0", "127.0.0.1")  # noqa: S104
        options = DemoOptions(
            events=args.events,
            rate=args.rate,
            label_delay=args.label_delay,
            bad_every=args.bad_every,
            drifts=tuple(args.drift),
            seed=args.seed,
            timeout=args.timeout,
            metrics_url=args.metrics_url or f"http://{host_port}/metrics",
        )
        return run_demo(settings, options)
    if args.command == "tail":
        from stream.tools.tail import run_tail

        return run_tail(settings, args.what, args.from_beginning, args.limit)
    if args.command == "reference":
        return _reference_command(settings, args)
    if args.command == "model":
        return _model_command(settings, args)
    if args.command == "replay":
        return _replay_command(settings, args)
    raise AssertionError(f"unhandled command {args.command}")  # argparse guarantees a choice


def _model_command(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from stream.model import versions
    from stream.model.lineup import Lineup, champion_of
    from stream.model.snapshots import SnapshotStore
    from stream.service.redis_client import redis_client

    action = args.action
    if args.challenger is not None and (action != "promote" or args.version is not None):
        build_parser().error("--challenger goes with `model promote` and no version")

    async def go() -> list[str]:
        client = redis_client(settings)
        try:
            lineup = Lineup(client, settings.redis.prefix)
            if action == "lineup":
                return await versions.list_lineup(lineup, client)
            if action == "history":
                return await versions.list_history(lineup, args.limit) or ["(no lifecycle events)"]
            if args.challenger is not None:
                alert = await versions.promote_challenger(lineup, client, args.challenger)
                await _publish_alert(settings, alert)
                return [alert["message"]]
            name = args.model_name
            if name is None:  # the champion of the lineup, else the configured one
                champion = champion_of(await lineup.entries())
                name = settings.model.name if champion is None else champion.name
            spec = settings.model.model_copy(update={"name": name})
            store = SnapshotStore.from_settings(client, settings.for_model(spec))
            if action == "versions":
                return await versions.list_versions(store)
            if action == "promote":
                return [await versions.promote(store, args.version)]
            return [await versions.rollback(store)]
        finally:
            await client.aclose()

    print("\n".join(asyncio.run(go())))
    return 0


async def _publish_alert(settings: Settings, alert: dict[str, object]) -> None:
    """Publish an operator's lifecycle alert on the alerts topic (acknowledged)."""
    from stream.monitoring.alerts import alert_key
    from stream.service.publish import encode_alert, new_producer

    producer = new_producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.topics.alerts, encode_alert(dict(alert)), key=alert_key(dict(alert))
        )
    finally:
        await producer.stop()


def _reference_command(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from stream.model.snapshots import SnapshotStore
    from stream.monitoring import reference
    from stream.monitoring.subjects import monitored_subjects
    from stream.service.redis_client import redis_client

    if args.action == "pin" and args.file is None and args.range is None:
        raise DriftwatchError("reference pin needs --file PATH or --range FROM TO")

    async def go() -> str:
        client = redis_client(settings)
        prefix = settings.redis.prefix
        try:
            # either way the prediction monitors stop judging the reference model's outputs:
            # pinned values are the served model's; unpinned, they settle and pin anew
            await SnapshotStore.from_settings(client, settings).unpin_reference()
            if args.action == "unpin":
                gen = await reference.unpin(client, prefix)
                return f"references unpinned (generation {gen}): monitors collect afresh"
            if args.file is not None:
                rows = reference.read_file(args.file)
            else:
                rows = await reference.read_topic(settings, *args.range)
            kinds = {n: k for n, (k, _) in monitored_subjects(settings).items()}
            size = settings.monitoring.reference_size
            values = reference.reference_values(rows, kinds, size)
            gen = await reference.pin(client, prefix, values)
            sizes = ", ".join(f"{s}: {len(v)}" for s, (v, _) in sorted(values.items()))
            return f"pinned references (generation {gen}) from {len(rows)} predictions: {sizes}"
        finally:
            await client.aclose()

    print(asyncio.run(go()))
    return 0


def run_worker(settings: Settings, log_level: str) -> int:
    import asyncio

    from stream.exceptions import StartupError
    from stream.service.app import create_app
    from stream.service.startup import check_all

    log.info("effective configuration: %s", settings.redacted())
    try:
        asyncio.run(check_all(settings))  # before joining any consumer group
    except StartupError as exc:
        print(f"driftwatch: cannot start: {exc}", file=sys.stderr)
        return 1
    worker_ = create_app(settings)
    try:
        others = worker_.monitors.families if worker_.monitors is not None else None
        worker_.metrics.serve(settings.worker.metrics_address, others)
    except ConfigError as exc:
        print(f"driftwatch: {exc}", file=sys.stderr)
        return 2
    if worker_.monitors is not None:
        worker_.monitors.start_early()  # its start-up alongside the worker's
    tune_gc(settings.worker.gc_threshold)
    worker_class = _faust_worker_class()
    worker = worker_class(worker_.app, loglevel=log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()  # returns only via SystemExit
    return 0


def _faust_worker_class() -> type:
    import faust

    from stream.service.resilience import RepeatFilter

    class Worker(faust.Worker):
        """Faust's worker, with the Kafka client's repeated errors rate-limited."""

        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            super().on_setup_root_logger(logger, level)
            repeats = RepeatFilter()
            for handler in logger.handlers:
                handler.addFilter(repeats)

    return Worker


def tune_gc(threshold: int) -> None:
    """Freeze the objects built at start-up and collect the young generation less often.

    The app, the model and the libraries' module state are long-lived: frozen, they are no
    longer traversed by every older-generation collection. ``threshold`` 0 leaves the
    collector as Python configures it.
    """
    if threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(threshold, gen1, gen2)


def _replay_command(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from stream.tools.replay import replay_options, run_replay

    try:
        options = replay_options(
            settings, args.start, args.end, prefix=args.prefix, suffix=args.suffix,
            model=args.model_name, version=args.version, keep_state=args.keep_state,
        )  # fmt: skip
    except ValueError as exc:
        args.replay_parser.error(str(exc))  # usage, exit 2
    print("\n".join(asyncio.run(run_replay(settings, options))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
