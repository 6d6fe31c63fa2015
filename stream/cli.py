"""The ``driftwatch`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from stream.config import Settings, load_settings
from stream.exceptions import ConfigError

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
    demo = sub.add_parser("demo", help="produce a synthetic stream and print what comes out")
    demo.add_argument("--events", type=_positive_int, default=20, help="number of events to send")
    demo.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for outputs")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    if args.command == "demo":
        from stream.demo import run_demo

        return run_demo(settings, events=args.events, timeout=args.timeout)
    raise AssertionError(f"unhandled command {args.command}")  # argparse guarantees a choice


def run_worker(settings: Settings, log_level: str) -> int:
    import asyncio

    import faust

    from stream.app import create_app
    from stream.topics import ensure_topics

    log.info("effective configuration: %s", settings.redacted())
    asyncio.run(ensure_topics(settings))
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()  # returns only via SystemExit
    return 0


if __name__ == "__main__":
    sys.exit(main())
