"""Exceptions raised by :mod:`detectors`."""

from __future__ import annotations


class DetectorError(Exception):
    """Base class of every error raised by :mod:`detectors`."""


class InvalidInputError(DetectorError, ValueError):
    """An argument has the wrong shape, type or value (NaN, inf, empty, negative count...)."""


class NotFittedError(DetectorError, RuntimeError):
    """``update`` was called before ``fit``."""


class CalibrationError(DetectorError, RuntimeError):
    """The false-alarm calibration could not produce a usable threshold."""
