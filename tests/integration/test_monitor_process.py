"""The monitors' child process: supervised by the worker, gone with it, metrics merged."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time

import pytest

from stream.service.config import Settings
from stream.service.monitor_process import NICENESS
from tests.integration.kafka_io import consume, produce
from tests.integration.test_monitor_durability import applied, with_metrics_port
from tests.integration.test_monitoring import card_records, with_monitoring
from tests.integration.test_observability import scraped, wait_for
from tests.integration.worker_process import WorkerProcess

pytestmark = pytest.mark.integration
STARTED = re.compile(r"monitor process (\d+) started")
FAUST_STARTING = "[^Worker]: Starting"  # Faust's worker begins: its app, agents, consumers


def child_pids(worker: WorkerProcess) -> list[int]:
    return [int(pid) for pid in STARTED.findall(worker.log_text())]


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not running
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(") ")[2][:1] != "Z"
    except OSError:
        return False


def test_a_killed_monitor_process_is_replaced_and_loses_nothing(
    settings: Settings, worker_factory
) -> None:
    s = with_metrics_port(with_monitoring(settings, subjects=("amount",), priority="low"))
    worker = worker_factory(s)
    wait_for(lambda: len(child_pids(worker)) == 1, "the monitor process to start", 60)
    # "low": niced, under the normal policy
    assert os.sched_getscheduler(child_pids(worker)[0]) == os.SCHED_OTHER
    records = card_records(3000, seed=9)
    asyncio.run(produce(s.kafka.bootstrap, s.topics.events, records[:1500]))
    wait_for(lambda: applied(s) >= 1500, "the monitors to apply 1,500 values", 120)
    os.kill(child_pids(worker)[0], signal.SIGKILL)

    asyncio.run(produce(s.kafka.bootstrap, s.topics.events, records[1500:]))
    asyncio.run(consume(s.kafka.bootstrap, s.topics.predictions, 3000, 120))
    wait_for(lambda: len(child_pids(worker)) == 2, "a new monitor process", 60)
    # the new child resumes from the last saved state: what the dead one applied and did
    # not save comes again, so at least the other 1,500 values are applied by the new one
    wait_for(lambda: applied(s) >= 1500, "the new monitor process to apply the rest", 120)
    assert worker.alive()
    url = f"http://{s.worker.metrics_address}/metrics"
    assert scraped(url, "driftwatch_task_errors_total") >= 1  # the replacement is counted


def test_the_monitor_process_stops_when_the_worker_is_killed(
    settings: Settings, worker_factory
) -> None:
    s = with_monitoring(settings, subjects=("amount",))
    worker = worker_factory(s)
    wait_for(lambda: len(child_pids(worker)) == 1, "the monitor process to start", 60)
    child = child_pids(worker)[0]
    assert running(child)
    assert worker.pid is not None
    # the scorer goes first when the cores are short, from the child's start on: it is
    # lowered before it imports its libraries (seconds of CPU while the scorer starts), so
    # it has its lower priority the moment its start is logged
    worker_nice = os.getpriority(os.PRIO_PROCESS, worker.pid)
    assert os.getpriority(os.PRIO_PROCESS, child) == min(19, worker_nice + NICENESS)
    # the sample config's "idle": only CPU time nothing else wants
    assert s.monitoring.priority == "idle"
    assert os.sched_getscheduler(child) == os.SCHED_IDLE
    os.kill(worker.pid, signal.SIGKILL)  # the worker alone, not its process group
    deadline = time.monotonic() + 60
    while running(child) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not running(child), "the monitor process outlived its worker"


def test_the_monitor_process_starts_before_the_worker_joins_its_groups(
    settings: Settings, worker_factory
) -> None:
    # its start-up (seconds of imports) runs while the worker joins Kafka, not while the
    # scorer works through its first batches; the supervisor takes that child over
    s = with_monitoring(settings, subjects=("amount",))
    worker = worker_factory(s)  # returns once the worker's consumers have their partitions
    text = worker.log_text()
    started = STARTED.search(text)
    assert started is not None and started.start() < text.index(FAUST_STARTING)
    time.sleep(2.0)  # a second child would be logged by now
    assert len(child_pids(worker)) == 1
    assert running(child_pids(worker)[0])
