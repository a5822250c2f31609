"""Exceptions the CLI turns into one clear line (what, where, how to fix)."""

from __future__ import annotations


class AjusteError(Exception):
    """A known, user-facing failure. The message is the whole story: no traceback needed."""


class DataError(AjusteError):
    """The data source is missing, malformed or unusable as given."""


class ConfigError(AjusteError, ValueError):
    """A configuration value is invalid; the message names the field."""


class TrainingDiverged(AjusteError):
    """The loss became NaN/inf; the last good checkpoint was kept."""
