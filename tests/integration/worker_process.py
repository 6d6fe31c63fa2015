"""Run ``driftwatch worker`` as a real subprocess, configured through the environment."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from stream.service.batches import ASSIGNED
from stream.service.config import SECRET_FIELDS, Settings

READY_LINE = "[^Worker]: Ready"
ASSIGNED_LINE = ASSIGNED  # the ingest consumer got its partitions (events, labels)


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce ``settings`` in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTWATCH_")}
    dumped = settings.model_dump(mode="json")
    for section, value in dumped.items():
        if isinstance(value, dict | list):
            env[f"DRIFTWATCH_{section.upper()}"] = _json(value)
    for secret in SECRET_FIELDS:
        field = getattr(settings, secret)
        if field is not None:
            env[f"DRIFTWATCH_{secret.upper()}"] = field.get_secret_value()
    return env


def _json(value: object) -> str:
    import orjson

    return orjson.dumps(value).decode()


class WorkerProcess:
    """A worker in its own process group, logging to a file in ``workdir``."""

    def __init__(
        self,
        settings: Settings,
        workdir: Path,
        extra_env: dict[str, str] | None = None,
        command: Sequence[str] | None = None,
        ready: str = ASSIGNED_LINE,
    ):
        """``ready``: the log line that says the process is consuming."""
        self.settings = settings
        self.ready = ready
        self.workdir = workdir
        self.extra_env = extra_env or {}
        self.command = list(command or [sys.executable, "-m", "stream.service.cli", "worker"])
        self.log = workdir / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {**settings_env(self.settings), **self.extra_env}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.command,
                cwd=self.workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_for_log(self.ready, timeout)

    def wait_for_log(self, text: str, timeout: float, occurrences: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_text().count(text) >= occurrences:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited ({self.proc.returncode}):\n{self.tail()}")
            time.sleep(0.1)
        raise TimeoutError(f"worker log has no {text!r} after {timeout}s:\n{self.tail()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        """Whether the worker process is still running (a stopped one counts as running)."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the worker: no shutdown, no final commit."""
        self._signal(signal.SIGKILL)
        self._wait(10)

    def pause(self) -> None:
        """SIGSTOP the worker: every thread freezes (no heartbeats, no I/O) until resumed."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused worker."""
        self._signal(signal.SIGCONT)

    def state(self) -> str:
        """The process state letter from ``/proc`` (``R`` running, ``S`` sleeping, ``T``
        stopped...), ``?`` if unknown."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return "?"
        return stat.rpartition(") ")[2][:1]

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (a paused worker is resumed first)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self._signal(signal.SIGTERM)
        self._signal(signal.SIGCONT)  # a SIGSTOPped worker handles SIGTERM only once resumed
        if not self._wait(grace):
            self._signal(signal.SIGKILL)
            self._wait(10)

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def _wait(self, timeout: float) -> bool:
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
