#!/usr/bin/env python3
"""The Faust floor of the end-to-end benchmark: the worker's Faust app with nothing to do.

One agent reads the events topic in batches as the scoring agent did when it was a Faust
agent (``take_events(worker.batch_size, WITHIN_S)``) and republishes every
message unchanged to the predictions topic through Faust's producer (wait for the broker's
acks, then let Faust commit). No validation, Redis, model or monitoring: what this
moves per second is the most any Faust-based worker with this configuration can move.

Configured like ``driftwatch worker`` (``--config`` file, ``DRIFTWATCH_*`` environment);
``scripts/bench_pipeline.py`` runs it in its own process.

    python scripts/faust_echo.py [--config driftwatch.toml]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import cast

import faust

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream.service.app import faust_app  # noqa: E402
from stream.service.cli import tune_gc  # noqa: E402
from stream.service.config import load_settings  # noqa: E402

#: How long ``take_events`` waits for a batch to fill (the scoring agent's setting then;
#: Faust's ``take_events`` needs a positive wait).
WITHIN_S = 0.05


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None, help="TOML file (default: none)")
    args = parser.parse_args()
    settings = load_settings(args.config)
    app = faust_app(settings)
    events = app.topic(settings.topics.events, key_type=bytes, value_type=bytes)
    out = settings.topics.predictions
    batch, within = settings.worker.batch_size, WITHIN_S

    @app.agent(events, name="driftwatch.echo")
    async def echo(stream: faust.StreamT[bytes]) -> None:
        async for evs in cast(faust.Stream[bytes], stream).take_events(batch, within):
            # as the worker published before its own producer: one send per message through
            # Faust's producer, then wait for every acknowledgement
            sent = [await app.producer.send(out, e.message.key, e.message.value, None, None, None)
                    for e in evs]  # fmt: skip
            await asyncio.gather(*sent)

    tune_gc(settings.worker.gc_threshold)
    worker = faust.Worker(app, loglevel="info", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()  # returns only via SystemExit
    return 0


if __name__ == "__main__":
    sys.exit(main())
