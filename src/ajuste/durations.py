"""Durations typed on the command line (``compare --budget``, ``tune --timeout``): one grammar for both."""

from __future__ import annotations

import math
import re

from ajuste.errors import ConfigError

_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])")


def parse_duration(text: str | float | int | None, option: str) -> float | None:
    """'90s', '30m', '1h', '1h30m', '2d', or a bare number of seconds (as Optuna's ``timeout``) → seconds.
    None or '' → None (no limit). ``option`` names the flag in the error."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        s = str(text).strip().lower()
        if re.fullmatch(r"\d+(?:\.\d+)?", s):
            seconds = float(s)
        else:
            seconds, pos = 0.0, 0
            for m in _PART.finditer(s):
                if s[pos:m.start()].strip():
                    break
                seconds += float(m.group(1)) * _UNITS[m.group(2)]
                pos = m.end()
            if pos == 0 or s[pos:].strip():
                raise ConfigError(f"{option} {text!r}: expected a duration like 90s, 30m, 1h or 1h30m")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{option} {text!r} must be longer than 0 (leave it out for no limit)")
    return seconds
