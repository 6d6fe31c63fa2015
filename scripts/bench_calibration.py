#!/usr/bin/env python3
"""Where a monitor's calibration runs: the event loop, a thread, or a process pool.

Completing a reference calibrates every detector of the subject (seconds at small
``check_every``). The worker's event loop must keep running meanwhile: heartbeats,
rebalances and scoring. This measures, for one numeric subject (KS, PSI, Wasserstein):

- **calibration**: the wall-clock time of the call that completes the reference;
- **loop lag**: how late a 10 ms timer on the event loop fires while it runs (p50, p99,
  max); on the loop itself this is the whole calibration.

The process pool pays for pickling the monitor both ways (its state is what it calibrates);
numpy releases the GIL in the sorts and searches that dominate calibration, so a thread
keeps the loop about as responsive. No I/O; run it on a quiet machine.

    python scripts/bench_calibration.py [--check-every 10] [--repeat 2]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import pickle
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream.messages import SubjectBatch  # noqa: E402
from stream.monitoring.drift import SubjectMonitor  # noqa: E402
from stream.service.config import MonitoringSettings  # noqa: E402

TICK_S = 0.01


def ready_monitor(settings: MonitoringSettings) -> SubjectMonitor:
    """A monitor one value short of its reference."""
    monitor = SubjectMonitor("amount", "numeric", ("ks", "psi", "wasserstein"), settings, 60, "m")
    n = settings.reference_size - 1
    values = np.random.default_rng(0).normal(size=n).tolist()
    monitor.update(SubjectBatch("amount", "numeric", values, list(range(n)), 1))
    return monitor


LAST = SubjectBatch("amount", "numeric", [0.1], [10**9], 1)


def complete(monitor: SubjectMonitor) -> SubjectMonitor:
    monitor.update(LAST)
    return monitor


def complete_pickled(blob: bytes) -> bytes:
    return pickle.dumps(complete(pickle.loads(blob)))  # noqa: S301 - our own bytes


async def ticker(stop: asyncio.Event, lags: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(TICK_S)
        lags.append(time.perf_counter() - started - TICK_S)


async def measure(
    mode: str, settings: MonitoringSettings, pool: concurrent.futures.Executor
) -> None:
    monitor = ready_monitor(settings)
    stop, lags = asyncio.Event(), list[float]()
    task = asyncio.create_task(ticker(stop, lags))
    await asyncio.sleep(TICK_S / 2)  # the timer is waiting when the calibration starts
    started = time.perf_counter()
    if mode == "event loop":
        complete(monitor)
    elif mode == "thread":
        await asyncio.to_thread(complete, monitor)
    else:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(pool, complete_pickled, pickle.dumps(monitor))
    took = time.perf_counter() - started
    stop.set()
    await task
    ms = np.asarray(lags) * 1000
    print(f"{mode:13}{took:>13.2f}{len(ms):>8}{np.median(ms):>9.1f}"
          f"{np.quantile(ms, 0.99):>9.1f}{ms.max():>9.1f}")  # fmt: skip


async def main(args: argparse.Namespace) -> None:
    settings = MonitoringSettings(check_every=args.check_every)
    print(f"one numeric subject, 3 detectors, reference {settings.reference_size}, "
          f"window {settings.window}, check_every {settings.check_every}")  # fmt: skip
    print(f"{'':13}{'calibration':>13}{'ticks':>8}{'loop lag ms':>27}")
    print(f"{'':13}{'s':>13}{'':>8}{'p50':>9}{'p99':>9}{'max':>9}")
    with concurrent.futures.ProcessPoolExecutor(1) as pool:
        await asyncio.get_running_loop().run_in_executor(pool, int)  # the pool is up
        for _ in range(args.repeat):
            for mode in ("event loop", "thread", "process pool"):
                await measure(mode, settings, pool)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check-every", type=int, default=10, help="values between checks")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of the three modes")
    args = parser.parse_args()
    if args.check_every < 1 or args.repeat < 1:
        parser.error("--check-every and --repeat must be at least 1")
    asyncio.run(main(args))
