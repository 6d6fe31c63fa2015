"""Exceptions raised by the driftwatch service."""


class DriftwatchError(Exception):
    """Base class of every error driftwatch raises on purpose."""


class ConfigError(DriftwatchError):
    """The configuration is invalid; the message names the field, value and expectation."""
