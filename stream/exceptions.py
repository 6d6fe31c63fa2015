"""Exceptions raised by the driftwatch service."""


class DriftwatchError(Exception):
    """Base class of every error driftwatch raises on purpose."""


class ConfigError(DriftwatchError):
    """The configuration is invalid; the message names the field, value and expectation."""


class RejectedInput(DriftwatchError):
    """An input message is invalid; ``reason`` goes to the dead-letter topic."""

    def __init__(self, reason: str, stage: str = "validate", code: str = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason
        self.stage = stage
        self.code = code  # a short, bounded category for metrics: not_json, wrong_type, ...


class SnapshotIntegrityError(DriftwatchError):
    """A model snapshot failed its HMAC check (or has no signature) and was not loaded."""


class SnapshotNotFoundError(DriftwatchError):
    """The requested model snapshot version does not exist."""


class StateConflictError(DriftwatchError):
    """Feature states kept changing under a batch (another worker writes the same entities).

    Transient: the batch is retried later with backoff, nothing of the conflicting entities
    having been written.
    """


class StartupError(DriftwatchError):
    """A dependency failed its start-up check; the message names the service and setting."""
